"""The task-kind interface: what a plugin implements and what it is given to run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from cued.daemon.core.records import record

if TYPE_CHECKING:
    import httpx
    import structlog
    from pydantic import BaseModel

__all__ = [
    "Awaiting",
    "AwaitingDecision",
    "AwaitingEvent",
    "AwaitingRun",
    "AwaitingTime",
    "LineWriter",
    "Meter",
    "ParamProblem",
    "Spending",
    "TaskContext",
    "TaskKind",
]


@dataclass(frozen=True)
class AwaitingDecision:
    """What a task kind returns to stop its instance until people decide (an approval
    gate). The run waits in the store, holding no slot and, once nothing else of it runs,
    no memory; a decision (or the timeout) settles the instance and the run goes on.

    :param message: what the deciders are asked
    :param approvers: who may decide: user names, or ``group:NAME``; empty for anyone
        with the ``approver`` role
    :param min_approvals: approvals needed; one rejection settles it as rejected
    :param timeout_s: how long to wait, or ``None`` for ever
    :param on_timeout: ``approve``, ``reject`` or ``fail`` when the time is up
    :param payload: a proposal the deciders may edit (an AI step's draft, say)
    """

    message: str
    approvers: tuple[str, ...] = ()
    min_approvals: int = 1
    timeout_s: float | None = None
    on_timeout: str = "fail"
    payload: Any = None


@dataclass(frozen=True)
class AwaitingEvent:
    """What a task kind returns to stop its instance until an event of ``source`` comes
    for which ``match`` holds (a ``wait_event`` task). Like a gate, the run waits in the
    store, holding no slot; intake wakes it in the transaction that records the event, and
    the task's output is ``{"event": {id, source, data, meta, received_at}}``. The task's
    ``timeout`` is how long to wait.

    :param source: the source whose events may wake it
    :param match: an expression in the trigger ``when`` language over ``event`` and the
        task's ``inputs``, ``tasks``, ``run`` and ``item``; ``None``: any event of ``source``
    :param lookback_s: an event recorded this long before the wait began wakes it too
    :param on_timeout: ``fail`` or ``succeed`` (with ``{"event": None, "timed_out": true}``)
    """

    source: str
    match: str | None = None
    lookback_s: float = 0.0
    on_timeout: str = "fail"


@dataclass(frozen=True)
class AwaitingTime:
    """What a task kind returns to stop its instance until a moment (a durable ``sleep``):
    the run waits in the store, holding no slot, and wakes once at ``at``, across restarts.

    :param at: seconds since the epoch
    """

    at: float


@dataclass(frozen=True)
class AwaitingRun:
    """What a task kind returns to run another pipeline (a child run) and wait for it. The
    child is recorded with the attempt's wait, once per attempt (a crash or a restart does
    not start it twice); the instance waits in the store, holding no slot, until the child
    ends: its outputs become the instance's output, its failure the instance's.

    :param pipeline: the pipeline to run
    :param inputs: its inputs
    """

    pipeline: str
    inputs: dict[str, Any] = field(default_factory=dict)


Awaiting = AwaitingDecision | AwaitingEvent | AwaitingTime
"""What a task kind returns to park its instance instead of an output."""


@dataclass(frozen=True)
class ParamProblem:
    """Something ``cued validate`` finds in a task's parameters as written, beyond what
    their model checks: a template where none may be, say (see :class:`TaskKind`).

    :param key: where, under the task: ``("url",)``, ``("env", 0)``
    :param message: what is wrong
    :param warning: reported, but the configuration stays valid
    """

    key: tuple[str | int, ...]
    message: str
    warning: bool = False


@dataclass
class Meter:
    """What an attempt spent, reported by the task kind (an AI step's tokens and their
    price); the runner records it with the attempt, also when the attempt fails."""

    cost: float | None = None
    usage: dict[str, Any] | None = None

    def add(self, cost: float, usage: dict[str, Any] | None = None) -> None:
        self.cost = (self.cost or 0.0) + cost
        if usage:
            merged = dict(self.usage or {})
            for key, value in usage.items():
                merged[key] = (
                    merged.get(key, 0) + value if isinstance(value, int | float) else value
                )
            self.usage = merged


class Spending(Protocol):
    """Money spent so far by attempts that reported a cost, for budgets."""

    async def by_run(self, run_id: str) -> float: ...

    async def today(self) -> float:
        """Since midnight UTC."""


class LineWriter(Protocol):
    """Where an attempt's live log lines go (see :meth:`TaskContext.log_line`)."""

    def write(self, stream: str, text: str) -> None:
        """Keep ``text`` (one line, or several split at newlines) as written to
        ``stream``; never blocks, and may be called from any thread."""


@record
class TaskContext:
    """What a task attempt knows of the world besides its parameters.

    :param run_id: the run this task instance belongs to
    :param pipeline: the pipeline's name
    :param task: the task's name; ``map_index`` tells mapped instances apart
    :param map_index: position in the mapped list, or ``None`` for an unmapped task
    :param attempt: 1 for the first attempt, 2 for the first retry, ...
    :param idempotency_key: unique per task instance and the same on every attempt, also
        across a crash and restart; send it to services that deduplicate requests
    :param log: a logger with run id, pipeline, task and attempt bound
    :param http: the daemon's one shared HTTP client (one connection pool for all tasks)
    :param meter: where the attempt reports what it spent (AI steps)
    :param spending: what was spent already, by this run and today, for cost caps
    :param pass_env: names of the daemon's environment variables that every program a
        task starts gets (``[daemon] task_env``), besides the base; see
        :func:`cued.daemon.sdk.program_env`
    :param lines: where :meth:`log_line` sends the attempt's live log lines (``None``:
        nowhere)
    """

    run_id: str
    pipeline: str
    task: str
    map_index: int | None
    attempt: int
    idempotency_key: str
    log: structlog.typing.FilteringBoundLogger
    http: httpx.AsyncClient
    meter: Meter = field(default_factory=Meter)
    spending: Spending | None = None
    pass_env: tuple[str, ...] = ()
    lines: LineWriter | None = None

    def log_line(self, stream: str, text: str) -> None:
        """Show ``text`` in the attempt's live log (``cued logs``, the API, the run page)
        as written to ``stream`` (``stdout``, ``stderr``, ``log``, or a name of the
        kind's own, such as ``http``). Several lines may be given at once, split at
        newlines. Secrets the daemon resolved are redacted; an attempt keeps its latest
        lines up to a bound (``[daemon] task_log_lines`` and ``task_log_bytes``). Never
        blocks; safe from any thread (a worker thread of a ``python`` task, say).
        """
        if self.lines is not None:
            self.lines.write(stream, text)


@runtime_checkable
class TaskKind(Protocol):
    """A kind of task (``http``, ``shell``, ...), registered under the ``cued.task_kinds``
    entry point group.

    ``Params`` is a pydantic model with ``extra="forbid"``: ``cued validate`` checks a task's
    parameters against it before anything runs (values holding ``{{ templates }}`` are
    checked again, rendered, before each attempt). ``execute`` returns the task's output, a
    JSON-serialisable value that downstream tasks reach as ``tasks.NAME.output``. A kind
    that holds connections may have ``async def aclose(self) -> None``: the daemon calls it
    once, after the last task has ended. ``execute`` raises
    :class:`~cued.daemon.sdk.TaskError` (or any exception) to fail the attempt, and
    :class:`~cued.daemon.sdk.PermanentTaskError` when retrying cannot help.

    ``Params`` may also have a classmethod ``template_problems(params) -> Iterable[
    ParamProblem]``, given the parameters as written (templates unrendered): ``cued
    validate`` reports what it yields. It is for what the rendered values cannot show,
    such as a template that would let event data choose a host or a program.

    Two more classmethods are optional, both ``(params, base_dir) -> Iterable[
    ParamProblem]`` with ``base_dir`` the config file's folder:
    ``config_problems`` for what the config's own files show without running anything
    (``cued validate``: a python function its module beside the config lacks), and
    ``environment_problems`` for what this machine shows (``cued validate --strict``:
    the function imported).

    A kind may have ``runs_inline(self, params) -> bool``: True promises that ``execute``
    with these parameters does no I/O and enters no cancel scope (it returns at once, or
    after ``await anyio.sleep(0)``). The runner then steps such an attempt in its run's own
    task, with the run's other such attempts, instead of giving it a task of its own; one
    that waits on something all the same goes on in a task of its own (correct, only
    slower). Attempts of a task with a ``timeout`` always get a task.
    """

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    async def execute(self, params: Any, ctx: TaskContext) -> Any: ...
