"""``cued store copy``: the whole state from one store into another, empty one (SQLite to
PostgreSQL to move up, or back), verified by counting every table's rows on both sides.

Rows go as they are kept, column for column (both schemas have the same tables with their
columns in the same order), so JSON documents, times and ids arrive unchanged. Each table
is read a page at a time in its key's order and written a page per transaction through
the target's writer; a copy that stops half-way leaves a target that the next attempt
refuses as not empty (drop it and start again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cued.daemon.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.store.sqlite import SqliteStore

__all__ = ["TABLES", "copy_state", "count_rows"]

#: Every table of the state, with its primary key, in the order they are copied.
TABLES: dict[str, tuple[str, ...]] = {
    "runs": ("run_id",),
    "task_instances": ("run_id", "key"),
    "attempts": ("run_id", "key", "attempt"),
    "events": ("event_id",),
    "dedupe_keys": ("trigger", "key"),
    "source_cursors": ("source",),
    "outbox": ("alert_id",),
    "approvals": ("run_id", "key"),
    "decisions": ("run_id", "key", "attempt", "who"),
    "paused_pipelines": ("pipeline",),
    "task_logs": ("run_id", "seq"),
    "config_versions": ("version",),
    "waits": ("run_id", "key", "attempt"),
    "run_cancels": ("run_id",),
    "flow_windows": ("window_id",),
    "flow_holds": ("window_id", "seq"),
    "flow_throttles": ("trigger", "key"),
}


async def count_rows(store: SqliteStore) -> dict[str, int]:
    """How many rows each table of ``store`` holds."""
    counts: dict[str, int] = {}
    for table in TABLES:
        ((n,),) = await store._reader.execute_fetchall(f"SELECT count(*) FROM {table}")
        counts[table] = int(n)
    return counts


async def copy_state(
    source: SqliteStore,
    target: SqliteStore,
    *,
    page: int = 1000,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Copy every row of ``source`` into ``target``; return the rows of each table.

    :param progress: called with a table and how many of its rows are copied so far
    :raises StoreError: if ``target`` is not empty, or the counts differ afterwards (the
        source changed meanwhile: stop its daemon first)
    """
    if held := {t: n for t, n in (await count_rows(target)).items() if n}:
        raise StoreError(
            f"{target.where!r} is not empty ({_listed(held)}): copy into an empty store"
        )
    for table, key in TABLES.items():
        columns = ", ".join(key)
        after: tuple[Any, ...] | None = None
        copied = 0
        while True:
            where = "" if after is None else f"WHERE ({columns}) > ({', '.join('?' * len(key))})"
            # the key once more at the end of each row: where the next page starts
            found = list(
                await source._reader.execute_fetchall(
                    f"SELECT *, {columns} FROM {table} {where} ORDER BY {columns} LIMIT ?",
                    [*(after or ()), page],
                )
            )
            if not found:
                break
            await target._chore(_inserting(table, [tuple(r)[: -len(key)] for r in found]))
            copied += len(found)
            if progress is not None:
                progress(table, copied)
            after = tuple(found[-1])[-len(key) :]
    before, after_counts = await count_rows(source), await count_rows(target)
    if before != after_counts:
        differ = {t: (before[t], after_counts[t]) for t in TABLES if before[t] != after_counts[t]}
        raise StoreError(
            f"the copy's counts differ (table: source, target): {differ}; the source changed "
            "while it was copied: stop its daemon, empty the target and copy again"
        )
    return before


def _inserting(table: str, rows: list[tuple[Any, ...]]) -> Callable[[Any], Any]:
    marks = ", ".join("?" * len(rows[0]))

    async def insert(db: Any) -> None:
        await db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)

    return insert


def _listed(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {table}" for table, n in counts.items())
