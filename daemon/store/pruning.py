"""Retention: the queries that delete what a :class:`~cued.daemon.store.rows.PrunePolicy`
lets go, a bounded step at a time, and count what they would.

A *step* deletes at most ``limit`` rows and is one transaction, run by the store's single
writer between two group commits (:meth:`cued.daemon.store.sqlite.SqliteStore.prune`): pruning
a year of history never holds the writer for longer than one step, and never writes from
a second connection. Each query is a range scan of an index (migration 4), oldest first.

The queries are SQLite's, and PostgreSQL's through the translation of
:mod:`cued.daemon.store.postgresql` (placeholders, and no index hints): both stores
delete the same rows in the same order. A connection is anything with SQLite's
``execute_fetchall``; a DELETE counts its rows with ``RETURNING``, which both have.

A run goes with everything that hangs off it (task instances, attempts, approval gates,
decisions, task log lines), in the same step: readers never see a run that lost part of its history,
except a run too big for one step, whose rows go over several steps before it does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from cued.daemon.core.states import TERMINAL_RUN_STATES, RunState
from cued.daemon.store.rows import GIVEN_UP_AT, PruneCounts

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

    from cued.daemon.store import PrunePolicy

__all__ = ["Connection", "count", "step"]

#: An event flow control holds (a debounce window, a batch, a delay) is kept, however old:
#: its run has not started yet.
_NOT_HELD = "NOT EXISTS (SELECT 1 FROM flow_holds WHERE flow_holds.event_id = events.event_id)"


class Connection(Protocol):
    """What pruning needs of a connection: a statement's rows (aiosqlite's method)."""

    async def execute_fetchall(
        self, sql: str, parameters: Iterable[Any] | None = None
    ) -> Iterable[Any]: ...


# As in the partial index runs_finished (made anew by the migration that added "skipped"),
# word for word: SQLite uses a partial index only for a query whose WHERE implies the
# index's. Named, since the planner
# would rather take runs_by_state for the IN, which holds every finished run there is,
# then sort them all. The states in the order RunState declares them, as the index has
# them: "state IN ('succeeded', 'failed', 'cancelled', 'skipped')".
_FINISHED = "state IN ({})".format(
    ", ".join(f"'{state.value}'" for state in RunState if state in TERMINAL_RUN_STATES)
)
_OLD_RUNS = f"runs INDEXED BY runs_finished WHERE {_FINISHED} AND ended_at < ?"

# The tables keyed by run, each with its primary key (run_id first)
_OF_RUN: dict[str, tuple[str, ...]] = {
    "task_instances": ("run_id", "key"),
    "attempts": ("run_id", "key", "attempt"),
    "approvals": ("run_id", "key"),
    "decisions": ("run_id", "key", "attempt", "who"),
    "task_logs": ("run_id", "seq"),
    "waits": ("run_id", "key", "attempt"),
    "run_cancels": ("run_id",),
}

_OUTBOX_DONE = "(sent_at IS NOT NULL OR next_at >= ?)"


async def step(
    db: Connection, policy: PrunePolicy, limit: int, busy: Collection[str] = ()
) -> PruneCounts:
    """Delete at most ``limit`` rows that ``policy`` lets go, oldest first, within the
    transaction the caller holds.

    :param busy: runs that must be left alone this time (rows of theirs wait to be
        committed: deleting the run first would leave those orphaned)
    :returns: what was deleted; nothing means nothing more goes
    """
    counts: dict[str, int] = dict.fromkeys(PruneCounts.tables(), 0)
    left = limit
    if policy.runs_before is not None:
        left -= await _runs(db, policy.runs_before, left, busy, counts)
    if left > 0 and policy.events_before is not None:
        counts["events"] = n = await _deleted(
            db,
            "DELETE FROM events WHERE event_id IN (SELECT event_id FROM events "
            f"WHERE received_at < ? AND {_NOT_HELD} ORDER BY received_at LIMIT ?)",
            (policy.events_before, left),
        )
        left -= n
    if left > 0:
        counts["dedupe_keys"] = n = await _dedupe(db, policy, left)
        left -= n
    if left > 0 and policy.alerts_before is not None:
        counts["outbox"] = await _deleted(
            db,
            "DELETE FROM outbox WHERE alert_id IN (SELECT alert_id FROM outbox "
            f"WHERE created_at < ? AND {_OUTBOX_DONE} ORDER BY created_at LIMIT ?)",
            (policy.alerts_before, GIVEN_UP_AT, left),
        )
    return PruneCounts(**counts)


async def _runs(
    db: Connection,
    before: float,
    limit: int,
    busy: Collection[str],
    counts: dict[str, int],
) -> int:
    """Delete the oldest finished runs with their rows, ``limit`` rows at most."""
    sizes = " + ".join(
        f"(SELECT count(*) FROM {table} t WHERE t.run_id = runs.run_id)" for table in _OF_RUN
    )
    found = await db.execute_fetchall(
        f"SELECT run_id, {sizes} FROM {_OLD_RUNS} ORDER BY ended_at LIMIT ?",
        (before, limit),
    )
    taken: list[str] = []
    rows = 0
    for run_id, size in found:
        if run_id in busy:
            continue
        if rows + 1 + size > limit:
            if not taken:
                # one run with more rows than a step may delete: its rows go over several
                # steps, then the run itself (it stays the oldest until then)
                return await _part_of_run(db, run_id, limit, counts)
            break
        taken.append(run_id)
        rows += 1 + size
    if not taken:
        return 0
    marks = ",".join("?" * len(taken))
    for table in _OF_RUN:
        counts[table] += await _deleted(db, f"DELETE FROM {table} WHERE run_id IN ({marks})", taken)
    counts["runs"] += await _deleted(db, f"DELETE FROM runs WHERE run_id IN ({marks})", taken)
    return rows


async def _part_of_run(db: Connection, run_id: str, limit: int, counts: dict[str, int]) -> int:
    deleted = 0
    for table, key in _OF_RUN.items():
        if deleted >= limit:
            break
        columns = ", ".join(key)
        n = await _deleted(
            db,
            f"DELETE FROM {table} WHERE ({columns}) IN "
            f"(SELECT {columns} FROM {table} WHERE run_id = ? LIMIT ?)",
            (run_id, limit - deleted),
        )
        counts[table] += n
        deleted += n
    return deleted


async def _dedupe(db: Connection, policy: PrunePolicy, limit: int) -> int:
    """Delete dedupe keys past their trigger's window, trigger by trigger."""
    deleted = 0
    trigger = await _next_trigger(db, None)
    while trigger is not None and deleted < limit:
        before = policy.dedupe_before.get(trigger, policy.dedupe_other_before)
        if before is not None:
            deleted += await _deleted(
                db,
                "DELETE FROM dedupe_keys WHERE trigger = ? AND key IN (SELECT key FROM "
                "dedupe_keys WHERE trigger = ? AND seen_at < ? LIMIT ?)",
                (trigger, trigger, before, limit - deleted),
            )
        trigger = await _next_trigger(db, trigger)
    return deleted


async def _next_trigger(db: Connection, after: str | None) -> str | None:
    # one seek in the primary key per trigger, however many keys each has
    rows = await db.execute_fetchall(
        "SELECT min(trigger) FROM dedupe_keys" + ("" if after is None else " WHERE trigger > ?"),
        () if after is None else (after,),
    )
    return next((t for (t,) in rows), None)


async def _deleted(db: Connection, sql: str, args: Any) -> int:
    return len(list(await db.execute_fetchall(sql + " RETURNING 1", args)))


async def count(db: Connection, policy: PrunePolicy) -> PruneCounts:
    """How many rows :func:`step` would delete, taken to the end, now."""
    counts: dict[str, int] = dict.fromkeys(PruneCounts.tables(), 0)
    if policy.runs_before is not None:
        runs = f"SELECT run_id FROM {_OLD_RUNS}"
        counts["runs"] = await _count(
            db, f"SELECT count(*) FROM ({runs}) AS old", policy.runs_before
        )
        for table in _OF_RUN:
            counts[table] = await _count(
                db,
                f"SELECT count(*) FROM {table} WHERE run_id IN ({runs})",
                policy.runs_before,
            )
    if policy.events_before is not None:
        counts["events"] = await _count(
            db,
            f"SELECT count(*) FROM events WHERE received_at < ? AND {_NOT_HELD}",
            policy.events_before,
        )
    trigger = await _next_trigger(db, None)
    while trigger is not None:
        before = policy.dedupe_before.get(trigger, policy.dedupe_other_before)
        if before is not None:
            counts["dedupe_keys"] += await _count(
                db,
                "SELECT count(*) FROM dedupe_keys WHERE trigger = ? AND seen_at < ?",
                trigger,
                before,
            )
        trigger = await _next_trigger(db, trigger)
    if policy.alerts_before is not None:
        counts["outbox"] = await _count(
            db,
            f"SELECT count(*) FROM outbox WHERE created_at < ? AND {_OUTBOX_DONE}",
            policy.alerts_before,
            GIVEN_UP_AT,
        )
    return PruneCounts(**counts)


async def _count(db: Connection, sql: str, *args: Any) -> int:
    ((n,),) = await db.execute_fetchall(sql, args)
    return int(n)
