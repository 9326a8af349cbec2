"""Replay: stored events matched again against today's triggers, beside intake (which
takes events the first time).

A replayed event's new runs keep the event's id (``run.event_id``: lineage, ``cued show``
and the run page name it) and are added to the event's ``run_ids``, in one transaction
with them and their dedupe keys; then they are handed to the runner.

What counts as done already (skipped unless ``force``):

* a trigger whose pipeline has a run started by this event (the first time, or by an
  earlier replay): runs do not record their trigger, so two triggers of one source that
  start the same pipeline count as one here;
* a trigger whose dedupe key started a run within its window, as intake would find it;
* an event that flow control holds now (``held``).

A trigger with flow control (debounce, throttle, batch) takes a replayed event as intake
takes a new one: held in its key's window (or delayed, or dropped), released by the timer.

Replays of the daemon take turns (one lock per store), so two replays of one event at
once start its runs once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import anyio

from cued.daemon.core.ids import now
from cued.daemon.core.triggers import Match, match
from cued.daemon.errors import CuedError
from cued.daemon.sdk.sources import Event
from cued.daemon.store import DedupeRow

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cued.daemon.config import TriggerConfig
    from cued.daemon.runtime.flow import FlowControl
    from cued.daemon.runtime.intake import RunQueue
    from cued.daemon.store import EventRow, Row, RunRow, Store

__all__ = ["EventReplay", "ReplayReport", "replay_events"]

_LOCKS: WeakKeyDictionary[Store, anyio.Lock] = WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class EventReplay:
    """What a replay did with one event."""

    event_id: str
    source: str
    outcome: str
    """``started`` (runs started), ``held`` (flow control holds it), ``duplicate`` (every
    trigger that matches ran already), ``unmatched`` (no trigger matches), ``invalid``
    (recorded invalid: starts nothing) or ``error`` (a trigger's when, inputs or dedupe key
    failed on it)"""
    run_ids: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    """Why each trigger that matches started nothing."""
    errors: tuple[str, ...] = ()


@dataclass
class ReplayReport:
    """What a replay did: events tried, runs started, skipped as duplicates, no match."""

    events: list[EventReplay] = field(default_factory=list)

    @property
    def tried(self) -> int:
        return len(self.events)

    @property
    def runs_started(self) -> int:
        return sum(len(e.run_ids) for e in self.events)

    def count(self, outcome: str) -> int:
        return sum(1 for e in self.events if e.outcome == outcome)


async def replay_events(
    store: Store,
    triggers: Sequence[TriggerConfig],
    runs: RunQueue,
    events: Sequence[EventRow],
    *,
    force: bool = False,
    flow: FlowControl | None = None,
) -> ReplayReport:
    """Match ``events`` against ``triggers`` (of each event's source) and start what they
    ask for that has not run for the event yet (everything, with ``force``); recorded
    before this returns.

    :param flow: the daemon's flow control, which holds what triggers with flow control
        match (without it, they start nothing: the daemon is not running)

    :raises StoreError: if the transaction failed (nothing of it was recorded)
    """
    lock = _LOCKS.setdefault(store, anyio.Lock())
    async with lock:
        # read inside the lock: a replay that just committed is seen
        current = {e.event_id: e for e in await store.get_events([e.event_id for e in events])}
        rows = [current[e.event_id] for e in events if e.event_id in current]
        earlier = {r.run_id: r for r in await store.get_runs([r for e in rows for r in e.run_ids])}
        # the runs an event is in: those it started, and those a window it was held in did
        ran = {(e.event_id, earlier[r].pipeline) for e in rows for r in e.run_ids if r in earlier}
        planned = [(row, *_matches(triggers, row)) for row in rows]
        wanted = sorted(
            {(m.trigger, m.dedupe_key) for _, ms, _ in planned for m in ms if m.dedupe_key}
        )
        seen = await store.dedupe_seen(wanted) if wanted and not force else {}
        stamp = now()
        flowing = {t.ref for t in triggers if t.flow_controlled}
        due: float | None = None
        flowed = False
        report = ReplayReport()
        submission: list[Row] = []
        new_runs: list[RunRow] = []
        for row, matches, notes in planned:
            if row.status == "invalid":
                report.events.append(EventReplay(row.event_id, row.source, "invalid"))
                continue
            started: list[RunRow] = []
            skipped: list[str] = []
            errors = list(notes)
            flow_notes: list[str] = []
            held = False
            if row.status == "held" and not force:
                skipped.append("flow control holds the event now")
                matches = []
            for m in matches:
                if m.error is not None:
                    errors.append(m.error)
                    continue
                if not force and (why := _done(m, row.event_id, ran, seen, stamp)):
                    skipped.append(why)
                    continue
                if m.trigger in flowing:
                    if flow is None or not flow.controls(m.trigger):
                        errors.append(
                            f"trigger {m.trigger!r} has flow control: replay it while the daemon runs"
                        )
                        continue
                    admitted = flow.admit(m, row.event_id)
                    submission.extend(admitted.rows)
                    flow_notes += [admitted.note] if admitted.note else []
                    held = held or admitted.held
                    flowed = True
                    if admitted.due_at is not None:
                        due = admitted.due_at if due is None else min(due, admitted.due_at)
                    if not admitted.start:
                        continue
                try:
                    run = replace(
                        runs.new_run(m.pipeline, m.inputs, event_id=row.event_id), **m.flow()
                    )
                except CuedError as exc:
                    errors.append(f"trigger {m.trigger!r}: {exc}")
                    continue
                started.append(run)
                ran.add((row.event_id, m.pipeline))
                if m.dedupe_key is not None:
                    seen[m.trigger, m.dedupe_key] = stamp
                    submission.append(DedupeRow(m.trigger, m.dedupe_key, stamp))
            ids = tuple(r.run_id for r in started)
            if started or flow_notes:
                run_ids = (*row.run_ids, *ids)
                status = "held" if held else "matched" if run_ids else "dropped"
                error = "; ".join([*([row.error] if row.error else []), *flow_notes]) or None
                submission.append(replace(row, status=status, run_ids=run_ids, error=error))
                new_runs.extend(started)
            outcome = (
                "started"
                if started
                else "held"
                if held
                else "duplicate"
                if skipped
                else "error"
                if errors
                else "unmatched"
            )
            report.events.append(
                EventReplay(row.event_id, row.source, outcome, ids, tuple(skipped), tuple(errors))
            )
        if submission:
            durable = store.submit([*submission, *new_runs])
            if flow is not None and flowed:
                flow.submitted(durable)
            await durable.wait()
            if flow is not None and due is not None:
                flow.written(due)
        elif flow is not None and flowed:
            flow.submitted(None)  # admitted, nothing to write: the timer goes on
    for run in new_runs:
        runs.enqueue(run)
    return report


def _matches(triggers: Sequence[TriggerConfig], row: EventRow) -> tuple[list[Match], list[str]]:
    if row.status == "invalid":
        return [], []
    mine = [t for t in triggers if t.source == row.source]
    return match(mine, Event(row.source, row.event_id, row.data, row.meta, row.received_at))


def _done(
    m: Match,
    event_id: str,
    ran: set[tuple[str, str]],
    seen: dict[tuple[str, str], float],
    stamp: float,
) -> str | None:
    """Why the match ``m`` starts nothing now (without ``force``), or ``None``."""
    if (event_id, m.pipeline) in ran:
        return f"trigger {m.trigger!r}: pipeline {m.pipeline!r} ran for this event already"
    if m.dedupe_key is not None:
        last = seen.get((m.trigger, m.dedupe_key))
        if last is not None and stamp - last < m.dedupe_window_s:
            return f"trigger {m.trigger!r}: duplicate of key {m.dedupe_key!r} within its window"
    return None
