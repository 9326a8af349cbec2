"""Intake: events in, recorded with the runs they start in one transaction, then handed to
the runner. The only way events enter the daemon.

Sources call :meth:`DaemonIntake.record` concurrently; one intake loop takes whatever
has been handed in meanwhile and works through it as one batch (group intake, as the
store does group commit), so a hundred webhook requests in flight cost one duplicate
check and one commit, not a hundred of each:

1. drop events already recorded (a redelivery after a crash or a rebalance: same id);
2. match each against its source's triggers (pure, :mod:`cued.daemon.core.triggers`), and drop
   matches whose dedupe key fired within its window; a match of a trigger with flow
   control (debounce, throttle, batch: :mod:`cued.daemon.runtime.flow`) may be held
   instead of starting its run, or dropped;
3. submit event rows, run rows, holds, dedupe keys and the sources' cursors as *one*
   submission, which the store commits in one transaction;
4. once committed: hand the new runs to the runner (the :class:`RunQueue` the loop is
   given) and answer every caller, which then acknowledges to its source.

Each event recorded gets a span, from matching to commit, a child of the caller's span
when its ``meta.traceparent`` names one (a webhook's or a Kafka message's header); the
runs it starts keep that span's ``traceparent``, so their spans hang from it.

The loop goes on to the next batch while a batch commits; ids and dedupe keys stay
"pending" until their commit, so two deliveries of one event racing each other start its
runs once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from cued.daemon.core.ids import now
from cued.daemon.core.tracecontext import parse_traceparent
from cued.daemon.core.triggers import Match, match
from cued.daemon.errors import CuedError, StoreError
from cued.daemon.logs import get_logger
from cued.daemon.runtime.flow import FlowControl
from cued.daemon.sdk.sources import Receipt
from cued.daemon.sdk.tracing import NO_SPAN, Span, Tracing
from cued.daemon.store import CursorRow, DedupeRow, EventRow

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.config import Config, TriggerConfig
    from cued.daemon.sdk.sources import Event
    from cued.daemon.store import Durable, Row, RunRow, Store

__all__ = ["Backpressure", "DaemonIntake", "RunQueue"]


class Backpressure(Protocol):
    """Whether sources may send more (the runner's backlog)."""

    def accepting(self) -> bool: ...

    async def wait_accepting(self) -> None: ...


class RunQueue(Protocol):
    """Where the runs events start go (a port: the runner is one, and it records its
    asset events here, so this module must not know it)."""

    def new_run(
        self,
        pipeline: str,
        inputs: dict[str, Any] | None = None,
        *,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> RunRow:
        """A queued run of ``pipeline``, to record; its spans hang from ``traceparent``.

        :raises CuedError: if the pipeline, or an input, is unknown
        """

    def enqueue(self, row: RunRow) -> None:
        """Start, or queue, a run that is recorded."""


@dataclass(eq=False)
class _Request:
    """One call of ``record``, waiting for its batch to commit."""

    events: list[Event]
    cursor: str | None
    acknowledge: Callable[[list[Receipt]], None] | None = None
    at: float = field(default_factory=anyio.current_time)
    receipts: list[Receipt] = field(default_factory=list)
    error: BaseException | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class _Batch:
    requests: list[_Request]
    rows: list[Row] = field(default_factory=list)
    runs: list[RunRow] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    keys: set[tuple[str, str]] = field(default_factory=set)
    flowed: bool = False
    """Flow control held (or dropped) events of this batch: the timer reads the store only
    once it is committed."""
    due_at: float | None = None
    """The earliest time a window held by this batch is due."""
    spans: list[Span] = field(default_factory=list)
    """The events' spans, ended once the batch is committed."""


class DaemonIntake:
    """Records events and starts the runs their triggers ask for; serve it with
    :meth:`run` in the daemon's task group.

    :param config: triggers come from here
    :param store: where events, runs and dedupe keys are recorded
    :param backpressure: whether sources may send more (the runner's backlog)
    :param tracing: makes the events' spans (off by default)
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        backpressure: Backpressure,
        tracing: Tracing | None = None,
    ) -> None:
        self._store = store
        self._backpressure = backpressure
        self._tracing = tracing or Tracing()
        self._triggers = _by_source(config.triggers)
        self.flow = FlowControl(config, store)
        self._queue: list[_Request] = []
        self._waiting: set[_Request] = set()  # handed in, not yet answered
        self._wake = anyio.Event()
        self._pending_ids: set[str] = set()
        self._pending_keys: set[tuple[str, str]] = set()
        self.received: dict[str, int] = defaultdict(int)
        self._log = get_logger()

    def reconfigure(self, config: Config) -> None:
        """Match events against ``config``'s triggers from the next batch on (a reload); a
        batch being prepared keeps the triggers it started with."""
        self._triggers = _by_source(config.triggers)
        self.flow.reconfigure(config)

    # -- what sources call ------------------------------------------------------------

    def accepting(self) -> bool:
        return self._backpressure.accepting()

    async def wait_accepting(self) -> None:
        await self._backpressure.wait_accepting()

    async def cursor(self, source: str) -> str | None:
        return await self._store.get_cursor(source)

    async def known(self, event_ids: list[str]) -> set[str]:
        return await self._store.known_events(event_ids) | (self._pending_ids & set(event_ids))

    async def record(
        self,
        events: list[Event],
        *,
        cursor: str | None = None,
        acknowledge: Callable[[list[Receipt]], None] | None = None,
    ) -> list[Receipt]:
        """See :meth:`cued.daemon.sdk.sources.Intake.record`.

        :raises StoreError: if the transaction failed (nothing of it was recorded)
        """
        if not events and cursor is None:
            return []
        request = _Request(list(events), cursor, acknowledge)
        self._queue.append(request)
        self._waiting.add(request)
        self._wake.set()
        try:
            await request.done.wait()
        finally:
            self._waiting.discard(request)
        if request.error is not None:
            raise StoreError(f"events were not recorded: {request.error}") from request.error
        return request.receipts

    def stalled_s(self) -> float:
        """How long the oldest event handed in has waited to be recorded (0.0 when none
        waits): the watchdog's measure of sources that hand in and get no answer."""
        if not self._waiting:
            return 0.0
        return max(0.0, anyio.current_time() - min(r.at for r in self._waiting))

    # -- the loop ---------------------------------------------------------------------

    async def run(
        self,
        runs: RunQueue,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Work through what is handed in, batch after batch, until cancelled.

        :param runs: where the runs that events start go, once recorded
        """
        await self.flow.load()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.flow.run, runs)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                requests, self._queue = self._queue, []
                if not requests:
                    continue
                try:
                    batch, durable = await self._prepare(requests, runs)
                except Exception as exc:  # noqa: BLE001 - the callers get it, the loop goes on
                    for request in requests:
                        request.error = exc
                        request.done.set()
                    continue
                tg.start_soon(self._complete, batch, durable, runs)

    async def _prepare(self, requests: list[_Request], runs: RunQueue) -> tuple[_Batch, Durable]:
        batch = _Batch(requests)
        events = [e for r in requests for e in r.events]
        ids = [e.event_id for e in events]
        known = await self._store.known_events(ids) | (self._pending_ids & set(ids))
        stamp = now()
        plans: list[tuple[_Request, Event, list[Match] | None, list[str]]] = []
        wanted: list[tuple[str, str]] = []
        for request in requests:
            for event in request.events:
                if event.event_id in known:
                    plans.append((request, event, None, []))
                    continue
                known.add(event.event_id)  # a second copy in this batch is a duplicate
                batch.ids.add(event.event_id)
                if event.error is not None:
                    plans.append((request, event, [], []))
                    continue
                matches, notes = match(self._triggers.get(event.source, ()), event)
                wanted.extend(
                    (m.trigger, m.dedupe_key) for m in matches if m.dedupe_key is not None
                )
                plans.append((request, event, matches, notes))
        seen = await self._store.dedupe_seen(wanted) if wanted else {}

        for request, event, fired, notes in plans:
            if fired is None:
                request.receipts.append(Receipt(event.event_id, "duplicate"))
                continue
            span = self._event_span(event)
            started, errors, held, dropped = self._start_runs(
                runs, event, fired, seen, batch, stamp, span.traceparent or _caller(event)
            )
            errors = [*([event.error] if event.error else []), *notes, *errors]
            status = (
                "invalid"
                if event.error
                else "held"
                if held
                else "matched"
                if started
                else "dropped"
                if dropped
                else "unmatched"
            )
            run_ids = tuple(r.run_id for r in started)
            error = "; ".join(errors) or None
            if span:
                span.set(**{"cued.event.status": status, "cued.event.runs": len(run_ids)})
                if event.error:
                    span.fail(event.error)
                batch.spans.append(span)
            batch.rows.append(
                EventRow(
                    event.event_id,
                    event.source,
                    event.received_at or stamp,
                    status,
                    event.data,
                    event.meta,
                    run_ids,
                    error,
                )
            )
            batch.runs.extend(started)
            request.receipts.append(Receipt(event.event_id, status, run_ids, error))
            self.received[event.source] += 1
        for request in requests:
            if request.cursor is not None and request.events:
                batch.rows.append(CursorRow(request.events[0].source, request.cursor, stamp))
        batch.rows.extend(batch.runs)
        self._pending_ids |= batch.ids
        self._pending_keys |= batch.keys
        durable = self._store.submit(batch.rows)
        if batch.flowed:
            self.flow.submitted(durable)
        return batch, durable

    async def _complete(self, batch: _Batch, durable: Durable, runs: RunQueue) -> None:
        error: BaseException | None = None
        try:
            await durable.wait()
        except StoreError as exc:
            error = exc
        finally:
            self._pending_ids -= batch.ids
            self._pending_keys -= batch.keys
            for span in batch.spans:
                if error is not None:
                    span.fail(f"not recorded: {error}")
                span.end()
        for request in batch.requests:
            request.error = error
            if error is None and request.acknowledge is not None:
                try:
                    request.acknowledge(request.receipts)
                except Exception as exc:  # noqa: BLE001 - the source's failure, not the batch's
                    self._log.error("acknowledge_failed", error=repr(exc))
            request.done.set()
        if error is None:
            for run in batch.runs:
                runs.enqueue(run)
            if batch.due_at is not None:
                self.flow.written(batch.due_at)

    def _start_runs(
        self,
        runs: RunQueue,
        event: Event,
        matches: list[Match],
        seen: dict[tuple[str, str], float],
        batch: _Batch,
        stamp: float,
        traceparent: str | None,
    ) -> tuple[list[RunRow], list[str], bool, bool]:
        """The runs ``event`` starts now, notes on its matches, whether flow control holds
        it (for one trigger at least) and whether it dropped a run."""
        started: list[RunRow] = []
        errors: list[str] = []
        held = dropped = False
        for m in matches:
            if m.error is not None:
                errors.append(m.error)
                continue
            if m.dedupe_key is not None:
                pair = (m.trigger, m.dedupe_key)
                last = seen.get(pair)
                if (
                    pair in batch.keys
                    or pair in self._pending_keys
                    or (last is not None and stamp - last < m.dedupe_window_s)
                ):
                    errors.append(
                        f"trigger {m.trigger!r}: duplicate of key {m.dedupe_key!r} within its window"
                    )
                    continue
                batch.keys.add(pair)
                batch.rows.append(DedupeRow(m.trigger, m.dedupe_key, stamp))
            if self.flow.controls(m.trigger):
                admitted = self.flow.admit(m, event.event_id)
                batch.flowed = True
                batch.rows.extend(admitted.rows)
                if admitted.note is not None:
                    errors.append(admitted.note)
                if admitted.due_at is not None:
                    batch.due_at = min(batch.due_at or admitted.due_at, admitted.due_at)
                held = held or admitted.held
                dropped = dropped or not (admitted.start or admitted.held)
                if not admitted.start:
                    continue
            try:
                started.append(
                    runs.new_run(
                        m.pipeline, m.inputs, event_id=event.event_id, traceparent=traceparent
                    )
                )
            except CuedError as exc:
                errors.append(f"trigger {m.trigger!r}: {exc}")
        return started, errors, held, dropped

    def _event_span(self, event: Event) -> Span:
        if not self._tracing.enabled:
            return NO_SPAN
        return self._tracing.start(
            f"event {event.source}",
            parent=_caller(event),
            kind="consumer",
            attributes={"cued.event.id": event.event_id, "cued.source": event.source},
        )


def _by_source(triggers: list[TriggerConfig]) -> dict[str, list[TriggerConfig]]:
    found: dict[str, list[TriggerConfig]] = defaultdict(list)
    for trigger in triggers:
        found[trigger.source].append(trigger)
    return found


def _caller(event: Event) -> str | None:
    """The caller's ``traceparent`` a source read into the event, if any (sources check
    it; the store gives back what it kept, so it is checked again here)."""
    value = event.meta.get("traceparent") if isinstance(event.meta, dict) else None
    return parse_traceparent(value) if isinstance(value, str) else None
