"""Task attempts: one attempt of a task kind, from its context to what it ended as.

The runner holds the attempt's slots and tells the engine; here the attempt gets its
:class:`~cued.daemon.sdk.kinds.TaskContext` and its parameters (validated once for a task
without templates), runs under the task's ``timeout`` and ends as an :class:`Outcome`: an
output, or an error and whether a retry could help. Whatever a task raises fails its
attempt; a task's own :class:`~cued.daemon.errors.PermanentTaskError`, and parameters that
fail their model's check, fail it for good. Cancellation is not caught here: the runner
records the attempt as cancelled or interrupted.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from cued.daemon.config.secrets import redact
from cued.daemon.core.ids import now
from cued.daemon.core.records import record
from cued.daemon.errors import PermanentTaskError, TaskTimeout
from cued.daemon.sdk.kinds import (
    AwaitingDecision,
    AwaitingEvent,
    AwaitingRun,
    AwaitingTime,
    TaskContext,
)
from cued.daemon.store import AttemptRow

if TYPE_CHECKING:
    from collections.abc import Coroutine, Generator, Sequence

    import httpx
    import structlog
    from pydantic import BaseModel

    from cued.daemon.core.engine import Start
    from cued.daemon.core.plan import PipelinePlan
    from cued.daemon.runtime.task_logs import OpenLines, TaskLogs
    from cued.daemon.sdk.kinds import Awaiting, LineWriter, Meter, Spending, TaskKind
    from cued.daemon.store import RunRow

__all__ = ["InlineAttempt", "Outcome", "TaskAttempts", "stopped_row"]

_AWAITING = (AwaitingDecision, AwaitingEvent, AwaitingTime)


@record
class Outcome:
    """What an attempt ended as: ``output`` if ``error`` is None."""

    output: Any = None
    error: str | None = None
    retryable: bool = True
    """Whether a retry could help (if it failed)."""
    output_json: str | None = None
    """The output as recorded, once :meth:`kept`."""

    @property
    def awaiting(self) -> Awaiting | None:
        """What the attempt parks its instance for (a decision, an event, a moment), if it
        does."""
        if self.error is None and isinstance(self.output, _AWAITING):
            return self.output
        return None

    @property
    def child(self) -> AwaitingRun | None:
        """The child run the attempt asks for (a ``pipeline`` task), if it does."""
        if self.error is None and isinstance(self.output, AwaitingRun):
            return self.output
        return None

    def kept(self) -> Outcome:
        """The outcome as it is kept: without a secret the daemon resolved (in memory as in
        the store, so that downstream tasks see the same after a restart as before one),
        and with its output as JSON; an output that is not JSON fails the attempt for good.
        """
        if self.output is None and self.error is None:  # a no-op's: nothing to look at
            return Outcome(None, None, self.retryable, "null")
        # built once, not by dataclasses.replace: this runs once per attempt
        output, error = redact(self.output), redact(self.error)
        if error is not None or isinstance(output, (*_AWAITING, AwaitingRun)):
            return Outcome(output, error, self.retryable)
        try:
            return Outcome(output, None, self.retryable, json.dumps(output))
        except (TypeError, ValueError) as exc:
            return Outcome(output, f"output is not JSON-serialisable: {exc}", False)

    def attempt_row(
        self, run_id: str, start: Start, started_at: float, ended_at: float, meter: Meter
    ) -> AttemptRow:
        """The attempt's row, ended (succeeded or failed), with what it spent."""
        return AttemptRow(
            run_id,
            start.instance.key,
            start.attempt,
            "succeeded" if self.error is None else "failed",
            started_at,
            ended_at,
            self.error,
            self.output_json,
            meter.cost,
            meter.usage,
        )


def stopped_row(
    run_id: str, start: Start, state: str, started_at: float, meter: Meter
) -> AttemptRow:
    """The row of an attempt stopped before it ended: ``cancelled`` with its run, or
    ``interrupted`` by a daemon shutting down (it runs again after the restart)."""
    return AttemptRow(
        run_id,
        start.instance.key,
        start.attempt,
        state,
        started_at,
        now(),
        cost=meter.cost,
        usage=meter.usage,
    )


class InlineAttempt:
    """An attempt stepped in its run's own coroutine instead of a task of its own.

    Its kind said (``runs_inline(params)``) that ``execute`` with these parameters does no
    I/O: it returns at once, or after yielding to the event loop (``anyio.sleep(0)``), and
    enters no cancel scope (anyio's scopes belong to the task that enters them, and one
    task steps many of these in turns). One that waits on something all the same is
    handed to a task of its own (:meth:`resume`), where it goes on as it would have.

    :param lines: the attempt's live log, entered (None: no live logs)
    """

    __slots__ = ("_coro", "lines", "waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, Any], lines: OpenLines | None) -> None:
        self._coro = coro
        self.lines = lines
        self.waiting_on: Any = None
        """What it yielded at its last step: None for a turn of the event loop."""

    def step(self) -> Outcome | None:
        """Step it once: its outcome (as the task left it) once it has ended, None while
        it waits (see :attr:`waiting_on`)."""
        try:
            self.waiting_on = self._coro.send(None)
        except StopIteration as stop:
            return Outcome(stop.value)
        except Exception as exc:  # noqa: BLE001 - whatever a task raises fails its attempt
            return _failed(exc)
        return None

    async def resume(self) -> Outcome:
        """Go on with it in the current task, from what it waits on."""
        try:
            return Outcome(await _Resumed(self._coro, self.waiting_on))
        except Exception as exc:  # noqa: BLE001 - whatever a task raises fails its attempt
            return _failed(exc)

    def stop(self) -> None:
        """Stop it where it is (its run is cancelled, or the daemon stops)."""
        self._coro.close()


class _Resumed:
    """Awaits a coroutine that was stepped elsewhere, from what it yielded there."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro, self._yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                try:
                    sent = yield yielded
                except BaseException as exc:  # noqa: BLE001 - handed on to the coroutine
                    yielded = coro.throw(exc)
                else:
                    yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class TaskAttempts:
    """Runs attempts of the configured task kinds.

    :param kinds: task kinds by name, one instance each
    :param http: the shared HTTP client handed to tasks
    :param spending: what tasks spent so far, handed to them for their budgets
    :param task_env: the daemon's environment variables tasks may see (``task_env``)
    :param logs: where attempts' live log lines go (``None``: nowhere)
    """

    def __init__(
        self,
        kinds: dict[str, TaskKind],
        http: httpx.AsyncClient,
        spending: Spending,
        task_env: Sequence[str],
        logs: TaskLogs | None = None,
    ) -> None:
        self._kinds = kinds
        self._logs = logs
        self._http = http
        self._spending = spending
        self._task_env = tuple(task_env)
        # by pipeline and task, with the plan they were read from: after a reload, runs
        # of the old plan and of the new one each get their own task's parameters
        self._static_params: dict[tuple[str, str], tuple[PipelinePlan, BaseModel]] = {}

    async def run(
        self,
        plan: PipelinePlan,
        row: RunRow,
        start: Start,
        log: structlog.typing.FilteringBoundLogger,
        meter: Meter,
        *,
        fresh: bool = False,
    ) -> Outcome:
        """Run the attempt ``start`` of a task of the run ``row``; ``meter`` gets what it
        spent. Returns its outcome as the task left it (see :meth:`Outcome.kept`).

        :param fresh: the run had never started before (it has no log lines yet)
        """
        if self._logs is None:
            return await self._run(plan, row, start, log, meter, None)
        async with self._logs.attempt(
            row.run_id, start.instance.key, start.attempt, fresh=fresh
        ) as lines:
            return await self._run(plan, row, start, log, meter, lines)

    async def _run(
        self,
        plan: PipelinePlan,
        row: RunRow,
        start: Start,
        log: structlog.typing.FilteringBoundLogger,
        meter: Meter,
        lines: LineWriter | None,
    ) -> Outcome:
        inst = start.instance
        task = plan.tasks[inst.task].config
        ctx = self._context(row, start, log, meter, lines)
        kind = self._kinds[task.kind]
        try:
            try:
                params = self._params(plan, inst.task, start.params)
            except ValidationError as exc:
                # only the parameters' own check: a pydantic error inside a kind is that
                # kind's failure, retried like any other
                raise PermanentTaskError(_describe(exc)) from exc
            if task.timeout is None:
                return Outcome(await kind.execute(params, ctx))
            with anyio.fail_after(task.timeout):
                return Outcome(await kind.execute(params, ctx))
        except TimeoutError:
            return Outcome(error=str(TaskTimeout(inst.key, task.timeout or 0)))
        except Exception as exc:  # noqa: BLE001 - whatever a task raises fails its attempt
            return _failed(exc)

    def _context(
        self,
        row: RunRow,
        start: Start,
        log: structlog.typing.FilteringBoundLogger,
        meter: Meter,
        lines: LineWriter | None,
    ) -> TaskContext:
        """What the attempt ``start`` of a task of ``row`` is given to run with."""
        inst = start.instance
        return TaskContext(
            run_id=row.run_id,
            pipeline=row.pipeline,
            task=inst.task,
            map_index=inst.index,
            attempt=start.attempt,
            idempotency_key=f"{row.run_id}/{inst.key}",
            log=log,
            http=self._http,
            meter=meter,
            spending=self._spending,
            pass_env=self._task_env,
            lines=lines,
        )

    def inline(
        self,
        plan: PipelinePlan,
        row: RunRow,
        start: Start,
        log: structlog.typing.FilteringBoundLogger,
        meter: Meter,
        *,
        fresh: bool = False,
    ) -> InlineAttempt | None:
        """The attempt ``start``, begun to be stepped in its run's own coroutine (see
        :class:`~cued.daemon.runtime.inline.InlineAttempt`), if nothing of it needs a task:
        its kind says it runs inline with these parameters, the task has no ``timeout``
        to enforce, and its live log opens without waiting; otherwise None, and nothing
        is begun (:meth:`run` runs it)."""
        inst = start.instance
        params = self._inline_params(plan, start)
        if params is None:
            return None
        kind = self._kinds[plan.tasks[inst.task].config.kind]
        opened = None
        if self._logs is not None:
            opened = self._logs.attempt_now(row.run_id, inst.key, start.attempt, fresh=fresh)
            if opened is None:
                return None
        ctx = self._context(row, start, log, meter, None if opened is None else opened.lines)
        return InlineAttempt(kind.execute(params, ctx), opened)

    def runs_inline(self, plan: PipelinePlan, start: Start) -> bool:
        """Whether :meth:`inline` would begin ``start`` if its live log opened now."""
        return self._inline_params(plan, start) is not None

    def _inline_params(self, plan: PipelinePlan, start: Start) -> BaseModel | None:
        """The parameters of ``start`` if it may run inline: its kind says so for them, and
        the task has no ``timeout`` to enforce; else None."""
        task = plan.tasks[start.instance.task].config
        runs_inline = getattr(self._kinds[task.kind], "runs_inline", None)
        if runs_inline is None or task.timeout is not None:
            return None
        try:
            params = self._params(plan, start.instance.task, start.params)
        except ValidationError:
            return None  # :meth:`run` fails the attempt, and says why
        return params if runs_inline(params) else None

    def _params(self, plan: PipelinePlan, name: str, params: dict[str, Any]) -> BaseModel:
        model = self._kinds[plan.tasks[name].config.kind].Params
        if plan.tasks[name].templated:
            return model.model_validate(params)
        key = (plan.name, name)
        cached = self._static_params.get(key)
        if cached is None or cached[0] is not plan:
            cached = self._static_params[key] = (plan, model.model_validate(params))
        return cached[1]


def _failed(exc: Exception) -> Outcome:
    """The outcome of an attempt whose task raised ``exc``: a task's own
    :class:`~cued.daemon.errors.PermanentTaskError` fails it for good."""
    if isinstance(exc, PermanentTaskError):
        return Outcome(error=_describe(exc), retryable=False)
    return Outcome(error=_describe(exc))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, ValidationError):
        text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return f"invalid parameters: {text}"
    return text if text else type(exc).__name__
