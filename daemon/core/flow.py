"""Flow control of a trigger's runs (debounce, throttle, batch): pure decisions, no I/O.

What one key of a trigger needs to decide is small and bounded: the window being filled
(debounce or batch: its id, when it opened, when it is due, how many events it holds) and,
under a throttle, the times of the latest ``limit`` slots taken. The events themselves are
held in the store; nothing here grows with them.

A *window* is what the daemon's timer releases when it is due:

* ``debounce``: the events of a burst; due ``period`` after the latest (trailing edge);
* ``batch``: up to ``size`` events; due when full, or ``timeout`` after the first;
* ``delay``: one event a throttle delayed; due at the slot it took.

A window is ``open`` while events may join it, ``closed`` once they may not (a full batch),
and ``slotted`` once it took a throttle slot (it starts its run at its due time). Debounce
and batch come first, then the throttle, on the run they start.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from cued.daemon.config import TriggerConfig

__all__ = [
    "Defer",
    "Drop",
    "Hold",
    "KeyState",
    "NotYet",
    "Rule",
    "Start",
    "Window",
    "admit",
    "forgettable",
    "gather",
    "held_note",
    "parse_due",
    "release",
    "shown_at",
    "take_slot",
    "who",
]

WindowKind = Literal["debounce", "batch", "delay"]
Phase = Literal["open", "closed", "slotted"]


@dataclass(frozen=True, slots=True)
class Rule:
    """A trigger's flow control, read from its config."""

    debounce_s: float | None = None
    keep: Literal["first", "last", "all"] = "last"
    limit: int | None = None
    period_s: float = 0.0
    drop: bool = False
    size: int | None = None
    timeout_s: float | None = None

    @classmethod
    def of(cls, trigger: TriggerConfig) -> Rule | None:
        """The rule of ``trigger``, or ``None`` if it has no flow control."""
        if not trigger.flow_controlled:
            return None
        rule = cls()
        if trigger.debounce is not None:
            rule = replace(rule, debounce_s=trigger.debounce.period, keep=trigger.debounce.keep)
        if trigger.throttle is not None:
            t = trigger.throttle
            rule = replace(rule, limit=t.limit, period_s=t.period, drop=t.excess == "drop")
        if trigger.batch is not None:
            rule = replace(rule, size=trigger.batch.size, timeout_s=trigger.batch.timeout)
        return rule

    @property
    def collects(self) -> WindowKind | None:
        """The kind of window events of a key gather in, if any."""
        if self.debounce_s is not None:
            return "debounce"
        if self.size is not None or self.timeout_s is not None:
            return "batch"
        return None


@dataclass(frozen=True, slots=True)
class Window:
    """The window a key's events are gathering in now."""

    window_id: str
    opened_at: float
    due_at: float | None
    """``None``: no time closes it (a batch with a size and no timeout)."""
    count: int


@dataclass(frozen=True, slots=True)
class KeyState:
    """What one key of a trigger needs to decide: nothing else is kept of it."""

    window: Window | None = None
    starts: tuple[float, ...] = ()
    """Throttle: the latest slots taken (at most ``limit``), ascending; some may lie ahead."""


@dataclass(frozen=True, slots=True)
class Start:
    """Start the run now."""


@dataclass(frozen=True, slots=True)
class Hold:
    """Hold the event: the ``seq``-th of window ``window_id``, now due at ``due_at``."""

    window_id: str
    kind: WindowKind
    seq: int
    opened_at: float
    due_at: float | None
    phase: Phase


@dataclass(frozen=True, slots=True)
class Drop:
    """Start nothing: the throttle's limit is reached and its excess is dropped."""

    reason: str


@dataclass(frozen=True, slots=True)
class Defer:
    """Start the window's run at ``due_at``, the throttle slot it took."""

    due_at: float


@dataclass(frozen=True, slots=True)
class NotYet:
    """The window is not due: an event came since and moved its time."""


def take_slot(rule: Rule, state: KeyState, at: float) -> tuple[KeyState, float | None]:
    """The earliest time from ``at`` a run of the key may start under the throttle, after
    every slot taken before it (in order), and the state with it taken; ``None`` if the
    run would have to wait and the excess is dropped (the state is then unchanged)."""
    if rule.limit is None:
        return state, at
    starts = state.starts
    slot = max(at, starts[-1]) if starts else at
    if len(starts) >= rule.limit:
        # a period holds at most `limit` starts: (t - period, t] must not hold the
        # limit-th latest start
        slot = max(slot, starts[-rule.limit] + rule.period_s)
    if rule.drop and slot > at:
        return state, None
    return replace(state, starts=(*starts, slot)[-rule.limit :]), slot


def _throttled(rule: Rule, state: KeyState, at: float) -> tuple[KeyState, Start | Defer | Drop]:
    state, slot = take_slot(rule, state, at)
    if slot is None:
        return state, Drop(f"throttle: {rule.limit} runs per {rule.period_s:g}s reached")
    return state, Start() if slot <= at else Defer(slot)


def admit(
    rule: Rule, state: KeyState, at: float, new_window: str
) -> tuple[KeyState, Start | Hold | Drop]:
    """What becomes of an event of the key that fired the trigger at ``at``.

    :param new_window: the id of a window, should the event need a new one
    """
    kind = rule.collects
    if kind is None:  # a throttle alone
        state, outcome = _throttled(rule, state, at)
        if isinstance(outcome, Defer):
            return state, Hold(new_window, "delay", 1, at, outcome.due_at, "slotted")
        return state, outcome
    # (objects made directly, not with dataclasses.replace: this runs for every event)
    window = state.window or Window(
        new_window,
        at,
        None if rule.timeout_s is None or kind == "debounce" else at + rule.timeout_s,
        0,
    )
    count = window.count + 1
    due_at = window.due_at
    if kind == "debounce":
        assert rule.debounce_s is not None
        due_at = at + rule.debounce_s
    elif rule.size is not None and count >= rule.size:
        # full: due now, and the key's next event opens a new batch
        hold = Hold(window.window_id, kind, count, window.opened_at, at, "closed")
        return KeyState(None, state.starts), hold
    window = Window(window.window_id, window.opened_at, due_at, count)
    hold = Hold(window.window_id, kind, count, window.opened_at, due_at, "open")
    return KeyState(window, state.starts), hold


def gather(
    rule: Rule, window: Window | None, at: float, new_window: str
) -> tuple[Window | None, Hold]:
    """Where an event at ``at`` is held when nodes share the store, with ``window`` the
    key's open window in the database (see :mod:`cued.daemon.store.pg_flow`): it joins
    it, or opens ``new_window``, as :func:`admit` decides; with a throttle alone, each
    event is held in a window of its own, due at once (its release takes the slot). The
    window the key's next event joins comes with it (``None``: it opens a new one)."""
    if rule.collects is None:
        return None, Hold(new_window, "delay", 1, at, at, "open")
    state, hold = admit(rule, KeyState(window), at, new_window)
    assert isinstance(hold, Hold), "events that gather are held"
    return state.window, hold


def release(
    rule: Rule, state: KeyState, window_id: str, phase: str, at: float
) -> tuple[KeyState, Start | Defer | Drop | NotYet]:
    """What becomes of a window the store finds due at ``at``: its run starts now, later
    (a throttle slot ahead), never (dropped), or the window is not due after all (an event
    moved its time, and the store has not been told yet)."""
    if phase == "slotted":
        return state, Start()
    if state.window is not None and state.window.window_id == window_id:
        if phase == "open" and (state.window.due_at is None or state.window.due_at > at):
            return state, NotYet()
        state = replace(state, window=None)
    return _throttled(rule, state, at)


def forgettable(rule: Rule | None, state: KeyState, at: float) -> bool:
    """Whether the key's state is of no more use (nothing gathers, no slot counts)."""
    if state.window is not None:
        return False
    if rule is None or rule.limit is None or not state.starts:
        return True
    return state.starts[-1] <= at - rule.period_s


def parse_due(text: str) -> float | None:
    """The time a node's notice says a window is due (seconds since the epoch, as
    ``repr`` of a float gives it), or ``None`` if the text is not one: it comes over the
    database from whoever may send notices, and is only a reason to look."""
    if len(text) > 32:
        return None
    try:
        due_at = float(text)
    except ValueError:
        return None
    return due_at if math.isfinite(due_at) else None


# -- what an event is told -------------------------------------------------------------


@functools.lru_cache(maxsize=256)  # a batch's events share their window's due time
def shown_at(seconds: float) -> str:
    """``seconds`` since the epoch as an ISO time, to the millisecond (UTC)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def who(trigger: str, key: str, kind: str | None = None) -> str:
    """A trigger's key (and its window's kind) as the notes of its events name them."""
    return f"trigger {trigger!r}" + (f" {kind}" if kind else "") + f" of key {key!r}"


_WAITS = {
    "debounce": "waits in debounce window",
    "batch": "waits in batch",
    "delay": "delayed by the throttle in window",
}


def held_note(
    trigger: str, key: str, kind: str, window_id: str, seq: int, due_at: float | None
) -> str:
    """Why an event waits: the ``seq``-th of window ``window_id`` (of ``kind``), due at
    ``due_at``. Shown with the event while it is held, from its hold: the store keeps no
    note of it (that would cost a write of every event held)."""
    until = "" if due_at is None else f" until {shown_at(due_at)}"
    return f"{who(trigger, key)}: {_WAITS[kind]} {window_id} (event {seq}){until}"
