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
a note of what became of them) and the window gone. With no window and no key's throttle
slots kept it sleeps until woken: an idle daemon asks its store nothing on a timer. Before
it reads the store it waits for every hold submitted so far to be committed, so a window
is never released without an event that joined it. A kill -9 at any point leaves either
the window (released again at the next start) or its run, never both, never neither.

On a store several nodes share (PostgreSQL: :class:`~cued.daemon.store.FlowRelease`),
nothing of the keys is kept here: an event held goes to the store as a
:class:`~cued.daemon.store.FlowJoin`, and the commit that records it decides its window
with the database's (under the key's lock); the timer claims the windows due in the
transaction that starts their runs, whichever node opened them, and counts the throttle's
slots from the database (see :mod:`cued.daemon.store.pg_flow`). Every node's timer hears
of a window opened anywhere (a notice of the commit, :meth:`FlowControl.heard`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio

from cued.daemon.core.flow import (
    Defer,
    Drop,
    KeyState,
    NotYet,
    Rule,
    Start,
    Window,
    admit,
    forgettable,
    parse_due,
    release,
    shown_at,
    who,
)
from cued.daemon.core.ids import new_id, now
from cued.daemon.core.templates import TemplateProblem
from cued.daemon.core.triggers import flow_of, held_inputs
from cued.daemon.errors import CuedError, StoreError
from cued.daemon.logs import get_logger
from cued.daemon.store import (
    EventRow,
    FlowJoin,
    FlowRelease,
    HoldRow,
    RunRow,
    ThrottleRow,
    WindowGone,
    WindowRow,
    WindowSettled,
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
#: How long the timer waits before it looks again at a window due that another node is
#: deciding on (its commit holds the key's lock for a moment).
_BUSY_S = 0.02
#: How often keys whose throttle slots no longer count are forgotten (memory and store).
_SWEEP_S = 60.0


@dataclass(frozen=True, slots=True)
class Admission:
    """What becomes of one match under flow control: start its run now (``start``), or
    not (``held``, or dropped as ``note`` says); ``rows`` go with the event."""

    start: bool
    held: bool
    rows: list[Row]
    note: str | None
    due_at: float | None = None


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
        """When the timer looks again by itself (``inf``: only when woken; ``None``: it is
        awake, reading or settling)."""
        self._log = get_logger()
        self._shared = store if isinstance(store, FlowRelease) else None
        """The store's, when nodes share it: the windows and throttle slots are the
        database's, decided in its transactions (nothing of them is kept here)."""
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
        if self._shared is not None:
            return  # the database decides: nothing to hold in memory
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
        _, rule = self._rules[m.trigger]
        key = m.key or ""  # no key: one for the whole trigger
        if self._shared is not None:
            # held, in whichever window the commit finds in the database (the release
            # and the commit take turns on the key there: nothing to wait for here); the
            # timer looks when it may be due (a batch may be full at once)
            due = at if rule.size is not None else _opened_due(rule, at)
            return Admission(False, True, [FlowJoin(m.trigger, key, event_id, at, rule)], None, due)
        if self._admitting is None:
            # until intake submits this batch, the timer decides on no window: one it
            # released meanwhile would lose (or, written again, double) this hold
            self._admitting = anyio.Event()
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
                False, False, rows, f"{who(m.trigger, key)}: dropped ({outcome.reason})"
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
        # no note: the hold row says where it waits (see cued.daemon.core.flow.held_note)
        return Admission(False, True, rows, None, outcome.due_at)

    def submitted(self, durable: Durable | None) -> None:
        """Intake submitted holds (``None``: the batch failed before it submitted them):
        the timer reads the store only once they are committed."""
        if durable is not None:
            self._durable = durable
        if self._admitting is not None:
            self._admitting.set()
            self._admitting = None

    @property
    def looks_at(self) -> float | None:
        """When the timer looks at the store again by itself (``inf``: only when intake
        writes a window, a key is kept, or a reload; ``None``: it is awake)."""
        return self._until

    def poke(self) -> None:
        """Look at what is due now (a test moved its clock)."""
        self._wake.set()

    def written(self, due_at: float) -> None:
        """A window due at ``due_at`` is committed: wake the timer if it sleeps past it."""
        if self._until is None or due_at < self._until:
            self._wake.set()  # awake: it looks again before it sleeps

    def heard(self, text: str) -> None:
        """A notice of a commit of any node (see :mod:`cued.daemon.store.pg_flow`): a
        window it wrote is due at the time it says."""
        due_at = parse_due(text)
        if due_at is None:
            self._log.warning("flow_notice_not_understood", text=text[:100])
            return
        self.written(due_at)

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
            if self._keys and self.clock() - swept_at >= _SWEEP_S:
                swept_at = self.clock()
                await self.sweep()
            # a window due is looked at again within a sweep period all the same (its due
            # time is by the wall clock, which may step meanwhile)
            until = float("inf") if due is None else min(due, self.clock() + _SWEEP_S)
            if self._keys:
                # keys kept are forgotten in time; with none, nothing is looked at on a
                # timer (a key kept from now on wakes this: see _remember)
                until = min(until, swept_at + _SWEEP_S)
            self._until = until
            wait_s = until - self.clock()
            if wait_s > 0:
                with anyio.move_on_after(wait_s):
                    await self._wake.wait()
            self._until = None
            try:
                settled = await self.settle_due(runs)
            except StoreError as exc:
                # the writer failed: the daemon stops; nothing of the windows was released
                self._log.error("flow_settle_failed", error=str(exc))
                raise
            if not settled and self._shared is not None and due is not None and due <= self.clock():
                # due, and not released: another node's commit holds its key now (or that
                # node released it meanwhile): look again shortly, not at once
                await anyio.sleep(_BUSY_S)

    async def settle_due(self, runs: RunQueue) -> int:
        """Settle the windows due now; return how many were."""
        async with self._settling:
            return await self._settle_due(runs)

    async def _settle_due(self, runs: RunQueue) -> int:
        if self._shared is not None:
            return await self._release_claimed(self._shared, runs)
        while self._admitting is not None:
            await self._admitting.wait()
        if self._durable is not None:
            await self._durable.wait()
        at = self.clock()
        outcomes: dict[str, Start | Defer | Drop] = {}
        whole: set[str] = set()
        events = 0
        for w in await self._store.flow_due(at, _SETTLE_BATCH):
            if outcomes and events + w.held > _SETTLE_EVENTS:
                break
            outcome = self._decide(w, at)
            if outcome is not None:
                outcomes[w.window_id] = outcome
                events += w.held
                found = self._rules.get(w.trigger)
                if isinstance(outcome, Start) and found is not None and found[0].sees_batch:
                    whole.add(w.window_id)
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
        windows, holds = await self._store.window_holds(list(outcomes), whole)
        await self._read_kept(windows, holds, outcomes, whole)
        rows: list[Row] = []
        for window in windows:
            held = holds.get(window.window_id, [])
            rows += self._settle(window, outcomes[window.window_id], held, runs, at)
        await self._store.submit(rows).wait()
        for row in rows:
            if isinstance(row, RunRow):
                runs.enqueue(row)
        return len(outcomes)

    async def _release_claimed(self, store: FlowRelease, runs: RunQueue) -> int:
        """Release the windows due that this node claims in the database (another node
        may have released some already, or be deciding on their keys now: those are not
        this node's to release)."""
        at = self.clock()
        due = await self._store.flow_next_due()
        if due is None or due > at:
            return 0  # (a read beside the writer: the claim is a transaction of the writer's)

        def settle(
            windows: list[WindowRow],
            holds: dict[str, list[tuple[HoldRow, EventRow | None]]],
            starts: dict[tuple[str, str], tuple[float, ...]],
        ) -> list[Row]:
            keys = {name: KeyState(starts=s) for name, s in starts.items()}
            rows: list[Row] = []
            for window in windows:
                name = (window.trigger, window.key)
                found = self._rules.get(window.trigger)
                if found is None:
                    outcome: Start | Defer | Drop = Drop(
                        f"trigger {window.trigger!r} is no longer configured"
                    )
                else:
                    state, decided = release(
                        found[1], keys.get(name, KeyState()), window.window_id, window.phase, at
                    )
                    assert not isinstance(decided, NotYet), "a claimed window is due"
                    keys[name], outcome = state, decided
                    rows += self._throttle_rows(name, found[1], state)
                rows += self._settle(window, outcome, holds.get(window.window_id, []), runs, at)
            return rows

        rows = await store.flow_release(at, _SETTLE_BATCH, settle)
        for row in rows:
            if isinstance(row, RunRow):
                runs.enqueue(row)
        return sum(isinstance(row, WindowSettled) for row in rows)

    async def _read_kept(
        self,
        windows: list[WindowRow],
        holds: dict[str, list[tuple[HoldRow, EventRow | None]]],
        outcomes: dict[str, Start | Defer | Drop],
        whole: set[str],
    ) -> None:
        """Of each window to start a run but read without its events' data (its inputs do
        not read ``event.batch``), the one event the inputs read, read whole (in place)."""
        kept: list[tuple[str, str, int]] = []
        for window in windows:
            found = self._rules.get(window.trigger)
            if (
                window.window_id in whole
                or found is None
                or not isinstance(outcomes[window.window_id], Start)
            ):
                continue
            held = holds.get(window.window_id, [])
            there = [i for i, (_, event) in enumerate(held) if event is not None]
            if there:
                i = there[0] if _keep(found[1], window) == "first" else there[-1]
                kept.append((held[i][0].event_id, window.window_id, i))
        if not kept:
            return
        read = {e.event_id: e for e in await self._store.get_events([k[0] for k in kept])}
        for event_id, window_id, i in kept:
            hold, _ = holds[window_id][i]
            holds[window_id][i] = (hold, read.get(event_id))

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
    ) -> list[Row]:
        """The rows that settle ``window``: its run, its events (the note they get), the
        window gone or kept, the key's throttle slots."""
        found = self._rules.get(window.trigger)
        name = (window.trigger, window.key)
        rows: list[Row] = [] if found is None else self._throttle_rows(name, found[1], None)
        whose = who(window.trigger, window.key, window.kind)
        events = [e for _, e in holds if e is not None]
        if isinstance(outcome, Defer):
            note = f"{whose}: the throttle delays its run to {shown_at(outcome.due_at)}"
            kept = replace(window, phase="slotted", due_at=outcome.due_at)
            return [*rows, kept, WindowSettled(window.window_id, None, note, gone=False)]
        run: RunRow | None = None
        if isinstance(outcome, Drop):
            note = f"{whose}: dropped ({outcome.reason})"
        elif not events or found is None:
            note = f"{whose}: its events are no longer kept: no run"
        else:
            trigger, rule = found
            keep = _keep(rule, window)
            try:
                inputs = held_inputs(trigger, events, keep)
                chosen = events[0] if keep == "first" else events[-1]
                run = runs.new_run(trigger.pipeline, inputs, event_id=chosen.event_id)
                # its key, limit and priority, as a run the trigger started at once has
                run = replace(run, **flow_of(trigger, chosen))
            except (TemplateProblem, CuedError, ValueError) as exc:
                note = f"{whose}: no run: {exc}"
            else:
                note = f"{whose}: {len(events)} event(s) of window {window.window_id} started run {run.run_id}"
                if window.kind == "debounce" and keep != "all":
                    note += f" with the inputs of event {chosen.event_id}"
                elif window.kind == "delay" and window.phase != "slotted":
                    # (nodes sharing the store: an event of a throttle alone waits for
                    # its release, which finds its slot free)
                    note = f"{whose}: within the throttle's limit, started run {run.run_id}"
                elif window.kind == "delay":
                    note = f"{whose}: delayed by the throttle, started run {run.run_id} at {shown_at(at)}"
        settled = WindowSettled(window.window_id, None if run is None else run.run_id, note, True)
        return [*([] if run is None else [run]), *rows, settled, WindowGone(window.window_id)]

    # -- what each key needs -----------------------------------------------------------

    def _remember(self, name: tuple[str, str], rule: Rule, state: KeyState, at: float) -> None:
        if forgettable(rule, state, at):
            self._keys.pop(name, None)
        else:
            if not self._keys and self._until == float("inf"):
                self._wake.set()  # the timer sleeps with no sweep to make: it has one now
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


def _opened_due(rule: Rule, at: float) -> float | None:
    """When a window an event at ``at`` opens is due (``None``: no time closes it)."""
    if rule.debounce_s is not None:
        return at + rule.debounce_s
    if rule.collects is None:
        return at  # a throttle alone: its slot is decided at once, when released
    return None if rule.timeout_s is None else at + rule.timeout_s


def _keep(rule: Rule, window: WindowRow) -> str:
    """Which event of ``window`` a run's inputs read (``event``): the first or the last."""
    return rule.keep if window.kind == "debounce" else "last"
