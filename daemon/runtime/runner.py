"""The runner: carries out the engine's decisions in one task group.

Every run is driven by one coroutine with its own task group inside the runner's, so
cancelling a run cancels exactly its tasks. Limits: a global ``CapacityLimiter`` on running
tasks, one per named pool, and ``max_active_runs`` per pipeline (runs beyond it wait in the
bounded :class:`~cued.daemon.runtime.backlog.Backlog`). Every state change goes to the store; a
task's result is durable before anything downstream of it starts.
"""

from __future__ import annotations

import json
import math
import random
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from pydantic import ValidationError

from cued.daemon.config.secrets import redact
from cued.daemon.core.backoff import backoff_s
from cued.daemon.core.engine import Instance, RunEngine, RunState, Start, State, Wait
from cued.daemon.core.ids import new_id, now
from cued.daemon.core.plan import PipelinePlan
from cued.daemon.core.states import TERMINAL_RUN_STATES
from cued.daemon.errors import InvalidRequest, NotFound, PermanentTaskError, TaskTimeout
from cued.daemon.logs import get_logger
from cued.daemon.runtime.backlog import Backlog
from cued.daemon.runtime.deadlines import Deadlines
from cued.daemon.runtime.gates import expire_due
from cued.daemon.sdk.kinds import AwaitingDecision, Meter, TaskContext
from cued.daemon.sdk.sources import Event
from cued.daemon.store import ApprovalRow, AttemptRow, InstanceRow, RunRow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    import httpx
    from pydantic import BaseModel

    from cued.daemon.config import Config, TaskConfig
    from cued.daemon.core.engine import Command
    from cued.daemon.sdk.kinds import TaskKind
    from cued.daemon.store import Row, Store

__all__ = ["Runner"]


class AlertSink(Protocol):
    """The alerts, as the runner sees them."""

    def rows(self, rule: str, key: str, payload: dict[str, Any]) -> Sequence[Row]:
        """Outbox rows for an alert of ``rule`` (one per channel that wants it). ``key``
        names the occurrence (rule, run, task, attempt) and makes the alert id, the same
        on every resend."""

    def wake(self) -> None:
        """New rows are committed: send them."""


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
    """Runs pipelines: accepts runs, starts them as slots free up, resumes unfinished ones.

    :param config: the checked configuration
    :param store: where every state change goes
    :param kinds: task kinds by name, one instance each
    :param http: the shared HTTP client handed to tasks
    """

    def __init__(
        self, config: Config, store: Store, kinds: dict[str, TaskKind], http: httpx.AsyncClient
    ) -> None:
        self.config = config
        self.store = store
        self.kinds = kinds
        self.http = http
        self.plans = {name: PipelinePlan.build(name, p) for name, p in config.pipelines.items()}
        self.backlog: Backlog[_Run] = Backlog(
            config.daemon.backlog_high_water, config.daemon.backlog_low_water
        )
        self._task_slots = anyio.CapacityLimiter(config.daemon.max_running_tasks)
        self._pools = {name: anyio.CapacityLimiter(n) for name, n in config.daemon.pools.items()}
        self._active: dict[str, int] = dict.fromkeys(self.plans, 0)
        self._runs: dict[str, _Run] = {}
        self._static_params: dict[tuple[str, str], BaseModel] = {}
        self._run_listeners: list[Callable[[RunRow], None]] = []
        self.alerts: AlertSink | None = None
        """Where alerts go (the outbox): set by the daemon when alerts are configured."""
        self.asset_sink: Callable[[list[Event]], Awaitable[object]] | None = None
        """Where the asset events of a succeeded run go (intake), before the run is
        recorded as succeeded: a crash in between resumes the run, which finishes again
        and sends the same events, which intake recognises."""
        self._tg: anyio.abc.TaskGroup | None = None
        self.log = get_logger()
        self._spending = _StoreSpending(store)
        self.running_tasks = 0
        self._draining = False
        self._idle = anyio.Event()
        self._gates_changed = anyio.Event()
        self.gate_lock = anyio.Lock()
        self.deadlines = Deadlines(self)
        """Held while a gate is decided: two decisions at once must not both settle it."""

    # -- lifecycle ---------------------------------------------------------------------

    async def serve(
        self,
        *,
        resume: bool = True,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run whatever is submitted until cancelled; first resume unfinished runs, unless
        ``resume`` is false (the daemon resumes them once its sources have started: see
        :meth:`resume`)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if resume:
                await self.resume()
            tg.start_soon(self._gate_timeouts)
            await tg.start(self.deadlines.run)
            task_status.started()
            await anyio.sleep_forever()

    async def resume(self) -> int:
        """Go on with every run that was unfinished when the daemon last stopped."""
        resumed = await self._resume()
        if resumed:
            self.log.info("runs_resumed", count=resumed)
        return resumed

    def on_run_finished(self, listener: Callable[[RunRow], None]) -> None:
        """Call ``listener(row)`` when a run ends (succeeded, failed or cancelled)."""
        self._run_listeners.append(listener)

    async def drain(self) -> None:
        """Start no more task attempts and return once none runs; those not started stay
        queued in the store and run after a restart."""
        self._draining = True
        if self.running_tasks:
            await self._idle.wait()

    # -- submitting --------------------------------------------------------------------

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

    async def submit(self, pipeline: str, inputs: dict[str, Any] | None = None) -> str:
        """Record a new run durably and queue it; returns its id."""
        return (await self.submit_run(pipeline, inputs)).run_id

    async def submit_run(self, pipeline: str, inputs: dict[str, Any] | None = None) -> RunRow:
        """Record a new run durably and queue it; returns it as recorded."""
        row = self.new_run(pipeline, inputs)
        await self.store.submit([row]).wait()
        self.enqueue(row)
        return row

    def enqueue(self, row: RunRow, prior: dict[str, Instance] | None = None) -> None:
        """Start a recorded run now if its pipeline has a free slot, else queue it."""
        run = _Run(row, self.plans[row.pipeline], prior or {})
        self._runs[row.run_id] = run
        self.deadlines.watch(row)
        if self._active[row.pipeline] < run.plan.config.max_active_runs:
            self._launch(run)
        else:
            self.backlog.push(row.pipeline, run)

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
        """Wait for a run to finish and return its final row.

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

    # -- driving runs -------------------------------------------------------------------

    async def resume_run(self, run_id: str) -> None:
        """Go on with a recorded run that is not in memory: a parked one whose decision
        came, or one that is rerun."""
        found = await self.store.run_state(run_id)
        if found is None:
            raise NotFound(f"no run {run_id!r}")
        row, instances, outputs = found
        self.enqueue(row, _prior(instances, outputs))

    async def _resume(self) -> int:
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
            self.enqueue(row, _prior(instances, outputs))
            resumed += 1
        return resumed

    def _launch(self, run: _Run) -> None:
        assert self._tg is not None, "the runner is not serving"
        self._active[run.row.pipeline] += 1
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
            if engine.state in TERMINAL_RUN_STATES and not run.done.is_set():
                await self._finish(run, engine.state)
            elif engine.parked():
                await self._park(run)
        finally:
            self._active[run.row.pipeline] -= 1
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

    def _write(self, run: _Run, extra: list[Row] | None = None) -> Any:
        """Submit the instances the engine changed, and ``extra`` rows, in one go."""
        assert run.engine is not None
        rows: list[Row] = [_instance_row(run.row.run_id, i) for i in run.engine.drain_changes()]
        if extra:
            rows.extend(extra)
        return self.store.submit(rows) if rows else None

    async def _retry_later(self, run: _Run, tg: anyio.abc.TaskGroup, command: Wait) -> None:
        assert run.engine is not None
        task = run.plan.tasks[command.instance.task].config
        await anyio.sleep(
            backoff_s(
                command.attempt,
                first_s=task.retry_backoff,
                max_s=task.retry_backoff_max,
                rand=random.random(),
            )
        )
        self._apply(run, tg, run.engine.retry_due(command.instance))

    async def _attempt(self, run: _Run, tg: anyio.abc.TaskGroup, start: Start) -> None:
        engine = run.engine
        assert engine is not None
        inst, run_id = start.instance, run.row.run_id
        task = run.plan.tasks[inst.task].config
        kind = self.kinds[task.kind]
        async with AsyncExitStack() as slots:
            if task.pool is not None:
                await slots.enter_async_context(self._pools[task.pool])
            await slots.enter_async_context(self._task_slots)
            if self._draining:
                await anyio.sleep_forever()  # cancelled at shutdown; queued in the store
            engine.started(inst)
            started_at = now()
            self._write(run, [AttemptRow(run_id, inst.key, start.attempt, "running", started_at)])
            log = self.log.bind(
                run_id=run_id, pipeline=run.row.pipeline, task=inst.key, attempt=start.attempt
            )
            log.debug("task_started")
            meter = Meter()
            ctx = TaskContext(
                run_id=run_id,
                pipeline=run.row.pipeline,
                task=inst.task,
                map_index=inst.index,
                attempt=start.attempt,
                idempotency_key=f"{run_id}/{inst.key}",
                log=log,
                http=self.http,
                meter=meter,
                spending=self._spending,
                pass_env=tuple(self.config.daemon.task_env),
            )
            self.running_tasks += 1
            error: str | None = None
            retryable = True
            output_json: str | None = None
            output: Any = None
            try:
                try:
                    params = self._params(run.plan, inst.task, task, start.params)
                except ValidationError as exc:
                    # only the parameters' own check: a pydantic error inside a kind is that
                    # kind's failure, retried like any other
                    raise PermanentTaskError(_describe(exc)) from exc
                if task.timeout is not None:
                    with anyio.fail_after(task.timeout):
                        output = await kind.execute(params, ctx)
                else:
                    output = await kind.execute(params, ctx)
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
            except TimeoutError:
                error = str(TaskTimeout(inst.key, task.timeout or 0))
            except PermanentTaskError as exc:
                error, retryable = _describe(exc), False
            except Exception as exc:  # noqa: BLE001 - whatever a task raises fails its attempt
                error = _describe(exc)
            finally:
                self.running_tasks -= 1
                if self._draining and not self.running_tasks:
                    self._idle.set()
        ended_at = now()
        # what is kept and shown holds no secret the daemon resolved, in memory as in the
        # store, so that downstream tasks see the same after a restart as before one
        output, error = redact(output), redact(error)
        if error is None and isinstance(output, AwaitingDecision):
            await self._await_decision(run, inst, start.attempt, started_at, output)
            return
        if error is None:
            try:
                output_json = json.dumps(output)
            except (TypeError, ValueError) as exc:
                error, retryable = f"output is not JSON-serialisable: {exc}", False
        if error is None:
            log.debug("task_succeeded", duration_s=round(ended_at - started_at, 6))
            commands = engine.succeeded(inst, output)
            attempt = AttemptRow(
                run_id,
                inst.key,
                start.attempt,
                "succeeded",
                started_at,
                ended_at,
                None,
                output_json,
                meter.cost,
                meter.usage,
            )
        else:
            commands = engine.failed(inst, error, retryable=retryable)
            log.warning("task_failed", error=error, will_retry=inst.state is State.UP_FOR_RETRY)
            attempt = AttemptRow(
                run_id,
                inst.key,
                start.attempt,
                "failed",
                started_at,
                ended_at,
                error,
                cost=meter.cost,
                usage=meter.usage,
            )
        extra: list[Row] = [attempt]
        if inst.state is State.FAILED:  # for good: no retry left, or none would help
            extra.extend(
                self.alert_rows(
                    "task_failed", run.row, task=inst.key, attempt=start.attempt, error=error
                )
            )
        # durable before anything downstream starts: a succeeded task never runs again
        await self._write(run, extra).wait()
        if inst.state is State.FAILED:
            self.wake_alerts()
        self._apply(run, tg, commands)

    def alert_rows(
        self, rule: str, row: RunRow, *, occurrence: str | None = None, **details: Any
    ) -> list[Row]:
        """Outbox rows for ``rule`` about the run ``row``; they commit with the change they
        report, so a crash cannot lose an alert, and the alert id is the same on every
        resend."""
        if self.alerts is None:
            return []
        parts = [rule, row.run_id]
        if "task" in details:
            parts.append(str(details["task"]))
            if "attempt" in details:
                parts.append(str(details["attempt"]))
        if occurrence is not None:
            parts.append(occurrence)
        key = ":".join(parts)
        payload = {
            "rule": rule,
            "run_id": row.run_id,
            "pipeline": row.pipeline,
            "event_id": row.event_id,
            "inputs": row.inputs,
            **details,
        }
        return list(self.alerts.rows(rule, key, payload))

    def wake_alerts(self) -> None:
        if self.alerts is not None:
            self.alerts.wake()

    def _params(
        self, plan: PipelinePlan, name: str, task: TaskConfig, params: dict[str, Any]
    ) -> BaseModel:
        model = self.kinds[task.kind].Params
        if plan.tasks[name].templated:
            return model.model_validate(params)
        key = (plan.name, name)
        if (cached := self._static_params.get(key)) is None:
            cached = self._static_params[key] = model.model_validate(params)
        return cached

    def _asset_events(self, run: _Run) -> list[Event]:
        assert run.engine is not None
        events = []
        outputs: dict[str, list[Any]] = {}
        for inst in run.engine.instances():
            outputs.setdefault(inst.task, []).append(inst.output)
        for name, task in run.plan.tasks.items():
            for asset in task.config.produces:
                output = outputs.get(name, [None])
                events.append(
                    Event(
                        source=f"asset:{asset}",
                        event_id=f"asset:{asset}:{run.row.run_id}",
                        data={
                            "asset": asset,
                            "run_id": run.row.run_id,
                            "pipeline": run.row.pipeline,
                            "task": name,
                            "inputs": run.row.inputs,
                            "output": output if task.config.map is not None else output[0],
                        },
                        meta={"producer": f"{run.row.pipeline}.{name}"},
                        received_at=now(),
                    )
                )
        return events

    async def _await_decision(
        self, run: _Run, inst: Instance, attempt: int, started_at: float, ask: AwaitingDecision
    ) -> None:
        assert run.engine is not None
        run.engine.waiting(inst)
        requested = now()
        # a gate's task `timeout` is how long to wait for the decision
        wait_s = (
            ask.timeout_s if ask.timeout_s is not None else run.plan.tasks[inst.task].config.timeout
        )
        gate = ApprovalRow(
            run.row.run_id,
            inst.key,
            attempt,
            ask.message,
            ask.approvers,
            ask.min_approvals,
            ask.on_timeout,
            ask.payload,
            requested,
            None if wait_s is None else requested + wait_s,
            "waiting",
        )
        rows: list[Row] = [
            AttemptRow(run.row.run_id, inst.key, attempt, "waiting", started_at),
            gate,
        ]
        rows.extend(
            self.alert_rows(
                "approval_waiting", run.row, task=inst.key, attempt=attempt, message=ask.message
            )
        )
        await self._write(run, rows).wait()
        self.log.info("approval_waiting", run_id=run.row.run_id, task=inst.key, message=ask.message)
        self._gates_changed.set()
        self.wake_alerts()

    async def _park(self, run: _Run) -> None:
        """Nothing of the run runs, and a gate waits for a decision: leave it in the store
        (its slot freed, nothing of it in memory) until :meth:`resume_run`."""
        assert run.engine is not None
        run.row = replace(run.row, state=RunState.WAITING.value)
        with anyio.CancelScope(shield=True):
            await self._write(run, [run.row]).wait()
        self.log.info("run_waiting", run_id=run.row.run_id, pipeline=run.row.pipeline)
        self._runs.pop(run.row.run_id, None)
        run.done.set()

    def groups_of(self, user: str) -> frozenset[str]:
        """The groups of ``[auth.users]`` that ``user`` belongs to."""
        found = self.config.auth.users.get(user)
        return frozenset(found.groups) if found else frozenset()

    @property
    def active_runs(self) -> int:
        """Runs that hold a slot now (started, not parked or finished): for metrics."""
        return sum(self._active.values())

    @property
    def tasks_waiting(self) -> int:
        """Task attempts ready to run that wait for a slot (global or a pool's): for metrics."""
        return self._task_slots.statistics().tasks_waiting + sum(
            pool.statistics().tasks_waiting for pool in self._pools.values()
        )

    def is_active(self, run_id: str) -> bool:
        """Whether the run is in memory (queued or running here, not parked or finished)."""
        return run_id in self._runs

    def settle(self, run_id: str, key: str, *, ok: bool, output: Any, error: str | None) -> bool:
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

    async def _gate_timeouts(self) -> None:
        """Settle approval gates whose time is up, as their ``on_timeout`` says; wakes for
        the earliest deadline in the store, and whenever a gate starts waiting."""
        while True:
            self._gates_changed = anyio.Event()
            next_at = await self.store.next_approval_deadline()
            delay = None if next_at is None else max(0.0, next_at - now())
            if delay == 0.0:
                await expire_due(self)
                continue
            with anyio.move_on_after(delay if delay is not None else math.inf):
                await self._gates_changed.wait()

    async def _finish(self, run: _Run, state: RunState) -> None:
        if (
            state is RunState.SUCCEEDED
            and self.asset_sink is not None
            and (events := self._asset_events(run))
        ):
            await self.asset_sink(events)
        error = None
        if state is RunState.FAILED and run.engine is not None:
            failed = [i for i in run.engine.instances() if i.state is State.FAILED]
            error = "; ".join(f"{i.key}: {i.error}" for i in failed[:3]) or None
        run.row = replace(run.row, state=state.value, ended_at=now(), error=error)
        with anyio.CancelScope(shield=True):
            rows: list[Row] = [run.row]
            if run.engine is not None:
                rows.extend(_instance_row(run.row.run_id, i) for i in run.engine.drain_changes())
            rule = {RunState.FAILED: "run_failed", RunState.SUCCEEDED: "run_succeeded"}.get(state)
            if rule is not None:
                # a rerun run ends again: that end is an alert of its own. Each rerun raises
                # the sum of the instances' retry bases, so it tells the ends apart.
                reruns = sum(i.retry_base for i in run.engine.instances()) if run.engine else 0
                occurrence = f"rerun{reruns}" if reruns else None
                rows.extend(self.alert_rows(rule, run.row, occurrence=occurrence, error=error))
            await self.store.submit(rows).wait()
            self.wake_alerts()
        self.log.info(
            "run_finished", run_id=run.row.run_id, pipeline=run.row.pipeline, state=state.value
        )
        self._runs.pop(run.row.run_id, None)
        run.done.set()
        for listener in self._run_listeners:
            listener(run.row)


class _StoreSpending:
    """Costs from the store. A cost is recorded when its attempt ends, so attempts still
    running are not counted: a cap can be overrun by the AI steps running at that time."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def by_run(self, run_id: str) -> float:
        return await self._store.costs(run_id=run_id)

    async def today(self) -> float:
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return await self._store.costs(since=midnight.timestamp())


def _prior(instances: list[InstanceRow], outputs: dict[str, Any]) -> dict[str, Instance]:
    return {
        i.key: Instance(
            i.task,
            i.map_index,
            State(i.state),
            i.attempts,
            outputs.get(i.key),
            i.error,
            i.retry_base,
        )
        for i in instances
    }


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, ValidationError):
        text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return f"invalid parameters: {text}"
    return text if text else type(exc).__name__


def _instance_row(run_id: str, inst: Instance) -> InstanceRow:
    """The store's row of an engine instance (here: the store knows rows, not the engine)."""
    return InstanceRow(
        run_id,
        inst.key,
        inst.task,
        inst.index,
        inst.state.value,
        inst.attempts,
        inst.error,
        now(),
        inst.retry_base,
    )
