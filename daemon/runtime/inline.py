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

The runner has a stepper too, for the first attempt of runs that begin stepped (a run of
one ``sleep 0``, or whose first task is such): those runs get no driver, task or cancel
scope at all unless something of them has to wait (see
:meth:`~cued.daemon.runtime.active_run.ActiveRun.begin_stepped`); a cancel withdraws
the run's attempt from it (:meth:`Stepper.withdraw`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import anyio.lowlevel

from cued.daemon.runtime.instance_rows import instance_row
from cued.daemon.sdk.tracing import NO_SPAN
from cued.daemon.store import AttemptRow

if TYPE_CHECKING:
    import structlog
    from anyio.abc import TaskGroup

    from cued.daemon.core.engine import Start
    from cued.daemon.runtime.attempts import InlineAttempt, Outcome
    from cued.daemon.sdk.kinds import Meter
    from cued.daemon.sdk.tracing import Span, Tracing
    from cued.daemon.store import Provisional, Row, RunRow

__all__ = [
    "Begun",
    "LazyLog",
    "RunningRows",
    "Stepped",
    "Stepper",
    "attempt_span",
    "end_attempt_span",
]


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


class Stepped(Protocol):
    """What owns attempts a :class:`Stepper` steps: a run, told how each goes."""

    def attempt_ended(self, begun: Begun, attempt: InlineAttempt, outcome: Outcome) -> None:
        """``attempt`` has ended as ``outcome``."""

    def attempt_waits(self, begun: Begun, attempt: InlineAttempt) -> None:
        """``attempt`` waits on something (not a turn of the event loop): the stepper has
        let it go, and the owner goes on with it (:meth:`InlineAttempt.resume`)."""

    async def attempt_stopped(self, begun: Begun, attempt: InlineAttempt) -> None:
        """``attempt`` was stopped where it was: the stepper was cancelled (its run, or the
        daemon)."""


class Stepper:
    """Steps inline attempts in turns, as one task of ``tg`` while it has any: a run's
    attempts, as a task of the run's group, or the first attempts of many runs, as a task
    of the runner's (see :meth:`ActiveRun.begin_stepped`)."""

    __slots__ = ("_on", "_stepping", "_tg", "stopping")

    def __init__(self, tg: TaskGroup) -> None:
        self._tg = tg
        self._stepping: list[tuple[Begun, InlineAttempt, Stepped]] = []
        self._on = False
        self.stopping = False
        """Set once it was cancelled (its group is ending): it takes no more attempts."""

    def add(self, begun: Begun, attempt: InlineAttempt, owner: Stepped) -> None:
        """Step ``attempt`` from the next turn on, telling ``owner`` how it goes."""
        self._stepping.append((begun, attempt, owner))
        if not self._on:
            self._on = True
            self._tg.start_soon(self._steps, name="inline attempts")

    def withdraw(self, begun: Begun) -> bool:
        """Step the attempt ``begun`` no more (its run is cancelled: the owner stops it);
        False if it is not stepped here. Called from another task, so while the stepper
        waits for its next turn, with every attempt it steps in its list."""
        for at, (stepped, _, _) in enumerate(self._stepping):
            if stepped is begun:
                del self._stepping[at]
                return True
        return False

    async def _steps(self) -> None:
        batch: list[tuple[Begun, InlineAttempt, Stepped]] = []
        done = 0
        try:
            while self._stepping:
                batch, self._stepping, done = self._stepping, [], 0
                for done, item in enumerate(batch, 1):  # noqa: B007 - read below
                    begun, attempt, owner = item
                    outcome = attempt.step()
                    if outcome is not None:
                        owner.attempt_ended(begun, attempt, outcome)  # may add: next turn
                    elif attempt.waiting_on is None:
                        self._stepping.append(item)
                    else:
                        owner.attempt_waits(begun, attempt)
                batch, done = [], 0
                if self._stepping:
                    await anyio.lowlevel.checkpoint()
        except BaseException:
            # cancelled with the run (or the daemon), or failed: every attempt still
            # stepped stops here, as its own task would have
            self.stopping = True
            for begun, attempt, owner in (*batch[done:], *self._stepping):
                attempt.stop()
                await owner.attempt_stopped(begun, attempt)
            self._stepping = []
            raise
        finally:
            self._on = False


class RunningRows:
    """An attempt's start, left :meth:`~cued.daemon.store.Store.provisional`: its
    instance running and its attempt's row, built only if a commit begins while it runs."""

    __slots__ = ("_run_id", "_start", "_started_at")

    def __init__(self, run_id: str, start: Start, started_at: float) -> None:
        self._run_id, self._start, self._started_at = run_id, start, started_at

    def rows(self) -> list[Row]:
        start = self._start
        inst = start.instance
        return [
            instance_row(self._run_id, inst),
            AttemptRow(self._run_id, inst.key, start.attempt, "running", self._started_at),
        ]


def attempt_span(tracing: Tracing, parent: Span, row: RunRow, start: Start, kind: str) -> Span:
    """The span of the attempt ``start`` of a task of kind ``kind`` in the run ``row``."""
    if not tracing.enabled:
        return NO_SPAN
    inst = start.instance
    return tracing.start(
        f"task {inst.key}",
        parent=parent,
        attributes={
            "cued.run.id": row.run_id,
            "cued.task": inst.task,
            "cued.task.key": inst.key,
            "cued.task.kind": kind,
            "cued.attempt": start.attempt,
        },
    )


def end_attempt_span(span: Span, meter: Meter, state: str, error: str | None) -> None:
    """End an attempt's span with how it ended and what it spent (an AI step's cost and
    tokens, as its kind reported them)."""
    if not span:
        return  # tracing is off
    span.set(**{"cued.attempt.state": state, "cued.cost": meter.cost})
    for key, value in (meter.usage or {}).items():
        span.set(**{f"cued.usage.{key}": value})
    if error is not None:
        span.fail(error)
    span.end()
