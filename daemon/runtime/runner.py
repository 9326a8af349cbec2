"""The runner: carries out the engine's decisions in one task group.

Every run is driven by one coroutine under its own cancel scope, so cancelling a run
cancels exactly its attempts; the runner's group holds the tasks that drive them, run after
run (:mod:`~cued.daemon.runtime.drivers`: a task costs more than a run's own bookkeeping). Limits
(:mod:`~cued.daemon.runtime.slots`): a global limit on running tasks, one per named pool,
and ``max_active_runs`` per pipeline (runs beyond it wait in the bounded
:class:`~cued.daemon.runtime.backlog.Backlog`: a window of them loaded, the rest by id only,
their rows read from the store a window at a time as their turn nears). Every state change
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
approval gates  Gates (gates.py) decide and expire them; the runner is their GateHost
deadlines       Deadlines (deadlines.py) watch the runs it starts
traces          each time a run is driven, a span from the run row's traceparent (its
                event's span), which its attempts' spans hang from (sdk/tracing.py)
```

A paused pipeline (:meth:`Runner.pause`, recorded in the store) starts no new run: its
new runs are recorded queued and stay in the store only (not in memory, not in the
backlog, so a long pause neither fills memory nor holds back other pipelines' sources),
or are recorded ``skipped`` if its ``when_paused`` says so. Runs that had started go on.
:meth:`Runner.unpause` starts what waited, oldest first, as its slots allow.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio

from cued.daemon.core.backoff import backoff_s
from cued.daemon.core.engine import Instance, RunState
from cued.daemon.core.ids import new_id, now
from cued.daemon.core.plan import PipelinePlan
from cued.daemon.core.states import TERMINAL_RUN_STATES
from cued.daemon.errors import InvalidRequest, NotFound
from cued.daemon.logs import get_logger
from cued.daemon.runtime.active_run import ActiveRun, Driving
from cued.daemon.runtime.attempts import TaskAttempts
from cued.daemon.runtime.deadlines import Deadlines
from cued.daemon.runtime.drivers import Drivers
from cued.daemon.runtime.gates import Gates
from cued.daemon.runtime.instance_rows import instances_of
from cued.daemon.runtime.run_alerts import RunAlerts
from cued.daemon.runtime.slots import Slots
from cued.daemon.runtime.task_logs import TaskLogs
from cued.daemon.sdk.tracing import Tracing
from cued.daemon.store import InstanceRow, PauseRow, RunRow

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx
    import structlog

    from cued.daemon.config import Config, TaskConfig
    from cued.daemon.runtime.asset_events import AssetSink
    from cued.daemon.runtime.backlog import Backlog
    from cued.daemon.runtime.run_alerts import AlertSink
    from cued.daemon.sdk.kinds import Spending, TaskKind
    from cued.daemon.store import Store

__all__ = ["Runner"]

_UNFINISHED = (RunState.QUEUED, RunState.RUNNING)
_PAGE = 10_000
"""Waiting runs read at a time, at a restart or an unpause."""
_IDLE_DRIVERS = 1_000
"""Tasks that drive runs kept idle for the runs to come (one each: a few KB)."""


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
    :param tracing: makes the spans of runs and attempts (off by default)
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
    ) -> None:
        self.config = config
        self.config_version: int | None = None
        """The configuration version new runs start under (recorded with each)."""
        self.tracing = tracing or Tracing()
        self.store = store
        self.kinds = kinds
        self.plans = {name: PipelinePlan.build(name, p) for name, p in config.pipelines.items()}
        self.backlog: Backlog[ActiveRun] = backlog
        self.slots = Slots(
            config.daemon.max_running_tasks,
            config.daemon.pools,
            {name: plan.config.max_active_runs for name, plan in self.plans.items()},
        )
        self.gates = Gates(store, self)
        """The approval gates of this runner's runs: decide them here."""
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
            assets,
            self._retry_delay_s,
            self._left,
            self.log,
            self.tracing,
        )
        self._runs: dict[str, ActiveRun] = {}
        # each pipeline's cold runs being loaded into its window (a run cancelled
        # meanwhile is taken out of its set, and not started once its row comes)
        self._loading: dict[str, set[str]] = {}
        self._moved = anyio.Event()
        """Set (and replaced) whenever cold runs are loaded or one is cancelled."""
        # new runs recorded before unfinished ones are resumed, which come first
        self._held: list[RunRow] | None = None
        self._resumed_ids: set[str] = set()
        self._run_listeners: list[Callable[[RunRow], None]] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._drivers: Drivers[ActiveRun] | None = None
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
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._drivers = Drivers(tg, self._drive, _IDLE_DRIVERS)
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
            tg.start_soon(self.task_logs.serve)
            await tg.start(self._deadlines.run)
            task_status.started()
            await anyio.sleep_forever()

    async def resume_unfinished(self) -> int:
        """Go on with every run that was unfinished when the daemon last stopped; a run
        whose pipeline is no longer configured fails. Returns how many go on.

        The runs that had started are read in full (there are few); those that never
        started by id only, a page at a time (there may be very many: each is loaded as
        its turn nears), all in the order they were made. New runs recorded meanwhile
        (sources run already) are held until then, and come after them."""
        if self._held is None:
            self._held = []
        try:
            resumed = await self._resume_all()
        finally:
            held, self._held = self._held, None
        # those the store's pages did not have (recorded after the page that would have)
        resumed_ids = self._resumed_ids
        self._resumed_ids = set()
        for row in held:
            if row.run_id in resumed_ids:
                continue
            if row.pipeline in self._paused:
                self.enqueue(row)  # it waits in the store until its pipeline is unpaused
            else:
                # by id, read again when its turn comes: it was not "active" meanwhile, so
                # it may have been cancelled in the store
                self._deadlines.watch(row)
                self._enqueue_cold(row.pipeline, row.run_id)
        if resumed:
            self.log.info("runs_resumed", count=resumed)
        return resumed

    async def _resume_all(self) -> int:
        resumed = 0
        started = deque(await self.store.runs_to_resume(waiting=False))
        after = ""
        while True:
            page = await self.store.waiting_runs(after=after, limit=_PAGE)
            held = {row.run_id for row in self._held or ()}
            gone: list[str] = []
            for run_id, pipeline in page:
                while started and started[0][0].run_id < run_id:
                    resumed += self._resume_started(*started.popleft(), gone)
                if run_id in self._runs:
                    continue  # recorded by this process, and here already
                if run_id in held:
                    self._resumed_ids.add(run_id)
                if pipeline not in self.plans:
                    gone.append(run_id)
                elif pipeline not in self._paused:  # else it waits in the store until unpaused
                    self._enqueue_cold(pipeline, run_id)
                    resumed += 1
            await self._fail_gone(gone)
            if len(page) < _PAGE:
                break
            after = page[-1][0]
        gone = []
        while started:
            resumed += self._resume_started(*started.popleft(), gone)
        await self._fail_gone(gone)
        return resumed

    def _resume_started(
        self, row: RunRow, instances: list[InstanceRow], outputs: dict[str, Any], gone: list[str]
    ) -> int:
        if row.pipeline not in self.plans:
            gone.append(row.run_id)
            return 0
        if row.run_id in self._runs:
            return 0
        if self.backlog.cold_of(row.pipeline) or row.pipeline in self._loading:
            self._deadlines.watch(row)
            self._enqueue_cold(row.pipeline, row.run_id)  # behind older ones, to keep order
        else:
            self.enqueue(row, instances_of(instances, outputs))
        return 1

    async def _fail_gone(self, run_ids: list[str]) -> None:
        """Fail runs whose pipeline is no longer configured."""
        for row in await self.store.get_runs(run_ids):
            failed = replace(
                row,
                state=RunState.FAILED.value,
                ended_at=now(),
                error=f"pipeline {row.pipeline!r} is no longer in the configuration",
            )
            await self.store.submit([failed]).wait()

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

    def enqueue(self, row: RunRow, prior: dict[str, Instance] | None = None) -> None:
        """Start a recorded run now if its pipeline has a free slot, else queue it; a new
        run (no ``prior``) of a paused pipeline waits in the store, a skipped one ends
        here."""
        if row.state == RunState.SKIPPED:
            return
        if prior is None and self._held is not None:
            self._held.append(row)
            return
        if prior is None and row.pipeline in self._paused:
            # its deadline counts from its creation, paused or not (as after a restart)
            self._deadlines.watch(row)
            if (held := self._unpausing.get(row.pipeline)) is not None:
                held.append(row)
            return
        self._deadlines.watch(row)
        pipeline = row.pipeline
        # a run that never started waits cold (its id only) behind others that do, and
        # when its pipeline's window is full
        fresh = not prior and row.started_at is None
        if fresh and (self.backlog.cold_of(pipeline) or pipeline in self._loading):
            self._enqueue_cold(pipeline, row.run_id)
            return
        free = self.slots.run_slot_free(pipeline)
        if not free and fresh and not self.backlog.has_room(pipeline):
            self._enqueue_cold(pipeline, row.run_id)
            return
        run = ActiveRun(row, self._plan_of(row), prior or {}, self._driving)
        self._runs[row.run_id] = run
        if free:
            self._launch(run)
        else:
            self.backlog.push(pipeline, run)

    def _enqueue_cold(self, pipeline: str, run_id: str) -> None:
        self.backlog.push_cold(pipeline, run_id)
        self._refill(pipeline)

    def _refill(self, pipeline: str) -> None:
        """Load the next cold runs of ``pipeline`` once its window is half empty."""
        if (
            pipeline not in self._loading
            and self.backlog.cold_of(pipeline)
            and self.backlog.loaded_of(pipeline) <= self.backlog.window // 2
        ):
            assert self._tg is not None, "the runner is not serving"
            self._loading[pipeline] = set()
            self._tg.start_soon(self._load_cold, pipeline, name=f"load waiting {pipeline}")

    async def _load_cold(self, pipeline: str) -> None:
        """Load cold runs into ``pipeline``'s window, oldest first, and start what may."""
        backlog = self.backlog
        try:
            while ids := backlog.take_cold(pipeline, backlog.window - backlog.loaded_of(pipeline)):
                loading = self._loading[pipeline] = set(ids)
                rows = {row.run_id: row for row in await self.store.get_runs(ids)}
                priors: dict[str, dict[str, Instance]] = {}
                for row in list(rows.values()):
                    # one that had started (at a restart) goes on from its instances
                    if row.started_at is not None and (
                        found := await self.store.run_state(row.run_id)
                    ):
                        rows[row.run_id], instances, outputs = found
                        priors[row.run_id] = instances_of(instances, outputs)
                for run_id in ids:
                    found_row = rows.get(run_id)
                    # cancelled meanwhile, or finished (gone, or cancelled before)
                    if (
                        run_id not in loading
                        or found_row is None
                        or found_row.state not in _UNFINISHED
                    ):
                        backlog.dropped()
                        continue
                    prior = priors.get(run_id, {})
                    run = ActiveRun(found_row, self._plan_of(found_row), prior, self._driving)
                    self._runs[run_id] = run
                    backlog.settle(pipeline, run)
                loading.clear()
                self._moved.set()
                self._moved = anyio.Event()
                self._start_waiting(pipeline)
                if backlog.loaded_of(pipeline) > backlog.window // 2:
                    break
        finally:
            del self._loading[pipeline]
        self._refill(pipeline)  # what came cold while the last rows were read

    def _start_waiting(self, pipeline: str) -> None:
        """Start waiting runs of ``pipeline`` while it has free slots (a paused pipeline
        keeps what waits until it is unpaused)."""
        while (
            pipeline not in self._paused
            and self.slots.run_slot_free(pipeline)
            and (following := self.backlog.pop(pipeline)) is not None
        ):
            self._launch(following)
        self._refill(pipeline)

    def _is_cold(self, run_id: str) -> bool:
        """Whether the run waits by its id only (or is being loaded)."""
        return self.backlog.is_cold(run_id) or any(run_id in s for s in self._loading.values())

    # -- pausing pipelines ----------------------------------------------------------------

    @property
    def paused(self) -> dict[str, PauseRow]:
        """The paused pipelines, by name."""
        return dict(self._paused)

    async def pause(self, pipeline: str, *, by: str | None = None) -> PauseRow:
        """Pause a pipeline, durably: no new run of it starts until :meth:`unpause`.

        :raises NotFound: if there is no such pipeline
        """
        self._plan(pipeline)
        if (pause := self._paused.get(pipeline)) is not None:
            return pause
        pause = PauseRow(pipeline, now(), by)
        await self.store.set_paused(pipeline, pause)
        self._paused[pipeline] = pause
        self.log.info("pipeline_paused", pipeline=pipeline, by=by)
        return pause

    async def unpause(self, pipeline: str, *, by: str | None = None) -> int:
        """Resume a paused pipeline, durably, and start what waited (oldest first, as
        ``max_active_runs`` allows); returns how many runs had waited in the store.

        :raises NotFound: if there is no such pipeline
        """
        self._plan(pipeline)
        if pipeline not in self._paused or pipeline in self._unpausing:
            return 0
        self._unpausing[pipeline] = []
        # what of it waits cold already (it was in the backlog when it was paused) is in
        # the store too: read once here, not once per id
        cold = set(self.backlog.cold_ids(pipeline))
        seen: set[str] = set()
        started = 0
        try:
            await self.store.set_paused(pipeline, None)
            after = ""
            while True:
                # by id only, a page at a time: each is read again as its turn comes (one
                # cancelled meanwhile is passed over then), so a long pause does not come
                # into memory all at once
                page = await self.store.waiting_runs(pipeline, after=after, limit=_PAGE)
                held_ids = {row.run_id for row in self._unpausing[pipeline]}
                loading = self._loading.get(pipeline, set())
                for run_id, _ in page:
                    if run_id in self._runs or run_id in cold or run_id in loading:
                        continue
                    if run_id in held_ids:
                        seen.add(run_id)
                    self._enqueue_cold(pipeline, run_id)
                    started += 1
                if len(page) < _PAGE:
                    break
                after = page[-1][0]
        finally:
            held = self._unpausing.pop(pipeline)
        del self._paused[pipeline]
        # held meanwhile, and not in the pages read (recorded after them)
        for row in held:
            if row.run_id not in seen and row.run_id not in self._runs:
                self._enqueue_cold(pipeline, row.run_id)
                started += 1
                started += 1
        self._start_waiting(pipeline)
        self.log.info("pipeline_unpaused", pipeline=pipeline, by=by, waiting=started)
        return started

    def _plan_of(self, row: RunRow) -> PipelinePlan:
        """The plan ``row`` runs on: its configuration version's, if this process loaded
        it, else the current one."""
        plan = self._plans_of.get(row.config_version, {}).get(row.pipeline)
        return plan if plan is not None else self._plan(row.pipeline)

    def _plan(self, pipeline: str) -> PipelinePlan:
        plan = self.plans.get(pipeline)
        if plan is None:
            known = ", ".join(sorted(self.plans)) or "none"
            raise NotFound(f"no pipeline {pipeline!r} (known: {known})")
        return plan

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
            if not self.backlog.remove_cold(run_id) and not self._unload(run_id):
                raise NotFound(f"no unfinished run {run_id!r}")
            # cold: it will not be started; its row is read to record it cancelled
            row = await self.store.get_run(run_id)
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            run = ActiveRun(row, self._plan_of(row), {}, self._driving)
            self._runs[run_id] = run
            try:
                await run.cancel()
            finally:
                self._moved.set()
                self._moved = anyio.Event()
            return run.row
        if run.engine is None:  # still waiting in the backlog, or about to start
            self.backlog.remove(run.row.pipeline, lambda r: r is run)
        await run.cancel()
        return run.row

    async def wait(self, run_id: str) -> RunRow:
        """Wait for a run to finish (or park at a gate) and return its row.

        :raises NotFound: if the run does not exist
        """
        while (run := self._runs.get(run_id)) is None and self._is_cold(run_id):
            await self._moved.wait()
        if run is not None:
            await run.wait_left()
            return run.row
        row = await self.store.get_run(run_id)
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return row

    def is_active(self, run_id: str) -> bool:
        """Whether the run is queued or running here (in memory, or cold: waiting by its
        id), not parked, held for its paused pipeline, or finished."""
        return run_id in self._runs or self._is_cold(run_id)

    def _unload(self, run_id: str) -> bool:
        """Take a run being loaded out of its batch (it will not start); False if it is
        not being loaded."""
        for loading in self._loading.values():
            if run_id in loading:
                loading.discard(run_id)
                return True
        return False

    def settle_gate(
        self, run_id: str, key: str, *, ok: bool, output: Any, error: str | None
    ) -> bool:
        """Settle a waiting instance of a run that is in memory (other tasks of it still
        run); False if the run is parked, and the caller resumes it from the store."""
        run = self._runs.get(run_id)
        return run is not None and run.settle_gate(key, ok=ok, output=output, error=error)

    # -- driving runs -------------------------------------------------------------------

    def _launch(self, run: ActiveRun) -> None:
        assert self._drivers is not None, "the runner is not serving"
        self.slots.take_run_slot(run.row.pipeline)
        self._drivers.launch(run)

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
            self.slots.free_run_slot(run.row.pipeline)
            self._start_waiting(run.row.pipeline)

    def _retry_delay_s(self, task: TaskConfig, attempt: int) -> float:
        return backoff_s(
            attempt, first_s=task.retry_backoff, max_s=task.retry_backoff_max, rand=random.random()
        )

    def _left(self, run: ActiveRun, ended: bool) -> None:
        self._runs.pop(run.row.run_id, None)
        if ended:
            for listener in self._run_listeners:
                listener(run.row)
