"""Runs whose first attempt runs inline begin in the runner's stepper, with no driver,
task or cancel scope of their own (daemon/runtime/active_run.py ``begin_stepped``): they
end as driven runs do, whatever comes after that attempt (a downstream task, a retry, a
park), and a cancel or a runner stopping stops the attempt where it is. On PostgreSQL
(run slots shared by the nodes) runs are driven as before: the same tests hold there."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel

from cued.daemon.assembly import open_runner
from cued.daemon.config.registry import TASK_KINDS_GROUP, load_group
from tests.support.flood import until
from tests.support.stores import keeping_state_in

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from cued.daemon.runtime.runner import Runner
    from cued.daemon.sdk.kinds import TaskContext


class TurnsParams(BaseModel):
    fail_first: bool = False


class Turns:
    """An inline task kind: yields to the event loop turn after turn until ``released``
    (fails its first attempt if asked), as a kind that promises no I/O may."""

    name: ClassVar[str] = "turns"
    Params: ClassVar[type[BaseModel]] = TurnsParams
    released = False
    turning: ClassVar[set[str]] = set()
    order: ClassVar[list[str]] = []
    begun: ClassVar[anyio.Event | None] = None

    def runs_inline(self, params: TurnsParams) -> bool:
        return True

    async def execute(self, params: TurnsParams, ctx: TaskContext) -> Any:
        Turns.turning.add(ctx.run_id)
        Turns.order.append(ctx.run_id)
        if Turns.begun is not None:
            Turns.begun.set()
        try:
            while not Turns.released:
                await anyio.lowlevel.checkpoint()
        finally:
            Turns.turning.discard(ctx.run_id)
        if params.fail_first and ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return {"attempt": ctx.attempt}


@pytest.fixture
def make_config(make_config, store_at, monkeypatch):
    """This module's configs, once on each store, with the ``turns`` kind installed as a
    plugin's entry point would install it."""
    monkeypatch.setitem(load_group(TASK_KINDS_GROUP), "turns", Turns)
    Turns.released, Turns.begun = False, anyio.Event()
    Turns.turning.clear()
    Turns.order.clear()
    return keeping_state_in(make_config, store_at)


ONE_TASK = """
[pipelines.one]
[pipelines.one.tasks.t]
kind = "turns"
"""


async def test_many_one_task_runs_end_succeeded_with_one_attempt_each(make_config, store_at):
    config = make_config('[pipelines.noop]\n[pipelines.noop.tasks.t]\nkind = "sleep"\n')
    async with open_runner(config) as runner:
        with anyio.fail_after(60):
            ids = [(await runner.start_run("noop")).run_id for _ in range(300)]
            rows = [await runner.wait(i) for i in ids]
            attempts = [await runner.store.get_attempts(i) for i in ids]
        drivers = runner._drivers.drivers if runner._drivers is not None else 0
        assert runner.slots.running_tasks == 0
    assert {r.state for r in rows} == {"succeeded"}
    assert {tuple((a.key, a.attempt, a.state) for a in run) for run in attempts} == {
        (("t", 1, "succeeded"),)
    }
    if store_at.kind == "sqlite":
        assert drivers == 0  # none of them needed one


async def test_what_follows_a_stepped_attempt_goes_on_in_a_driver(make_config):
    """A downstream task (after the result's commit), a retry, a long sleep that parks."""
    config = make_config(
        """
[pipelines.chain]
[pipelines.chain.tasks.a]
kind = "sleep"
[pipelines.chain.tasks.b]
kind = "sleep"
needs = ["a"]
[pipelines.retried]
[pipelines.retried.tasks.t]
kind = "turns"
fail_first = true
retries = 1
retry_backoff = "10ms"
[pipelines.parks]
[pipelines.parks.tasks.later]
kind = "sleep"
seconds = 3600
"""
    )
    Turns.released = True
    async with open_runner(config) as runner:
        with anyio.fail_after(30):
            chain = await runner.wait((await runner.start_run("chain")).run_id)
            retried = await runner.wait((await runner.start_run("retried")).run_id)
            parked = await runner.wait((await runner.start_run("parks")).run_id)
            steps = {
                r.run_id: sorted((a.key, a.attempt, a.state, a.output) for a in attempts)
                for r in (chain, retried, parked)
                for attempts in [await runner.store.get_attempts(r.run_id)]
            }
        assert runner.slots.running_tasks == 0
    assert (chain.state, retried.state, parked.state) == ("succeeded", "succeeded", "waiting")
    assert steps[chain.run_id] == [("a", 1, "succeeded", None), ("b", 1, "succeeded", None)]
    assert [(k, n, s) for k, n, s, _ in steps[retried.run_id]] == [
        ("t", 1, "failed"),
        ("t", 2, "succeeded"),
    ]
    assert steps[retried.run_id][1][3] == {"attempt": 2}
    assert [(k, s) for k, _, s, _ in steps[parked.run_id]] == [("later", "waiting")]


async def test_cancelling_a_run_whose_attempt_is_being_stepped_stops_it_there(make_config):
    config = make_config(ONE_TASK)
    async with open_runner(config) as runner:
        with anyio.fail_after(20):
            run_id = await _started_turning(runner)
            row = await runner.cancel(run_id, reason="no longer wanted")
            instances = {i.key: i.state for i in await runner.store.get_instances(run_id)}
            attempts = [(a.key, a.state) for a in await runner.store.get_attempts(run_id)]
            again = await runner.start_run("one")  # the slot it held is free again
            Turns.released = True
            after = await runner.wait(again.run_id)
        assert runner.slots.running_tasks == 0
    assert (row.state, row.error) == ("cancelled", "no longer wanted")
    assert instances == {"t": "cancelled"}
    assert attempts == [("t", "cancelled")]
    assert run_id not in Turns.turning  # its coroutine was closed, not left stepping
    assert after.state == "succeeded"


async def test_a_runner_stopped_while_it_steps_an_attempt_interrupts_it_and_a_restart_runs_it(
    make_config,
):
    config = make_config(ONE_TASK)
    async with open_runner(config) as runner:
        with anyio.fail_after(20):
            run_id = await _started_turning(runner)
    async with open_runner(config, resume=False) as runner:
        interrupted = [(a.key, a.state) for a in await runner.store.get_attempts(run_id)]
    assert run_id not in Turns.turning
    Turns.released = True
    async with open_runner(config) as runner:
        with anyio.fail_after(20):
            row = await runner.wait(run_id)
            attempts = [(a.attempt, a.state) for a in await runner.store.get_attempts(run_id)]
    assert interrupted == [("t", "interrupted")]
    assert row.state == "succeeded"
    assert attempts == [(1, "interrupted"), (2, "succeeded")]


async def test_runs_beyond_the_task_slots_wait_in_line_and_one_cancelled_there_ends_at_once(
    make_config, store_at
):
    """With every task slot taken, runs whose attempt runs inline wait in the slots' line
    (on SQLite with no driver either), begin in the order they came as slots come free,
    and one cancelled in the line ends cancelled with no attempt."""
    config = make_config("[daemon]\nmax_running_tasks = 2\n" + ONE_TASK)
    async with open_runner(config) as runner:
        with anyio.fail_after(30):
            ids = [(await runner.start_run("one")).run_id for _ in range(5)]
            await until(_turning(2))
            turning = set(Turns.turning)
            await until(_waiting(runner, 3))  # (driven runs on PostgreSQL get there later)
            in_line = [i for i in ids if i not in turning]
            cancelled = await runner.cancel(in_line[1])
            assert runner.slots.tasks_waiting == 2
            Turns.released = True
            rows = {i: await runner.wait(i) for i in ids}
            attempts = {
                i: [(a.attempt, a.state) for a in await runner.store.get_attempts(i)] for i in ids
            }
        drivers = runner._drivers.drivers if runner._drivers is not None else 0
        assert runner.slots.running_tasks == 0
        assert runner.slots.tasks_waiting == 0
    assert cancelled.state == "cancelled"
    assert {i: r.state for i, r in rows.items()} == {
        i: "cancelled" if i == in_line[1] else "succeeded" for i in ids
    }
    assert attempts == {i: [] if i == in_line[1] else [(1, "succeeded")] for i in ids}
    if store_at.kind == "sqlite":  # (drivers, each awaiting the database first, race)
        assert turning == set(ids[:2])
        assert Turns.order == [ids[0], ids[1], ids[2], ids[4]]
        assert drivers == 0


def _turning(n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(Turns.turning) == n

    return check


def _waiting(runner: Runner, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return runner.slots.tasks_waiting == n

    return check


async def _started_turning(runner: Runner) -> str:
    """Start a run of ``one``; its id once its attempt is being stepped."""
    run_id = (await runner.start_run("one")).run_id
    assert Turns.begun is not None
    await Turns.begun.wait()
    return run_id
