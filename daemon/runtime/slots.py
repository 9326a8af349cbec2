"""Slots: how many runs and task attempts may run at once, and how many do.

A run holds one of its pipeline's ``max_active_runs`` slots from its start until it ends or
parks at a gate (runs beyond wait in the backlog). A task attempt holds a slot of its pool,
if it names one, and one of the ``max_running_tasks`` global slots while it runs; with
several nodes on one database, its pool's slot is also one of the pool's across them
(:mod:`~cued.daemon.runtime.shared_slots`), and ``max_running_tasks`` stays each node's. Draining
(at shutdown) lets no attempt start any more and waits for the running ones to end. The
counts are also what the metrics' gauges show.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from contextlib import AbstractAsyncContextManager, AbstractContextManager

    from cued.daemon.runtime.shared_slots import SharedSlots

__all__ = ["Slots"]


class _Limit:
    """A number of slots taken and given back in order of asking: anyio's
    ``CapacityLimiter`` without borrowers or statistics, whose free path (a slot is
    there) is a compare and an add, as an attempt takes one or two per run. A waiter is
    what is called when a slot is handed to it: a task's event set, or a callback."""

    __slots__ = ("_waiters", "total", "used")

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: deque[Callable[[], object]] = deque()

    async def acquire(self) -> None:
        if self.used < self.total and not self._waiters:
            self.used += 1
            return
        handed = anyio.Event()
        self._waiters.append(handed.set)
        try:
            await handed.wait()  # release() hands its slot over: ``used`` stays
        except BaseException:
            if handed.is_set():
                self.release()  # handed a slot while being cancelled: hand it on
            else:
                self._waiters.remove(handed.set)
            raise

    def queue(self, handed: Callable[[], object]) -> None:
        """Call ``handed`` once a slot is handed to it (it then holds it)."""
        self._waiters.append(handed)

    def forget(self, handed: Callable[[], object]) -> bool:
        """Hand ``handed`` no slot (False if it is not waiting: it was handed one)."""
        try:
            self._waiters.remove(handed)
        except ValueError:
            return False
        return True

    def release(self) -> None:
        # handed over only within the limit: after a reload lowered it, a slot given back
        # above it goes, and the waiters wait until the ones taken are under the limit
        if self._waiters and self.used <= self.total:
            self._waiters.popleft()()
        else:
            self.used -= 1

    def set_total(self, total: int) -> None:
        """A new limit (a reload): slots it adds go to the waiters at once; one it removes
        goes as its holder gives it back."""
        self.total = total
        while self._waiters and self.used < self.total:
            self.used += 1
            self._waiters.popleft()()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def free(self) -> bool:
        """Whether :meth:`acquire` would take a slot without waiting."""
        return self.used < self.total and not self._waiters


class _TaskSlot:
    """:meth:`Slots.task_slot`: a class, not a generator, as it runs once per attempt."""

    __slots__ = ("_holder", "_pool", "_slots")

    def __init__(self, slots: Slots, pool: str | None, holder: tuple[str, str, int] | None) -> None:
        self._slots, self._pool, self._holder = slots, pool, holder

    async def __aenter__(self) -> None:
        slots, pool = self._slots, self._pool
        shared = None
        if pool is not None:
            limit = slots._pools[pool]
            await limit.acquire()
            if (shared := slots.shared) is not None:
                assert self._holder is not None, "an attempt of a shared pool names itself"
                try:
                    await shared.pool_slot(pool, self._holder, lambda: limit.total)
                except BaseException:
                    limit.release()
                    raise
        try:
            await slots._tasks.acquire()
        except BaseException:
            if pool is not None:
                slots._pools[pool].release()
            if shared is not None and self._holder is not None:
                await shared.give_back_pool_slot(self._holder)
            raise
        if slots._draining:
            try:
                await anyio.sleep_forever()  # cancelled at shutdown
            finally:
                self._release()
                if shared is not None and self._holder is not None:
                    # the attempt did not start: it records no end that would free it
                    await shared.give_back_pool_slot(self._holder)

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        self._slots._tasks.release()
        if self._pool is not None:
            self._slots._pools[self._pool].release()


class _Running:
    """:meth:`Slots.running`, once per attempt too."""

    __slots__ = ("_slots",)

    def __init__(self, slots: Slots) -> None:
        self._slots = slots

    def __enter__(self) -> None:
        self._slots.running_tasks += 1

    def __exit__(self, *exc: object) -> None:
        slots = self._slots
        slots.running_tasks -= 1
        if slots._draining and not slots.running_tasks:
            slots._idle.set()


class Slots:
    """The runner's slots.

    :param max_running_tasks: attempts that may run at once in all
    :param pools: attempts that may run at once in each named pool
    :param max_active_runs: runs that may hold a slot at once, by pipeline
    :param shared: the slots of pools (and keys) across the nodes sharing the database
    """

    def __init__(
        self,
        max_running_tasks: int,
        pools: Mapping[str, int],
        max_active_runs: Mapping[str, int],
        shared: SharedSlots | None = None,
    ) -> None:
        self.shared = shared
        """With several nodes (PostgreSQL): where pool and key slots are taken too."""
        self._tasks = _Limit(max_running_tasks)
        self._pools = {name: _Limit(n) for name, n in pools.items()}
        self._max_active_runs = dict(max_active_runs)
        self._active = dict.fromkeys(self._max_active_runs, 0)
        self.running_tasks = 0
        """Attempts running now."""
        self._draining = False
        self._idle = anyio.Event()
        self._running = _Running(self)

    def configure(
        self, max_running_tasks: int, pools: Mapping[str, int], max_active_runs: Mapping[str, int]
    ) -> None:
        """Apply the limits of a reloaded configuration in place: attempts and runs that
        hold a slot keep it; a lower limit only makes new ones wait longer. A pool or
        pipeline no longer configured keeps its limit for the runs that still use it."""
        self._tasks.set_total(max_running_tasks)
        for name, total in pools.items():
            if (pool := self._pools.get(name)) is None:
                self._pools[name] = _Limit(total)
            else:
                pool.set_total(total)
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

    def task_slot(
        self, pool: str | None, holder: tuple[str, str, int] | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold a slot of ``pool`` (if any; across the nodes too, for ``holder``: the
        attempt's run, instance and attempt), then a global one; while draining, wait
        until cancelled instead (the attempt stays queued in the store and runs after a
        restart)."""
        return _TaskSlot(self, pool, holder)

    def running(self) -> AbstractContextManager[None]:
        """Count an attempt as running for the block's time."""
        return self._running

    def take_task_slot_now(self, pool: str | None) -> bool:
        """Take what :meth:`task_slot` holds, if it is free now (no one waits for it, and
        the runner is not draining), and count the attempt as running; False, taking
        nothing, if it would have to wait. Given back by :meth:`give_back_task_slot`."""
        if self._draining or (pool is not None and self.shared is not None):
            return False  # (a pool's slot across the nodes is the database's to give)
        tasks = self._tasks
        limit = None if pool is None else self._pools[pool]
        if not tasks.free or (limit is not None and not limit.free):
            return False
        tasks.used += 1
        if limit is not None:
            limit.used += 1
        self.running_tasks += 1
        return True

    @property
    def task_slot_free(self) -> bool:
        """Whether a global task slot is free now (and no one waits for one)."""
        return self._tasks.free and not self._draining

    def take_task_slot_later(self, handed: Callable[[], None]) -> Callable[[], bool] | None:
        """Queue for a global slot (an attempt of no pool) like a task waiting in
        :meth:`task_slot`, in the same line, but with no task: ``handed()`` is called once
        the slot is handed over, counted as :meth:`take_task_slot_now` counts it, and given
        back by :meth:`give_back_task_slot`. Returns what takes it out of the line (False
        if it was handed the slot already); None, queueing nothing, while draining."""
        if self._draining:
            return None

        def take() -> None:
            if self._draining:
                # handed over as the runner stops: the attempt stays queued in the store,
                # and the slot goes (not on to the next in line: a release from here
                # would call each waiter from the one before, as deep as the line is long)
                self._tasks.used -= 1
                return
            self.running_tasks += 1
            handed()

        self._tasks.queue(take)
        return partial(self._tasks.forget, take)

    def give_back_task_slot(self, pool: str | None) -> None:
        """Give back what :meth:`take_task_slot_now` took."""
        self._running.__exit__()
        self._tasks.release()
        if pool is not None:
            self._pools[pool].release()

    @property
    def tasks_waiting(self) -> int:
        """Attempts ready to run that wait for a slot (global or a pool's)."""
        return self._tasks.waiting + sum(pool.waiting for pool in self._pools.values())

    async def drain(self) -> None:
        """Let no attempt take a slot any more, and return once none runs."""
        self._draining = True
        if self.running_tasks:
            await self._idle.wait()
