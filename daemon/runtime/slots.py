"""Slots: how many runs and task attempts may run at once, and how many do.

A run holds one of its pipeline's ``max_active_runs`` slots from its start until it ends or
parks at a gate (runs beyond wait in the backlog). A task attempt holds a slot of its pool,
if it names one, and one of the ``max_running_tasks`` global slots while it runs. Draining
(at shutdown) lets no attempt start any more and waits for the running ones to end. The
counts are also what the metrics' gauges show.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Mapping

__all__ = ["Slots"]


class Slots:
    """The runner's slots.

    :param max_running_tasks: attempts that may run at once in all
    :param pools: attempts that may run at once in each named pool
    :param max_active_runs: runs that may hold a slot at once, by pipeline
    """

    def __init__(
        self, max_running_tasks: int, pools: Mapping[str, int], max_active_runs: Mapping[str, int]
    ) -> None:
        self._tasks = anyio.CapacityLimiter(max_running_tasks)
        self._pools = {name: anyio.CapacityLimiter(n) for name, n in pools.items()}
        self._max_active_runs = dict(max_active_runs)
        self._active = dict.fromkeys(self._max_active_runs, 0)
        self.running_tasks = 0
        """Attempts running now."""
        self._draining = False
        self._idle = anyio.Event()

    def configure(
        self, max_running_tasks: int, pools: Mapping[str, int], max_active_runs: Mapping[str, int]
    ) -> None:
        """Apply the limits of a reloaded configuration in place: attempts and runs that
        hold a slot keep it; a lower limit only makes new ones wait longer. A pool or
        pipeline no longer configured keeps its limit for the runs that still use it."""
        self._tasks.total_tokens = max_running_tasks
        for name, total in pools.items():
            if (pool := self._pools.get(name)) is None:
                self._pools[name] = anyio.CapacityLimiter(total)
            else:
                pool.total_tokens = total
        self._max_active_runs.update(max_active_runs)
        for name in max_active_runs:
            self._active.setdefault(name, 0)

    # -- runs ------------------------------------------------------------------------------

    def run_slot_free(self, pipeline: str) -> bool:
        """Whether a run of ``pipeline`` may start now."""
        return self._active[pipeline] < self._max_active_runs[pipeline]

    def take_run_slot(self, pipeline: str) -> None:
        self._active[pipeline] += 1

    def free_run_slot(self, pipeline: str) -> None:
        self._active[pipeline] -= 1

    @property
    def active_runs(self) -> int:
        """Runs that hold a slot now (started, not parked or finished)."""
        return sum(self._active.values())

    # -- task attempts ---------------------------------------------------------------------

    @asynccontextmanager
    async def task_slot(self, pool: str | None) -> AsyncIterator[None]:
        """Hold a slot of ``pool`` (if any), then a global one; while draining, wait until
        cancelled instead (the attempt stays queued in the store and runs after a restart)."""
        # two plain blocks, not an exit stack: this runs once per attempt
        if pool is None:
            async with self._tasks:
                if self._draining:
                    await anyio.sleep_forever()  # cancelled at shutdown
                yield
        else:
            async with self._pools[pool], self._tasks:
                if self._draining:
                    await anyio.sleep_forever()
                yield

    @contextmanager
    def running(self) -> Iterator[None]:
        """Count an attempt as running for the block's time."""
        self.running_tasks += 1
        try:
            yield
        finally:
            self.running_tasks -= 1
            if self._draining and not self.running_tasks:
                self._idle.set()

    @property
    def tasks_waiting(self) -> int:
        """Attempts ready to run that wait for a slot (global or a pool's)."""
        return self._tasks.statistics().tasks_waiting + sum(
            pool.statistics().tasks_waiting for pool in self._pools.values()
        )

    async def drain(self) -> None:
        """Let no attempt take a slot any more, and return once none runs."""
        self._draining = True
        if self.running_tasks:
            await self._idle.wait()
