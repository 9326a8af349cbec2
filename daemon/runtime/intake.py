"""Intake: events in, recorded with the runs they start in one transaction, then handed to
the runner. The only way events enter the daemon.

Sources call :meth:`DaemonIntake.record` concurrently; one intake loop takes whatever
has been handed in meanwhile and works through it as one batch (group intake, as the
store does group commit), so a hundred webhook requests in flight cost one duplicate
check and one commit, not a hundred of each:

1. drop events already recorded (a redelivery after a crash or a rebalance: same id);
   on a store several daemons share (``Store.shares_events``: PostgreSQL) each new one
   is *claimed* in the commit (:class:`~cued.daemon.store.EventClaim`), so when another
   daemon on the same database records it first (a schedule tick, a file of a shared
   folder, a message redelivered to another node), this one records neither it nor its
   runs, and answers ``duplicate``; a SQLite file has one daemon, whose check here (and
   of the ids it has in hand) is the whole check;
2. match each against its source's triggers (pure, :mod:`cued.daemon.core.triggers`), and drop
   matches whose dedupe key fired within its window; a match of a trigger with flow
   control (debounce, throttle, batch: :mod:`cued.daemon.runtime.flow`) may be held
   instead of starting its run, or dropped;
3. find the waits (``wait_event`` tasks, parked in the store) of the batch's sources that
   its events wake: a page of waits at a time, read by the index on source, each
   evaluated against the batch's events of its source, nothing kept once the batch is
   prepared; and, for a source that pipelines' ``cancel_on`` names, the unfinished runs
   its events cancel (read a page at a time as well), as requests to cancel them;
4. submit event rows, run rows, holds, dedupe keys, woken waits and the sources' cursors
   as *one* submission, which the store commits in one transaction;
5. once committed: hand the new runs to the runner (and the woken waits, and the runs
   to cancel) (the :class:`RunQueue` the loop is
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
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from cued.daemon.core.ids import now
from cued.daemon.core.tracecontext import parse_traceparent
from cued.daemon.core.triggers import Match, match
from cued.daemon.core.waits import event_output, first_match, matches
from cued.daemon.errors import CuedError, StoreError
from cued.daemon.logs import get_logger
from cued.daemon.runtime.flow import FlowControl
from cued.daemon.runtime.waits import settled_wait
from cued.daemon.sdk.sources import Receipt
from cued.daemon.sdk.tracing import NO_SPAN, Span, Tracing
from cued.daemon.store import (
    CancelRow,
    CursorRow,
    DedupeClaim,
    DedupeRow,
    EventClaim,
    EventRow,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Collection

    from cued.daemon.config import CancelOnConfig, Config, TriggerConfig
    from cued.daemon.sdk.sources import Event
    from cued.daemon.store import Durable, Row, RunRow, Store

__all__ = ["Backpressure", "DaemonIntake", "RunQueue"]

_WAIT_PAGE = 1000
"""Waits (or runs a cancel_on may cancel) read at a time."""
_UNFINISHED = ("queued", "running", "waiting")


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

    def wake_waits(self, run_ids: Collection[str] = ()) -> None:
        """Waits of these runs were woken (or the runs asked to be cancelled) by events
        just recorded: go on with them, wherever they are."""


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
    woken: set[str] = field(default_factory=set)
    """The runs whose waits its events woke, or that they asked to cancel."""
    done: anyio.Event = field(default_factory=anyio.Event)
    """Set once it is committed (or failed)."""


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
        self._wait_sources = _wait_sources(config)
        self._cancel_on = _cancel_on(config)
        self._in_hand: set[anyio.Event] = set()
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
        # never fewer: waits of the old configuration's tasks may still be parked
        self._wait_sources |= _wait_sources(config)
        self._cancel_on = _cancel_on(config)

    async def flushed(self) -> None:
        """Return once every batch being prepared or committed now is committed (or
        failed): what a wait that is committed already does not see in the store, intake
        has not matched against it yet."""
        for done in list(self._in_hand):
            await done.wait()

    # -- what sources call ------------------------------------------------------------

    def accepting(self) -> bool:
        return self._backpressure.accepting()

    async def wait_accepting(self) -> None:
        await self._backpressure.wait_accepting()

    async def cursor(self, source: str) -> str | None:
        return await self._store.get_cursor(source)

    async def known(self, event_ids: list[str]) -> set[str]:
        return await self._known(event_ids)

    async def _known(self, event_ids: list[str]) -> set[str]:
        # The ids in flight are taken before the store is read, not after: a batch that
        # commits while the read is out leaves `_pending_ids` during it, and a read that
        # began before that commit may not see it either; snapshotted first, it is in one.
        pending = self._pending_ids & set(event_ids)
        return await self._store.known_events(event_ids) | pending

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
        try:
            await self._loop(runs, task_status)
        finally:
            # the loop is over (the daemon stops, or lost its database and starts anew):
            # what still waits was not recorded, or is not known to be, and hears so now
            # (its source does not acknowledge it) instead of waiting for ever
            for request in self._waiting:
                if not request.done.is_set():
                    request.error = StoreError("intake stopped before the events were recorded")
                    request.done.set()

    async def _loop(self, runs: RunQueue, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.flow.run, runs)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                requests, self._queue = self._queue, []
                if not requests:
                    continue
                batch = _Batch(requests)
                self._in_hand.add(batch.done)
                try:
                    durable = await self._prepare(batch, runs)
                except Exception as exc:  # noqa: BLE001 - the callers get it, the loop goes on
                    if batch.flowed:
                        self.flow.submitted(None)  # nothing of it comes: the timer goes on
                    for request in requests:
                        request.error = exc
                        request.done.set()
                    self._in_hand.discard(batch.done)
                    batch.done.set()
                    continue
                tg.start_soon(self._complete, batch, durable, runs)

    async def _prepare(self, batch: _Batch, runs: RunQueue) -> Durable:
        requests = batch.requests
        events = [e for r in requests for e in r.events]
        ids = [e.event_id for e in events]
        known = await self._known(ids)
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
                triggers = self._triggers.get(event.source)
                if not triggers:  # nothing to evaluate it against (no context built)
                    plans.append((request, event, [], []))
                    continue
                matches, notes = match(triggers, event)
                wanted.extend(
                    (m.trigger, m.dedupe_key) for m in matches if m.dedupe_key is not None
                )
                plans.append((request, event, matches, notes))
        seen = await self._store.dedupe_seen(wanted) if wanted else {}

        claims = self._store.shares_events  # several daemons: each event claimed
        tracing = self._tracing.enabled
        rows = batch.rows
        for request, event, fired, notes in plans:
            event_id = event.event_id
            if fired is None:
                request.receipts.append(Receipt(event_id, "duplicate"))
                continue
            span = self._event_span(event) if tracing else NO_SPAN
            if fired:  # (an invalid event fires nothing)
                errors = list(notes)
                started, held, dropped = self._start_runs(
                    runs,
                    event,
                    fired,
                    seen,
                    batch,
                    stamp,
                    span.traceparent or _caller(event),
                    errors,
                )
                status = (
                    "held"
                    if held
                    else "matched"
                    if started
                    else "dropped"
                    if dropped
                    else "unmatched"
                )
                run_ids: tuple[str, ...] = tuple([r.run_id for r in started])
                batch.runs.extend(started)
            else:
                errors = [event.error, *notes] if event.error else notes
                status = "invalid" if event.error else "unmatched"
                run_ids = ()
            error = "; ".join(errors) or None
            if span:
                span.set(**{"cued.event.status": status, "cued.event.runs": len(run_ids)})
                if event.error:
                    span.fail(event.error)
                batch.spans.append(span)
            if claims:
                rows.append(EventClaim(event_id))
            rows.append(
                EventRow(
                    event_id,
                    event.source,
                    event.received_at or stamp,
                    status,
                    event.data,
                    event.meta,
                    run_ids,
                    error,
                )
            )
            request.receipts.append(Receipt(event_id, status, run_ids, error))
            self.received[event.source] += 1
        await self._wake_waits(batch)
        await self._cancel_runs(batch)
        for request in requests:
            if request.cursor is not None and request.events:
                batch.rows.append(CursorRow(request.events[0].source, request.cursor, stamp))
        batch.rows.extend(batch.runs)
        self._pending_ids |= batch.ids
        self._pending_keys |= batch.keys
        durable = self._store.submit(batch.rows)
        if batch.flowed:
            self.flow.submitted(durable)
        return durable

    async def _cancel_runs(self, batch: _Batch) -> None:
        """Add to ``batch`` requests to cancel the runs its events cancel (a pipeline's
        ``cancel_on``; see the module's step 3)."""
        asked: set[str] = set()
        for source, events in _events_of(batch, set(self._cancel_on)).items():
            for pipeline, cancel in self._cancel_on[source]:
                fired = [e for e in events if matches(cancel.when, {}, e)]
                if not fired:
                    continue
                async for run in self._unfinished(pipeline):
                    context = {
                        "run": {"id": run.run_id, "pipeline": pipeline, "inputs": run.inputs}
                    }
                    found = first_match(cancel.match, context, fired)
                    if found is not None and run.run_id not in asked:
                        asked.add(run.run_id)
                        batch.rows.append(CancelRow(run.run_id, found["id"], source, now()))
                        batch.woken.add(run.run_id)

    async def _unfinished(self, pipeline: str) -> AsyncIterator[RunRow]:
        """The unfinished runs of ``pipeline``, read a page at a time, state by state."""
        for state in _UNFINISHED:
            after = ""
            while runs := await self._store.runs_in_state(
                pipeline, state, after=after, limit=_WAIT_PAGE
            ):
                for run in runs:
                    yield run
                if len(runs) < _WAIT_PAGE:
                    break
                after = runs[-1].run_id

    async def _wake_waits(self, batch: _Batch) -> None:
        """Add to ``batch`` the waits its events wake (see the module's step 3)."""
        by_source = _events_of(batch, self._wait_sources)
        if not by_source:
            return
        after = None
        while waits := await self._store.waits_of_sources(
            list(by_source), after=after, limit=_WAIT_PAGE
        ):
            for wait in waits:
                found = first_match(wait.match, wait.context, by_source[wait.source or ""])
                if found is not None:
                    batch.rows.append(settled_wait(wait, found))
                    batch.woken.add(wait.run_id)
            if len(waits) < _WAIT_PAGE:
                break
            last = waits[-1]
            after = (last.run_id, last.key, last.attempt)

    async def _complete(self, batch: _Batch, durable: Durable, runs: RunQueue) -> None:
        error: BaseException | None = None
        try:
            await durable.wait()
        except StoreError as exc:
            error = exc
        finally:
            self._pending_ids -= batch.ids
            self._pending_keys -= batch.keys
            self._in_hand.discard(batch.done)
            batch.done.set()
            for span in batch.spans:
                if error is not None:
                    span.fail(f"not recorded: {error}")
                span.end()
        if error is None and (taken := durable.duplicates & batch.ids):
            _recorded_elsewhere(batch, taken)
        if error is None and durable.deduped:
            # their key was recorded by another daemon just before: recorded skipped
            batch.runs = [r for r in batch.runs if r.run_id not in durable.deduped]
            self._log.info("runs_skipped_as_duplicates", runs=len(durable.deduped))
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
            if batch.woken:
                runs.wake_waits(batch.woken)
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
        errors: list[str],
    ) -> tuple[list[RunRow], bool, bool]:
        """The runs ``event`` starts now (what stops one is added to ``errors``), whether
        flow control holds it (for one trigger at least) and whether it dropped a run."""
        started: list[RunRow] = []
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
                row = runs.new_run(
                    m.pipeline, m.inputs, event_id=event.event_id, traceparent=traceparent
                )
            except CuedError as exc:
                errors.append(f"trigger {m.trigger!r}: {exc}")
                continue
            # what flow control counts it under, and where it waits for a slot (most
            # matches have nothing to add: a replace costs ~5 µs per run)
            if flow := m.flow():
                row = replace(row, **flow)
            started.append(row)
            if m.dedupe_key is not None:
                # another daemon on the database may record the key at the same moment:
                # the commit writes the run only if the key is still free there
                batch.rows.append(
                    DedupeClaim(m.trigger, m.dedupe_key, m.dedupe_window_s, row.run_id)
                )
        return started, held, dropped

    def _event_span(self, event: Event) -> Span:
        if not self._tracing.enabled:
            return NO_SPAN
        return self._tracing.start(
            f"event {event.source}",
            parent=_caller(event),
            kind="consumer",
            attributes={"cued.event.id": event.event_id, "cued.source": event.source},
        )


def _events_of(batch: _Batch, sources: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The events ``batch`` records of ``sources`` (not invalid ones), by source, as an
    expression reads them (``event.*``)."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if not sources:
        return found  # most daemons: nothing waits for events, nothing cancels on one
    for row in batch.rows:
        if isinstance(row, EventRow) and row.source in sources and row.status != "invalid":
            found[row.source].append(
                event_output(row.event_id, row.source, row.data, row.meta, row.received_at)
            )
    return found


def _cancel_on(config: Config) -> dict[str, list[tuple[str, CancelOnConfig]]]:
    """The pipelines' ``cancel_on``, by the source they name."""
    found: dict[str, list[tuple[str, CancelOnConfig]]] = defaultdict(list)
    for name, pipeline in config.pipelines.items():
        for cancel in pipeline.cancel_on:
            found[cancel.source].append((name, cancel))
    return found


def _wait_sources(config: Config) -> set[str]:
    """The sources whose events ``wait_event`` tasks of ``config`` wait for."""
    return {
        source
        for pipeline in config.pipelines.values()
        for task in pipeline.tasks.values()
        if task.kind == "wait_event" and isinstance(source := task.params.get("source"), str)
    }


def _recorded_elsewhere(batch: _Batch, taken: set[str]) -> None:
    """The events ``taken`` were recorded by another daemon first: their callers get
    ``duplicate``, and their runs (not written) start nowhere here."""
    for request in batch.requests:
        request.receipts = [
            Receipt(r.event_id, "duplicate") if r.event_id in taken else r for r in request.receipts
        ]
    batch.runs = [r for r in batch.runs if r.event_id not in taken]


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
