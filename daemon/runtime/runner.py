"""The runner: carries out the engine's decisions in one task group.

Every run is driven by one coroutine with its own task group inside the runner's, so
cancelling a run cancels exactly its tasks. Limits (:mod:`~cued.daemon.runtime.slots`): a
global ``CapacityLimiter`` on running tasks, one per named pool, and ``max_active_runs``
per pipeline (runs beyond it wait in the bounded
:class:`~cued.daemon.runtime.backlog.Backlog`). Every state change goes to the store; a
task's result is durable before anything downstream of it starts.

The runner drives runs and their attempts; the rest it is given, or owns as parts:

```
task attempts   TaskAttempts (attempts.py) runs one, with the kinds, HTTP client and
                Spending (spending.py) the runner is given; the runner holds its slots
slots           Slots (slots.py): run slots, task slots, pools, draining
alerts          RunAlerts (run_alerts.py) builds the outbox rows committed with each change
                they report, for the AlertSink (alerts.py) the runner is given
asset events    asset_events.py builds them; the AssetSink it is given (intake) records them
approval gates  Gates (gates.py) decide and expire them; the runner is their GateHost
deadlines       Deadlines (deadlines.py) watch the runs it starts
```
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio

from cued.daemon.core.engine import Instance, RunEngine, RunState, Start, State, Wait
from cued.daemon.core.ids import new_id, now
from cued.daemon.core.plan import PipelinePlan
from cued.daemon.errors import InvalidRequest, NotFound
from cued.daemon.logs import get_logger
from cued.daemon.runtime.asset_events import asset_events
from cued.daemon.runtime.attempts import TaskAttempts
from cued.daemon.runtime.deadlines import Deadlines
from cued.daemon.runtime.gates import Gates, gate_row
from cued.daemon.runtime.instance_rows import instance_row, instances_of
from cued.daemon.runtime.run_alerts import RunAlerts
from cued.daemon.runtime.slots import Slots
from cued.daemon.sdk.kinds import Meter
from cued.daemon.store import AttemptRow, RunRow

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx
    import structlog

    from cued.daemon.config import Config, TaskConfig
    from cued.daemon.core.engine import Command
    from cued.daemon.runtime.asset_events import AssetSink
    from cued.daemon.runtime.backlog import Backlog
    from cued.daemon.runtime.run_alerts import AlertSink
    from cued.daemon.sdk.kinds import AwaitingDecision, Spending, TaskKind
    from cued.daemon.store import Durable, Row, Store

__all__ = ["Runner", "backoff_s"]

_FINISHED = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})


def backoff_s(task: TaskConfig, attempt: int, rand: float) -> float:
    """Delay before the retry that follows attempt ``attempt``: exponential from
    ``retry_backoff``, capped at ``retry_backoff_max``, with jitter (between half and all of
    it, so retries of many tasks that failed together spread out)."""
    base: float = min(task.retry_backoff * 2.0 ** (attempt - 1), task.retry_backoff_max)
    return base * (0.5 + rand / 2)


@dataclass
class _Run:
    row: RunRow
    plan: PipelinePlan
    prior: dict[str, Instance] = field(default_factory=dict)
    engine: RunEngine | None = None
    scope: anyio.CancelScope | None = None
    tg: anyio.abc.TaskGroup | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    cancelled: bool = False
    """Cancelled before it started: it must not start."""


class Runner:
    """Runs pipelines: starts runs as slots free up, runs their task attempts, parks runs
    at approval gates and resumes them, and resumes unfinished ones.

    :param config: the checked configuration
    :param store: where every state change goes
    :param kinds: task kinds by name, one instance each
    :param http: the shared HTTP client handed to tasks
    :param backlog: where runs wait for a slot (sources watch it for backpressure)
    :param spending: what tasks spent so far, handed to them for their budgets
    :param alerts: the alert outbox, if alerts are configured
    :param assets: where the asset events of a succeeded run go (intake), before the run
        is recorded as succeeded: a crash in between resumes the run, which finishes again
        and sends the same events, which intake recognises
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        kinds: dict[str, TaskKind],
        http: httpx.AsyncClient,
        *,
        backlog: Backlog[Any],
        spending: Spending,
        alerts: AlertSink | None = None,
        assets: AssetSink | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.kinds = kinds
        self.plans = {name: PipelinePlan.build(name, p) for name, p in config.pipelines.items()}
        self.backlog: Backlog[_Run] = backlog
        self.slots = Slots(
            config.daemon.max_running_tasks,
            config.daemon.pools,
            {name: plan.config.max_active_runs for name, plan in self.plans.items()},
        )
        self.gates = Gates(store, self)
        """The approval gates of this runner's runs: decide them here."""
        self.log: structlog.typing.FilteringBoundLogger = get_logger()
        self._attempts = TaskAttempts(kinds, http, spending, config.daemon.task_env)
        self._alerts = RunAlerts(alerts)
        self._assets = assets
        self._deadlines = Deadlines(self.plans, store, self._alerts)
        self._runs: dict[str, _Run] = {}
        self._run_listeners: list[Callable[[RunRow], None]] = []
        self._tg: anyio.abc.TaskGroup | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def serve(
        self,
        *,
        resume_unfinished: bool = True,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run whatever is started until cancelled; first resume unfinished runs, unless
        ``resume_unfinished`` is false (the daemon resumes them once its sources have
        started: see :meth:`resume_unfinished`)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if resume_unfinished:
                await self.resume_unfinished()
            tg.start_soon(self.gates.expire_when_due)
            await tg.start(self._deadlines.run)
            task_status.started()
            await anyio.sleep_forever()

    async def resume_unfinished(self) -> int:
        """Go on with every run that was unfinished when the daemon last stopped; a run
        whose pipeline is no longer configured fails. Returns how many go on."""
        resumed = 0
        for row, instances, outputs in await self.store.runs_to_resume():
            if row.pipeline not in self.plans:
                failed = replace(
                    row,
                    state=RunState.FAILED.value,
                    ended_at=now(),
                    error=f"pipeline {row.pipeline!r} is no longer in the configuration",
                )
                await self.store.submit([failed]).wait()
                continue
            self.enqueue(row, instances_of(instances, outputs))
            resumed += 1
        if resumed:
            self.log.info("runs_resumed", count=resumed)
        return resumed

    def on_run_finished(self, listener: Callable[[RunRow], None]) -> None:
        """Call ``listener(row)`` when a run ends (succeeded, failed or cancelled)."""
        self._run_listeners.append(listener)

    async def drain(self) -> None:
        """Start no more task attempts and return once none runs; those not started stay
        queued in the store and run after a restart."""
        await self.slots.drain()

    # -- starting and stopping runs ----------------------------------------------------

    def new_run(
        self, pipeline: str, inputs: dict[str, Any] | None = None, *, event_id: str | None = None
    ) -> RunRow:
        """A queued run of ``pipeline``, its inputs checked and defaults filled in; record it
        (``store.submit``), then hand it to :meth:`enqueue`.

        :raises NotFound: if there is no such pipeline
        :raises InvalidRequest: if an input is not declared by the pipeline
        """
        plan = self.plans.get(pipeline)
        if plan is None:
            known = ", ".join(sorted(self.plans)) or "none"
            raise NotFound(f"no pipeline {pipeline!r} (known: {known})")
        declared = plan.config.inputs
        given = inputs or {}
        if unknown := sorted(set(given) - set(declared)):
            raise InvalidRequest(
                f"pipeline {pipeline!r} has no input {unknown[0]!r} "
                f"(declared: {', '.join(sorted(declared)) or 'none'})"
            )
        return RunRow(
            new_id(),
            pipeline,
            RunState.QUEUED.value,
            {**declared, **given},
            now(),
            event_id=event_id,
        )

    async def start_run(self, pipeline: str, inputs: dict[str, Any] | None = None) -> RunRow:
        """Record a new run of ``pipeline`` durably and queue it; returns it as recorded.

        :raises NotFound: if there is no such pipeline
        :raises InvalidRequest: if an input is not declared by the pipeline
        """
        row = self.new_run(pipeline, inputs)
        await self.store.submit([row]).wait()
        self.enqueue(row)
        return row

    def enqueue(self, row: RunRow, prior: dict[str, Instance] | None = None) -> None:
        """Start a recorded run now if its pipeline has a free slot, else queue it."""
        run = _Run(row, self.plans[row.pipeline], prior or {})
        self._runs[row.run_id] = run
        self._deadlines.watch(row)
        if self.slots.run_slot_free(row.pipeline):
            self._launch(run)
        else:
            self.backlog.push(row.pipeline, run)

    async def resume_recorded(self, run_id: str) -> None:
        """Go on with a recorded run that is not in memory: a parked one whose decision
        came, or one that is rerun.

        :raises NotFound: if the run does not exist
        """
        found = await self.store.run_state(run_id)
        if found is None:
            raise NotFound(f"no run {run_id!r}")
        row, instances, outputs = found
        self.enqueue(row, instances_of(instances, outputs))

    async def cancel(self, run_id: str) -> RunRow:
        """Cancel a run: its running tasks are cancelled, nothing more of it starts.

        :raises NotFound: if the run is not known or already finished
        """
        run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"no unfinished run {run_id!r}")
        if run.engine is None:  # still waiting in the backlog, or about to start
            run.cancelled = True
            self.backlog.remove(run.row.pipeline, lambda r: r is run)
            await self._finish(run, RunState.CANCELLED)
            return run.row
        if run.engine.cancel():  # empty if it has just finished: let it finish as it did
            self._write(run)
            if run.scope is not None:
                run.scope.cancel()
        await run.done.wait()
        return run.row

    async def wait(self, run_id: str) -> RunRow:
        """Wait for a run to finish (or park at a gate) and return its row.

        :raises NotFound: if the run does not exist
        """
        run = self._runs.get(run_id)
        if run is not None:
            await run.done.wait()
            return run.row
        row = await self.store.get_run(run_id)
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return row

    def is_active(self, run_id: str) -> bool:
        """Whether the run is in memory (queued or running here, not parked or finished)."""
        return run_id in self._runs

    def settle_gate(
        self, run_id: str, key: str, *, ok: bool, output: Any, error: str | None
    ) -> bool:
        """Settle a waiting instance of a run that is in memory (other tasks of it still
        run); False if the run is parked, and the caller resumes it from the store."""
        run = self._runs.get(run_id)
        if run is None or run.engine is None or run.tg is None:
            return False
        inst = next((i for i in run.engine.instances() if i.key == key), None)
        if inst is None or inst.state is not State.WAITING:
            return False
        if ok:
            commands = run.engine.succeeded(inst, output)
        else:
            commands = run.engine.failed(inst, error or "rejected", retryable=False, output=output)
        self._apply(run, run.tg, commands)
        return True

    # -- driving runs -------------------------------------------------------------------

    def _launch(self, run: _Run) -> None:
        assert self._tg is not None, "the runner is not serving"
        self.slots.take_run_slot(run.row.pipeline)
        self._tg.start_soon(self._drive, run, name=f"run {run.row.run_id}")

    async def _drive(self, run: _Run) -> None:
        log = self.log.bind(run_id=run.row.run_id, pipeline=run.row.pipeline)
        try:
            if run.cancelled:
                return  # cancelled between leaving the backlog and starting here
            run.row = replace(
                run.row, state=RunState.RUNNING.value, started_at=run.row.started_at or now()
            )
            engine = run.engine = RunEngine(run.plan, run.row.run_id, run.row.inputs, run.prior)
            log.info("run_started", resumed=bool(run.prior))
            async with anyio.create_task_group() as tg:
                run.scope, run.tg = tg.cancel_scope, tg
                self.store.submit([run.row])
                self._apply(run, tg, engine.begin())
            run.tg = None
            if engine.state in _FINISHED and not run.done.is_set():
                await self._finish(run, engine.state)
            elif engine.parked():
                await self._park(run)
        finally:
            self.slots.free_run_slot(run.row.pipeline)
            if (following := self.backlog.pop(run.row.pipeline)) is not None:
                self._launch(following)

    def _apply(self, run: _Run, tg: anyio.abc.TaskGroup, commands: list[Command]) -> None:
        assert run.engine is not None
        self._write(run)
        for command in commands:
            if isinstance(command, Start):
                tg.start_soon(self._attempt, run, tg, command)
            elif isinstance(command, Wait):
                tg.start_soon(self._retry_later, run, tg, command)
            # Finish needs nothing here: the run's task group empties and _drive finishes it

    def _write(self, run: _Run, extra: list[Row] | None = None) -> Durable | None:
        """Submit the instances the engine changed, and ``extra`` rows, in one go."""
        assert run.engine is not None
        rows: list[Row] = [instance_row(run.row.run_id, i) for i in run.engine.drain_changes()]
        if extra:
            rows.extend(extra)
        return self.store.submit(rows) if rows else None

    async def _commit(self, run: _Run, rows: list[Row]) -> None:
        """:meth:`_write` ``rows`` (not empty) and wait until they are durable."""
        durable = self._write(run, rows)
        assert durable is not None
        await durable.wait()

    async def _retry_later(self, run: _Run, tg: anyio.abc.TaskGroup, command: Wait) -> None:
        assert run.engine is not None
        task = run.plan.tasks[command.instance.task].config
        await anyio.sleep(backoff_s(task, command.attempt, random.random()))
        self._apply(run, tg, run.engine.retry_due(command.instance))

    async def _attempt(self, run: _Run, tg: anyio.abc.TaskGroup, start: Start) -> None:
        engine = run.engine
        assert engine is not None
        inst, run_id = start.instance, run.row.run_id
        async with self.slots.task_slot(run.plan.tasks[inst.task].config.pool):
            engine.started(inst)
            started_at = now()
            self._write(run, [AttemptRow(run_id, inst.key, start.attempt, "running", started_at)])
            log = self.log.bind(
                run_id=run_id, pipeline=run.row.pipeline, task=inst.key, attempt=start.attempt
            )
            log.debug("task_started")
            meter = Meter()
            with self.slots.running():
                try:
                    outcome = await self._attempts.run(run.plan, run.row, start, log, meter)
                except anyio.get_cancelled_exc_class():
                    # a cancelled run marks its instances cancelled; a daemon shutting down
                    # leaves them running, so that a restart runs them again
                    state = "cancelled" if engine.state is RunState.CANCELLED else "interrupted"
                    self.store.submit(
                        [
                            AttemptRow(
                                run_id,
                                inst.key,
                                start.attempt,
                                state,
                                started_at,
                                now(),
                                cost=meter.cost,
                                usage=meter.usage,
                            )
                        ]
                    )
                    raise
        ended_at = now()
        outcome = outcome.kept()
        if (ask := outcome.awaiting) is not None:
            await self._await_decision(run, inst, start.attempt, started_at, ask)
            return
        if outcome.error is None:
            log.debug("task_succeeded", duration_s=round(ended_at - started_at, 6))
            commands = engine.succeeded(inst, outcome.output)
        else:
            commands = engine.failed(inst, outcome.error, retryable=outcome.retryable)
            log.warning(
                "task_failed", error=outcome.error, will_retry=inst.state is State.UP_FOR_RETRY
            )
        extra: list[Row] = [outcome.attempt_row(run_id, start, started_at, ended_at, meter)]
        failed_for_good = inst.state is State.FAILED  # no retry left, or none would help
        if failed_for_good:
            extra.extend(self._alerts.task_failed(run.row, inst.key, start.attempt, outcome.error))
        # durable before anything downstream starts: a succeeded task never runs again
        await self._commit(run, extra)
        if failed_for_good:
            self._alerts.wake()
        self._apply(run, tg, commands)

    async def _await_decision(
        self, run: _Run, inst: Instance, attempt: int, started_at: float, ask: AwaitingDecision
    ) -> None:
        assert run.engine is not None
        run.engine.waiting(inst)
        # a gate's task `timeout` is how long to wait for the decision
        gate = gate_row(
            run.row.run_id, inst.key, attempt, ask, run.plan.tasks[inst.task].config.timeout
        )
        rows: list[Row] = [
            AttemptRow(run.row.run_id, inst.key, attempt, "waiting", started_at),
            gate,
            *self._alerts.approval_waiting(run.row, inst.key, attempt, ask.message),
        ]
        await self._commit(run, rows)
        self.log.info("approval_waiting", run_id=run.row.run_id, task=inst.key, message=ask.message)
        self.gates.opened()
        self._alerts.wake()

    async def _park(self, run: _Run) -> None:
        """Nothing of the run runs, and a gate waits for a decision: leave it in the store
        (its slot freed, nothing of it in memory) until :meth:`resume_recorded`."""
        assert run.engine is not None
        run.row = replace(run.row, state=RunState.WAITING.value)
        with anyio.CancelScope(shield=True):
            await self._commit(run, [run.row])
        self.log.info("run_waiting", run_id=run.row.run_id, pipeline=run.row.pipeline)
        self._runs.pop(run.row.run_id, None)
        run.done.set()

    async def _finish(self, run: _Run, state: RunState) -> None:
        if (
            state is RunState.SUCCEEDED
            and self._assets is not None
            and run.engine is not None
            and (events := asset_events(run.plan, run.row, run.engine.instances()))
        ):
            await self._assets(events)
        error = None
        if state is RunState.FAILED and run.engine is not None:
            failed = [i for i in run.engine.instances() if i.state is State.FAILED]
            error = "; ".join(f"{i.key}: {i.error}" for i in failed[:3]) or None
        run.row = replace(run.row, state=state.value, ended_at=now(), error=error)
        with anyio.CancelScope(shield=True):
            rows: list[Row] = [run.row]
            reruns = 0
            if run.engine is not None:
                rows.extend(instance_row(run.row.run_id, i) for i in run.engine.drain_changes())
                reruns = sum(i.retry_base for i in run.engine.instances())
            rows.extend(self._alerts.run_ended(run.row, state, reruns, error))
            await self.store.submit(rows).wait()
            self._alerts.wake()
        self.log.info(
            "run_finished", run_id=run.row.run_id, pipeline=run.row.pipeline, state=state.value
        )
        self._runs.pop(run.row.run_id, None)
        run.done.set()
        for listener in self._run_listeners:
            listener(run.row)

    # -- names before issue 9: daemon/web, daemon/cli and daemon/ops still call them. Delete
    # -- this section once the merge has renamed those calls (see the branch's report).

    async def submit(self, pipeline: str, inputs: dict[str, Any] | None = None) -> str:
        """Old name: ``(await start_run(...)).run_id``."""
        return (await self.start_run(pipeline, inputs)).run_id

    async def submit_run(self, pipeline: str, inputs: dict[str, Any] | None = None) -> RunRow:
        """Old name of :meth:`start_run`."""
        return await self.start_run(pipeline, inputs)

    async def resume_run(self, run_id: str) -> None:
        """Old name of :meth:`resume_recorded`."""
        await self.resume_recorded(run_id)

    def groups_of(self, user: str) -> frozenset[str]:
        """Old name of ``config.auth.groups_of``."""
        return self.config.auth.groups_of(user)

    @property
    def running_tasks(self) -> int:
        """Old name of ``slots.running_tasks``."""
        return self.slots.running_tasks
