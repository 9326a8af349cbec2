"""Nodes wake each other: ``LISTEN``/``NOTIFY`` on the PostgreSQL database they share,
instead of each asking the database on a timer whether something changed.

Each daemon on PostgreSQL keeps one connection of its own for this (:class:`Notices`):
it listens on the channels the daemon handles, and sends what the daemon tells the other
nodes. A notice is text; its first word is the sending daemon's token, so a daemon is
never handed back its own notices.

```
node A: commit, then notices.send(channel, text) --.             .--> node B: handler(text)
        (several gathered into one statement)       +-> PostgreSQL +
                                                    '             '--> node C: handler(text)
```

- Sending never waits: what is sent while a statement is out goes in the next one, so a
  busy node sends at most one statement per ``throttle_s``, however many commits it made.
  An idle node sends nothing, and listening costs the database no statement at all.
- A lost connection is made again, with a growing delay (``backoff_s``); what was sent
  meanwhile waits (the oldest are dropped past ``max_waiting``). What others sent while it
  was gone is lost: each handler's ``missed`` is called once the node listens again, to
  read what it needs from the store (notices only wake; the store holds the truth).
- Handlers run in the event loop, called by asyncpg: they must not block (they hand the
  work to a task, or to a memory stream).
- A commit may send a notice of its own (token :data:`FROM_A_COMMIT`): every daemon
  hears it, once the commit is durable (a window of flow control, see ``pg_flow``).
- Each daemon says ``hello`` (channel ``cued_hello``) whenever it starts listening, and
  answers the hello of a daemon it has not heard yet: :attr:`Notices.peers` tells whether
  any other daemon is there, so one daemon alone on its database shares nothing.
"""

from __future__ import annotations

import os
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from cued.daemon.config.state import shown_url
from cued.daemon.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    import asyncpg

__all__ = ["FROM_A_COMMIT", "MAX_NOTICE_BYTES", "SLOTS_CHANNEL", "Notices"]

#: The longest text one notice may carry (PostgreSQL's limit is 8000 bytes, with the
#: sender's token in front).
MAX_NOTICE_BYTES = 7800

#: Where a commit that frees a key's or a pool's slot others wait for says so (in SQL,
#: pg_nodes.py): ``key PIPELINE`` or ``pool POOL``, after the sender's token.
SLOTS_CHANNEL = "cued_slots"
#: The token of a notice a transaction sends itself (``pg_notify`` in a commit, delivered
#: only if it commits, even if its daemon is killed right after): no daemon's, so every
#: daemon is handed it, the one that committed too, and none counts it as a peer.
FROM_A_COMMIT = "-"

_SEND = "SELECT pg_notify(c, t) FROM unnest($1::text[], $2::text[]) AS n(c, t)"
_HELLO = "cued_hello"


@dataclass
class _Channel:
    handlers: list[Callable[[str], None]] = field(default_factory=list)
    missed: list[Callable[[], None]] = field(default_factory=list)


class Notices:
    """One daemon's connection for notices to and from the other daemons on its database.

    :param url: the database's URL
    :param throttle_s: the least time between two statements that send notices
    :param backoff_s: the first and the longest wait before connecting again
    :param max_waiting: the most notices kept while the connection is down
    """

    def __init__(
        self,
        url: str,
        *,
        throttle_s: float = 0.05,
        backoff_s: tuple[float, float] = (0.1, 10.0),
        max_waiting: int = 10_000,
    ) -> None:
        self._url = url
        self.where = shown_url(url)
        self.token = secrets.token_hex(8)
        """This daemon's: notices carrying it are its own, and are not handed back."""
        self.throttle_s = throttle_s
        self.backoff_s = backoff_s
        self._channels: dict[str, _Channel] = {}
        self._waiting: deque[tuple[str, str]] = deque(maxlen=max_waiting)
        self._wake = anyio.Event()
        self.listening = anyio.Event()
        """Set while the connection listens (made anew each time it is lost)."""
        self.sent = 0
        self.statements = 0
        self.received = 0
        self.connections = 0
        self.backend_pid: int | None = None
        """The server's process of the connection, while connected."""
        self.peers: set[str] = set()
        """The tokens of the other daemons heard (said hello, or sent a notice)."""
        self._log = get_logger()

    def on(
        self,
        channel: str,
        handler: Callable[[str], None],
        *,
        missed: Callable[[], None] | None = None,
    ) -> None:
        """Hand each notice on ``channel`` from another daemon to ``handler`` (its text,
        without the token); call ``missed`` each time the connection listens again after
        it was lost. Register before :meth:`serve`."""
        found = self._channels.setdefault(channel, _Channel())
        found.handlers.append(handler)
        if missed is not None:
            found.missed.append(missed)

    def send(self, channel: str, text: str) -> None:
        """Send ``text`` to the daemons listening on ``channel``, soon; never waits.

        :raises ValueError: if ``text`` is longer than :data:`MAX_NOTICE_BYTES`
        """
        if len(text.encode()) > MAX_NOTICE_BYTES:
            raise ValueError(f"a notice takes at most {MAX_NOTICE_BYTES} bytes, not {len(text)}")
        self._waiting.append((channel, f"{self.token} {text}"))
        self._wake.set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Listen and send until cancelled, connecting again whenever the connection is
        lost; started once the first connection listens (or failed to: then it tries
        again in the background)."""
        # here, not at the top: the web front names this module, and asyncpg is for those
        # who keep their state in PostgreSQL
        import asyncpg

        lost_with = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
        delay = self.backoff_s[0]
        started = False
        while True:
            try:
                # the session says whose it is (pg_stat_activity): a daemon's, by its pid
                db = await asyncpg.connect(
                    self._url,
                    timeout=10,
                    server_settings={"application_name": f"cued:{os.getpid()}"},
                )
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                self._log.warning(
                    "notices_not_connected", database=self.where, error=str(exc), retry_in_s=delay
                )
            else:
                try:
                    await self._connected(db, None if started else task_status, lost_with)
                    started = True
                    delay = self.backoff_s[0]  # it listened: the next try comes soon
                except lost_with as exc:
                    self._log.warning("notices_not_listening", database=self.where, error=str(exc))
                finally:
                    self.listening = anyio.Event()
                    db.terminate()
            if not started:
                task_status.started()
                started = True
            await anyio.sleep(delay)
            delay = min(delay * 2, self.backoff_s[1])

    async def _connected(
        self,
        db: asyncpg.Connection,
        task_status: anyio.abc.TaskStatus[None] | None,
        lost_with: tuple[type[Exception], ...],
    ) -> None:
        """Listen on ``db`` and send through it until it is lost."""
        lost = anyio.Event()
        db.add_termination_listener(lambda _: lost.set())
        for channel in (_HELLO, *self._channels):
            await db.add_listener(channel, self._received)
        self.send(_HELLO, "")  # the daemons already there answer: they are our peers
        again = self.connections > 0
        self.connections += 1
        self.backend_pid = db.get_server_pid()
        self.listening.set()
        if task_status is not None:
            task_status.started()
        if again:
            self._log.info("notices_listening_again", database=self.where)
            for found in self._channels.values():
                for missed in found.missed:
                    self._call(missed)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._send_loop, db, lost, lost_with)
            await lost.wait()
            tg.cancel_scope.cancel()
        self._log.warning("notices_connection_lost", database=self.where)

    async def _send_loop(
        self, db: asyncpg.Connection, lost: anyio.Event, lost_with: tuple[type[Exception], ...]
    ) -> None:
        while True:
            if not self._waiting:
                await self._wake.wait()
            self._wake = anyio.Event()
            notices = list(self._waiting)
            self._waiting.clear()
            try:
                await db.execute(_SEND, [c for c, _ in notices], [t for _, t in notices])
            except lost_with as exc:
                self._waiting.extendleft(reversed(notices))  # sent once connected again
                self._log.warning("notices_not_sent", database=self.where, error=str(exc))
                lost.set()
                return
            self.statements += 1
            self.sent += len(notices)
            # what comes meanwhile goes in one statement, the next
            await anyio.sleep(self.throttle_s)

    def _received(self, _db: Any, _pid: int, channel: str, payload: object) -> None:
        if not isinstance(payload, str):
            return
        token, _, text = payload.partition(" ")
        if token == self.token:
            return
        if token != FROM_A_COMMIT and token not in self.peers:
            self.peers.add(token)
            self._log.info("notices_peer_heard", database=self.where, peers=len(self.peers))
            if channel == _HELLO:
                self.send(_HELLO, "")  # so that the newcomer knows of this one too
        found = self._channels.get(channel)
        if found is None:
            return
        self.received += 1
        for handler in found.handlers:
            self._call(handler, text)

    def _call(self, handler: Callable[..., None], *args: Any) -> None:
        try:
            handler(*args)
        except Exception as exc:  # noqa: BLE001 - one handler's bug must not stop the others
            self._log.error("notice_handler_failed", error=repr(exc))
