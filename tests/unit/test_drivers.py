"""The tasks that drive runs, run after run (daemon/runtime/drivers.py)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from cued.daemon.runtime.drivers import Drivers


async def test_items_launched_at_once_are_driven_at_once_in_order():
    release = anyio.Event()
    began: list[int] = []
    ended: list[int] = []

    async def drive(item: int) -> None:
        began.append(item)
        await release.wait()
        ended.append(item)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            drivers = Drivers(tg, drive, max_idle=10)
            for item in range(5):
                drivers.launch(item)
            await anyio.wait_all_tasks_blocked()
            assert began == [0, 1, 2, 3, 4]
            assert drivers.drivers == 5
            release.set()
            await anyio.wait_all_tasks_blocked()
            assert sorted(ended) == [0, 1, 2, 3, 4]
            assert drivers.idle == 5
            tg.cancel_scope.cancel()
    assert drivers.drivers == 0


async def test_a_driver_left_idle_drives_the_next_item_and_no_new_one_starts():
    driven: list[str] = []

    async def drive(item: str) -> None:
        await anyio.lowlevel.checkpoint()
        driven.append(item)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            drivers = Drivers(tg, drive, max_idle=10)
            drivers.launch("first")
            await anyio.wait_all_tasks_blocked()
            assert (drivers.drivers, drivers.idle) == (1, 1)
            for item in ("second", "third"):
                drivers.launch(item)
                await anyio.wait_all_tasks_blocked()
            assert driven == ["first", "second", "third"]
            assert (drivers.drivers, drivers.idle) == (1, 1)
            # two at once: the idle one takes one, a new driver the other
            drivers.launch("fourth")
            drivers.launch("fifth")
            await anyio.wait_all_tasks_blocked()
            assert driven[3:] == ["fourth", "fifth"]
            assert (drivers.drivers, drivers.idle) == (2, 2)
            tg.cancel_scope.cancel()


async def test_drivers_beyond_max_idle_end_once_nothing_waits():
    release = anyio.Event()

    async def drive(_item: int) -> None:
        await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            drivers = Drivers(tg, drive, max_idle=2)
            for item in range(6):
                drivers.launch(item)
            await anyio.wait_all_tasks_blocked()
            assert drivers.drivers == 6
            release.set()
            await anyio.wait_all_tasks_blocked()
            assert (drivers.drivers, drivers.idle) == (2, 2)
            tg.cancel_scope.cancel()


async def test_what_a_drive_raises_ends_the_group():
    async def drive(item: str) -> None:
        await anyio.lowlevel.checkpoint()
        raise RuntimeError(f"{item} broke")

    with anyio.fail_after(5), pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="x broke")):
        async with anyio.create_task_group() as tg:
            Drivers(tg, drive, max_idle=2).launch("x")
            await anyio.sleep_forever()
