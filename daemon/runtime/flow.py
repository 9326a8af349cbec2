"""Flow control at run time: events held in windows (debounce, batch, a throttle's delay),
and the one timer that releases the windows when they are due.

Intake asks :meth:`FlowControl.admit` what becomes of an event that fired a trigger with
flow control, and records the answer (a hold, a window, a throttle's slots) in the same
transaction as the event. The decisions are :mod:`cued.daemon.core.flow`'s; what they need
of each key (its open window, its latest throttle slots) is kept here, per key, and read
back from the store at a start. The events held are in the store only.

The timer (:meth:`FlowControl.run`, one task) sleeps until the earliest window is due (the
store's index on ``due_at``), or until intake writes an earlier one, and then settles the
windows due: in one transaction, the run each starts, its events updated (their runs, and
a note of what became of them) and the window gone. Before it reads the store it waits for
every hold submitted so far to be committed, so a window is never released without an event
that joined it. A kill -9 at any point leaves either the window (released again at the
next start) or its run, never both, never neither.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio

from cued.daemon.core.flow import (
    Defer,
    Drop,
    Hold,
    KeyState,
    NotYet,
    Rule,
    Start,
    Window,
    admit,
    forgettable,
    release,
)
from cued.daemon.core.ids import new_id, now
from cued.daemon.core.templates import TemplateProblem
from cued.daemon.core.triggers import flow_of, held_inputs
from cued.daemon.errors import CuedError, StoreError
from cued.daemon.logs import get_logger
from cued.daemon.store import (
    EventRow,
    EventSettled,
    HoldRow,
    RunRow,
    ThrottleRow,
    WindowGone,
    WindowRow,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.config import Config, TriggerConfig
    from cued.daemon.core.triggers import Match
    from cued.daemon.runtime.intake import RunQueue
    from cued.daemon.store import Durable, Row, Store

__all__ = ["Admission", "FlowControl"]

#: Windows settled in one transaction, at most, and the events they hold (past it, the
#: rest wait for the next turn: what a release reads back stays bounded).
_SETTLE_BATCH = 200
_SETTLE_EVENTS = 5_000
#: How often keys whose throttle slots no longer count are forgotten (memory and store).
_SWEEP_S = 60.0


@dataclass(frozen=True, slots=True)
class Admission:
    """What becomes of one match under flow control: start its run now (``start``), or
    not (held or dropped, as ``note`` says); ``rows`` go with the event."""

    start: bool
    held: bool
    rows: list[Row]
    note: str | None
    due_at: float | None = None


@functools.lru_cache(maxsize=256)  # a batch's events share their window's due time
def _at(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class FlowControl:
    """Debounce, throttle and batch of the triggers of ``config``.

    :param clock: seconds since the epoch (tests give their own)
    """

    def __init__(self, config: Config, store: Store, *, clock: Callable[[], float] = now) -> None:
        self._store = store
        self.clock = clock
        self._settling = anyio.Lock()
        self._rules: dict[str, tuple[TriggerConfig, Rule]] = {}
        self._keys: dict[tuple[str, str], KeyState] = {}
        self._durable: Durable | None = None
        self._admitting: anyio.Event | None = None
        """Set while intake prepares a batch with holds not yet submitted (see admit)."""
        self._wake = anyio.Event()
        self._until: float | None = None
        """When the timer sleeps until (``None``: it is awake, reading or settling)."""
        self._log = get_logger()
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Decide by ``config``'s triggers from now on; a window of a trigger no longer
        configured is dropped when due (its events say so)."""
        self._rules = {
            t.ref: (t, rule) for t in config.triggers if (rule := Rule.of(t)) is not None
        }
        self._wake.set()

    def controls(self, trigger: str) -> bool:
        return trigger in self._rules

    async def load(self) -> None:
        """Read what each key needs from the store (at a start)."""
        windows, throttles = await self._store.flow_state()
        at = self.clock()
        for t in throttles:
            if t.expires_at > at:
                self._keys[t.trigger, t.key] = KeyState(starts=t.starts)
        for w in windows:
            state = self._keys.get((w.trigger, w.key), KeyState())
            window = Window(w.window_id, w.opened_at, w.due_at, w.held)
            self._keys[w.trigger, w.key] = replace(state, window=window)

    def held_keys(self) -> int:
        """Keys whose state is in memory (a window filling, or throttle slots counting)."""
        return len(self._keys)

    # -- intake ------------------------------------------------------------------------

    def admit(self, m: Match, event_id: str) -> Admission:
        """What becomes of ``m``, the match of a trigger with flow control by the event
        ``event_id``, now (synchronous: intake records the rows it gives)."""
        at = self.clock()
        if self._admitting is None:
            # until intake submits this batch, the timer decides on no window: one it
            # released meanwhile would lose (or, written again, double) this hold
            self._admitting = anyio.Event()
        _, rule = self._rules[m.trigger]
        key = m.key or ""  # no key: one for the whole trigger
        name = (m.trigger, key)
        state = self._keys.get(name, KeyState())
        # most events join the window being filled: an id only for a new one
        window_id = new_id() if state.window is None else state.window.window_id
        state, outcome = admit(rule, state, at, window_id)
        self._remember(name, rule, state, at)
        rows: list[Row] = self._throttle_rows(name, rule, state)
        if isinstance(outcome, Start):
            return Admission(True, False, rows, None)
        if isinstance(outcome, Drop):
            return Admission(
                False, False, rows, f"{_who(m.trigger, key)}: dropped ({outcome.reason})"
            )
        rows += [
            HoldRow(outcome.window_id, outcome.seq, event_id, at),
            WindowRow(
                outcome.window_id,
                m.trigger,
                key,
                outcome.kind,
                outcome.phase,
                outcome.opened_at,
                outcome.due_at,
                outcome.seq,
            ),
        ]
        return Admission(False, True, rows, _held_note(m.trigger, key, outcome), outcome.due_at)

    def submitted(self, durable: Durable | None) -> None:
        """Intake submitted holds (``None``: the batch failed before it submitted them):
        the timer reads the store only once they are committed."""
        if durable is not None:
            self._durable = durable
        if self._admitting is not None:
            self._admitting.set()
            self._admitting = None

    def poke(self) -> None:
        """Look at what is due now (a test moved its clock)."""
        self._wake.set()

    def written(self, due_at: float) -> None:
        """A window due at ``due_at`` is committed: wake the timer if it sleeps past it."""
        if self._until is None or due_at < self._until:
            self._wake.set()  # awake: it looks again before it sleeps

    # -- the timer ---------------------------------------------------------------------

    async def run(
        self,
        runs: RunQueue,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Release the windows when due, until cancelled."""
        task_status.started()
        swept_at = self.clock()
        while True:
            # a window written from here on wakes the sleep below at once
            self._wake = anyio.Event()
            due = await self._store.flow_next_due()
            if self.clock() - swept_at >= _SWEEP_S:
                swept_at = self.clock()
                await self.sweep()
            until = float("inf") if due is None else due
            self._until = until
            wait_s = min(until - self.clock(), _SWEEP_S)
            if wait_s > 0:
                with anyio.move_on_after(wait_s):
                    await self._wake.wait()
            self._until = None
            try:
                await self.settle_due(runs)
            except StoreError as exc:
                # the writer failed: the daemon stops; nothing of the windows was released
                self._log.error("flow_settle_failed", error=str(exc))
                raise

    async def settle_due(self, runs: RunQueue) -> int:
        """Settle the windows due now; return how many were."""
        async with self._settling:
            return await self._settle_due(runs)

    async def _settle_due(self, runs: RunQueue) -> int:
        while self._admitting is not None:
            await self._admitting.wait()
        if self._durable is not None:
            await self._durable.wait()
        at = self.clock()
        outcomes: dict[str, Start | Defer | Drop] = {}
        events = 0
        for w in await self._store.flow_due(at, _SETTLE_BATCH):
            if outcomes and events + w.held > _SETTLE_EVENTS:
                break
            outcome = self._decide(w, at)
            if outcome is not None:
                outcomes[w.window_id] = outcome
                events += w.held
        if not outcomes:
            return 0
        # holds that joined a window before it was decided on may still be committing
        while self._admitting is not None:
            await self._admitting.wait()
        if self._durable is not None:
            await self._durable.wait()
        # read beside the writer (the windows decided on take no more events, and only
        # this task settles windows), then one submission: the runs, the events settled,
        # the windows gone or kept, committed in one transaction
        windows, holds, held_in = await self._store.window_holds(list(outcomes))
        rows: list[Row] = []
        settling: dict[str, _Settling] = {}
        gone: set[str] = set()
        for window in windows:
            held = holds.get(window.window_id, [])
            made, note, run = self._settle(window, outcomes[window.window_id], held, runs, at)
            rows += made
            if not isinstance(outcomes[window.window_id], Defer):
                gone.add(window.window_id)
            for _, event in held:
                if event is not None:
                    settling.setdefault(event.event_id, _Settling(event)).add(note, run)
        rows += [s.row(held_in.get(e, set()) - gone) for e, s in settling.items()]
        await self._store.submit(rows).wait()
        for row in rows:
            if isinstance(row, RunRow):
                runs.enqueue(row)
        return len(outcomes)

    async def sweep(self) -> None:
        """Forget the keys whose state is of no more use (their throttle slots are a
        period behind): in memory, and their rows in the store."""
        at = self.clock()
        for name, state in list(self._keys.items()):
            found = self._rules.get(name[0])
            if forgettable(None if found is None else found[1], state, at):
                del self._keys[name]
        await self._store.forget_throttles(at)

    def _decide(self, w: WindowRow, at: float) -> Start | Defer | Drop | None:
        found = self._rules.get(w.trigger)
        if found is None:
            return Drop(f"trigger {w.trigger!r} is no longer configured")
        _, rule = found
        name = (w.trigger, w.key)
        state, outcome = release(rule, self._keys.get(name, KeyState()), w.window_id, w.phase, at)
        if isinstance(outcome, NotYet):
            return None
        self._remember(name, rule, state, at)
        return outcome

    def _settle(
        self,
        window: WindowRow,
        outcome: Start | Defer | Drop,
        holds: list[tuple[HoldRow, EventRow | None]],
        runs: RunQueue,
        at: float,
    ) -> tuple[list[Row], str, RunRow | None]:
        """The rows that settle ``window`` (its run, the window gone or kept, the key's
        throttle slots), the note its events get, and its run."""
        found = self._rules.get(window.trigger)
        name = (window.trigger, window.key)
        rows: list[Row] = [] if found is None else self._throttle_rows(name, found[1], None)
        who = _who(window.trigger, window.key, window.kind)
        events = [e for _, e in holds if e is not None]
        if isinstance(outcome, Defer):
            note = f"{who}: the throttle delays its run to {_at(outcome.due_at)}"
            kept = replace(window, phase="slotted", due_at=outcome.due_at)
            return [*rows, kept], note, None
        run: RunRow | None = None
        if isinstance(outcome, Drop):
            note = f"{who}: dropped ({outcome.reason})"
        elif not events or found is None:
            note = f"{who}: its events are no longer kept: no run"
        else:
            trigger, rule = found
            keep = rule.keep if window.kind == "debounce" else "last"
            try:
                inputs = held_inputs(trigger, events, keep)
                chosen = events[0] if keep == "first" else events[-1]
                run = runs.new_run(trigger.pipeline, inputs, event_id=chosen.event_id)
                # its key, limit and priority, as a run the trigger started at once has
                run = replace(run, **flow_of(trigger, chosen))
            except (TemplateProblem, CuedError, ValueError) as exc:
                note = f"{who}: no run: {exc}"
            else:
                note = f"{who}: {len(events)} event(s) of window {window.window_id} started run {run.run_id}"
                if window.kind == "debounce" and keep != "all":
                    note += f" with the inputs of event {chosen.event_id}"
                elif window.kind == "delay":
                    note = f"{who}: delayed, started run {run.run_id} at {_at(at)}"
        made: list[Row] = [*([] if run is None else [run]), *rows, WindowGone(window.window_id)]
        return made, note, run

    # -- what each key needs -----------------------------------------------------------

    def _remember(self, name: tuple[str, str], rule: Rule, state: KeyState, at: float) -> None:
        if forgettable(rule, state, at):
            self._keys.pop(name, None)
        else:
            self._keys[name] = state

    def _throttle_rows(
        self, name: tuple[str, str], rule: Rule, state: KeyState | None
    ) -> list[Row]:
        if rule.limit is None:
            return []
        state = self._keys.get(name) if state is None else state
        if state is None or not state.starts:
            return []
        return [ThrottleRow(*name, state.starts, state.starts[-1] + rule.period_s)]


def _who(trigger: str, key: str, kind: str | None = None) -> str:
    return f"trigger {trigger!r}" + (f" {kind}" if kind else "") + f" of key {key!r}"


def _held_note(trigger: str, key: str, hold: Hold) -> str:
    what = {
        "debounce": "waits in debounce window",
        "batch": "waits in batch",
        "delay": "delayed by the throttle in window",
    }[hold.kind]
    until = "" if hold.due_at is None else f" until {_at(hold.due_at)}"
    return f"{_who(trigger, key)}: {what} {hold.window_id} (event {hold.seq}){until}"


class _Settling:
    """An event of windows being settled: the runs and notes they give it."""

    __slots__ = ("event", "notes", "run_ids")

    def __init__(self, event: EventRow) -> None:
        self.event = event
        self.run_ids = list(event.run_ids)
        self.notes = [event.error] if event.error else []

    def add(self, note: str, run: RunRow | None) -> None:
        self.notes.append(note)
        if run is not None:
            self.run_ids.append(run.run_id)

    def row(self, still_held_in: set[str]) -> EventSettled:
        """The event settled: ``held`` still if a window not released holds it."""
        status = "held" if still_held_in else ("matched" if self.run_ids else "dropped")
        return EventSettled(status, tuple(self.run_ids), "; ".join(self.notes), self.event.event_id)
