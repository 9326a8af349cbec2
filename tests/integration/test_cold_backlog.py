"""Waiting runs stay on disk: a pipeline keeps at most ``backlog_window`` waiting runs
loaded; the rest wait in the store, by id, and still start in order, exactly once, also
after a restart, a cancel, or with backpressure on. On each store (SQLite, PostgreSQL)."""

from __future__ import annotations

import anyio
import pytest

from cued.daemon.assembly import open_runner
from cued.daemon.runtime import pausing, resumption
from tests.support import probes
from tests.support.stores import keeping_state_in

WINDOW = 4


@pytest.fixture
def make_config(make_config, store_at):
    return keeping_state_in(make_config, store_at)


def read_in_pages_of(monkeypatch, size: int) -> None:
    """The waiting runs are read ``size`` at a time, at a restart and at an unpause."""
    for module in (resumption, pausing):
        monkeypatch.setattr(module, "PAGE", size)


def config_text(*, high: int = 10_000, low: int = 5_000) -> str:
    # one run at a time; each run's task records its number, the first holds until released
    return f"""
[daemon]
backlog_window = {WINDOW}
backlog_high_water = {high}
backlog_low_water = {low}

[pipelines.p]
max_active_runs = 1
inputs = {{ n = 0 }}
[pipelines.p.tasks.t]
kind = "python"
function = "tests.support.probes:record"
args = {{ name = "n{{{{ inputs.n }}}}", until_released = true }}
"""


async def test_a_flood_far_past_the_window_starts_every_run_once_in_order(make_config):
    probe = probes.reset()
    config = make_config(config_text())
    loaded: list[int] = []
    async with open_runner(config) as runner:
        runner.on_run_finished(lambda _: loaded.append(runner.backlog.loaded_of("p")))
        with anyio.fail_after(60):
            ids = []
            for n in range(120):
                ids.append((await runner.start_run("p", {"n": n})).run_id)
                loaded.append(runner.backlog.loaded_of("p"))
            await probe.entered.wait()
            # the first holds its slot: the other 119 wait, all but a window of them cold
            assert runner.backlog.depth == 119
            assert runner.backlog.loaded_of("p") <= WINDOW
            assert runner.backlog.cold_of("p") >= 119 - WINDOW
            # nothing of a cold run is in memory: it waits counted in its lane
            assert sum(runner.is_active(i) for i in ids) <= WINDOW + 1
            probe.released.set()
            rows = [await runner.wait(i) for i in ids]
        assert runner.backlog.depth == 0
    assert {r.state for r in rows} == {"succeeded"}
    assert probe.calls == [f"n{n}" for n in range(120)]
    assert max(loaded) <= WINDOW


async def test_a_cold_run_cancelled_never_starts_and_the_rest_go_on_in_order(make_config):
    probe = probes.reset()
    config = make_config(config_text())
    async with open_runner(config) as runner:
        with anyio.fail_after(60):
            ids = [(await runner.start_run("p", {"n": n})).run_id for n in range(30)]
            await probe.entered.wait()
            assert runner.backlog.cold_of("p") > 0
            cancelled = await runner.cancel(ids[20])
            assert cancelled.state == "cancelled"
            assert not runner.is_active(ids[20])
            assert runner.backlog.depth == 28
            probe.released.set()
            rows = {i: await runner.wait(i) for i in ids}
        recorded = await runner.store.get_run(ids[20])
    assert recorded is not None
    assert recorded.state == "cancelled"
    assert rows[ids[20]].state == "cancelled"
    assert [rows[i].state for i in ids if i != ids[20]] == ["succeeded"] * 29
    assert probe.calls == [f"n{n}" for n in range(30) if n != 20]


async def test_a_restart_loads_a_window_of_the_waiting_runs_and_starts_them_all_in_order(
    make_config, monkeypatch
):
    read_in_pages_of(monkeypatch, 7)
    probe = probes.reset()
    config = make_config(config_text())
    async with open_runner(config) as runner:
        with anyio.fail_after(60):
            ids = [(await runner.start_run("p", {"n": n})).run_id for n in range(40)]
            await probe.entered.wait()
    # stopped while the first ran and 39 waited; the next process starts them all
    probe = probes.reset()
    probe.released.set()
    async with open_runner(config) as runner:
        assert runner.backlog.depth <= 40
        assert runner.backlog.loaded_of("p") <= WINDOW
        with anyio.fail_after(60):
            rows = [await runner.wait(i) for i in ids]
    assert {r.state for r in rows} == {"succeeded"}
    assert probe.calls == [f"n{n}" for n in range(40)]


async def test_cold_runs_count_for_backpressure(make_config):
    probe = probes.reset()
    config = make_config(config_text(high=12, low=6))
    flips: list[bool] = []
    async with open_runner(config) as runner:
        runner.backlog.on_change(flips.append)
        with anyio.fail_after(60):
            ids = [(await runner.start_run("p", {"n": n})).run_id for n in range(13)]
            await probe.entered.wait()
            # one runs, twelve wait: most of them cold, and the backlog is saturated
            assert runner.backlog.loaded_of("p") <= WINDOW
            assert runner.backlog.saturated
            assert not runner.backlog.accepting()
            probe.released.set()
            for i in ids:
                await runner.wait(i)
    assert flips == [True, False]
    assert probe.calls == [f"n{n}" for n in range(13)]


async def test_an_unpause_starts_what_waited_cold_and_what_waited_in_the_store_in_order(
    make_config, monkeypatch
):
    read_in_pages_of(monkeypatch, 7)
    probe = probes.reset()
    config = make_config(config_text())
    async with open_runner(config) as runner:
        with anyio.fail_after(60):
            ids = [(await runner.start_run("p", {"n": n})).run_id for n in range(20)]
            await probe.entered.wait()
            await runner.pause("p")
            # recorded while paused: in the store only, not in the backlog
            ids += [(await runner.start_run("p", {"n": n})).run_id for n in range(20, 40)]
            assert runner.backlog.depth == 19
            assert await runner.unpause("p") == 20
            assert runner.backlog.depth == 39
            assert runner.backlog.loaded_of("p") <= WINDOW
            probe.released.set()
            rows = [await runner.wait(i) for i in ids]
    assert {r.state for r in rows} == {"succeeded"}
    assert probe.calls == [f"n{n}" for n in range(40)]


async def test_runs_recorded_before_a_restart_resumes_come_after_the_waiting_ones_once(
    make_config,
):
    probe = probes.reset()
    config = make_config(config_text())
    async with open_runner(config) as runner:
        with anyio.fail_after(60):
            ids = [(await runner.start_run("p", {"n": n})).run_id for n in range(12)]
            await probe.entered.wait()
    probe = probes.reset()
    probe.released.set()
    # as the daemon does: its sources (here, triggers) run before unfinished runs resume
    async with open_runner(config, resume=False) as runner:
        with anyio.fail_after(60):
            ids += [(await runner.start_run("p", {"n": n})).run_id for n in range(12, 15)]
            assert runner.backlog.depth == 0  # held until the resume
            # the three recorded meanwhile are in the store already: they go with the rest
            assert await runner.resume_unfinished() == 15
            rows = [await runner.wait(i) for i in ids]
    assert {r.state for r in rows} == {"succeeded"}
    assert probe.calls == [f"n{n}" for n in range(15)]


@pytest.mark.parametrize(
    "comes_back_during",
    [
        pytest.param("get_run", id="the-cancels-first-look"),
        pytest.param("run_state", id="the-cancels-read-of-its-state"),
    ],
)
async def test_a_cold_run_cancelled_while_a_read_of_it_is_out_never_starts(
    make_config, monkeypatch, comes_back_during
):
    """The read of the next waiting runs (a claim, on PostgreSQL) is out when a cancel of
    one of them comes; the read, which found it queued, comes back while the cancel awaits
    a read of its own (its first look at the run, or its read of the run's state before it
    cancels it in the store) and places the run in memory: the run is cancelled there too,
    and never starts."""
    probe = probes.reset()
    config = make_config(config_text())
    async with open_runner(config) as runner:
        store = runner.store
        with anyio.fail_after(60):
            ids = [(await runner.start_run("p", {"n": n})).run_id for n in range(12)]
            await probe.entered.wait()
            target = ids[WINDOW + 1]  # the first cold one: the next read's
            assert not runner.is_active(target)
            read_back = anyio.Event()
            read, cancels_read = store.next_waiting, getattr(store, comes_back_during)

            async def held_read(*args, **kwargs):
                found = await read(*args, **kwargs)
                if any(row.run_id == target for row in found):
                    await read_back.wait()  # out until the cancel reads the run
                return found

            async def placed_meanwhile(run_id):
                if run_id == target and not read_back.is_set():
                    # the cancel reads the run: the read comes back meanwhile, and places
                    # the run (queued, as it read it) in memory
                    read_back.set()
                    while not runner.is_active(target):  # noqa: ASYNC110 - nothing signals a placement
                        await anyio.sleep(0.01)
                return await cancels_read(run_id)

            monkeypatch.setattr(store, "next_waiting", held_read)
            monkeypatch.setattr(store, comes_back_during, placed_meanwhile)
            # three of the loaded ones go: the window half empties, and a read goes out
            for run_id in ids[1:4]:
                await runner.cancel(run_id)
            cancelled = await runner.cancel(target)
            assert cancelled.state == "cancelled"
            assert read_back.is_set()  # (the interleaving this test is about took place)
            probe.released.set()
            rows = {i: await runner.wait(i) for i in ids}
        recorded = await store.get_run(target)
    assert recorded is not None
    assert recorded.state == "cancelled"
    assert rows[target].state == "cancelled"
    gone = {1, 2, 3, WINDOW + 1}
    assert probe.calls == [f"n{n}" for n in range(12) if n not in gone]
