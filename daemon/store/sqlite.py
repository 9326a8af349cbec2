"""The SQLite store: WAL, one writer with group commit, versioned migrations.

One connection writes and one reads (WAL lets readers go on while the writer commits).
Every submission joins the open batch; the writer commits a whole batch in one transaction
with one ``executemany`` per table, so the cost of an fsync is shared by every state change
that arrived meanwhile instead of paid by each. Before it takes a batch, the writer lets
whatever is ready to run have a turn or three of the event loop: an attempt that ends
meanwhile replaces its start (left :meth:`~SqliteStore.provisional`) before the start is
ever built.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import sqlite3
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import replace
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiosqlite
import anyio
import anyio.lowlevel
import orjson

from cued.daemon.core.assets import ASSET_SOURCES, asset_of
from cued.daemon.core.ids import id_at, now
from cued.daemon.core.untrusted import stored
from cued.daemon.errors import StoreError
from cued.daemon.logs import get_logger
from cued.daemon.store import (
    ApprovalRow,
    AttemptRow,
    CancelRow,
    ConfigVersionRow,
    CursorRow,
    DecisionRow,
    DedupeRow,
    EventClaim,
    EventRow,
    FlowJoin,
    HoldRow,
    InstanceGone,
    InstanceRow,
    LogLineRow,
    LogTrim,
    NodeRow,
    OutboxRow,
    PauseRow,
    PruneCounts,
    RunRow,
    ThrottleRow,
    WaitingRun,
    WaitRow,
    WindowGone,
    WindowRow,
    WindowSettled,
    pruning,
)
from cued.daemon.store.filemodes import private_state_files
from cued.daemon.store.migrations import migrate
from cued.daemon.store.rowjson import dumps

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence

    from cued.daemon.store import Provisional, PrunePolicy, Row

__all__ = [
    "COUNT_RUNS_BY_STATE",
    "COUNT_WAITING_APPROVALS",
    "SqliteStore",
    "events_query",
    "open_store",
    "runs_query",
]

Synchronous = Literal["full", "normal"]

_ID_SLACK_S = 60.0
_log = get_logger()


_UPSERT_RUN = """
INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET state = excluded.state, started_at = excluded.started_at,
    ended_at = excluded.ended_at, error = excluded.error
"""
_PUT_INSTANCE = "INSERT OR REPLACE INTO task_instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_DELETE_INSTANCE = "DELETE FROM task_instances WHERE run_id = ? AND key = ?"
_PUT_APPROVAL = "INSERT OR REPLACE INTO approvals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_PUT_DECISION = "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# a wait settles once: what is no longer waiting changes only to be marked applied (its
# run went on), so an event and a deadline racing each other settle it one way
_WAIT_SETTLES = """
ON CONFLICT (run_id, key, attempt) DO UPDATE SET state = excluded.state,
    event_id = excluded.event_id, output = excluded.output,
    settled_at = excluded.settled_at, scanned = excluded.scanned, applied = excluded.applied
WHERE (waits.state = 'waiting' AND (excluded.state <> 'waiting' OR excluded.scanned > waits.scanned))
    OR (waits.state = excluded.state AND excluded.applied > waits.applied)
"""
# the first event to ask keeps the request; it changes only to be marked done
_PUT_CANCEL = """
INSERT INTO run_cancels VALUES (?, ?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET done = excluded.done WHERE excluded.done > run_cancels.done
"""
_PUT_WAIT = (
    "INSERT INTO waits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" + _WAIT_SETTLES
)
_PUT_ATTEMPT = "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# an alert already queued keeps its place and its history: only its delivery is updated
_PUT_OUTBOX = """
INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (alert_id) DO UPDATE SET sent_at = excluded.sent_at, attempts = excluded.attempts,
    last_error = excluded.last_error, next_at = excluded.next_at
WHERE excluded.attempts > 0
"""
_PUT_LOG_LINE = "INSERT OR REPLACE INTO task_logs VALUES (?, ?, ?, ?, ?, ?, ?)"
_TRIM_LOG = "DELETE FROM task_logs WHERE run_id = ? AND key = ? AND attempt = ? AND seq < ?"
_PUT_EVENT = "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_CLAIM_EVENT = (
    "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)
_PUT_DEDUPE = "INSERT OR REPLACE INTO dedupe_keys VALUES (?, ?, ?)"
_PUT_CURSOR = "INSERT OR REPLACE INTO source_cursors VALUES (?, ?, ?)"
_PUT_WINDOW = "INSERT OR REPLACE INTO flow_windows VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_PUT_HOLD = "INSERT OR REPLACE INTO flow_holds VALUES (?, ?, ?, ?)"
_PUT_THROTTLE = "INSERT OR REPLACE INTO flow_throttles VALUES (?, ?, ?, ?)"
# a window's events settled in one statement (the fields of WindowSettled: ?1 window_id,
# ?2 run_id, ?3 note, ?4 gone), before its holds go: see WindowSettled
_SETTLE_WINDOW = """
UPDATE events SET
    run_ids = CASE WHEN ?2 IS NULL THEN run_ids ELSE json_insert(run_ids, '$[#]', ?2) END,
    error = CASE WHEN error IS NULL THEN ?3 ELSE error || '; ' || ?3 END,
    status = CASE
        WHEN NOT ?4 OR EXISTS (
            SELECT 1 FROM flow_holds o WHERE o.event_id = events.event_id AND o.window_id <> ?1
        ) THEN 'held'
        WHEN ?2 IS NOT NULL OR json_array_length(run_ids) > 0 THEN 'matched'
        ELSE 'dropped'
    END
WHERE event_id IN (SELECT event_id FROM flow_holds WHERE window_id = ?1)
"""
_HOLDS_GONE = "DELETE FROM flow_holds WHERE window_id = ?"
_WINDOW_GONE = "DELETE FROM flow_windows WHERE window_id = ?"
# an event's columns but its data and meta (see _event_without_data)
_EVENT_WITHOUT_DATA = "e.event_id, e.source, e.received_at, e.status, e.run_ids, e.error"
# one pass over the index runs_by_state, not over the table
COUNT_RUNS_BY_STATE = "SELECT state, count(*) FROM runs GROUP BY state"
# the literal lets SQLite count the partial index approvals_waiting
COUNT_WAITING_APPROVALS = "SELECT count(*) FROM approvals WHERE state = 'waiting'"


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
        self.windows: dict[str, WindowRow] = {}
        self.holds: dict[tuple[str, int], HoldRow] = {}
        self.windows_gone: dict[str, WindowGone] = {}
        self.throttles: dict[tuple[str, str], ThrottleRow] = {}
        self.settled: dict[str, WindowSettled] = {}
        self.joins: list[FlowJoin] = []
        """Events held where the database says (a shared store's commit decides them)."""
        self.done = anyio.Event()
        self.error: BaseException | None = None

    def add(self, row: Row) -> None:
        # whole rows: a later submission of the same row replaces the earlier one
        keyed = _KEYED.get(type(row))
        if keyed is not None:  # the rows every run writes, found in one look-up
            field, key = keyed
            getattr(self, field)[key(row)] = row
        elif type(row) is EventClaim:  # with every event recorded
            self.claims.add(row.event_id)
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


class _Chore:
    """Work the writer does between two group commits, as one transaction of its own."""

    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[Any], Awaitable[Any]]) -> None:
        self.work = work
        self.done = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class SqliteStore:
    """Runs, task instances, attempts and events in one SQLite file."""

    shares_run_slots = False  # one node: its runner counts its runs itself
    _VERSIONS_LOCK: str | None = None
    """What a writer takes before it gives the next config version (PostgreSQL: daemons
    sharing the database start at once; SQLite's writer is the file's only one)."""

    def __init__(
        self, path: Path, writer: aiosqlite.Connection, reader: pruning.Connection
    ) -> None:
        self.path = path
        self.where = str(path)
        self._writer = writer
        self._reader = reader
        self._batch = _Batch()
        # insertion-ordered: their rows join a commit in the order they were left
        self._provisional: dict[Provisional, None] = {}
        self._wake = anyio.Event()
        self._closing = False
        self._failed: StoreError | None = None
        self._chores: deque[_Chore] = deque()
        # since when the writer has had work and finished none of it (None: idle)
        self._busy_since: float | None = None
        self.commits = 0
        self.commit_seconds = 0.0
        self._commit_listeners: list[Callable[[float, Sequence[Row]], None]] = []
        self._node_name: str | None = None
        """The daemon's node, once it joined (marked gone when the store closes)."""

    def on_commit(self, listener: Callable[[float, Sequence[Row]], None]) -> None:
        self._commit_listeners.append(listener)

    def _committed(self, seconds: float, batch: _Batch) -> None:
        if not self._commit_listeners:
            return
        rows = batch.rows()
        for listener in self._commit_listeners:
            try:
                listener(seconds, rows)
            except Exception as exc:  # noqa: BLE001 - an observer's bug must not stop the writer
                _log.error("commit_listener_failed", error=repr(exc))

    # -- writing -----------------------------------------------------------------------

    def submit(self, rows: list[Row]) -> _Batch:
        self._check_open()
        batch = self._batch
        for row in rows:
            batch.add(row)
        self._work_came()
        return batch

    def provisional(self, rows: Provisional) -> None:
        self._check_open()
        self._provisional[rows] = None
        self._work_came()

    def withdraw(self, rows: Provisional) -> None:
        self._provisional.pop(rows, None)

    def _check_open(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closing:
            raise StoreError("the store is closed")

    def _work_came(self) -> None:
        if self._busy_since is None:
            self._busy_since = anyio.current_time()
        self._wake.set()

    def _work_done(self) -> None:
        """A commit or a chore finished: the writer made progress; what is still waiting
        is timed from now."""
        self._busy_since = anyio.current_time() if (self._batch or self._chores) else None

    def writer_stalled_s(self) -> float:
        since = self._busy_since
        return 0.0 if since is None else max(0.0, anyio.current_time() - since)

    async def _write_loop(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        # Shielded: the writer outlives everything that submits to it, also when the whole
        # daemon is cancelled from outside (every task at once); it stops when the store
        # closes, after the last submission, so no waiter is left hanging.
        with anyio.CancelScope(shield=True):
            while True:
                await self._wake.wait()
                # a few turns of the loop for what is ready to run while attempts whose
                # start is provisional run: one that ends meanwhile writes its end only
                # (its start is never built), and its run's end commits with it
                await anyio.lowlevel.checkpoint()
                for _ in range(_PROVISIONAL_TURNS):
                    if not self._provisional:
                        break
                    await anyio.lowlevel.checkpoint()
                self._wake = anyio.Event()
                batch, self._batch = self._batch, _Batch()
                if self._provisional:
                    # attempts still running: their starts join this commit (and make
                    # one, if nothing else was submitted: a long task is seen running)
                    for provisional in self._provisional:
                        for row in provisional.rows():
                            batch.add(row)
                    self._provisional.clear()
                if batch:
                    try:
                        self._committed(await self._commit(batch), batch)
                    except Exception as exc:
                        # the writer stops: what waits now, and what comes later, fails
                        # at once instead of waiting for a commit that will not come
                        self._failed = StoreError(f"cannot write to {self.where!r}: {exc}")
                        batch.error = self._batch.error = exc
                        self._batch.done.set()
                        self._drop_chores(self._failed)
                        raise self._failed from exc
                    finally:
                        batch.done.set()
                    self._work_done()
                batch.done.set()
                # one chore per turn: the writes submitted meanwhile commit before the next
                if self._chores:
                    await self._do_chore(self._chores.popleft())
                    if self._chores:
                        self._wake.set()
                if self._closing and not self._batch:
                    self._drop_chores(StoreError("the store is closed"))
                    return

    async def _commit(self, batch: _Batch) -> float:
        started = anyio.current_time()
        work = _statements(batch)
        claimed = _claimed_work(batch)
        # one trip to the connection's thread for the whole transaction, not one per
        # statement: each trip is a wake-up of the event loop (aiosqlite has no public way
        # to run a function on its thread; ``_execute`` is that, in the pinned version)
        delay = _BUSY_RETRY_S[0]
        while (
            duplicates := await self._writer._execute(_write_all, self._writer, work, claimed)  # type: ignore[no-untyped-call]
        ) is None:
            # another program holds the file's write lock past busy_timeout (a backup, a
            # sqlite3 shell left in a transaction): nothing was written; try again rather
            # than stop the daemon. Meanwhile the writer is stalled, which the watchdog
            # sees (under systemd, a lock held for ever ends in a restart)
            get_logger().warning("store_busy", state=self.where, retry_in_s=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, _BUSY_RETRY_S[1])
        batch.duplicates = duplicates
        seconds = anyio.current_time() - started
        self.commits += 1
        self.commit_seconds += seconds
        return seconds

    async def _chore(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``work`` on the writing connection, in the writer's loop between two group
        commits, as one transaction; return what it returns.

        :raises StoreError: if it failed (its transaction is rolled back)
        """
        if self._failed is not None:
            raise self._failed
        if self._closing:
            raise StoreError("the store is closed")
        chore = _Chore(work)
        self._chores.append(chore)
        self._work_came()
        await chore.done.wait()
        if chore.error is not None:
            raise StoreError(f"{self.where!r}: {chore.error}") from chore.error
        return chore.result

    async def _do_chore(self, chore: _Chore) -> None:
        started = anyio.current_time()
        db = self._writer
        try:
            # IMMEDIATE: the write lock from the start, so what the chore reads is what it
            # changes, even with another process (the CLI) writing to the file
            await db.execute("BEGIN IMMEDIATE")
            chore.result = await chore.work(db)
            await db.commit()
        except Exception as exc:  # noqa: BLE001 - the chore's caller gets it; writes go on
            chore.error = exc
            try:
                await db.rollback()
            except Exception as rollback:  # noqa: BLE001 - the next commit reports a broken file
                _log.error("store_rollback_failed", error=repr(rollback))
        else:
            self.commits += 1
            self.commit_seconds += anyio.current_time() - started
        finally:
            chore.done.set()
            self._work_done()

    def _drop_chores(self, error: StoreError) -> None:
        while self._chores:
            chore = self._chores.popleft()
            chore.error = error
            chore.done.set()

    async def prune(self, policy: PrunePolicy, *, batch: int = 500) -> PruneCounts:
        total = PruneCounts()

        async def step(db: aiosqlite.Connection) -> PruneCounts:
            # the runs with rows in the open batch (to commit after this) stay, this time
            return await pruning.step(db, policy, batch, self._batch.run_ids())

        while (pruned := await self._chore(step)).total:
            total += pruned
        return total

    async def prunable(self, policy: PrunePolicy) -> PruneCounts:
        return await pruning.count(self._reader, policy)

    async def set_paused(self, pipeline: str, pause: PauseRow | None) -> None:
        async def work(db: aiosqlite.Connection) -> None:
            if pause is None:
                await db.execute("DELETE FROM paused_pipelines WHERE pipeline = ?", (pipeline,))
            else:
                await db.execute(
                    "INSERT OR REPLACE INTO paused_pipelines VALUES (?, ?, ?)",
                    (pipeline, pause.paused_at, pause.paused_by),
                )

        await self._chore(work)

    async def paused_pipelines(self) -> dict[str, PauseRow]:
        rows = await self._reader.execute_fetchall("SELECT * FROM paused_pipelines")
        return {str(r[0]): PauseRow(str(r[0]), float(r[1]), r[2]) for r in rows}

    async def add_config_version(self, text: str, file: str, at: float) -> ConfigVersionRow:
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

        # the version is the latest + 1, given here under the writer (not a rowid or a
        # sequence): the same on both stores, and `cued store copy` brings versions over
        async def work(db: Any) -> ConfigVersionRow:
            if self._VERSIONS_LOCK is not None:
                await db.execute_fetchall(self._VERSIONS_LOCK)
            latest = list(
                await db.execute_fetchall(
                    "SELECT * FROM config_versions ORDER BY version DESC LIMIT 1"
                )
            )
            if latest and latest[0][1] == digest:
                return _config_version(latest[0])
            version = int(latest[0][0]) + 1 if latest else 1
            await db.execute_fetchall(
                "INSERT INTO config_versions (version, hash, text, file, loaded_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (version, digest, text, file, at),
            )
            return ConfigVersionRow(version, digest, text, file, at)

        row: ConfigVersionRow = await self._chore(work)
        return row

    async def config_versions(self, *, limit: int = 100) -> list[ConfigVersionRow]:
        rows = await self._reader.execute_fetchall(
            "SELECT * FROM config_versions ORDER BY version DESC LIMIT ?", (limit,)
        )
        return [_config_version(r) for r in rows]

    async def config_version(self, version: int) -> ConfigVersionRow | None:
        rows = list(
            await self._reader.execute_fetchall(
                "SELECT * FROM config_versions WHERE version = ?", (version,)
            )
        )
        return _config_version(rows[0]) if rows else None

    # -- reading -----------------------------------------------------------------------

    async def runs_to_resume(
        self, *, waiting: bool = True
    ) -> list[tuple[RunRow, list[InstanceRow], dict[str, Any]]]:
        clause = (
            "WHERE state IN ('queued', 'running')"
            if waiting
            else f"WHERE state IN ('queued', 'running') AND NOT ({_NEVER_STARTED})"
        )
        owned, args = self._owned()
        runs = await self._runs(f"{clause} {owned} ORDER BY run_id", tuple(args))
        return [(run, *await self._run_state(run.run_id)) for run in runs]

    async def waiting_runs(
        self, pipeline: str | None = None, *, after: str = "", limit: int = 1_000_000_000
    ) -> list[WaitingRun]:
        # by the index on (state, run_id), or (pipeline, state, run_id)
        clause, args = ("AND pipeline = ?", [pipeline]) if pipeline is not None else ("", [])
        owned, owner = self._owned()
        rows = await self._reader.execute_fetchall(
            "SELECT run_id, pipeline, flow_key, key_limit, priority FROM runs "
            f"WHERE {_NEVER_STARTED} {clause} {owned} AND run_id > ? ORDER BY run_id LIMIT ?",
            [*args, *owner, after, limit],
        )
        return [WaitingRun(*row) for row in rows]

    def _owned(self) -> tuple[str, list[Any]]:
        """The clause that keeps a read of runs to resume to this node's own (and its
        arguments): none on SQLite, whose one node owns every run."""
        return "", []

    # -- nodes: one, holding no lease (see cued.daemon.store.nodes) ----------------------

    async def join(self, node: str, *, lease_s: float, host: str, pid: int) -> NodeRow:
        at = now()

        async def work(db: aiosqlite.Connection) -> int:
            rows = list(await db.execute_fetchall("SELECT max(generation) FROM nodes"))
            generation = int(rows[0][0] or 0) + 1
            # one node: the last one's row goes (a new name at each start, by default)
            await db.execute("DELETE FROM nodes")
            await db.execute(
                "INSERT INTO nodes VALUES (?, ?, 1, ?, ?, 0.0, ?, ?, ?)",
                (node, generation, host, pid, at, at, at),
            )
            return generation

        generation: int = await self._chore(work)
        self._node_name = node
        return NodeRow(node, generation, True, host, pid, 0.0, at, at, at)

    async def renew(self) -> float | None:
        return None

    async def adopt(self) -> list[str]:
        return []

    async def take_run_slot(self, pipeline: str, run_id: str, limit: int) -> bool:
        return True  # one node: its runner's own count is the whole count

    async def give_back_run_slot(self, run_id: str) -> None:
        return None

    async def run_slots_held(self, run_ids: Sequence[str]) -> set[str]:
        return set()

    async def list_nodes(self) -> list[NodeRow]:
        rows = await self._reader.execute_fetchall("SELECT * FROM nodes ORDER BY node")
        if not rows:
            return []
        ((unfinished,),) = await self._reader.execute_fetchall(
            "SELECT count(*) FROM runs WHERE state IN ('queued', 'running', 'waiting')"
        )
        return [NodeRow.read(r, runs=int(unfinished) if r[2] else 0) for r in rows]

    async def run_state(
        self, run_id: str
    ) -> tuple[RunRow, list[InstanceRow], dict[str, Any]] | None:
        run = await self.get_run(run_id)
        return None if run is None else (run, *await self._run_state(run_id))

    async def _run_state(self, run_id: str) -> tuple[list[InstanceRow], dict[str, Any]]:
        # the output of each instance's latest attempt: a succeeded one's result, or what a
        # failed one left for all_done tasks (a rejected gate's decision)
        rows = await self._reader.execute_fetchall(
            "SELECT key, output FROM attempts a WHERE run_id = ? AND output IS NOT NULL AND "
            "attempt = (SELECT max(attempt) FROM attempts b WHERE b.run_id = a.run_id AND b.key = a.key)",
            (run_id,),
        )
        outputs = {key: stored(out) for key, out in rows}
        return await self.get_instances(run_id), outputs

    async def get_approval(self, run_id: str, key: str) -> ApprovalRow | None:
        rows = await self._reader.execute_fetchall(
            "SELECT * FROM approvals WHERE run_id = ? AND key = ?", (run_id, key)
        )
        return next((_approval(r) for r in rows), None)

    async def list_approvals(
        self, *, state: str | None = "waiting", limit: int = 100
    ) -> list[ApprovalRow]:
        clause, args = ("WHERE state = ?", [state]) if state else ("", [])
        rows = await self._reader.execute_fetchall(
            f"SELECT * FROM approvals {clause} ORDER BY requested_at LIMIT ?", [*args, limit]
        )
        return [_approval(r) for r in rows]

    async def count_waiting_approvals(self) -> int:
        rows = await self._reader.execute_fetchall(COUNT_WAITING_APPROVALS)
        return next((int(n) for (n,) in rows), 0)

    async def next_approval_deadline(self) -> float | None:
        owned, owner = self._owned()
        rows = await self._reader.execute_fetchall(
            f"SELECT min(deadline_at) FROM approvals WHERE state = 'waiting' {owned}", owner
        )
        return next((float(at) for (at,) in rows if at is not None), None)

    async def approvals_due(self, before: float) -> list[ApprovalRow]:
        owned, owner = self._owned()  # several nodes: each expires its own runs' gates
        rows = await self._reader.execute_fetchall(
            f"SELECT * FROM approvals WHERE state = 'waiting' AND deadline_at <= ? {owned}",
            [before, *owner],
        )
        return [_approval(r) for r in rows]

    async def waits_of_sources(
        self, sources: Sequence[str], *, after: tuple[str, str, int] | None = None, limit: int
    ) -> list[WaitRow]:
        marks = ",".join("?" * len(sources))
        clause, args = "", list[Any](sources)
        if after is not None:
            clause = "AND (run_id, key, attempt) > (?, ?, ?)"
            args.extend(after)
        rows = await self._reader.execute_fetchall(
            f"SELECT * FROM waits WHERE state = 'waiting' AND kind = 'event' "
            f"AND source IN ({marks}) {clause} ORDER BY run_id, key, attempt LIMIT ?",
            [*args, limit],
        )
        return [_wait(r) for r in rows]

    async def waits_to_scan(self, limit: int) -> list[WaitRow]:
        owned, owner = self._owned()  # several nodes: each looks after its own runs' waits
        rows = await self._reader.execute_fetchall(
            f"SELECT * FROM waits WHERE state = 'waiting' AND scanned = 0 {owned} "
            "ORDER BY run_id LIMIT ?",
            [*owner, limit],
        )
        return [_wait(r) for r in rows]

    async def next_wait_deadline(self) -> float | None:
        owned, owner = self._owned()
        rows = await self._reader.execute_fetchall(
            f"SELECT min(deadline_at) FROM waits WHERE state = 'waiting' {owned}", owner
        )
        return next((float(at) for (at,) in rows if at is not None), None)

    async def waits_due(self, before: float, limit: int) -> list[WaitRow]:
        owned, owner = self._owned()
        rows = await self._reader.execute_fetchall(
            f"SELECT * FROM waits WHERE state = 'waiting' AND deadline_at <= ? {owned} "
            "ORDER BY deadline_at LIMIT ?",
            [before, *owner, limit],
        )
        return [_wait(r) for r in rows]

    async def waits_settled(self, limit: int) -> list[WaitRow]:
        owned, owner = self._owned()
        rows = await self._reader.execute_fetchall(
            f"SELECT * FROM waits WHERE state <> 'waiting' AND applied = 0 {owned} "
            "ORDER BY run_id LIMIT ?",
            [*owner, limit],
        )
        return [_wait(r) for r in rows]

    async def get_waits(self, run_id: str) -> list[WaitRow]:
        rows = await self._reader.execute_fetchall(
            "SELECT * FROM waits WHERE run_id = ? ORDER BY opened_at, key, attempt", (run_id,)
        )
        return [_wait(r) for r in rows]

    async def runs_in_state(
        self, pipeline: str, state: str, *, after: str = "", limit: int
    ) -> list[RunRow]:
        return await self._runs(
            "WHERE pipeline = ? AND state = ? AND run_id > ? ORDER BY run_id LIMIT ?",
            (pipeline, state, after, limit),
        )

    async def cancels_pending(self, limit: int) -> list[CancelRow]:
        owned, owner = self._owned()
        rows = await self._reader.execute_fetchall(
            f"SELECT * FROM run_cancels WHERE done = 0 {owned} ORDER BY run_id LIMIT ?",
            [*owner, limit],
        )
        return [CancelRow(*r) for r in rows]

    async def get_cancel(self, run_id: str) -> CancelRow | None:
        rows = await self._reader.execute_fetchall(
            "SELECT * FROM run_cancels WHERE run_id = ?", (run_id,)
        )
        return next((CancelRow(*r) for r in rows), None)

    async def events_of_source(self, source: str, since: float, *, limit: int) -> list[EventRow]:
        rows = await self._reader.execute_fetchall(
            "SELECT * FROM events WHERE source = ? AND received_at >= ? "
            "ORDER BY received_at, event_id LIMIT ?",
            (source, since, limit),
        )
        return [_event(r) for r in rows]

    async def get_decisions(self, run_id: str, key: str | None = None) -> list[DecisionRow]:
        clause, args = ("AND key = ?", [run_id, key]) if key else ("", [run_id])
        rows = await self._reader.execute_fetchall(
            f"SELECT * FROM decisions WHERE run_id = ? {clause} ORDER BY decided_at", args
        )
        return [DecisionRow(r[0], r[1], r[2], r[3], r[4], stored(r[5]), r[6], r[7]) for r in rows]

    async def ping(self) -> None:
        try:
            await self._reader.execute_fetchall("SELECT 1")
        except Exception as exc:
            raise StoreError(f"{self.where!r} does not answer: {exc}") from exc

    async def list_runs(
        self,
        *,
        limit: int = 50,
        pipeline: str | None = None,
        state: str | None = None,
        before: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> list[RunRow]:
        sql, args = runs_query(
            limit=limit,
            pipeline=pipeline,
            state=state,
            before=before,
            created_after=created_after,
            created_before=created_before,
        )
        rows = await self._reader.execute_fetchall(sql, args)
        return [_run(r) for r in rows]

    async def count_runs_by_state(self) -> dict[str, int]:
        rows = await self._reader.execute_fetchall(COUNT_RUNS_BY_STATE)
        return {str(state): int(count) for state, count in rows}

    async def children_of(self, run_id: str) -> list[RunRow]:
        # by the index runs_by_parent
        return await self._runs("WHERE parent_run_id = ? ORDER BY run_id", (run_id,))

    async def children_to_settle(self) -> list[RunRow]:
        rows = await self._reader.execute_fetchall(
            "SELECT c.* FROM runs c JOIN task_instances i "
            "ON i.run_id = c.parent_run_id AND i.key = c.parent_key "
            "WHERE c.parent_run_id IS NOT NULL "
            "AND c.state IN ('succeeded', 'failed', 'cancelled', 'skipped') "
            "AND i.state = 'waiting' AND i.attempts = c.parent_attempt ORDER BY c.run_id"
        )
        return [_run(r) for r in rows]

    async def count_running(self, pipeline: str, flow_key: str | None = None) -> int:
        # by the index on (pipeline, state, run_id): the runs running are few
        clause, args = ("AND flow_key = ?", [flow_key]) if flow_key is not None else ("", [])
        ((count,),) = await self._reader.execute_fetchall(
            f"SELECT count(*) FROM runs WHERE pipeline = ? AND state = 'running' {clause}",
            [pipeline, *args],
        )
        return int(count)

    async def get_runs(self, run_ids: Sequence[str]) -> list[RunRow]:
        found: list[RunRow] = []
        for chunk in _chunks(list(run_ids)):
            found += await self._runs(
                f"WHERE run_id IN ({','.join('?' * len(chunk))})", tuple(chunk)
            )
        return found

    async def get_approvals(self, run_id: str) -> list[ApprovalRow]:
        rows = await self._reader.execute_fetchall(
            "SELECT * FROM approvals WHERE run_id = ? ORDER BY requested_at, key", (run_id,)
        )
        return [_approval(r) for r in rows]

    async def get_run(self, run_id: str) -> RunRow | None:
        runs = await self._runs("WHERE run_id = ?", (run_id,))
        return runs[0] if runs else None

    async def get_instances(self, run_id: str) -> list[InstanceRow]:
        rows = await self._reader.execute_fetchall(
            "SELECT * FROM task_instances WHERE run_id = ? ORDER BY updated_at, key", (run_id,)
        )
        return [InstanceRow(*row) for row in rows]

    async def get_attempts(self, run_id: str) -> list[AttemptRow]:
        rows = await self._reader.execute_fetchall(
            "SELECT * FROM attempts WHERE run_id = ? ORDER BY started_at, key, attempt", (run_id,)
        )
        return [
            AttemptRow(*r[:7], output=stored(r[7]), cost=r[8], usage=_loads(r[9]))  # type: ignore[misc]
            for r in rows
        ]

    async def get_log_lines(
        self,
        run_id: str,
        *,
        task: str | None = None,
        attempt: int | None = None,
        after: int = 0,
        limit: int = 1000,
    ) -> list[LogLineRow]:
        where = ["run_id = ?", "seq > ?"]
        args: list[Any] = [run_id, after]
        if task is not None:
            # the instance itself, or a task's mapped instances name[0], name[1], ...
            # ("\\" is the character after "[")
            where.append("(key = ? OR (key >= ? AND key < ?))")
            args += [task, task + "[", task + "\\"]
        if attempt is not None:
            where.append("attempt = ?")
            args.append(attempt)
        rows = await self._reader.execute_fetchall(
            f"SELECT * FROM task_logs WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            [*args, limit],
        )
        return [LogLineRow(*r) for r in rows]

    async def last_log_seq(self, run_id: str) -> int:
        rows = await self._reader.execute_fetchall(
            "SELECT max(seq) FROM task_logs WHERE run_id = ?", (run_id,)
        )
        return next((int(seq) for (seq,) in rows if seq is not None), 0)

    async def known_events(self, event_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(event_ids):
            rows = await self._reader.execute_fetchall(
                f"SELECT event_id FROM events WHERE event_id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update(r[0] for r in rows)
        return found

    async def dedupe_seen(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
        seen: dict[tuple[str, str], float] = {}
        for i in range(0, len(keys), 250):
            chunk = keys[i : i + 250]
            rows = await self._reader.execute_fetchall(
                "SELECT trigger, key, seen_at FROM dedupe_keys WHERE (trigger, key) IN "
                f"(VALUES {','.join(['(?, ?)'] * len(chunk))})",
                [part for pair in chunk for part in pair],
            )
            for trigger, key, seen_at in rows:
                seen[trigger, key] = seen_at
        return seen

    async def outbox_due(self, before: float, limit: int = 100) -> list[OutboxRow]:
        rows = await self._reader.execute_fetchall(
            "SELECT * FROM outbox WHERE sent_at IS NULL AND next_at <= ? ORDER BY next_at LIMIT ?",
            (before, limit),
        )
        return [OutboxRow(r[0], r[1], r[2], json.loads(r[3]), *r[4:]) for r in rows]

    async def outbox_next_at(self) -> float | None:
        rows = await self._reader.execute_fetchall(
            "SELECT min(next_at) FROM outbox WHERE sent_at IS NULL"
        )
        return next((float(at) for (at,) in rows if at is not None), None)

    async def costs(self, *, run_id: str | None = None, since: float | None = None) -> float:
        where: list[str] = ["cost IS NOT NULL"]
        args: list[str | float] = []
        if run_id is not None:
            where.append("run_id = ?")
            args.append(run_id)
        if since is not None:
            where.append("started_at >= ?")
            args.append(since)
        rows = await self._reader.execute_fetchall(
            f"SELECT coalesce(sum(cost), 0) FROM attempts WHERE {' AND '.join(where)}", args
        )
        return next((float(total) for (total,) in rows), 0.0)

    async def get_cursor(self, source: str) -> str | None:
        rows = await self._reader.execute_fetchall(
            "SELECT cursor FROM source_cursors WHERE source = ?", (source,)
        )
        return next((str(cursor) for (cursor,) in rows), None)

    async def flow_state(self) -> tuple[list[WindowRow], list[ThrottleRow]]:
        windows = await self._reader.execute_fetchall(
            "SELECT * FROM flow_windows WHERE phase = 'open'"
        )
        throttles = await self._reader.execute_fetchall("SELECT * FROM flow_throttles")
        return [WindowRow(*r) for r in windows], [
            ThrottleRow(r[0], r[1], tuple(json.loads(r[2])), r[3]) for r in throttles
        ]

    async def forget_throttles(self, before: float) -> None:
        async def work(db: Any) -> None:
            await db.execute_fetchall("DELETE FROM flow_throttles WHERE expires_at < ?", (before,))

        await self._chore(work)

    async def flow_next_due(self) -> float | None:
        rows = await self._reader.execute_fetchall(
            "SELECT min(due_at) FROM flow_windows WHERE due_at IS NOT NULL"
        )
        return next((float(at) for (at,) in rows if at is not None), None)

    async def flow_due(self, before: float, limit: int = 500) -> list[WindowRow]:
        rows = await self._reader.execute_fetchall(
            "SELECT * FROM flow_windows WHERE due_at IS NOT NULL AND due_at <= ? "
            "ORDER BY due_at, window_id LIMIT ?",
            (before, limit),
        )
        return [WindowRow(*r) for r in rows]

    async def event_holds(self, event_ids: Sequence[str]) -> list[tuple[HoldRow, WindowRow]]:
        found: list[tuple[HoldRow, WindowRow]] = []
        for chunk in _chunks(list(event_ids)):
            rows = await self._reader.execute_fetchall(
                "SELECT h.*, w.* FROM flow_holds h JOIN flow_windows w USING (window_id) "
                f"WHERE h.event_id IN ({','.join('?' * len(chunk))}) ORDER BY h.held_at",
                chunk,
            )
            found += [(HoldRow(*r[:4]), WindowRow(*r[4:])) for r in rows]
        return found

    async def window_holds(
        self, windows: Sequence[str], whole: Collection[str] = ()
    ) -> tuple[list[WindowRow], dict[str, list[tuple[HoldRow, EventRow | None]]]]:
        found: list[WindowRow] = []
        holds: dict[str, list[tuple[HoldRow, EventRow | None]]] = {}
        for chunk in _chunks(list(windows)):
            marks = ",".join("?" * len(chunk))
            found += [
                WindowRow(*r)
                for r in await self._reader.execute_fetchall(
                    f"SELECT * FROM flow_windows WHERE window_id IN ({marks})", chunk
                )
            ]
            for columns, part, read in (
                ("e.*", [w for w in chunk if w in whole], _event),
                (_EVENT_WITHOUT_DATA, [w for w in chunk if w not in whole], _event_without_data),
            ):
                if not part:
                    continue
                for r in await self._reader.execute_fetchall(
                    f"SELECT h.*, {columns} FROM flow_holds h LEFT JOIN events e "
                    f"USING (event_id) WHERE h.window_id IN ({','.join('?' * len(part))}) "
                    "ORDER BY h.window_id, h.seq",
                    part,
                ):
                    hold = HoldRow(*r[:4])
                    event = None if r[4] is None else read(r[4:])
                    holds.setdefault(hold.window_id, []).append((hold, event))
        return found, holds

    async def list_events(
        self,
        *,
        limit: int = 50,
        source: str | None = None,
        status: str | None = None,
        before: tuple[float, str] | None = None,
    ) -> list[EventRow]:
        sql, args = events_query(limit=limit, source=source, status=status, before=before)
        return [_event(r) for r in await self._reader.execute_fetchall(sql, args)]

    async def get_events(self, event_ids: Sequence[str]) -> list[EventRow]:
        found: list[EventRow] = []
        for chunk in _chunks(list(event_ids)):
            rows = await self._reader.execute_fetchall(
                f"SELECT * FROM events WHERE event_id IN ({','.join('?' * len(chunk))})", chunk
            )
            found += [_event(r) for r in rows]
        return found

    async def list_assets(self) -> list[tuple[str, int, EventRow]]:
        # SQLite fills the bare columns of a max() aggregate from the row holding the
        # maximum: each asset's latest event, in one range scan of events_by_source_time
        rows = await self._reader.execute_fetchall(
            "SELECT *, count(*), max(received_at) FROM events "
            "WHERE source >= ? AND source < ? GROUP BY source ORDER BY source",
            ASSET_SOURCES,
        )
        return [(asset_of(r[1]) or r[1], r[8], _event(r)) for r in rows]

    async def _runs(self, clause: str, args: tuple[Any, ...]) -> list[RunRow]:
        rows = await self._reader.execute_fetchall(f"SELECT * FROM runs {clause}", args)
        return [_run(r) for r in rows]


_NEVER_STARTED = "state = 'queued' AND started_at IS NULL"
"""A run waiting for its first start (a rerun or a resumed one has started before)."""


def runs_query(
    *,
    limit: int,
    pipeline: str | None = None,
    state: str | None = None,
    before: str | None = None,
    created_after: float | None = None,
    created_before: float | None = None,
) -> tuple[str, list[Any]]:
    """The SELECT of :meth:`SqliteStore.list_runs` and its parameters (also for
    benchmarks, and for tests of its query plan)."""
    where: list[str] = []
    args: list[Any] = []
    if pipeline:
        where.append("pipeline = ?")
        args.append(pipeline)
    if state:
        where.append("state = ?")
        args.append(state)
    if before is not None:
        where.append("run_id < ?")
        args.append(before)
    # ids sort by creation time: the id bounds (a minute wider than the times, for clocks
    # that stepped between making the id and stamping the row) turn a time range into a
    # range of an index
    if created_after is not None:
        where.append("created_at >= ? AND run_id >= ?")
        args += [created_after, id_at(created_after - _ID_SLACK_S)]
    if created_before is not None:
        where.append("created_at < ? AND run_id < ?")
        args += [created_before, id_at(created_before + _ID_SLACK_S)]
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    return f"SELECT * FROM runs {clause} ORDER BY run_id DESC LIMIT ?", [*args, limit]


def events_query(
    *,
    limit: int,
    source: str | None = None,
    status: str | None = None,
    before: tuple[float, str] | None = None,
) -> tuple[str, list[Any]]:
    """The SELECT of :meth:`SqliteStore.list_events` and its parameters."""
    where: list[str] = []
    args: list[Any] = []
    if source:
        where.append("source = ?")
        args.append(source)
    if status:
        where.append("status = ?")
        args.append(status)
    if before is not None:
        where.append("(received_at, event_id) < (?, ?)")
        args += list(before)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    sql = f"SELECT * FROM events {clause} ORDER BY received_at DESC, event_id DESC LIMIT ?"
    return sql, [*args, limit]


def _run(r: Any) -> RunRow:
    # inputs, like event data, came from outside: what an older daemon kept unrepaired
    # (lone surrogates, values nested hundreds deep) must not fail every list of runs
    inputs = stored(r[3])
    return RunRow(
        r[0], r[1], r[2], inputs if isinstance(inputs, dict) else {"stored": inputs}, *r[4:]
    )


def _config_version(r: Any) -> ConfigVersionRow:
    return ConfigVersionRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]))


def _event(r: Any) -> EventRow:
    # data and meta came from outside: what an older daemon kept unrepaired (lone
    # surrogates, values nested hundreds deep) must not fail every page that shows it
    meta = stored(r[5])
    return EventRow(
        r[0],
        r[1],
        r[2],
        r[3],
        stored(r[4]),
        meta if isinstance(meta, dict) else {"stored": meta},
        tuple(orjson.loads(r[6])),  # run ids this daemon wrote
        r[7],
    )


def _event_without_data(r: Any) -> EventRow:
    """An event read by :data:`_EVENT_WITHOUT_DATA`: its data ``None``, its meta empty."""
    return EventRow(r[0], r[1], r[2], r[3], None, {}, tuple(orjson.loads(r[4])), r[5])


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# Row fields held as JSON text; every other field is stored as it is. A row's fields are
# in the order of its table's columns.
_JSON_FIELDS = frozenset(
    {"inputs", "data", "meta", "run_ids", "payload", "usage", "approvers", "context", "starts"}
)


def _approval(r: Any) -> ApprovalRow:
    return ApprovalRow(
        r[0],
        r[1],
        r[2],
        r[3],
        tuple(json.loads(r[4])),
        r[5],
        r[6],
        stored(r[7]),  # rendered from event data
        r[8],
        r[9],
        r[10],
        r[11],
    )


def _wait(r: Any) -> WaitRow:
    return WaitRow(
        r[0], r[1], r[2], r[3], r[4], r[5],
        stored(r[6]),  # context: what match reads, event data among it
        r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15], r[16],
    )  # fmt: skip


def _wait_advances(before: WaitRow, row: WaitRow) -> bool:
    """Whether ``row`` replaces ``before``: :data:`_WAIT_SETTLES`, in Python."""
    if before.state == "waiting":
        return row.state != "waiting" or row.scanned > before.scanned
    return row.state == before.state and row.applied > before.applied


#: Turns of the event loop the writer gives attempts whose start is provisional to end,
#: before it takes a batch: a no-op attempt started in one turn ends in the next (more
#: turns only delay every commit a little, for attempts that take longer anyway).
_PROVISIONAL_TURNS = 2

#: How long the writer waits to try a commit again after the file stayed locked by another
#: program past ``busy_timeout`` (doubling from the first to the second).
_BUSY_RETRY_S = (0.05, 1.0)
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


_Claimed = list[tuple[str, tuple[Any, ...], list[tuple[Any, ...]]]]
"""Each claimed event of a commit: its id, its row's parameters, its runs' parameters."""


def _claimed_work(batch: _Batch) -> _Claimed:
    events, runs = batch.claimed()
    by_event: dict[str | None, list[tuple[Any, ...]]] = {}
    for run in runs:
        by_event.setdefault(run.event_id, []).append(_params(run))
    return [(e.event_id, _params(e), by_event.get(e.event_id, [])) for e in events]


def _statements(batch: _Batch) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The statements of ``batch``'s transaction, each with its rows' parameters (but the
    claimed events' and their runs': :func:`_claimed_work`)."""
    work: list[tuple[str, list[tuple[Any, ...]]]] = []
    if batch.gone:
        work.append((_DELETE_INSTANCE, [(g.run_id, g.key) for g in batch.gone.values()]))
    events, runs = batch.unclaimed()
    for rows, sql in (
        (runs, _UPSERT_RUN),
        (batch.instances.values(), _PUT_INSTANCE),
        (batch.attempts.values(), _PUT_ATTEMPT),
        (events, _PUT_EVENT),
        (batch.dedupe.values(), _PUT_DEDUPE),
        (batch.cursors.values(), _PUT_CURSOR),
        (batch.outbox.values(), _PUT_OUTBOX),
        (batch.approvals.values(), _PUT_APPROVAL),
        (batch.decisions.values(), _PUT_DECISION),
        (batch.waits.values(), _PUT_WAIT),
        (batch.cancels.values(), _PUT_CANCEL),
        (batch.log_lines.values(), _PUT_LOG_LINE),
        # after the lines: a line of this batch below the cut goes too
        (batch.log_trims.values(), _TRIM_LOG),
        (batch.windows.values(), _PUT_WINDOW),
        (batch.holds.values(), _PUT_HOLD),
        (batch.throttles.values(), _PUT_THROTTLE),
    ):
        if rows:
            work.append((sql, [_params(row) for row in rows]))
    # after the events and holds; each window's holds go before the next window is
    # settled, which then sees whether another window still holds an event of both
    for settled in batch.settled.values():
        work.append((_SETTLE_WINDOW, [_params(settled)]))
        if settled.gone:
            work.append((_HOLDS_GONE, [(settled.window_id,)]))
    if batch.windows_gone:
        gone = [(g.window_id,) for g in batch.windows_gone.values()]
        work += [(_HOLDS_GONE, gone), (_WINDOW_GONE, gone)]
    return work


def _write_all(
    db: aiosqlite.Connection, work: list[tuple[str, list[tuple[Any, ...]]]], claimed: _Claimed
) -> set[str] | None:
    """On the writing connection's thread: every statement of a group commit, then the
    commit. Returns the claimed events that were stored already (written neither they
    nor their runs); ``None``, with nothing written, if the file stayed locked by another
    program."""
    conn = db._conn
    duplicates: set[str] = set()
    try:
        for sql, params in work:
            conn.executemany(sql, params)
        if claimed:
            # with the file's write lock (taken by the writes above, or here): no other
            # writer's event can come between what this reads and what it writes
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            for chunk in _chunks([event_id for event_id, _, _ in claimed]):
                marks = ",".join("?" * len(chunk))
                found = conn.execute(
                    f"SELECT event_id FROM events WHERE event_id IN ({marks})", chunk
                )
                duplicates.update(event_id for (event_id,) in found)
            fresh = [c for c in claimed if c[0] not in duplicates]
            conn.executemany(_CLAIM_EVENT, [event for _, event, _ in fresh])
            conn.executemany(_UPSERT_RUN, [run for _, _, runs in fresh for run in runs])
        conn.commit()
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode not in _BUSY:
            raise
        conn.rollback()
        return None
    return duplicates


def _params(row: Row) -> tuple[Any, ...]:
    read = _READERS.get(type(row))
    if read is None:
        read = _READERS[type(row)] = _reader(type(row))
    return read(row)


_READERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}
"""How to read each row class's parameters: worked out once per class, as every row of a
commit goes through here."""


def _reader(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    names: tuple[str, ...] = getattr(cls, "__slots__")  # noqa: B009 - mypy knows none on type
    fields: Callable[[Any], tuple[Any, ...]] = (
        attrgetter(*names) if len(names) > 1 else (lambda row: (getattr(row, names[0]),))
    )
    encoded = [i for i, name in enumerate(names) if name in _JSON_FIELDS]
    if not encoded:
        return fields

    def read(row: Any) -> tuple[Any, ...]:
        values = list(fields(row))
        for i in encoded:
            values[i] = dumps(values[i])
        return tuple(values)

    return read


def _chunks(items: list[str], size: int = 500) -> list[list[str]]:
    # SQLite caps the number of parameters of one statement
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _connect(
    path: Path, synchronous: Synchronous, busy_timeout_s: float = 10.0
) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path)
    try:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        # another process (the CLI, a second daemon) may hold the write lock for a moment
        await db.execute(f"PRAGMA busy_timeout = {round(busy_timeout_s * 1000)}")
    except BaseException:
        # closed here: its thread would otherwise answer into a loop that has ended
        await db.close()
        raise
    return db


def _not_yours(path: Path, exc: BaseException | str) -> str:
    try:
        owner = pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError):
        owner = "the daemon's user"
    return (
        f"cannot open the state file {str(path)!r} ({exc}): only OS user {owner!r} may "
        f"read it; run cued as {owner!r}"
    )


@asynccontextmanager
async def open_store(
    path: str | Path, *, synchronous: Synchronous = "full", busy_timeout_s: float = 10.0
) -> AsyncIterator[SqliteStore]:
    """Open (creating and migrating as needed) the store at ``path``.

    On exit, whatever was submitted is committed before the connections close.

    :param synchronous: ``full`` makes every commit survive a power loss; ``normal``
        survives a crash of the process but may lose the last commits on power loss
    :param busy_timeout_s: how long a statement waits for a lock another program holds
        (a commit that waited this long tries again, and again, until it can write)
    :raises StoreError: if the file cannot be opened or has a newer schema
    """
    path = Path(path)
    # told before SQLite is asked: the file is 0600, its owner's alone
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(_not_yours(path, "permission denied"))
    try:
        private_state_files(path)  # 0600: it holds payloads, headers and outputs
        writer = await _connect(path, synchronous, busy_timeout_s)
    except PermissionError as exc:
        raise StoreError(_not_yours(path, exc)) from exc
    except Exception as exc:
        raise StoreError(f"cannot open the state file {str(path)!r}: {exc}") from exc
    try:
        await migrate(writer, path)
        reader = await _connect(path, synchronous, busy_timeout_s)
    except BaseException:
        await writer.close()
        raise
    store = SqliteStore(path, writer, reader)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(store._write_loop)
            try:
                yield store
            finally:
                store._closing = True
                store._wake.set()  # the loop commits what is left, then returns
    finally:
        with anyio.CancelScope(shield=True):
            if store._node_name is not None and store._failed is None:
                # after the last commit: the node is shown gone (`cued nodes`)
                await writer.execute(
                    "UPDATE nodes SET alive = 0 WHERE node = ?", (store._node_name,)
                )
                await writer.commit()
            await reader.close()
            await writer.close()
