"""What task kinds that keep clients share (``plugins/_shared``): one client per key, made
once however many tasks ask at the same time, none kept when making it failed, and none
made once the kind is closed."""

from __future__ import annotations

import anyio
import pytest

from cued.daemon.sdk import TaskError, describe_error
from cued.plugins._shared import Closing, Shared


async def test_tasks_asking_at_once_share_the_one_client_made():
    shared: Shared[str, object] = Shared("demo")
    made: list[object] = []
    gate = anyio.Event()

    async def make() -> object:
        await gate.wait()  # the others ask while this one is being made
        made.append(object())
        return made[-1]

    got: list[object] = []

    async def ask() -> None:
        got.append(await shared.get("k", make))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert len(made) == 1
    assert got == made * 5


async def test_a_client_that_failed_to_be_made_is_made_again_next_time():
    shared: Shared[str, str] = Shared("demo")
    attempts = 0

    async def make() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise TaskError("broker down")
        return "client"

    with pytest.raises(TaskError, match="broker down"):
        await shared.get("k", make)
    assert await shared.get("k", make) == "client"
    assert attempts == 2


async def test_a_closed_kind_hands_its_clients_over_and_makes_no_more():
    shared: Shared[str, str] = Shared("demo")

    async def make() -> str:
        return "client"

    await shared.get("a", make)
    assert shared.close() == ["client"]
    with pytest.raises(TaskError, match=r"^the demo task kind is closed: the daemon is stopping$"):
        await shared.get("b", make)


async def test_async_with_closes_the_kind():
    closed: list[bool] = []

    class Kind(Closing):
        async def aclose(self) -> None:
            closed.append(True)

    async with Kind() as kind:
        assert isinstance(kind, Kind)
    assert closed == [True]


def test_an_exception_is_named_by_its_message_or_else_its_class():
    assert describe_error(OSError("connection refused")) == "connection refused"
    assert describe_error(TimeoutError()) == "TimeoutError"
