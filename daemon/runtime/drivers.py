"""Drivers: the tasks that drive runs, each run after run, instead of a task per run.

Starting a task of an anyio task group costs several times a run's own bookkeeping (a
handle, a cancel scope and an event of its own, and its share of every walk of the group
once thousands are in flight). So a driver that has driven a run takes the next one
waiting, and, when none waits, stays idle until one comes; a new driver starts only when
none is idle. Every driver is a task of the group it is given (structured as before: a
driver ends with its group, and what a run raises ends the group); a run is cancelled by
its own cancel scope (:meth:`~cued.daemon.runtime.active_run.ActiveRun.drive`), which
leaves its driver free for the next.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskGroup

__all__ = ["Drivers"]

T = TypeVar("T")


class Drivers(Generic[T]):
    """Tasks of ``tg`` that call ``drive(item)`` for every item :meth:`launch` is given, in
    the order given, as many at once as are launched and not done.

    :param tg: the task group the drivers are tasks of
    :param drive: what a driver does with an item
    :param max_idle: drivers that may stay idle (the rest end once nothing waits): what a
        burst of runs left behind
    """

    def __init__(self, tg: TaskGroup, drive: Callable[[T], Awaitable[None]], max_idle: int) -> None:
        self._tg = tg
        self._drive = drive
        self._max_idle = max_idle
        self._waiting: deque[T] = deque()
        self._idle: list[anyio.Event] = []
        self.drivers = 0
        """Drivers now (busy or idle)."""

    def launch(self, item: T) -> None:
        """Have ``item`` driven: by an idle driver, or a new one if none is idle."""
        self._waiting.append(item)
        if self._idle:
            # one driver is woken for each item: whichever driver looks first takes it
            self._idle.pop().set()
        else:
            self.drivers += 1
            self._tg.start_soon(self._driver, name="run driver")

    @property
    def idle(self) -> int:
        """Drivers waiting for an item."""
        return len(self._idle)

    async def _driver(self) -> None:
        waiting, idle = self._waiting, self._idle
        try:
            while True:
                while waiting:
                    await self._drive(waiting.popleft())
                if len(idle) >= self._max_idle:
                    return
                woken = anyio.Event()
                idle.append(woken)
                try:
                    await woken.wait()
                except BaseException:
                    if not woken.is_set():
                        idle.remove(woken)
                    raise
        finally:
            self.drivers -= 1
