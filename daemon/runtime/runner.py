"""The runner: carries out the engine's decisions in one task group.

Every run is driven by one coroutine under its own cancel scope, so cancelling a run
cancels exactly its attempts; the runner's group holds the tasks that drive them, run after
run (:mod:`~cued.daemon.runtime.drivers`: a task costs more than a run's own bookkeeping). Limits
(:mod:`~cued.daemon.runtime.slots`): a global limit on running tasks, one per named pool,
and ``max_active_runs`` per pipeline (runs beyond it wait in the bounded
:class:`~cued.daemon.runtime.backlog.Backlog`: a window of them loaded, the rest counted
per priority lane, their rows read from the store a window at a time as their turn nears;
the highest priority first; on a shared database, claimed by the node that drives them). Every state change
goes to the store; a task's result is durable before anything downstream of it starts.

The runner knows which runs are in memory and starts them as slots free up; the rest it
is given, or owns as parts:

```
a run           ActiveRun (active_run.py) drives one: its engine, attempts, retries, gates
task attempts   TaskAttempts (attempts.py) runs one, with the kinds, HTTP client and
                Spending (spending.py) the runner is given
slots           Slots (slots.py): run slots, task slots, pools, draining
alerts          RunAlerts (run_alerts.py) builds the outbox rows committed with each change
                they report, for the AlertSink (alerts.py) the runner is given
asset events    asset_events.py builds them; the AssetSink it is given (intake) records them
keys            KeyGate (keys.py): runs of a trigger's key admitted at most its
                concurrency limit at once; the others wait there, by id, by priority
approval gates  Gates (gates.py) decide and expire them, and settle the instances that
                wait for child runs (``pipeline`` tasks); the runner is their GateHost
waits           Waits (waits.py) wake runs waiting for an event or a moment, likewise
deadlines       Deadlines (deadlines.py) watch the runs it starts
traces          each time a run is driven, a span from the run row's traceparent (its
                event's span), which its attempts' spans hang from (sdk/tracing.py)
```

The runner itself is made of parts, one concept each, that share its state:

```
admission       Admission (admission.py): the runs in memory, and how each gets to
                start: its key, its pipeline's slots, the backlog's window and cold runs
resumption      Resumption (resumption.py): runs go on from the store (unfinished at the
                last stop, adopted from a node that is gone, parked, rerun)
pausing         Pausing (pausing.py): a paused pipeline starts no new run
cancellation    Cancellation (cancellation.py): runs in memory or in the store, and their
                child runs
```
"""

from __future__ import annotations

import random
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio

from cued.daemon.core.backoff import backoff_s
from cued.daemon.core.engine import RunState
from cued.daemon.core.ids import new_id, now
from cued.daemon.core.plan import PipelinePlan
from cued.daemon.core.states import TERMINAL_RUN_STATES
from cued.daemon.errors import InvalidRequest, NotFound
from cued.daemon.logs import get_logger
from cued.daemon.runtime.active_run import ActiveRun, Driving
from cued.daemon.runtime.admission import key_of, limited, tell_nobody
from cued.daemon.runtime.attempts import TaskAttempts
from cued.daemon.runtime.cancellation import Cancellation
from cued.daemon.runtime.deadlines import Deadlines
from cued.daemon.runtime.drivers import Drivers
from cued.daemon.runtime.gates import Gates
from cued.daemon.runtime.inline import Stepper
from cued.daemon.runtime.keys import KeyGate
from cued.daemon.runtime.pausing import Pausing
from cued.daemon.runtime.resumption import Resumption
from cued.daemon.runtime.run_alerts import RunAlerts
from cued.daemon.runtime.shared_slots import SharedSlots
from cued.daemon.runtime.signals import NO_SIGNALS
from cued.daemon.runtime.slots import Slots
from cued.daemon.runtime.task_logs import TaskLogs
from cued.daemon.runtime.waits import Waits
from cued.daemon.sdk.tracing import Tracing
from cued.daemon.store import PauseRow, RunRow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Collection

    import httpx
    import structlog

    from cued.daemon.config import Config, TaskConfig
    from cued.daemon.runtime.asset_events import AssetSink
    from cued.daemon.runtime.backlog import Backlog
    from cued.daemon.runtime.flow import FlowControl
    from cued.daemon.runtime.run_alerts import AlertSink
    from cued.daemon.runtime.signals import Signals
    from cued.daemon.sdk.kinds import AwaitingRun, Spending, TaskKind
    from cued.daemon.store import Store

__all__ = ["Runner"]

_SLOT_RETRY_S = (0.02, 0.5)
"""A run whose pipeline's slots the other nodes' runs hold all asks again after these
(doubling): they free theirs in their own commits, which this node does not see."""
_IDLE_DRIVERS = 1_000
"""Tasks that drive runs kept idle for the runs to come (one each: a few KB)."""


class Runner(Resumption, Pausing, Cancellation):
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
    :param tracing: makes the spans of runs and attempts (off by default)
    :param events_flushed: returns once every batch of events intake has in hand is
        committed (intake's :meth:`~cued.daemon.runtime.intake.DaemonIntake.flushed`), for
        the lookback of waits
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
        tracing: Tracing | None = None,
        events_flushed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.config_version: int | None = None
        """The configuration version new runs start under (recorded with each)."""
        self.tracing = tracing or Tracing()
        self.store = store
        self.flow: FlowControl | None = None
        """Intake's flow control, where intake runs beside this runner (replay goes
        through it)."""
        self.kinds = kinds
        self.plans = {name: PipelinePlan.build(name, p) for name, p in config.pipelines.items()}
        self.backlog: Backlog[ActiveRun] = backlog
        self.slots = Slots(
            config.daemon.max_running_tasks,
            config.daemon.pools,
            {name: plan.config.max_active_runs for name, plan in self.plans.items()},
            SharedSlots(store) if store.shares_run_slots else None,
        )
        self.gates = Gates(store, self)
        """The approval gates of this runner's runs: decide them here."""
        self.waits = Waits(store, self, events_flushed)
        """The waits (for an event, for a moment) of this runner's runs."""
        self.log: structlog.typing.FilteringBoundLogger = get_logger()
        self.task_logs = TaskLogs(
            store,
            max_lines=config.daemon.task_log_lines,
            max_bytes=config.daemon.task_log_bytes,
            flush_s=config.daemon.task_log_flush,
        )
        """Where task attempts' live log lines go."""
        run_alerts = RunAlerts(alerts)
        self._deadlines = Deadlines(self.plans, store, run_alerts)
        self._driving = Driving(
            store,
            TaskAttempts(kinds, http, spending, config.daemon.task_env, self.task_logs),
            self.slots,
            run_alerts,
            self.gates,
            self.waits,
            assets,
            self._retry_delay_s,
            self._left,
            self.log,
            self.tracing,
            self._new_child,
            self.enqueue,
            self._hand_on,
            self._stepped_ended,
        )
        self._runs: dict[str, ActiveRun] = {}
        self.keys: KeyGate[ActiveRun] = KeyGate()
        """Runs of each flow key admitted, and those waiting for their key."""
        # the runs in memory that count for their key (admitted): their key is released
        # as they leave memory
        self._keyed: set[str] = set()
        self._held_counted = 0
        """How many runs waiting for their key the backlog counts (for backpressure)."""
        # each pipeline's cold runs being loaded into its window (a run cancelled
        # meanwhile is taken out of its set, and not started once its row comes)
        self._loading: dict[str, set[str]] = {}
        self._moved = anyio.Event()
        """Set (and replaced) whenever cold runs are loaded or one is cancelled."""
        self._stopped: dict[str, set[str]] = {}
        self._elsewhere: set[str] = set()
        self._waiting_notice: Callable[[str], None] = tell_nobody
        self._told: dict[str, float] = {}
        # new runs recorded before unfinished ones are resumed, which come first
        self._held: list[RunRow] | None = None
        self._resumed_ids: set[str] = set()
        self._run_listeners: list[Callable[[RunRow], None]] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self.signals: Signals = NO_SIGNALS
        """What this runner tells other daemons on its store (a shared database)."""
        self._drivers: Drivers[ActiveRun] | None = None
        self._stepper: Stepper | None = None
        """Steps the first attempts of runs that begin stepped (see :meth:`_launch`)."""
        self._paused: dict[str, PauseRow] = {}
        # pipelines being unpaused: what is held meanwhile is remembered here, as the
        # store's answer may predate its commit
        self._unpausing: dict[str, list[RunRow]] = {}
        # the plans of each configuration version loaded by this process: a run resumed
        # from the store (a decision came, a rerun) goes on in the definition it began in
        self._plans_of: dict[int | None, dict[str, PipelinePlan]] = {None: dict(self.plans)}

    # -- reloading ---------------------------------------------------------------------

    def reconfigure(self, config: Config, version: int | None, kinds: dict[str, TaskKind]) -> None:
        """Start new runs under ``config`` (a reload), from now on: runs already started,
        or waiting for a slot, finish on the definition they started with.

        :param version: its configuration version, recorded with each new run
        :param kinds: the task kinds its pipelines use that the runner has not got yet
        """
        for name, kind in kinds.items():
            self.kinds.setdefault(name, kind)
        plans = {
            name: (
                old
                if (old := self.plans.get(name)) is not None and old.config == pipeline
                else PipelinePlan.build(name, pipeline)
            )
            for name, pipeline in config.pipelines.items()
        }
        # in place: the deadlines and the faces' queries read this same mapping
        self.plans.clear()
        self.plans.update(plans)
        self._plans_of[version] = dict(plans)
        self.slots.configure(
            config.daemon.max_running_tasks,
            config.daemon.pools,
            {name: plan.config.max_active_runs for name, plan in plans.items()},
        )
        self.config = config
        self.config_version = version

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
        async with self._group() as tg:
            self._drivers = Drivers(tg, self._drive, _IDLE_DRIVERS)
            self._stepper = Stepper(tg)
            # before anything starts a run: a pause outlives a restart
            self._paused = {
                name: pause
                for name, pause in (await self.store.paused_pipelines()).items()
                if name in self.plans
            }
            if resume_unfinished:
                await self.resume_unfinished()
            else:
                self._held = []  # new runs wait for resume_unfinished: see there
            tg.start_soon(self.gates.expire_when_due)
            tg.start_soon(self.waits.serve)
            tg.start_soon(self.task_logs.serve)
            await tg.start(self._deadlines.run)
            task_status.started()
            await anyio.sleep_forever()

    @asynccontextmanager
    async def _group(self) -> AsyncIterator[anyio.abc.TaskGroup]:
        """The runner's task group, forgotten once it has ended: a run whose end the
        writer records after that starts nothing (see :meth:`_left`)."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                yield tg
        finally:
            self._tg = None

    def on_run_finished(self, listener: Callable[[RunRow], None]) -> None:
        """Call ``listener(row)`` when a run ends (succeeded, failed or cancelled)."""
        self._run_listeners.append(listener)

    async def drain(self) -> None:
        """Start no more task attempts and return once none runs; those not started stay
        queued in the store and run after a restart."""
        await self.slots.drain()

    # -- starting and stopping runs ----------------------------------------------------

    def new_run(
        self,
        pipeline: str,
        inputs: dict[str, Any] | None = None,
        *,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> RunRow:
        """A queued run of ``pipeline``, its inputs checked and defaults filled in; record it
        (``store.submit``), then hand it to :meth:`enqueue`. Its spans hang from
        ``traceparent`` (its event's span).

        :raises NotFound: if there is no such pipeline
        :raises InvalidRequest: if an input is not declared by the pipeline
        """
        plan = self._plan(pipeline)
        declared = plan.config.inputs
        given = inputs or {}
        if unknown := sorted(set(given) - set(declared)):
            raise InvalidRequest(
                f"pipeline {pipeline!r} has no input {unknown[0]!r} "
                f"(declared: {', '.join(sorted(declared)) or 'none'})"
            )
        if pipeline in self._paused and plan.config.when_paused == "skip":
            stamp = now()
            return RunRow(
                new_id(),
                pipeline,
                RunState.SKIPPED.value,
                {**declared, **given},
                stamp,
                ended_at=stamp,
                error=f"skipped: pipeline {pipeline!r} was paused",
                event_id=event_id,
                config_version=self.config_version,
            )
        return RunRow(
            new_id(),
            pipeline,
            RunState.QUEUED.value,
            {**declared, **given},
            now(),
            event_id=event_id,
            traceparent=traceparent,
            config_version=self.config_version,
        )

    async def start_run(
        self,
        pipeline: str,
        inputs: dict[str, Any] | None = None,
        *,
        traceparent: str | None = None,
    ) -> RunRow:
        """Record a new run of ``pipeline`` durably and queue it; returns it as recorded.

        :param traceparent: the caller's trace context (parsed), which the run continues
        :raises NotFound: if there is no such pipeline
        :raises InvalidRequest: if an input is not declared by the pipeline
        """
        row = replace(self.new_run(pipeline, inputs), traceparent=traceparent)
        if self.tracing.enabled:
            # the run's spans hang from a span of its own start (in the caller's trace if
            # it sent one), also after a restart (the row keeps its traceparent)
            with self.tracing.span(
                f"trigger {pipeline}", parent=traceparent, attributes={"cued.run.id": row.run_id}
            ) as span:
                row = replace(row, traceparent=span.traceparent)
        await self.store.submit([row]).wait()
        self.enqueue(row)
        return row

    def pipelines(self) -> list[str]:
        """The pipelines configured."""
        return list(self.plans)

    async def wait(self, run_id: str) -> RunRow:
        """Wait for a run to finish (or park at a gate) and return its row.

        :raises NotFound: if the run does not exist
        """
        while (run := self._runs.get(run_id)) is None:
            moved = self._moved
            if not self._is_cold(run_id):
                # counted in the store, if anywhere here: read as its turn comes
                waiting = await self.store.get_run(run_id)
                if moved.is_set():
                    continue  # loaded (or started) while it was read
                if waiting is None or not self._waits_stored(waiting):
                    break
            await moved.wait()
        if run is not None:
            await run.wait_left()
            return run.row
        row = await self.store.get_run(run_id)
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return row

    def active_run_ids(self) -> list[str]:
        """The runs in memory here (not those waiting by id only)."""
        return list(self._runs)

    def settle_gate(
        self, run_id: str, key: str, *, ok: bool, output: Any, error: str | None
    ) -> bool:
        """Settle a waiting instance of a run that is in memory (other tasks of it still
        run); False if the run is parked, and the caller resumes it from the store."""
        run = self._runs.get(run_id)
        return run is not None and run.settle_gate(key, ok=ok, output=output, error=error)

    # -- driving runs -------------------------------------------------------------------

    async def _drive(self, run: ActiveRun) -> None:
        # one span for each time the run is driven: a resumed run gets another, in the
        # same trace and under the same parent
        if self.tracing.enabled:
            run.span = self.tracing.start(
                f"run {run.row.pipeline}",
                parent=run.row.traceparent,
                attributes={
                    "cued.run.id": run.row.run_id,
                    "cued.pipeline": run.row.pipeline,
                    "cued.resumed": bool(run.prior),
                },
            )
        span = run.span
        try:
            # (one await per run less where one node counts alone: SQLite)
            if self.store.shares_run_slots and not await self._run_slot(run):
                return  # cancelled while it waited for a slot of the other nodes'
            state = await run.drive()
            if state is None:
                return  # cancelled before it started
            if state in TERMINAL_RUN_STATES and not run.left:
                await run.finish(state)
            elif run.engine is not None and run.engine.parked():
                await run.park()
        finally:
            # a run still running here is being stopped with the daemon
            if span:
                span.set(**{"cued.run.state": run.row.state})
                if run.row.error is not None:
                    span.fail(run.row.error)
                span.end()
            self._settled(run)

    def _settled(self, run: ActiveRun) -> None:
        """Nothing of ``run`` runs any more: its slot goes to the next run waiting."""
        self.slots.free_run_slot(run.row.pipeline)
        self._start_waiting(run.row.pipeline)

    def _hand_on(self, run: ActiveRun) -> None:
        """A run that began stepped (its slot taken) has to wait for something: a driver
        drives it on from there."""
        assert self._drivers is not None, "the runner is not serving"
        self._drivers.launch(run)

    def _stepped_ended(self, run: ActiveRun) -> None:
        """A run that began stepped has nothing left to run: its end is recorded here, as
        :meth:`_drive` records a driven run's. One whose end hands on asset events (an
        await) is left to a driver."""
        assert run.engine is not None
        state = run.engine.state
        if state not in TERMINAL_RUN_STATES or (
            state is RunState.SUCCEEDED and run.plan.produces_assets
        ):
            self._hand_on(run)
            return
        if not run.left:
            run.record_end(state)
        self._settled(run)

    def wake_waits(self, run_ids: Collection[str] = ()) -> None:
        """Waits of these runs were settled (intake matched events to them), or the runs
        asked to be cancelled: apply them (and tell the nodes that own those of others)."""
        self.waits.wake()
        if run_ids:
            self.signals.waits_woken(run_ids)

    async def _run_slot(self, run: ActiveRun) -> bool:
        """Take one of the run's pipeline's slots across the nodes (PostgreSQL: its
        ``max_active_runs`` holds for them all; on SQLite at once), waiting while the
        other nodes' runs hold them all; False if the run was cancelled meanwhile (a slot
        taken is given back). A run of a limited key takes one of its key's first."""
        row, delay = run.row, _SLOT_RETRY_S[0]
        limit = run.plan.config.max_active_runs
        if limited(row) and self.slots.shared is not None:
            key, key_limit = key_of(row)
            at = (row.pipeline, key, row.run_id)
            if not await self.slots.shared.key_slot(
                at, row.priority, key_limit, lambda: run.cancelled
            ):
                return False
        while not run.cancelled:
            if await self.store.take_run_slot(row.pipeline, row.run_id, limit):
                if run.cancelled:  # while it was taken: the cancel's commit kept it
                    await self.store.give_back_run_slot(row.run_id)
                    return False
                return True
            await anyio.sleep(delay)
            delay = min(delay * 2, _SLOT_RETRY_S[1])
        await self.store.give_back_run_slot(row.run_id)  # and its key's
        return False

    def _retry_delay_s(self, task: TaskConfig, attempt: int) -> float:
        return backoff_s(
            attempt, first_s=task.retry_backoff, max_s=task.retry_backoff_max, rand=random.random()
        )

    def _left(self, run: ActiveRun, ended: bool) -> None:
        self._runs.pop(run.row.run_id, None)
        if self._tg is None:
            return  # its end committed after the runner stopped: nothing is started now
        if not ended:
            self.waits.wake()  # a wait of it settled meanwhile is applied now
        if run.row.run_id in self._keyed:
            self._keyed.discard(run.row.run_id)
            self._release(run.row)
        if ended and self._tg is not None:
            if run.row.parent_run_id is not None:
                self._tg.start_soon(self.gates.child_ended, run.row)
            if run.row.state == RunState.CANCELLED:
                self._tg.start_soon(self.cancel_children, run.row.run_id)
        if ended:
            for listener in self._run_listeners:
                listener(run.row)

    # -- child runs (``pipeline`` tasks) -----------------------------------------------

    def _new_child(self, parent: RunRow, key: str, attempt: int, ask: AwaitingRun) -> RunRow:
        """The child run attempt ``attempt`` of ``parent``'s instance ``key`` asks for: in
        the parent's trace, with its priority (its event is the parent's, through it).

        :raises CuedError: if its pipeline or an input is unknown, or its pipeline is paused
            with ``when_paused = "skip"``
        """
        row = self.new_run(ask.pipeline, ask.inputs, traceparent=parent.traceparent)
        if row.state == RunState.SKIPPED:
            raise InvalidRequest(f"pipeline {ask.pipeline!r} is paused (when_paused = 'skip')")
        return replace(
            row,
            priority=parent.priority,
            parent_run_id=parent.run_id,
            parent_key=key,
            parent_attempt=attempt,
        )
