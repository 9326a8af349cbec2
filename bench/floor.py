"""Bare-library floor for the core benchmark: what asyncio + aiosqlite alone can do.

Workload (the same as the engine and Prefect halves): ``--runs`` runs, one after another,
each of ``--tasks`` no-op tasks started at once with no dependencies between them, durable
state on.

Per task the floor does the least work any durable engine must do for it:

* enqueue an INSERT of its ``running`` row (with a timestamp),
* run the no-op body (which only stamps the time it started),
* enqueue an UPDATE of the same row to ``succeeded`` (with a timestamp).

All writes go through ONE aiosqlite connection owned by a single writer coroutine doing
group commit (WAL, ``synchronous=NORMAL``): writers append to a queue; the writer takes
everything queued, executes it in one transaction (one ``executemany`` per distinct
statement, INSERTs first), commits, then wakes every waiter of that batch. A run is
finished only when all of its rows are committed; the next run is requested after that.

So the work per task is the same as in an engine (two durable state rows, one body call),
minus everything an engine adds: no graph, no scheduler, no event bus, no plugin lookup,
no serialisation. Any engine figure divided by this one is the engine's overhead factor.

Measured:

* ``tasks_per_s``: task instances / wall time from the first run's request to the last
  run's rows being committed (warm-up run excluded).
* ``first_task_p50_ms`` / ``first_task_p99_ms``: per run, time from the moment the run is
  requested to the moment its first task body starts (``time.perf_counter``).
* ``peak_rss_mb``: peak resident set size of this process (``ru_maxrss``).

Prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

INSERT_SQL = (
    "INSERT INTO task_instances (run_id, task_id, state, updated_at) VALUES (?, ?, 'running', ?)"
)
UPDATE_SQL = (
    "UPDATE task_instances SET state = 'succeeded', updated_at = ? WHERE run_id = ? AND task_id = ?"
)
SCHEMA = """
DROP TABLE IF EXISTS task_instances;
CREATE TABLE task_instances (
    run_id     INTEGER NOT NULL,
    task_id    INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    updated_at REAL    NOT NULL,
    PRIMARY KEY (run_id, task_id)
);
"""

Params = tuple[Any, ...]


@dataclass
class GroupCommitWriter:
    """One aiosqlite connection, one writer coroutine, one transaction per batch."""

    conn: aiosqlite.Connection
    _pending: list[tuple[str, Params]] = field(default_factory=list)
    _batch_done: asyncio.Future[None] | None = None
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _closing: bool = False
    batches: int = 0
    rows: int = 0

    def submit(self, sql: str, params: Params) -> asyncio.Future[None]:
        """Queue one statement; the returned future resolves once its batch is committed."""
        if self._batch_done is None:
            self._batch_done = asyncio.get_running_loop().create_future()
        self._pending.append((sql, params))
        self._wakeup.set()
        return self._batch_done

    def close(self) -> None:
        self._closing = True
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                if self._closing:
                    return
                continue
            batch, self._pending = self._pending, []
            done, self._batch_done = self._batch_done, None
            assert done is not None
            try:
                await self._write(batch)
            except BaseException as exc:
                done.set_exception(exc)
                raise
            done.set_result(None)

    async def _write(self, batch: list[tuple[str, Params]]) -> None:
        # One executemany per distinct statement, INSERTs first, so no UPDATE runs before
        # its row exists; queue order is kept within each statement. (Each row here gets
        # one INSERT and then UPDATEs, so this reordering is safe.)
        groups: dict[str, list[Params]] = {}
        for sql, params in batch:
            groups.setdefault(sql, []).append(params)
        for sql in sorted(groups, key=lambda s: not s.startswith("INSERT")):
            await self.conn.executemany(sql, groups[sql])
        await self.conn.commit()
        self.batches += 1
        self.rows += len(batch)


async def noop_task(
    writer: GroupCommitWriter, run_id: int, task_id: int, body_starts: list[float]
) -> asyncio.Future[None]:
    writer.submit(INSERT_SQL, (run_id, task_id, time.time()))
    body_starts.append(time.perf_counter())  # the no-op body: only stamps its start
    return writer.submit(UPDATE_SQL, (time.time(), run_id, task_id))


async def one_run(writer: GroupCommitWriter, run_id: int, tasks: int) -> float:
    """Run ``tasks`` no-op tasks at once; return seconds from request to first body start."""
    requested = time.perf_counter()
    body_starts: list[float] = []
    durable = await asyncio.gather(
        *(noop_task(writer, run_id, t, body_starts) for t in range(tasks))
    )
    await asyncio.gather(*dict.fromkeys(durable))  # every batch holding this run's rows
    return min(body_starts) - requested


def percentile(samples: list[float], pct: int) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


async def bench(runs: int, tasks: int, warmup: int, db: Path) -> dict[str, Any]:
    async with aiosqlite.connect(db) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.executescript(SCHEMA)
        await conn.commit()

        writer = GroupCommitWriter(conn)
        writer_task = asyncio.create_task(writer.run())
        for w in range(warmup):
            await one_run(writer, -1 - w, tasks)
        batches0, rows0 = writer.batches, writer.rows

        t0 = time.perf_counter()
        latencies = [await one_run(writer, r, tasks) for r in range(runs)]
        wall = time.perf_counter() - t0

        writer.close()
        await writer_task
        async with conn.execute(
            "SELECT count(*) FROM task_instances WHERE run_id >= 0 AND state = 'succeeded'"
        ) as cur:
            row = await cur.fetchone()
        if row is None or row[0] != runs * tasks:
            raise RuntimeError(f"expected {runs * tasks} succeeded rows, found {row}")

    n = runs * tasks
    return {
        "name": "floor",
        "runs": runs,
        "tasks_per_run": tasks,
        "tasks": n,
        "wall_s": round(wall, 4),
        "tasks_per_s": round(n / wall, 1),
        "first_task_p50_ms": round(percentile(latencies, 50) * 1e3, 4),
        "first_task_p99_ms": round(percentile(latencies, 99) * 1e3, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "commits": writer.batches - batches0,
        "rows_per_commit": round((writer.rows - rows0) / max(1, writer.batches - batches0), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="runs, one after another")
    parser.add_argument("--tasks", type=int, default=100, help="no-op tasks per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument(
        "--db",
        type=Path,
        default=None,
        help="SQLite file (its task_instances table is dropped); default: a temp dir",
    )
    args = parser.parse_args()
    if args.runs < 1 or args.tasks < 1:
        parser.error("--runs and --tasks must be >= 1")

    if args.db is not None:
        result = asyncio.run(bench(args.runs, args.tasks, args.warmup, args.db))
    else:
        with tempfile.TemporaryDirectory(prefix="cued-floor-") as tmp:
            result = asyncio.run(bench(args.runs, args.tasks, args.warmup, Path(tmp) / "floor.db"))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
