"""What a restart reads of the runs that wait, on each store (SQLite, PostgreSQL): the
started ones in full, the never-started ones by id only, oldest first, by an index."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from cued.daemon.core.ids import new_id
from cued.daemon.store import InstanceRow, RunRow

if TYPE_CHECKING:
    from tests.support.stores import StoreAt

T0 = 1_800_000_000.0


def run(n: int, pipeline: str, state: str, **kw) -> RunRow:
    return RunRow(new_id(), pipeline, state, {"n": n}, T0 + n, **kw)


async def test_never_started_runs_are_read_by_id_oldest_first_and_the_rest_in_full(
    store_at: StoreAt,
):
    waiting = [run(n, "p" if n % 2 else "q", "queued") for n in range(10)]
    running = run(10, "p", "running", started_at=T0 + 10)
    rerun = run(11, "q", "queued", started_at=T0 + 5)  # queued again, had started before
    done = run(12, "p", "succeeded", started_at=T0, ended_at=T0 + 1)
    async with store_at.open() as store:
        await store.submit(
            [
                *reversed(waiting),
                running,
                rerun,
                done,
                InstanceRow(running.run_id, "t", "t", None, "running", 1, None, T0),
            ]
        ).wait()
    async with store_at.open() as store:
        assert await store.waiting_runs() == [
            (r.run_id, r.pipeline, None, None, 5) for r in waiting
        ]
        assert [w.run_id for w in await store.waiting_runs("p")] == [
            r.run_id for r in waiting if r.pipeline == "p"
        ]
        started = await store.runs_to_resume(waiting=False)
        everything = await store.runs_to_resume()
    assert [row.run_id for row, _, _ in started] == [running.run_id, rerun.run_id]
    assert [i.key for i in started[0][1]] == ["t"]
    assert {row.run_id for row, _, _ in everything} == {
        *(r.run_id for r in waiting),
        running.run_id,
        rerun.run_id,
    }


async def test_sqlite_reads_the_waiting_runs_by_an_index(tmp_path):
    from tests.support.stores import store_at

    async with store_at("sqlite", tmp_path) as at, at.open() as store:
        await store.submit([run(0, "p", "queued")]).wait()
    with sqlite3.connect(at.location) as db:
        waiting = "SELECT run_id, pipeline FROM runs WHERE state = 'queued' AND started_at IS NULL"
        for sql, args in [
            (f"{waiting} ORDER BY run_id", ()),
            (f"{waiting} AND pipeline = ? ORDER BY run_id", ("p",)),
        ]:
            plan = " ".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            assert "USING INDEX" in plan, plan
            assert "TEMP B-TREE" not in plan, plan
