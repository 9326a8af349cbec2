"""Waits: task instances parked until an event comes (``wait_event``) or a moment (a
durable ``sleep``), and their runs woken once, across restarts.

A wait is a row of the store (:class:`~cued.daemon.store.WaitRow`), written when its
attempt parks. It settles once, by whichever comes first:

- an event: intake, recording an event of the wait's source, evaluates ``match`` on it
  and marks the wait ``matched`` in the event's own transaction;
- its lookback: the events of its source recorded since ``lookback_from`` (before the
  wait began), checked here once the wait is committed and every batch intake had in
  hand has committed too (so an event recorded while the wait was being written is seen
  by one or the other);
- its deadline (the task's ``timeout``, a timer's moment): marked ``expired`` here.

The store writes a settled wait only to mark it ``applied`` (see ``WaitRow``), so two of
these racing each other settle it one way. Then, here, one at a time, the wait is
applied: its attempt and instance end, and its run goes on (from the store if it was
parked, in memory if other tasks of it still run), in one transaction with the mark. A
kill -9 anywhere in between leaves a settled wait not applied, which the next start
applies: the run wakes once.

Runs that an event asked to cancel (a pipeline's ``cancel_on``: intake records the
request in the event's transaction) are cancelled here too, in one transaction with the
request's mark when the run is in the store only; a run in memory is cancelled, then its
request marked, and a kill -9 in between finds the run ended and marks it at the start.

Nothing of a wait is held in memory: each pass reads a page of what it has to do.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from cued.daemon.core.engine import RunState, State
from cued.daemon.core.ids import now
from cued.daemon.core.waits import event_output, first_match, match_context
from cued.daemon.errors import Conflict, NotFound
from cued.daemon.logs import get_logger
from cued.daemon.sdk.kinds import AwaitingEvent, AwaitingTime
from cued.daemon.store import AttemptRow, WaitRow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

    from cued.daemon.store import EventRow, Row, RunRow, Store

from cued.daemon.runtime.gates import GateHost

__all__ = ["WaitHost", "Waits", "cancelled_waits", "settled_wait", "wait_row"]

_PAGE = 500
"""Waits (or events of a lookback) read at a time."""


def wait_row(
    run_id: str,
    key: str,
    attempt: int,
    awaiting: AwaitingEvent | AwaitingTime,
    *,
    timeout_s: float | None,
    context: Mapping[str, Any],
    started_at: float,
) -> WaitRow:
    """The wait that attempt ``attempt`` of instance ``key`` parks on.

    :param timeout_s: the task's ``timeout``: how long an event wait waits
    :param context: the task's template names, of which the wait keeps what ``match`` reads
    :param started_at: when the attempt began: a lookback counts back from it
    """
    opened = now()
    if isinstance(awaiting, AwaitingTime):
        return WaitRow(
            run_id, key, attempt, "timer", None, None, {}, None, awaiting.at, "succeed", opened,
            scanned=1,
        )  # fmt: skip
    return WaitRow(
        run_id,
        key,
        attempt,
        "event",
        awaiting.source,
        awaiting.match,
        match_context(awaiting.match, context),
        started_at - awaiting.lookback_s,
        None if timeout_s is None else opened + timeout_s,
        awaiting.on_timeout,
        opened,
    )


def settled_wait(wait: WaitRow, event: Mapping[str, Any] | None) -> WaitRow:
    """``wait`` woken by ``event`` (as :func:`~cued.daemon.core.waits.event_output` gives
    it), or (``None``) expired."""
    at = now()
    if event is None:
        if wait.kind == "timer":
            output: Any = {"until": wait.deadline_at}
        else:
            output = {"event": None, "timed_out": True}
        return replace(wait, state="expired", output=json.dumps(output), settled_at=at)
    return replace(
        wait,
        state="matched",
        event_id=event["id"],
        output=json.dumps({"event": event}),
        settled_at=at,
    )


def cancelled_waits(waits: Iterable[WaitRow], at: float) -> list[Row]:
    """Those of ``waits`` still waiting, cancelled with their run: no event is matched
    against them again."""
    return [
        replace(w, state="cancelled", settled_at=at, applied=1)
        for w in waits
        if w.state == "waiting"
    ]


def _event_of(row: EventRow) -> dict[str, Any]:
    return event_output(row.event_id, row.source, row.data, row.meta, row.received_at)


def _outcome(wait: WaitRow) -> tuple[bool, Any, str | None]:
    """How the wait's attempt ended: succeeded or not, its output, its error."""
    output = None if wait.output is None else json.loads(wait.output)
    if wait.state == "expired" and wait.kind == "event" and wait.on_timeout != "succeed":
        return False, output, f"no event of source {wait.source!r} matched in time"
    return True, output, None


class WaitHost(GateHost, Protocol):
    """What waking and cancelling runs needs of the runner (a port, as for gates)."""

    def resuming(self) -> bool:
        """Whether unfinished runs are still to be resumed into memory."""

    async def cancel(self, run_id: str, *, reason: str | None = None) -> RunRow:
        """Cancel a run in memory."""

    async def cancel_stored(
        self, run_id: str, *, reason: str | None = None, extra: Sequence[Row] = ()
    ) -> RunRow:
        """Cancel a run in the store only, with ``extra`` rows in the same transaction."""


class Waits:
    """The waits of a runner's runs: check their lookback, expire them, and apply the
    settled ones (serve :meth:`serve` in the runner's task group).

    :param store: where waits, events and runs are
    :param host: the runs the waits hold up
    :param flushed: returns once every batch of events intake has in hand is committed
        (``None``: no intake runs beside this runner)
    """

    def __init__(
        self,
        store: Store,
        host: WaitHost,
        flushed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._host = host
        self._flushed = flushed
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._log = get_logger()

    def wake(self) -> None:
        """Something changed: a wait opened, one was matched, or a run left memory."""
        self._wake.set()

    async def idle(self) -> None:
        """Return once a pass is done and the loop sleeps (until something wakes it)."""
        await self._idle.wait()

    async def serve(self) -> None:
        """Check, expire and apply waits until cancelled; wakes at the earliest deadline
        in the store, and whenever :meth:`wake` is called."""
        while True:
            self._wake = anyio.Event()
            await self.work()
            next_at = await self._store.next_wait_deadline()
            delay = math.inf if next_at is None else max(0.0, next_at - now())
            if delay == 0.0:
                continue
            self._idle.set()
            with anyio.move_on_after(delay):
                await self._wake.wait()
            self._idle = anyio.Event()

    async def work(self) -> None:
        """One pass: check the lookback of new waits, expire those due, apply those
        settled."""
        await self._scan()
        await self._expire()
        await self._apply()
        await self._cancel()

    async def _scan(self) -> None:
        while waits := await self._store.waits_to_scan(_PAGE):
            if self._flushed is not None:
                await self._flushed()
            rows: list[Row] = []
            for wait in waits:
                found = await self._lookback(wait)
                rows.append(
                    replace(wait, scanned=1) if found is None else settled_wait(wait, found)
                )
            await self._store.submit(rows).wait()
            if len(waits) < _PAGE:
                return

    async def _lookback(self, wait: WaitRow) -> Mapping[str, Any] | None:
        """The first event recorded since the wait's ``lookback_from`` that wakes it."""
        if wait.source is None or wait.lookback_from is None:
            return None  # a timer
        since = wait.lookback_from
        while events := await self._store.events_of_source(wait.source, since, limit=_PAGE):
            found = first_match(wait.match, wait.context, (_event_of(e) for e in events))
            if found is not None:
                return found
            if len(events) < _PAGE:
                return None
            # on from just after the last time seen (a page's worth of events at one
            # instant would pass the rest of that instant over)
            since = math.nextafter(events[-1].received_at, math.inf)
        return None

    async def _expire(self) -> None:
        while waits := await self._store.waits_due(now(), _PAGE):
            await self._store.submit([settled_wait(w, None) for w in waits]).wait()
            if len(waits) < _PAGE:
                return

    async def _apply(self) -> None:
        while waits := await self._store.waits_settled(_PAGE):
            left = 0
            for wait in waits:
                left += not await self._apply_one(wait)
            if left == len(waits) or len(waits) < _PAGE:
                return  # the rest go on when their runs leave memory

    async def _apply_one(self, wait: WaitRow) -> bool:
        """Apply a settled wait; False if its run is in memory and cannot take it now (it
        is applied once the run parks)."""
        ok, output, error = _outcome(wait)
        applied = replace(wait, applied=1)
        if self._host.is_active(wait.run_id):
            attempt = await self._attempt_row(wait, ok, output, error)
            # no await from here to the submission: the instance's end (written by the
            # run's engine) and the mark go in one transaction
            if not self._host.settle_gate(wait.run_id, wait.key, ok=ok, output=output, error=error):
                return False
            await self._store.submit([applied, attempt]).wait()
            self._woke(wait)
            return True
        found = await self._store.run_state(wait.run_id)
        rows: list[Row] = [applied]
        instance = None
        if found is not None:
            run, instances, _ = found
            if run.state in (RunState.QUEUED, RunState.RUNNING):
                return False  # not in memory yet (a start resumes it, and it parks)
            instance = next((i for i in instances if i.key == wait.key), None)
            if (
                run.state == RunState.WAITING
                and instance is not None
                and instance.state == State.WAITING
                and instance.attempts == wait.attempt
            ):
                state = State.SUCCEEDED if ok else State.FAILED
                rows += [
                    await self._attempt_row(wait, ok, output, error),
                    replace(instance, state=state.value, error=error, updated_at=now()),
                    replace(run, state=RunState.QUEUED.value),
                ]
            else:
                instance = None  # its run ended meanwhile (cancelled): nothing goes on
        await self._store.submit(rows).wait()
        if instance is not None:
            self._woke(wait)
            try:
                await self._host.resume_recorded(wait.run_id)
            except NotFound as exc:  # its pipeline left the configuration (a reload)
                self._log.error("wait_not_resumed", run_id=wait.run_id, error=str(exc))
        return True

    async def _cancel(self) -> None:
        """Cancel the runs events asked to cancel (once every unfinished run is in
        memory: one recorded running and not there yet would otherwise be missed)."""
        if self._host.resuming():
            return
        while asked := await self._store.cancels_pending(_PAGE):
            for request in asked:
                reason = f"cancelled by event {request.event_id!r} of {request.source!r}"
                done = replace(request, done=1)
                try:
                    if self._host.is_active(request.run_id):
                        await self._host.cancel(request.run_id, reason=reason)
                        await self._store.submit([done]).wait()
                    else:
                        await self._host.cancel_stored(request.run_id, reason=reason, extra=[done])
                except (NotFound, Conflict):  # it ended meanwhile
                    await self._store.submit([done]).wait()
                self._log.info(
                    "run_cancelled_by_event", run_id=request.run_id, event_id=request.event_id
                )
            if len(asked) < _PAGE:
                return

    async def _attempt_row(
        self, wait: WaitRow, ok: bool, output: Any, error: str | None
    ) -> AttemptRow:
        started = next(
            (
                a.started_at
                for a in await self._store.get_attempts(wait.run_id)
                if a.key == wait.key and a.attempt == wait.attempt
            ),
            wait.opened_at,
        )
        return AttemptRow(
            wait.run_id,
            wait.key,
            wait.attempt,
            "succeeded" if ok else "failed",
            started,
            now(),
            error,
            None if output is None else json.dumps(output),
        )

    def _woke(self, wait: WaitRow) -> None:
        self._log.info(
            "wait_woken",
            run_id=wait.run_id,
            task=wait.key,
            kind=wait.kind,
            state=wait.state,
            event_id=wait.event_id,
        )
