"""Attempts of a run stepped in turns by one task, instead of a task each.

A run whose tasks run at once (a mapped task's instances, siblings) gave every attempt a
task of its own in the run's task group: with anyio, a handle, a cancel scope and an event
each, and a share of every walk of the group: about a quarter of the event loop's time for
no-op tasks. An attempt whose kind does no I/O (its ``execute`` returns at once, or after
yielding to the event loop) needs none of that: the run's :class:`Stepper`, one task of its
group, steps every such attempt of the run once per turn of the event loop, and hands on
to a task of its own any that waits on something else after all. Cancelling the run (or
stopping the daemon) cancels the stepper with the run's other tasks, and it stops, and
records as stopped, every attempt it still steps, as those tasks would have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    import structlog
    from anyio.abc import TaskGroup

    from cued.daemon.core.engine import Start
    from cued.daemon.runtime.attempts import InlineAttempt, Outcome
    from cued.daemon.sdk.kinds import Meter
    from cued.daemon.sdk.tracing import Span
    from cued.daemon.store import Provisional

__all__ = ["Begun", "LazyLog", "Stepper"]


class Begun:
    """An attempt begun: what its end needs to know of its start."""

    __slots__ = ("log", "meter", "pool", "running", "span", "start", "started_at")

    def __init__(
        self,
        start: Start,
        pool: str | None,
        started_at: float,
        running: Provisional,
        log: structlog.typing.FilteringBoundLogger,
        meter: Meter,
        span: Span,
    ) -> None:
        self.start, self.pool, self.started_at, self.running = start, pool, started_at, running
        self.log, self.meter, self.span = log, meter, span


class LazyLog:
    """A logger with an attempt's context, bound only once something is logged through
    it: most attempts log nothing (their debug lines are filtered out), and binding a
    structlog logger copies its context."""

    __slots__ = ("_base", "_bound", "_context")

    def __init__(self, base: structlog.typing.FilteringBoundLogger, **context: Any) -> None:
        self._base = base
        self._context = context
        self._bound: structlog.typing.FilteringBoundLogger | None = None

    def __getattr__(self, name: str) -> Any:
        bound = self._bound
        if bound is None:
            bound = self._bound = self._base.bind(**self._context)
        return getattr(bound, name)


class Stepper:
    """Steps a run's inline attempts, a task of the run's task group ``tg`` while it has
    any.

    :param ended: called with an attempt that has ended, and its outcome
    :param waits: run as a task for an attempt that waits on something (not a turn)
    :param stopped: awaited for each attempt still stepped when the stepper is cancelled,
        once the attempt is stopped
    """

    __slots__ = ("_ended", "_on", "_stepping", "_stopped", "_tg", "_waits")

    def __init__(
        self,
        tg: TaskGroup,
        ended: Callable[[Begun, InlineAttempt, Outcome], None],
        waits: Callable[[Begun, InlineAttempt], Coroutine[Any, Any, None]],
        stopped: Callable[[Begun, InlineAttempt], Awaitable[None]],
    ) -> None:
        self._tg, self._ended, self._waits, self._stopped = tg, ended, waits, stopped
        self._stepping: list[tuple[Begun, InlineAttempt]] = []
        self._on = False

    def add(self, begun: Begun, attempt: InlineAttempt) -> None:
        """Step ``attempt`` from the next turn on."""
        self._stepping.append((begun, attempt))
        if not self._on:
            self._on = True
            self._tg.start_soon(self._steps, name="inline attempts")

    async def _steps(self) -> None:
        batch: list[tuple[Begun, InlineAttempt]] = []
        done = 0
        try:
            while self._stepping:
                batch, self._stepping, done = self._stepping, [], 0
                for done, (begun, attempt) in enumerate(batch, 1):  # noqa: B007 - read below
                    outcome = attempt.step()
                    if outcome is not None:
                        self._ended(begun, attempt, outcome)  # may add attempts: next turn
                    elif attempt.waiting_on is None:
                        self._stepping.append((begun, attempt))
                    else:
                        self._tg.start_soon(self._waits, begun, attempt, name="attempt")
                batch, done = [], 0
                if self._stepping:
                    await anyio.lowlevel.checkpoint()
        except BaseException:
            # cancelled with the run (or the daemon), or failed: every attempt still
            # stepped stops here, as its own task would have
            for begun, attempt in (*batch[done:], *self._stepping):
                attempt.stop()
                await self._stopped(begun, attempt)
            self._stepping = []
            raise
        finally:
            self._on = False
