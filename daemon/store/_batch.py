"""The open batch: what was submitted since the last group commit, each row replacing its
like, until the writer commits it whole (SQLite's: :mod:`cued.daemon.store._sqlite_commit`;
PostgreSQL's in one statement: :mod:`cued.daemon.store.postgresql`)."""

from __future__ import annotations

from dataclasses import replace
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from cued.daemon.errors import StoreError
from cued.daemon.store import (
    ApprovalRow,
    AttemptRow,
    CancelRow,
    CursorRow,
    DecisionRow,
    DedupeClaim,
    DedupeRow,
    EventClaim,
    EventRow,
    FlowJoin,
    HoldRow,
    InstanceGone,
    InstanceRow,
    LogLineRow,
    LogTrim,
    OutboxRow,
    RunRow,
    ThrottleRow,
    WaitRow,
    WindowGone,
    WindowRow,
    WindowSettled,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from cued.daemon.store import Row


_KEYED: dict[type, tuple[str, Callable[[Any], Any]]] = {
    RunRow: ("runs", attrgetter("run_id")),
    AttemptRow: ("attempts", attrgetter("run_id", "key", "attempt")),
    EventRow: ("events", attrgetter("event_id")),
    CursorRow: ("cursors", attrgetter("source")),
    DedupeRow: ("dedupe", attrgetter("trigger", "key")),
    HoldRow: ("holds", attrgetter("window_id", "seq")),
    WindowSettled: ("settled", attrgetter("window_id")),
    ThrottleRow: ("throttles", attrgetter("trigger", "key")),
}
"""Rows that only replace their like in a batch: the batch's field and the row's key."""


class _Done:
    """Set once a batch is committed (or has failed): awaited (an event, made only for a
    waiter), or called back (:meth:`then`), in the writer's task, in the order given."""

    __slots__ = ("_callbacks", "_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        if self._event is not None:
            self._event.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    async def wait(self) -> None:
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    def then(self, callback: Callable[[], None]) -> None:
        if self._set:
            callback()
        else:
            self._callbacks.append(callback)


class _Batch:
    """Submissions that commit together."""

    __slots__ = (
        "approvals",
        "attempts",
        "cancels",
        "claims",
        "cursors",
        "decisions",
        "dedupe",
        "dedupe_claims",
        "deduped",
        "done",
        "duplicates",
        "error",
        "events",
        "gone",
        "holds",
        "instances",
        "joins",
        "log_lines",
        "log_trims",
        "outbox",
        "runs",
        "settled",
        "throttles",
        "waits",
        "windows",
        "windows_gone",
    )

    def __init__(self) -> None:
        self.runs: dict[str, RunRow] = {}
        self.instances: dict[tuple[str, str], InstanceRow] = {}
        self.attempts: dict[tuple[str, str, int], AttemptRow] = {}
        self.events: dict[str, EventRow] = {}
        self.dedupe: dict[tuple[str, str], DedupeRow] = {}
        self.cursors: dict[str, CursorRow] = {}
        self.gone: dict[tuple[str, str], InstanceGone] = {}
        self.outbox: dict[str, OutboxRow] = {}
        self.approvals: dict[tuple[str, str], ApprovalRow] = {}
        self.decisions: dict[tuple[str, str, int, str], DecisionRow] = {}
        self.log_lines: dict[tuple[str, int], LogLineRow] = {}
        self.log_trims: dict[tuple[str, str, int], LogTrim] = {}
        self.waits: dict[tuple[str, str, int], WaitRow] = {}
        self.cancels: dict[str, CancelRow] = {}
        self.claims: set[str] = set()
        """Events of the batch recorded only if not stored yet (:class:`EventClaim`)."""
        self.duplicates: set[str] = set()
        """Once committed: the claimed events that were stored already, not written."""
        self.dedupe_claims: dict[str, DedupeClaim] = {}
        """The runs of the batch started only if their dedupe key is free (by run)."""
        self.deduped: set[str] = set()
        """Once committed: the runs whose key was taken meanwhile, recorded skipped."""
        self.windows: dict[str, WindowRow] = {}
        self.holds: dict[tuple[str, int], HoldRow] = {}
        self.windows_gone: dict[str, WindowGone] = {}
        self.throttles: dict[tuple[str, str], ThrottleRow] = {}
        self.settled: dict[str, WindowSettled] = {}
        self.joins: list[FlowJoin] = []
        """Events held where the database says (a shared store's commit decides them)."""
        self.done = _Done()
        self.error: BaseException | None = None

    def add(self, row: Row) -> None:
        # whole rows: a later submission of the same row replaces the earlier one
        keyed = _KEYED.get(type(row))
        if keyed is not None:  # the rows every run writes, found in one look-up
            field, key = keyed
            getattr(self, field)[key(row)] = row
        elif type(row) is EventClaim:  # with every event recorded
            self.claims.add(row.event_id)
        elif type(row) is DedupeClaim:  # (SQLite: its one intake checked the key)
            self.dedupe_claims[row.run_id] = row
        elif type(row) is WindowRow:  # with every event held
            self.windows[row.window_id] = row
            self.windows_gone.pop(row.window_id, None)
        elif isinstance(row, InstanceRow):
            self.instances[row.run_id, row.key] = row
            self.gone.pop((row.run_id, row.key), None)
        elif isinstance(row, InstanceGone):
            self.gone[row.run_id, row.key] = row
            self.instances.pop((row.run_id, row.key), None)
        elif isinstance(row, OutboxRow):
            self.outbox[row.alert_id] = row
        elif isinstance(row, ApprovalRow):
            self.approvals[row.run_id, row.key] = row
        elif isinstance(row, DecisionRow):
            self.decisions[row.run_id, row.key, row.attempt, row.who] = row
        elif isinstance(row, LogLineRow):
            self.log_lines[row.run_id, row.seq] = row
        elif isinstance(row, WaitRow):
            key3 = (row.run_id, row.key, row.attempt)
            before = self.waits.get(key3)
            # as the store's upsert would take them one after the other: a wait settles
            # once, whichever of two submissions of one batch comes first
            if before is None or _wait_advances(before, row):
                self.waits[key3] = row
        elif isinstance(row, CancelRow):
            asked = self.cancels.get(row.run_id)
            if asked is None or row.done > asked.done:
                self.cancels[row.run_id] = row if asked is None else replace(asked, done=1)
        elif isinstance(row, WindowGone):
            self.windows_gone[row.window_id] = row
            self.windows.pop(row.window_id, None)
        elif isinstance(row, LogTrim):
            trim = self.log_trims.get((row.run_id, row.key, row.attempt))
            if trim is None or trim.before_seq < row.before_seq:
                self.log_trims[row.run_id, row.key, row.attempt] = row
        elif type(row) is FlowJoin:  # a shared store's (see PostgresStore._commit)
            self.joins.append(row)
        else:
            raise TypeError(f"the store keeps no {type(row).__name__}")

    def rows(self) -> list[Row]:
        """Every row of the batch, runs first (once committed: without the events found
        to be duplicates, and their runs, which were not written)."""
        runs: Iterable[RunRow] = self.runs.values()
        events: Iterable[EventRow] = self.events.values()
        if self.duplicates:
            runs = [r for r in runs if r.event_id not in self.duplicates]
            events = [e for e in events if e.event_id not in self.duplicates]
        if self.deduped:
            runs = [r for r in runs if r.run_id not in self.deduped]
        return [
            *runs,
            *self.instances.values(),
            *self.attempts.values(),
            *events,
            *self.approvals.values(),
            *self.decisions.values(),
            *self.outbox.values(),
            *self.dedupe.values(),
            *self.cursors.values(),
            *self.gone.values(),
            *self.log_lines.values(),
            *self.log_trims.values(),
            *self.waits.values(),
            *self.cancels.values(),
            *self.windows.values(),
            *self.holds.values(),
            *self.windows_gone.values(),
            *self.throttles.values(),
            *self.settled.values(),
        ]

    def __bool__(self) -> bool:
        return bool(
            self.runs
            or self.instances
            or self.attempts
            or self.events
            or self.dedupe
            or self.cursors
            or self.gone
            or self.outbox
            or self.approvals
            or self.decisions
            or self.log_lines
            or self.log_trims
            or self.waits
            or self.cancels
            or self.windows
            or self.holds
            or self.windows_gone
            or self.throttles
            or self.settled
            or self.joins
        )

    async def wait(self) -> None:
        await self.done.wait()
        if self.error is not None:
            raise StoreError(f"the store could not commit: {self.error}") from self.error

    def then(self, callback: Callable[[BaseException | None], None]) -> None:
        self.done.then(lambda: callback(self.error))

    def claimed(self) -> tuple[list[EventRow], list[RunRow]]:
        """The claimed events (by id: the order two writers lock them in is the same, so
        they cannot deadlock) and the runs they start."""
        events = [self.events[i] for i in sorted(self.claims) if i in self.events]
        runs = [r for r in self.runs.values() if r.event_id in self.claims]
        return events, runs

    def unclaimed(self) -> tuple[list[EventRow], list[RunRow]]:
        """The events and runs of the batch that no :class:`EventClaim` makes conditional."""
        if not self.claims:
            return list(self.events.values()), list(self.runs.values())
        return (
            [e for e in self.events.values() if e.event_id not in self.claims],
            [r for r in self.runs.values() if r.event_id not in self.claims],
        )

    def run_ids(self) -> set[str]:
        """The runs that rows of this batch belong to."""
        keyed = (
            self.instances,
            self.attempts,
            self.approvals,
            self.decisions,
            self.gone,
            self.log_lines,
            self.log_trims,
            self.waits,
        )
        return set(self.runs) | set(self.cancels) | {key[0] for rows in keyed for key in rows}


def _wait_advances(before: WaitRow, row: WaitRow) -> bool:
    """Whether ``row`` replaces ``before``: SQLite's upsert of a wait
    (:data:`~cued.daemon.store._sqlite_commit._WAIT_SETTLES`), in Python."""
    if before.state == "waiting":
        return row.state != "waiting" or row.scanned > before.scanned
    return row.state == before.state and row.applied > before.applied
