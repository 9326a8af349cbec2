"""The scheduler of one run: given what just happened, which task instances start now.

Pure: no I/O, no clock, no anyio. The runner feeds it events (a task finished, a retry is
due, the run is cancelled) and carries out the commands it returns. The run's state is one
plain value owned by one run driver; the methods change it in place and note which task
instances changed (``drain_changes``), so the runner writes exactly those to the store.
Changing in place, not copying, keeps the per-task cost flat for runs of thousands of tasks.

A task's instances: one, keyed by the task's name, or, for a task with ``map``, one per
item, keyed ``name[i]``, created when its upstream tasks are done and the list is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cued.daemon.core.records import record
from cued.daemon.core.states import TERMINAL_TASK_STATES, RunState, State
from cued.daemon.core.templates import TemplateProblem, render, render_value

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cued.daemon.core.plan import PipelinePlan, TaskPlan

# State and RunState live in core/states.py; the engine's API speaks them, so they are
# importable from here too.
__all__ = [
    "Finish",
    "Instance",
    "RunEngine",
    "RunState",
    "Start",
    "State",
    "Wait",
    "instance_key",
]


def instance_key(task: str, index: int | None) -> str:
    return task if index is None else f"{task}[{index}]"


@dataclass(slots=True)
class Instance:
    """One task instance: a task, or one item of a mapped task."""

    task: str
    index: int | None
    state: State = State.PENDING
    attempts: int = 0
    output: Any = None
    error: str | None = None
    retry_base: int = 0
    """Attempts made before the latest rerun: a rerun gets the task's retries afresh."""

    @property
    def key(self) -> str:
        return instance_key(self.task, self.index)


@record
class Start:
    """Run attempt ``attempt`` of ``instance`` with these rendered parameters."""

    instance: Instance
    params: dict[str, Any]
    attempt: int


@record
class Wait:
    """Attempt ``attempt`` failed; call ``retry_due`` after the backoff delay."""

    instance: Instance
    attempt: int


@record
class Finish:
    """Every instance is done: the run ends in ``state``."""

    state: RunState


Command = Start | Wait | Finish


@dataclass
class _Task:
    instances: list[Instance] | None = None  # None until decided (and, if mapped, expanded)
    open_needs: int = 0
    unfinished: int = 0


@dataclass
class RunEngine:
    """The scheduling state of one run.

    :param plan: the pipeline's plan
    :param run_id: the run's id
    :param inputs: the run's inputs, defaults filled in
    :param prior: instances recorded before a restart, by key: a succeeded one keeps its
        output and is not run again; one that was running or waiting for a retry runs again
        as its next attempt
    """

    plan: PipelinePlan
    run_id: str
    inputs: dict[str, Any]
    prior: Mapping[str, Instance] = field(default_factory=dict)
    state: RunState = RunState.RUNNING
    _tasks: dict[str, _Task] = field(init=False)
    _changes: list[Instance] = field(init=False, default_factory=list)
    _items: dict[str, list[Any]] = field(init=False, default_factory=dict)  # mapped lists
    _unfinished_tasks: int = field(init=False)

    def __post_init__(self) -> None:
        self._tasks = {
            name: _Task(open_needs=len(t.config.needs)) for name, t in self.plan.tasks.items()
        }
        self._unfinished_tasks = len(self._tasks)

    # -- events -----------------------------------------------------------------------

    def begin(self) -> list[Command]:
        """Start (or, after a restart, resume) the run."""
        commands: list[Command] = []
        for name in self.plan.roots:
            self._decide(name, commands)
        self._check_finished(commands)
        return commands

    def started(self, instance: Instance) -> None:
        """The runner gave ``instance`` a slot and its attempt is running now. Not a change
        :meth:`drain_changes` returns: the runner writes the start itself, only if a commit
        comes while the attempt runs (most short ones end first, and write their end)."""
        if instance.state in TERMINAL_TASK_STATES:
            return  # cancelled while it waited for the slot
        instance.state = State.RUNNING

    def waiting(self, instance: Instance) -> None:
        """The attempt asks for a decision (an approval gate) and ends; the instance waits,
        holding no slot, until :meth:`succeeded` or :meth:`failed` settles it."""
        if self.state is RunState.RUNNING and instance.state not in TERMINAL_TASK_STATES:
            instance.state = State.WAITING
            self._changes.append(instance)

    def parked(self) -> bool:
        """Nothing runs or is about to, but something waits for a decision: the run can
        leave memory and resume when the decision comes."""
        live = False
        for inst in self.instances():
            if inst.state is State.WAITING:
                live = True
            elif inst.state not in TERMINAL_TASK_STATES:
                return False
        return live and self.state is RunState.RUNNING

    def succeeded(self, instance: Instance, output: Any) -> list[Command]:
        if self.state is not RunState.RUNNING:
            return []  # a late report from a cancelled run: its instances stay cancelled
        instance.state, instance.output, instance.error = State.SUCCEEDED, output, None
        return self._done(instance)

    def failed(
        self, instance: Instance, error: str, *, retryable: bool = True, output: Any = None
    ) -> list[Command]:
        """An attempt failed; retried while the task has retries left and ``retryable``.
        ``output`` (a rejected gate's decision, say) stays readable by ``all_done`` tasks."""
        if self.state is not RunState.RUNNING:
            return []
        instance.error, instance.output = error, output
        task = self.plan.tasks[instance.task]
        if retryable and instance.attempts - instance.retry_base <= task.config.retries:
            instance.state = State.UP_FOR_RETRY
            self._changes.append(instance)
            return [Wait(instance, instance.attempts)]
        instance.state = State.FAILED
        return self._done(instance)

    def retry_due(self, instance: Instance) -> list[Command]:
        if instance.state is not State.UP_FOR_RETRY or self.state is not RunState.RUNNING:
            return []
        start = self._start(instance, self.plan.tasks[instance.task])
        return [start] if start else self._done(instance)

    def cancel(self) -> list[Command]:
        """Stop the run: every unfinished instance is cancelled, nothing new starts. A run
        that has already finished stays as it ended."""
        if self.state is not RunState.RUNNING:
            return []
        self.state = RunState.CANCELLED
        for name, task in self._tasks.items():
            if task.instances is None:
                task.instances = [Instance(name, None)]
                task.unfinished = 1
            for inst in task.instances:
                if inst.state not in TERMINAL_TASK_STATES:
                    inst.state = State.CANCELLED
                    self._changes.append(inst)
        return [Finish(RunState.CANCELLED)]

    def context_of(self, instance: Instance) -> dict[str, Any]:
        """The names ``instance``'s templates read (``inputs``, ``tasks``, ``run``,
        ``item``): what a wait keeps for its ``match``."""
        return self._context(self.plan.tasks[instance.task], instance.index)

    # -- what changed -------------------------------------------------------------------

    def drain_changes(self) -> list[Instance]:
        """Instances whose state changed since the last call, each once."""
        changes = self._changes
        if len(changes) < 2:  # most calls: nothing to take apart
            if changes:
                self._changes = []
            return changes
        self._changes = []
        return list({id(i): i for i in changes}.values())

    def instances(self) -> list[Instance]:
        return [i for t in self._tasks.values() for i in (t.instances or ())]

    # -- scheduling -------------------------------------------------------------------------

    def _decide(self, name: str, commands: list[Command]) -> None:
        """Every task ``name`` needs is done: start it, or mark it upstream_failed."""
        plan = self.plan.tasks[name]
        task = self._tasks[name]
        if not self._rule_allows(plan):
            self._create(name, task, [Instance(name, None, State.UPSTREAM_FAILED)], commands)
            return
        if plan.config.map is None:
            self._create(name, task, [self._restored(name, None)], commands)
            return
        try:
            items = render(plan.config.map, self._context(plan, None))
            if not isinstance(items, list | tuple):
                raise TemplateProblem(
                    f"map must give a list, got {type(items).__name__}: {items!r}"
                )
        except TemplateProblem as exc:
            self._create(name, task, [Instance(name, None, State.FAILED, error=str(exc))], commands)
            return
        self._items[name] = list(items)
        self._create(name, task, [self._restored(name, i) for i in range(len(items))], commands)

    def _create(
        self, name: str, task: _Task, instances: list[Instance], commands: list[Command]
    ) -> None:
        task.instances = instances
        plan = self.plan.tasks[name]
        starts: list[Command] = []
        for inst in instances:
            if (
                inst.state not in TERMINAL_TASK_STATES
                and inst.state is not State.WAITING
                and self.state is RunState.RUNNING
            ):
                start = self._start(inst, plan)
                if isinstance(start, Start):
                    starts.append(start)
                    continue
            if inst.state in TERMINAL_TASK_STATES and inst.key not in self.prior:
                self._changes.append(inst)
        task.unfinished = sum(1 for i in instances if i.state not in TERMINAL_TASK_STATES)
        commands.extend(starts)
        if task.unfinished == 0:
            self._task_done(name, commands)

    def _restored(self, name: str, index: int | None) -> Instance:
        prior = self.prior.get(instance_key(name, index))
        if prior is None:
            return Instance(name, index)
        if prior.state in (State.RUNNING, State.QUEUED, State.UP_FOR_RETRY):
            # it was running when the process stopped: run it again, as a new attempt
            prior.state = State.PENDING
        return prior

    def _start(self, inst: Instance, plan: TaskPlan) -> Start | None:
        """A Start for the next attempt, or None if the parameters do not render (the
        instance then failed for good: they would render the same way on a retry)."""
        inst.attempts += 1
        self._changes.append(inst)
        params = plan.params
        if plan.templated:
            try:
                params = render_value(plan.params, self._context(plan, inst.index))
            except TemplateProblem as exc:
                inst.state, inst.error = State.FAILED, str(exc)
                return None
        inst.state = State.QUEUED
        return Start(inst, params, inst.attempts)

    def _context(self, plan: TaskPlan, index: int | None) -> dict[str, Any]:
        tasks: dict[str, Any] = {}
        for up in plan.upstream:
            insts = self._tasks[up].instances or []
            mapped = self.plan.tasks[up].config.map is not None
            outputs = [i.output for i in insts]
            tasks[up] = {"output": outputs if mapped else (outputs[0] if outputs else None)}
        context: dict[str, Any] = {
            "inputs": self.inputs,
            "tasks": tasks,
            "run": {"id": self.run_id, "pipeline": self.plan.name},
        }
        if index is not None:
            context["item"] = self._items[plan.name][index]
        return context

    def _rule_allows(self, plan: TaskPlan) -> bool:
        if plan.config.trigger_rule == "all_done":
            return True
        return all(
            i.state is State.SUCCEEDED
            for need in plan.config.needs
            for i in (self._tasks[need].instances or ())
        )

    def _done(self, instance: Instance) -> list[Command]:
        self._changes.append(instance)
        commands: list[Command] = []
        task = self._tasks[instance.task]
        task.unfinished -= 1
        if task.unfinished == 0:
            self._task_done(instance.task, commands)
        self._check_finished(commands)
        return commands

    def _task_done(self, name: str, commands: list[Command]) -> None:
        self._unfinished_tasks -= 1
        for child in self.plan.tasks[name].children:
            c = self._tasks[child]
            c.open_needs -= 1
            if c.open_needs == 0:
                self._decide(child, commands)

    def _check_finished(self, commands: list[Command]) -> None:
        if self._unfinished_tasks or self.state is not RunState.RUNNING:
            return
        ok = all(i.state is State.SUCCEEDED for i in self.instances())
        self.state = RunState.SUCCEEDED if ok else RunState.FAILED
        commands.append(Finish(self.state))
