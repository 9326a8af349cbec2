"""What the store reads: every query of the Store Protocol, on the reading connection.

SQLite's, and PostgreSQL's too (its readers translate the SQL:
:func:`cued.daemon.store.postgresql.pg_sql`); a store whose nodes share the runs keeps a
node's reads of what to resume to its own runs (:meth:`StoreReads._owned`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from cued.daemon.core.assets import ASSET_SOURCES, asset_of
from cued.daemon.core.untrusted import stored
from cued.daemon.errors import StoreError
from cued.daemon.store import (
    ApprovalRow,
    AttemptRow,
    CancelRow,
    ConfigVersionRow,
    DecisionRow,
    EventRow,
    HoldRow,
    InstanceRow,
    LogLineRow,
    NodeRow,
    OutboxRow,
    PauseRow,
    RunRow,
    ThrottleRow,
    WaitingRun,
    WaitRow,
    WindowRow,
    pruning,
)
from cued.daemon.store._selects import (
    _EVENT_WITHOUT_DATA,
    _NEVER_STARTED,
    _NO_KEY_LIMIT,
    COUNT_RUNS_BY_STATE,
    COUNT_WAITING_APPROVALS,
    _approval,
    _chunks,
    _config_version,
    _event,
    _event_without_data,
    _loads,
    _run,
    _wait,
    events_query,
    runs_query,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence


class StoreReads:
    """The half of :class:`~cued.daemon.store.sqlite.SqliteStore` that reads (and writes
    nothing): on its reading connection, which WAL lets go on while the writer commits."""

    where: str
    _reader: pruning.Connection

    async def paused_pipelines(self) -> dict[str, PauseRow]:
        rows = await self._reader.execute_fetchall("SELECT * FROM paused_pipelines")
        return {str(r[0]): PauseRow(str(r[0]), float(r[1]), r[2]) for r in rows}

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

    claims_waiting_runs = False

    async def next_waiting(
        self, pipeline: str, priority: int, *, after: str, limit: int, anyone: bool = False
    ) -> list[RunRow]:
        # by the partial index runs_waiting_lane: the lane's waiting runs, in order
        return await self._runs(
            f"WHERE pipeline = ? AND priority = ? AND {_NEVER_STARTED} AND {_NO_KEY_LIMIT} "
            "AND run_id > ? ORDER BY run_id LIMIT ?",
            (pipeline, priority, after, limit),
        )

    async def claim_runs(self, run_ids: Sequence[str]) -> list[RunRow]:
        return await self.get_runs(run_ids)

    def _owned(self) -> tuple[str, list[Any]]:
        """The clause that keeps a read of runs to resume to this node's own (and its
        arguments): none on SQLite, whose one node owns every run."""
        return "", []

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
