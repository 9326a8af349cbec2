"""Live updates: a broadcaster that the daemon publishes state changes to, and that every
open ``GET /api/v1/stream`` subscribes to.

Publishing never waits: it is called from the store's writer right after a commit, and a
slow reader must not hold up the daemon. Each subscriber has a bounded buffer (anyio
memory object stream); one that falls that far behind is dropped, and the next thing it
reads is a final ``reset`` message that tells it to reload what it shows, since it has
missed updates. Memory stays bounded whatever the readers do.

```
store commit --> publish(kind, data) --send_nowait--> [buffer] --> subscriber 1 --> SSE
                                     --send_nowait--> [buffer] --> subscriber 2 --> SSE
                                      full? drop it: its next message is "reset"
```

What the stream carries (:func:`publish_committed`), one JSON ``data:`` line per message:

========  ==========================================================================
event:    data
========  ==========================================================================
run       a run's state as committed: run_id, pipeline, state, created_at, started_at,
          ended_at, error, event_id (not its inputs)
task      a task instance's state: run_id, key, task, map_index, state, attempts (how
          many), error, updated_at
event     an event recorded: event_id, source, received_at, status, run_ids, error
approval  a gate asks or is settled: run_id, key, attempt, state, message, approvers,
          min_approvals, requested_at, deadline_at, decided_at
decision  someone decided: run_id, key, attempt, who, decision, comment, decided_at
log       an attempt's live log has new lines: run_id, key, attempt, seq (the last);
          one per attempt and commit, the lines themselves read from the API
reset     the reader missed messages (it fell behind, or reconnected): reload, then
          connect again; the stream ends after it
========  ==========================================================================

Several daemons on one PostgreSQL database (:class:`LiveShare`): each shares what it
commits with the others through ``NOTIFY`` on the channel ``cued_live`` (what its commits
made durable meanwhile, the latest state of each run, task, gate, one notice per 7.8 kB,
at most one statement every 50 ms), and publishes what they share to its own readers: a
stream shows the runs of every daemon. A notice is parsed as if hostile (anyone who can
write to the database can send one). Notices missed (the listening connection was lost)
or too big to share end every stream with ``reset``: readers reload.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Self

import anyio
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from cued.daemon.store import (
    ApprovalRow,
    DecisionRow,
    EventRow,
    InstanceRow,
    LogLineRow,
    RunRow,
)
from cued.daemon.store.pg_notify import MAX_NOTICE_BYTES
from cued.daemon.web.schemas import (
    ApprovalUpdate,
    DecisionUpdate,
    EventSummary,
    LogUpdate,
    RunUpdate,
    TaskUpdate,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from types import TracebackType

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
    from starlette.types import Receive, Scope, Send

    from cued.daemon.store import Row
    from cued.daemon.store.pg_notify import Notices

__all__ = [
    "LIVE_CHANNEL",
    "EventStream",
    "Live",
    "LiveShare",
    "Message",
    "Subscription",
    "publish_committed",
    "shared_messages",
]

RESET = "reset"
#: Where daemons on one database share their live updates.
LIVE_CHANNEL = "cued_live"


@dataclass(frozen=True, slots=True)
class Message:
    """One update: ``kind`` (``run``, ``task``, ``event``, ``approval``, ``decision``,
    ``reset``), its JSON-ready ``data``, and a number that grows with every message."""

    kind: str
    data: dict[str, Any]
    id: int
    sse: bytes
    """The message as a server-sent event (one ``data:`` line of JSON), encoded once for
    every subscriber."""


@dataclass(eq=False)
class Subscription:
    """What one subscriber reads: use it as a context manager (leaving it unsubscribes),
    and :meth:`receive` messages until :class:`anyio.EndOfStream`."""

    _live: Live
    _send: MemoryObjectSendStream[Message]
    _receive: MemoryObjectReceiveStream[Message]
    dropped: bool = False
    """It fell behind and was dropped; its next message is the ``reset``."""
    _reset_sent: bool = field(default=False, repr=False)

    async def receive(self) -> Message:
        """The next message.

        :raises anyio.EndOfStream: once the broadcaster closed, or after the ``reset``
        """
        if self.dropped:
            if self._reset_sent:
                raise anyio.EndOfStream
            self._reset_sent = True
            # what is still buffered is stale: the reader reloads instead
            return self._live.message(RESET, {"reason": "fell behind: reload"})
        return await self._receive.receive()

    def _drop(self) -> None:
        self.dropped = True
        self._send.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live._subscribers.discard(self)
        self._send.close()
        self._receive.close()


class Live:
    """The broadcaster.

    :param buffer: messages a subscriber may fall behind by before it is dropped
    :param heartbeat_s: how often an idle stream sends a comment, so that proxies and
        clients see the connection is alive
    """

    def __init__(self, *, buffer: int = 1024, heartbeat_s: float = 15.0) -> None:
        self.buffer = buffer
        self.heartbeat_s = heartbeat_s
        self._subscribers: set[Subscription] = set()
        self._last_id = 0
        self._closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def message(self, kind: str, data: dict[str, Any]) -> Message:
        """A message with the next number."""
        self._last_id += 1
        sse = f"id: {self._last_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
        return Message(kind, data, self._last_id, sse.encode())

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Hand a message to every subscriber; never waits. A subscriber whose buffer is
        full is dropped (it reads ``reset`` next)."""
        if not self._subscribers:
            return
        message = self.message(kind, data)
        for sub in list(self._subscribers):
            try:
                sub._send.send_nowait(message)
            except anyio.WouldBlock:
                self._subscribers.discard(sub)
                sub._drop()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(sub)

    def subscribe(self, buffer: int | None = None) -> Subscription:
        """A new subscription; enter it as a context manager.

        :param buffer: its buffer, if not the broadcaster's default
        """
        send, receive = anyio.create_memory_object_stream[Message](buffer or self.buffer)
        sub = Subscription(self, send, receive)
        if self._closed:
            send.close()  # it reads the end at once
        else:
            self._subscribers.add(sub)
        return sub

    def reset_all(self) -> None:
        """End every subscription with ``reset``: what they show may be stale (updates of
        other daemons were missed); their readers reload, then subscribe again."""
        for sub in list(self._subscribers):
            sub._drop()
        self._subscribers.clear()

    def close(self) -> None:
        """End every subscription (its reader gets what is buffered, then the end), and
        every later one at once: the daemon stops, and open streams must not keep the
        HTTP server waiting for them."""
        self._closed = True
        for sub in self._subscribers:
            sub._send.close()
        self._subscribers.clear()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled, then :meth:`close`: start it in the task group that
        serves HTTP, so that streams end when the daemon stops."""
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self.close()


# which rows become which messages, with the fields of the models that document them;
# built as plain dicts, not models: this runs in the store's writer for every row
_MESSAGES: dict[type, tuple[str, tuple[str, ...]]] = {
    RunRow: ("run", tuple(RunUpdate.model_fields)),
    InstanceRow: ("task", tuple(TaskUpdate.model_fields)),
    EventRow: ("event", tuple(EventSummary.model_fields)),
    ApprovalRow: ("approval", tuple(ApprovalUpdate.model_fields)),
    DecisionRow: ("decision", tuple(DecisionUpdate.model_fields)),
}


def publish_committed(live: Live, seconds: float, rows: Sequence[Row]) -> None:
    """Publish what a commit made durable (a ``store.on_commit`` listener)."""
    if not live.subscribers:
        return
    for kind, data in _messages(rows):
        live.publish(kind, data)


def _messages(rows: Iterable[Row]) -> Iterator[tuple[str, dict[str, Any]]]:
    logs: dict[tuple[str, str, int], int] = {}
    for row in rows:
        if isinstance(row, LogLineRow):
            # one message per attempt, not per line: a chatty task must not flood readers
            at = (row.run_id, row.key, row.attempt)
            logs[at] = max(logs.get(at, 0), row.seq)
            continue
        found = _MESSAGES.get(type(row))
        if found is not None:
            kind, fields = found
            yield kind, {name: getattr(row, name) for name in fields}
    for (run_id, key, attempt), seq in logs.items():
        yield "log", {"run_id": run_id, "key": key, "attempt": attempt, "seq": seq}


# -- several daemons on one database ---------------------------------------------------

# the row a later one of the same thing replaces, while they wait to be shared
_SAME: dict[type, Callable[[Any], Any]] = {
    RunRow: attrgetter("run_id"),
    InstanceRow: attrgetter("run_id", "key"),
    EventRow: attrgetter("event_id"),
    ApprovalRow: attrgetter("run_id", "key"),
    DecisionRow: attrgetter("run_id", "key", "attempt", "who"),
    LogLineRow: attrgetter("run_id", "key", "attempt"),
}

# what a notice from another daemon may carry, checked as the stream documents it
_SHARED: dict[str, type[BaseModel]] = {
    "run": RunUpdate,
    "task": TaskUpdate,
    "event": EventSummary,
    "approval": ApprovalUpdate,
    "decision": DecisionUpdate,
    "log": LogUpdate,
}


def shared_messages(text: str) -> list[tuple[str, dict[str, Any]]] | None:
    """The messages of a notice another daemon shared (a JSON list of ``[kind, data]``):
    those that are well-formed, as their model dumps them; ``None`` if the notice asks
    for a ``reset`` (its sender had more to share than a notice takes) or is not a list
    of pairs at all. Never raises: the text is whatever was sent on the channel."""
    try:
        found = json.loads(text)
    except ValueError:
        return None
    if not isinstance(found, list):
        return None
    messages: list[tuple[str, dict[str, Any]]] = []
    for item in found:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            continue
        kind, data = item
        if kind == RESET:
            return None
        model = _SHARED.get(kind)
        if model is None or not isinstance(data, dict):
            continue
        try:
            messages.append((kind, model.model_validate(data).model_dump(mode="json")))
        except ValidationError:
            continue
    return messages


def _notices_of(messages: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[str]:
    """``messages`` as notices of at most :data:`MAX_NOTICE_BYTES` each; one too big for a
    notice of its own becomes a ``reset``."""
    parts: list[str] = []
    size = 2
    for kind, data in messages:
        part = json.dumps([kind, data], separators=(",", ":"))
        if len(part.encode()) + 2 > MAX_NOTICE_BYTES:
            part = json.dumps([RESET, {}])
        if parts and size + len(part.encode()) + 1 > MAX_NOTICE_BYTES:
            yield f"[{','.join(parts)}]"
            parts, size = [], 2
        parts.append(part)
        size += len(part.encode()) + 1
    if parts:
        yield f"[{','.join(parts)}]"


class LiveShare:
    """Shares this daemon's live updates with the other daemons on its database, and
    publishes theirs to its readers; serve it with :meth:`serve`, and register
    :meth:`committed` with ``store.on_commit``.

    :param throttle_s: the least time between two shares (what commits meanwhile waits,
        only the latest state of each thing kept)
    """

    def __init__(self, live: Live, notices: Notices, *, throttle_s: float = 0.05) -> None:
        self._live = live
        self._notices = notices
        self.throttle_s = throttle_s
        self._waiting: dict[tuple[type, Any], Row] = {}
        self._wake = anyio.Event()
        notices.on(LIVE_CHANNEL, self.received, missed=live.reset_all)

    def committed(self, seconds: float, rows: Sequence[Row]) -> None:
        """Keep what a commit made durable, to share (called by the store's writer: it
        only keeps rows)."""
        waiting = self._waiting
        for row in rows:
            same = _SAME.get(type(row))
            if same is not None:
                waiting[type(row), same(row)] = row
        if waiting:
            self._wake.set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Share what was committed, until cancelled."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            rows, self._waiting = list(self._waiting.values()), {}
            if not self._notices.peers:
                continue  # alone on the database: nobody to share with
            for notice in _notices_of(_messages(rows)):
                self._notices.send(LIVE_CHANNEL, notice)
            await anyio.sleep(self.throttle_s)

    def received(self, text: str) -> None:
        """Publish what another daemon shared to this daemon's readers."""
        messages = shared_messages(text)
        if messages is None:
            self._live.reset_all()
            return
        for kind, data in messages:
            self._live.publish(kind, data)


class EventStream(Response):
    """A ``text/event-stream`` of a new subscription to ``live``, until the client goes,
    the daemon stops, or the subscription is dropped (then it ends with ``reset``).

    :param reset_first: send only a ``reset`` (a client that reconnects with
        ``Last-Event-ID``: what it missed cannot be replayed)
    """

    media_type = "text/event-stream"

    def __init__(self, live: Live, *, reset_first: bool = False) -> None:
        # not Response.__init__: that would declare a Content-Length for an empty body
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # proxies must not hold messages back
        ]
        self._live = live
        self._reset_first = reset_first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # subscribed before the answer starts: nothing committed after it can be missed
        with self._live.subscribe() as subscription:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
                await self._pump(subscription, send)
                tg.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, subscription: Subscription, send: Send) -> None:
        async def chunk(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await chunk(b"retry: 2000\n\n")
        if self._reset_first:
            await chunk(self._live.message(RESET, {"reason": "reconnected: reload"}).sse)
            return
        while True:
            message = None
            with anyio.move_on_after(self._live.heartbeat_s):
                try:
                    message = await subscription.receive()
                except anyio.EndOfStream:
                    return
            if message is None:
                await chunk(b": keep-alive\n\n")
                continue
            await chunk(message.sse)
            if message.kind == RESET:
                return


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
