"""Cold runs wait counted in their lane (a count and a cursor per pipeline and priority),
not by id: they are read from the store in order, the highest priority first and the
oldest first within one, across many refills of a small window and across a restart in
the middle. On each store (SQLite, PostgreSQL)."""

from __future__ import annotations

from dataclasses import replace

import anyio
import pytest

from cued.daemon.assembly import open_runner
from tests.integration.test_cold_backlog import WINDOW, config_text
from tests.support import probes
from tests.support.stores import keeping_state_in

PRIORITIES = (1, 9, 5)  # in turn, as the runs come


@pytest.fixture
def make_config(make_config, store_at):
    return keeping_state_in(make_config, store_at)


async def record_runs(runner, numbers: range) -> list[str]:
    """Record runs of ``p`` (the n-th of priority ``PRIORITIES[n % 3]``) as a trigger does:
    recorded, then handed over."""
    ids = []
    for n in numbers:
        row = replace(runner.new_run("p", {"n": n}), priority=PRIORITIES[n % 3])
        await runner.store.submit([row]).wait()
        runner.enqueue(row)
        ids.append(row.run_id)
    return ids


def in_lane_order(numbers: range) -> list[str]:
    """What starts: the highest priority first, the oldest first within one."""
    by_lane = sorted(numbers, key=lambda n: (-PRIORITIES[n % 3], n))
    return [f"n{n}" for n in by_lane]


async def test_cold_runs_start_by_priority_then_arrival_across_refills(make_config):
    probe = probes.reset()
    config = make_config(config_text())
    async with open_runner(config) as runner:
        with anyio.fail_after(60):
            first = (await runner.start_run("p", {"n": -1})).run_id
            await probe.entered.wait()  # it holds the one slot: the rest wait
            ids = await record_runs(runner, range(60))
            assert runner.backlog.depth == 60
            assert runner.backlog.loaded_of("p") <= WINDOW
            # nothing per cold run in memory: no id, only each lane's count
            assert runner.backlog.cold_ids("p") == []
            assert runner.backlog.cold_of("p") >= 60 - WINDOW
            probe.released.set()
            rows = [await runner.wait(i) for i in [first, *ids]]
        assert runner.backlog.depth == 0
    assert {r.state for r in rows} == {"succeeded"}
    # all waited before any started: loaded or cold, by lane, then as they came
    assert probe.calls == ["n-1", *in_lane_order(range(60))], " ".join(probe.calls)


async def test_a_restart_in_the_middle_reads_the_lanes_again_in_order_and_starts_each_once(
    make_config,
):
    probe = probes.reset()
    config = make_config(config_text())
    async with open_runner(config) as runner:
        with anyio.fail_after(60):
            first = (await runner.start_run("p", {"n": -1})).run_id
            await probe.entered.wait()
            ids = await record_runs(runner, range(40))
            assert runner.backlog.depth == 40
    # stopped with the first running, a window loaded and the rest cold in their lanes
    probe = probes.reset()
    probe.released.set()
    async with open_runner(config) as runner:
        assert runner.backlog.depth <= 41
        assert runner.backlog.loaded_of("p") <= WINDOW
        with anyio.fail_after(60):
            rows = [await runner.wait(i) for i in [first, *ids]]
            # runs that come after the restart wait behind those of their lane
            later = await record_runs(runner, range(40, 46))
            later_rows = [await runner.wait(i) for i in later]
    assert {r.state for r in [*rows, *later_rows]} == {"succeeded"}
    # the run that was running goes on first; the waiting ones by lane, then arrival
    assert probe.calls[:41] == ["n-1", *in_lane_order(range(40))]
    assert sorted(probe.calls[41:]) == sorted(f"n{n}" for n in range(40, 46))
    assert len(probe.calls) == 47  # each once


async def test_a_run_cancelled_while_it_waits_counted_in_the_store_never_starts(make_config):
    probe = probes.reset()
    config = make_config(config_text())
    async with open_runner(config) as runner:
        with anyio.fail_after(60):
            await runner.start_run("p", {"n": -1})
            await probe.entered.wait()
            ids = await record_runs(runner, range(30))
            depth = runner.backlog.depth
            cancelled = await runner.cancel(ids[25])  # cold: counted in its lane only
            assert cancelled.state == "cancelled"
            assert runner.backlog.depth == depth - 1
            probe.released.set()
            rows = {i: await runner.wait(i) for i in ids}
    assert rows[ids[25]].state == "cancelled"
    assert "n25" not in probe.calls
    assert sorted(probe.calls) == sorted(["n-1", *(f"n{n}" for n in range(30) if n != 25)])
