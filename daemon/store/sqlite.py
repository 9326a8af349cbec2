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
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiosqlite
import anyio
import anyio.lowlevel

from cued.daemon.core.assets import ASSET_SOURCES, asset_of
from cued.daemon.core.ids import id_at
from cued.daemon.core.untrusted import stored
from cued.daemon.errors import StoreError
from cued.daemon.logs import get_logger
from cued.daemon.store import (
    ApprovalRow,
    AttemptRow,
    ConfigVersionRow,
    CursorRow,
    DecisionRow,
    DedupeRow,
    EventRow,
    InstanceGone,
    InstanceRow,
    LogLineRow,
    LogTrim,
    OutboxRow,
    PauseRow,
    PruneCounts,
    RunRow,
    pruning,
)
from cued.daemon.store.filemodes import private_state_files
from cued.daemon.store.migrations import migrate

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

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
INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET state = excluded.state, started_at = excluded.started_at,
    ended_at = excluded.ended_at, error = excluded.error
"""
_PUT_INSTANCE = "INSERT OR REPLACE INTO task_instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_DELETE_INSTANCE = "DELETE FROM task_instances WHERE run_id = ? AND key = ?"
_PUT_APPROVAL = "INSERT OR REPLACE INTO approvals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_PUT_DECISION = "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
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
_PUT_DEDUPE = "INSERT OR REPLACE INTO dedupe_keys VALUES (?, ?, ?)"
_PUT_CURSOR = "INSERT OR REPLACE INTO source_cursors VALUES (?, ?, ?)"
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
}
"""Rows that only replace their like in a batch: the batch's field and the row's key."""


class _Batch:
    """Submissions that commit together."""

    __slots__ = (
        "approvals",
        "attempts",
        "cursors",
        "decisions",
        "dedupe",
        "done",
        "error",
        "events",
        "gone",
        "instances",
        "log_lines",
        "log_trims",
        "outbox",
        "runs",
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
        self.done = anyio.Event()
        self.error: BaseException | None = None

    def add(self, row: Row) -> None:
        # whole rows: a later submission of the same row replaces the earlier one
        keyed = _KEYED.get(type(row))
        if keyed is not None:  # the rows every run writes, found in one look-up
            field, key = keyed
            getattr(self, field)[key(row)] = row
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
        elif isinstance(row, LogTrim):
            trim = self.log_trims.get((row.run_id, row.key, row.attempt))
            if trim is None or trim.before_seq < row.before_seq:
                self.log_trims[row.run_id, row.key, row.attempt] = row
        else:
            raise TypeError(f"the store keeps no {type(row).__name__}")

    def rows(self) -> list[Row]:
        """Every row of the batch, runs first."""
        return [
            *self.runs.values(),
            *self.instances.values(),
            *self.attempts.values(),
            *self.events.values(),
            *self.approvals.values(),
            *self.decisions.values(),
            *self.outbox.values(),
            *self.dedupe.values(),
            *self.cursors.values(),
            *self.gone.values(),
            *self.log_lines.values(),
            *self.log_trims.values(),
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
        )

    async def wait(self) -> None:
        await self.done.wait()
        if self.error is not None:
            raise StoreError(f"the store could not commit: {self.error}") from self.error

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
        )
        return set(self.runs) | {key[0] for rows in keyed for key in rows}


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
        work: list[tuple[str, list[tuple[Any, ...]]]] = []
        if batch.gone:
            work.append((_DELETE_INSTANCE, [(g.run_id, g.key) for g in batch.gone.values()]))
        for rows, sql in (
            (batch.runs, _UPSERT_RUN),
            (batch.instances, _PUT_INSTANCE),
            (batch.attempts, _PUT_ATTEMPT),
            (batch.events, _PUT_EVENT),
            (batch.dedupe, _PUT_DEDUPE),
            (batch.cursors, _PUT_CURSOR),
            (batch.outbox, _PUT_OUTBOX),
            (batch.approvals, _PUT_APPROVAL),
            (batch.decisions, _PUT_DECISION),
            (batch.log_lines, _PUT_LOG_LINE),
            # after the lines: a line of this batch below the cut goes too
            (batch.log_trims, _TRIM_LOG),
        ):
            if rows:
                work.append((sql, [_params(row) for row in rows.values()]))
        # one trip to the connection's thread for the whole transaction, not one per
        # statement: each trip is a wake-up of the event loop (aiosqlite has no public way
        # to run a function on its thread; ``_execute`` is that, in the pinned version)
        delay = _BUSY_RETRY_S[0]
        while not await self._writer._execute(_write_all, self._writer, work):  # type: ignore[no-untyped-call]
            # another program holds the file's write lock past busy_timeout (a backup, a
            # sqlite3 shell left in a transaction): nothing was written; try again rather
            # than stop the daemon. Meanwhile the writer is stalled, which the watchdog
            # sees (under systemd, a lock held for ever ends in a restart)
            get_logger().warning("store_busy", state=self.where, retry_in_s=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, _BUSY_RETRY_S[1])
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
        runs = await self._runs(f"{clause} ORDER BY run_id", ())
        return [(run, *await self._run_state(run.run_id)) for run in runs]

    async def waiting_runs(
        self, pipeline: str | None = None, *, after: str = "", limit: int = 1_000_000_000
    ) -> list[tuple[str, str]]:
        # by the index on (state, run_id), or (pipeline, state, run_id)
        clause, args = ("AND pipeline = ?", [pipeline]) if pipeline is not None else ("", [])
        rows = await self._reader.execute_fetchall(
            f"SELECT run_id, pipeline FROM runs WHERE {_NEVER_STARTED} {clause} "
            "AND run_id > ? ORDER BY run_id LIMIT ?",
            [*args, after, limit],
        )
        return [(run_id, name) for run_id, name in rows]

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
        rows = await self._reader.execute_fetchall(
            "SELECT min(deadline_at) FROM approvals WHERE state = 'waiting'"
        )
        return next((float(at) for (at,) in rows if at is not None), None)

    async def approvals_due(self, before: float) -> list[ApprovalRow]:
        rows = await self._reader.execute_fetchall(
            "SELECT * FROM approvals WHERE state = 'waiting' AND deadline_at <= ?", (before,)
        )
        return [_approval(r) for r in rows]

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
        tuple(json.loads(r[6])),
        r[7],
    )


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# Row fields held as JSON text; every other field is stored as it is. A row's fields are
# in the order of its table's columns.
_JSON_FIELDS = frozenset({"inputs", "data", "meta", "run_ids", "payload", "usage", "approvers"})


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


#: Turns of the event loop the writer gives attempts whose start is provisional to end,
#: before it takes a batch: a no-op attempt started in one turn ends in the next (more
#: turns only delay every commit a little, for attempts that take longer anyway).
_PROVISIONAL_TURNS = 2

#: How long the writer waits to try a commit again after the file stayed locked by another
#: program past ``busy_timeout`` (doubling from the first to the second).
_BUSY_RETRY_S = (0.05, 1.0)
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _write_all(db: aiosqlite.Connection, work: list[tuple[str, list[tuple[Any, ...]]]]) -> bool:
    """On the writing connection's thread: every statement of a group commit, then the
    commit. False, with nothing written, if the file stayed locked by another program."""
    conn = db._conn
    try:
        for sql, params in work:
            conn.executemany(sql, params)
        conn.commit()
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode not in _BUSY:
            raise
        conn.rollback()
        return False
    return True


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
    dumps = json.dumps

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
            await reader.close()
            await writer.close()
