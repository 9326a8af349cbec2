"""How a broker source holds back while the daemon's backlog is saturated
(``connectors/_flow.Backpressure``): it takes nothing, says so once, and says once that
it goes on when the backlog drains."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
import anyio.lowlevel

from cued.connectors._flow import Backpressure


class _Intake:
    def __init__(self) -> None:
        self.open = True
        self.waits = 0

    def accepting(self) -> bool:
        return self.open

    async def wait_accepting(self) -> None:
        self.waits += 1
        await anyio.lowlevel.checkpoint()


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


async def test_a_saturated_backlog_holds_the_source_and_is_logged_once_each_way():
    intake, log = _Intake(), _Log()
    gate = Backpressure(SimpleNamespace(intake=intake, log=log), "amqp", prefetch=7)

    assert await gate.ready()
    assert log.lines == []

    intake.open = False
    assert not await gate.ready()
    assert not await gate.ready()
    assert intake.waits == 2
    assert log.lines == [("amqp_paused", {"prefetch": 7})]

    intake.open = True
    assert await gate.ready()
    assert await gate.ready()
    assert log.lines == [("amqp_paused", {"prefetch": 7}), ("amqp_resumed", {})]
