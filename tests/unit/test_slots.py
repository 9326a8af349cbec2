"""The runner's slots (daemon/runtime/slots.py): runs per pipeline, attempts in all and
per pool, and draining."""

from __future__ import annotations

import anyio

from cued.daemon.runtime.slots import Slots


def test_a_pipelines_runs_hold_its_slots():
    slots = Slots(4, {}, {"etl": 2, "other": 1})
    slots.take_run_slot("etl")
    assert slots.run_slot_free("etl")
    slots.take_run_slot("etl")
    assert not slots.run_slot_free("etl")
    assert slots.run_slot_free("other")
    assert slots.active_runs == 2
    slots.free_run_slot("etl")
    assert slots.run_slot_free("etl")
    assert slots.active_runs == 1


async def test_attempts_beyond_a_pools_size_wait_and_are_counted():
    slots = Slots(10, {"db": 1}, {})
    release = anyio.Event()
    entered: list[str] = []

    async def attempt(name: str) -> None:
        async with slots.task_slot("db"):
            with slots.running():
                entered.append(name)
                await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt, "first")
            tg.start_soon(attempt, "second")
            await anyio.wait_all_tasks_blocked()
            assert entered == ["first"]
            assert slots.running_tasks == 1
            assert slots.tasks_waiting == 1
            release.set()
    assert entered == ["first", "second"]
    assert slots.running_tasks == 0
    assert slots.tasks_waiting == 0


async def test_drain_returns_once_the_running_attempts_end_and_none_starts_after():
    slots = Slots(1, {}, {})
    release = anyio.Event()
    drained = anyio.Event()

    async def running() -> None:
        async with slots.task_slot(None):
            with slots.running():
                await release.wait()

    async def drain() -> None:
        await slots.drain()
        drained.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(running)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(drain)
            await anyio.wait_all_tasks_blocked()
            assert not drained.is_set()
            release.set()
            await drained.wait()
            assert slots.running_tasks == 0

            # draining: an attempt that gets its slot now waits until cancelled
            entered = anyio.Event()

            async def late() -> None:
                async with slots.task_slot(None):
                    entered.set()  # pragma: no cover - must not be reached

            tg.start_soon(late)
            await anyio.wait_all_tasks_blocked()
            assert not entered.is_set()
            tg.cancel_scope.cancel()


async def test_drain_with_nothing_running_returns_at_once():
    with anyio.fail_after(5):
        await Slots(1, {}, {}).drain()


async def test_an_attempt_cancelled_while_it_waits_for_a_slot_takes_none_and_the_next_gets_it():
    slots = Slots(1, {}, {})
    release = anyio.Event()
    entered: list[str] = []

    async def attempt(name: str) -> None:
        async with slots.task_slot(None):
            entered.append(name)
            await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt, "holder")
            await anyio.wait_all_tasks_blocked()
            with anyio.CancelScope() as waiting:
                tg.start_soon(attempt, "next")
                async with anyio.create_task_group() as inner:
                    inner.start_soon(attempt, "cancelled")
                    await anyio.wait_all_tasks_blocked()
                    assert slots.tasks_waiting == 2
                    waiting.cancel()
            assert slots.tasks_waiting == 1
            release.set()
    assert entered == ["holder", "next"]
    assert slots.tasks_waiting == 0


async def test_a_slot_handed_to_an_attempt_as_it_is_cancelled_goes_on_to_the_next():
    slots = Slots(1, {}, {})
    entered: list[str] = []
    release = anyio.Event()

    async def attempt(name: str) -> None:
        async with slots.task_slot(None):
            entered.append(name)
            await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            holder = anyio.CancelScope()

            async def held() -> None:
                with holder:
                    await attempt("holder")

            tg.start_soon(held)
            await anyio.wait_all_tasks_blocked()
            doomed = anyio.CancelScope()

            async def cancelled() -> None:
                with doomed:
                    await attempt("doomed")

            tg.start_soon(cancelled)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(attempt, "last")
            await anyio.wait_all_tasks_blocked()
            # in one step: the holder leaves (handing its slot to the first waiter), and
            # that waiter is cancelled before it runs again
            holder.cancel()
            doomed.cancel()
            await anyio.wait_all_tasks_blocked()
            assert entered == ["holder", "last"]
            release.set()
    assert slots.tasks_waiting == 0


async def test_a_reload_applies_new_limits_and_keeps_the_slots_held():
    slots = Slots(1, {"db": 1}, {"etl": 1})
    slots.take_run_slot("etl")
    release = anyio.Event()
    entered: list[str] = []

    async def attempt(name: str) -> None:
        async with slots.task_slot("db"):
            entered.append(name)
            await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt, "first")
            tg.start_soon(attempt, "second")
            await anyio.wait_all_tasks_blocked()
            assert entered == ["first"]
            # a reload: the pool and the global limit grow, a pipeline is added
            slots.configure(2, {"db": 2, "new": 1}, {"etl": 2, "added": 1})
            await anyio.wait_all_tasks_blocked()
            assert entered == ["first", "second"]
            release.set()
    assert slots.run_slot_free("etl"), "one of its two slots is held, by the run before"
    assert slots.run_slot_free("added")
    slots.take_run_slot("etl")
    assert not slots.run_slot_free("etl")


async def test_a_reload_that_lowers_a_limit_lets_no_new_attempt_in_until_below_it():
    slots = Slots(2, {}, {})
    release = {name: anyio.Event() for name in ("a", "b", "c")}
    entered: list[str] = []

    async def attempt(name: str) -> None:
        async with slots.task_slot(None):
            entered.append(name)
            await release[name].wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt, "a")
            tg.start_soon(attempt, "b")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(attempt, "c")
            slots.configure(1, {}, {})  # a reload: one at a time from now on
            await anyio.wait_all_tasks_blocked()
            release["a"].set()  # two ran, the limit is one: c still waits
            await anyio.wait_all_tasks_blocked()
            assert entered == ["a", "b"]
            release["b"].set()  # none runs: c's turn
            await anyio.wait_all_tasks_blocked()
            assert entered == ["a", "b", "c"]
            release["c"].set()
