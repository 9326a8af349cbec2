"""The runner: carries out the engine's decisions in one task group.

Every run is driven by one coroutine under its own cancel scope, so cancelling a run
cancels exactly its attempts; the runner's group holds the tasks that drive them, run after
run (:mod:`~cued.daemon.runtime.drivers`: a task costs more than a run's own bookkeeping). Limits
(:mod:`~cued.daemon.runtime.slots`): a global limit on running tasks, one per named pool,
and ``max_active_runs`` per pipeline (runs beyond it wait in the bounded
:class:`~cued.daemon.runtime.backlog.Backlog`: a window of them loaded, the rest by id only,
their rows read from the store a window at a time as their turn nears; the highest
priority first). Every state change
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

A paused pipeline (:meth:`Runner.pause`, recorded in the store) starts no new run: its
new runs are recorded queued and stay in the store only (not in memory, not in the
backlog, so a long pause neither fills memory nor holds back other pipelines' sources),
or are recorded ``skipped`` if its ``when_paused`` says so. Runs that had started go on.
:meth:`Runner.unpause` starts what waited, oldest first, as its slots allow.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio

from cued.daemon.core.backoff import backoff_s
from cued.daemon.core.engine import Instance, RunState, State
from cued.daemon.core.ids import new_id, now
from cued.daemon.core.plan import PipelinePlan
from cued.daemon.core.states import TERMINAL_RUN_STATES
from cued.daemon.errors import Conflict, InvalidRequest, NotFound
from cued.daemon.logs import get_logger
from cued.daemon.runtime.active_run import ActiveRun, Driving
from cued.daemon.runtime.attempts import TaskAttempts
from cued.daemon.runtime.deadlines import Deadlines
from cued.daemon.runtime.drivers import Drivers
from cued.daemon.runtime.gates import Gates
from cued.daemon.runtime.instance_rows import instances_of
from cued.daemon.runtime.keys import KeyGate
from cued.daemon.runtime.run_alerts import RunAlerts
from cued.daemon.runtime.signals import NO_SIGNALS
from cued.daemon.runtime.slots import Slots
from cued.daemon.runtime.task_logs import TaskLogs
from cued.daemon.runtime.waits import Waits, cancelled_waits
from cued.daemon.sdk.tracing import Tracing
from cued.daemon.store import InstanceRow, PauseRow, RunRow, WaitingRun

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Sequence

    import httpx
    import structlog

    from cued.daemon.config import Config, TaskConfig
    from cued.daemon.runtime.asset_events import AssetSink
    from cued.daemon.runtime.backlog import Backlog
    from cued.daemon.runtime.flow import FlowControl
    from cued.daemon.runtime.keys import Released
    from cued.daemon.runtime.run_alerts import AlertSink
    from cued.daemon.runtime.signals import Signals
    from cued.daemon.sdk.kinds import AwaitingRun, Spending, TaskKind
    from cued.daemon.store import Row, Store

__all__ = ["Runner"]

_UNFINISHED = (RunState.QUEUED, RunState.RUNNING)
_PAGE = 10_000
"""Waiting runs read at a time, at a restart or an unpause."""
_SLOT_RETRY_S = (0.02, 0.5)
"""A run whose pipeline's slots the other nodes' runs hold all asks again after these
(doubling): they free theirs in their own commits, which this node does not see."""
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
        # new runs recorded before unfinished ones are resumed, which come first
        self._held: list[RunRow] | None = None
        self._resumed_ids: set[str] = set()
        self._run_listeners: list[Callable[[RunRow], None]] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self.signals: Signals = NO_SIGNALS
        """What this runner tells other daemons on its store (a shared database)."""
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
            tg.start_soon(self.waits.serve)
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
                self._admit_cold(row)
        if resumed:
            self.log.info("runs_resumed", count=resumed)
        self.waits.wake()  # what waited for the runs to be in memory goes on
        await self.settle_children()
        return resumed

    async def _resume_all(self) -> int:
        resumed = 0
        started = deque(await self.store.runs_to_resume(waiting=False))
        # the runs that were running hold their keys before any waiting run is admitted
        for row, _, _ in started:
            if _limited(row) and row.state == RunState.RUNNING and row.run_id not in self._runs:
                self.keys.count(row.pipeline, *_key(row))
        # (PostgreSQL) those that hold a slot of their pipeline's across the nodes
        slots = await self.store.run_slots_held([row.run_id for row, _, _ in started])
        after = ""
        while True:
            page = await self.store.waiting_runs(after=after, limit=_PAGE)
            holders = await self._slot_holders([waiting.run_id for waiting in page])
            held = {row.run_id for row in self._held or ()}
            gone: list[str] = []
            for waiting in page:
                run_id, pipeline = waiting.run_id, waiting.pipeline
                while started and started[0][0].run_id < run_id:
                    resumed += self._resume_started(*started.popleft(), gone, slots)
                if run_id in self._runs:
                    continue  # recorded by this process, and here already
                if run_id in held:
                    self._resumed_ids.add(run_id)
                if pipeline not in self.plans:
                    gone.append(run_id)
                elif run_id in holders:
                    self._launch_holder(holders[run_id], {}, counted=False)
                    resumed += 1
                elif pipeline not in self._paused:  # else it waits in the store until unpaused
                    self._admit_cold(waiting)
                    resumed += 1
            await self._fail_gone(gone)
            if len(page) < _PAGE:
                break
            after = page[-1][0]
        gone = []
        while started:
            resumed += self._resume_started(*started.popleft(), gone, slots)
        await self._fail_gone(gone)
        return resumed

    async def resume_adopted(self, run_ids: list[str]) -> int:
        """Go on with runs this node adopted from a node that is gone (see
        :class:`~cued.daemon.runtime.membership.Membership`), as after a crash: one that
        had started from its instances (an attempt that was running runs again, with the
        same idempotency key; one that succeeded does not), one that never started when
        its turn comes. Returns how many go on.

        Only after :meth:`resume_unfinished`: the runs are not in memory here."""
        gone: list[str] = []
        resumed = 0
        slots = await self.store.run_slots_held(run_ids)
        rows = sorted(await self.store.get_runs(run_ids), key=lambda r: r.run_id)
        # the adopted runs that were running hold their keys here from now on, as at a
        # restart (see _resume_all): _resume_started takes them as counted
        for row in rows:
            if _limited(row) and row.state == RunState.RUNNING and not self.is_active(row.run_id):
                self.keys.count(row.pipeline, *_key(row))
        for row in rows:
            if row.state not in _UNFINISHED or self.is_active(row.run_id):
                continue
            if row.started_at is not None:
                found = await self.store.run_state(row.run_id)
                if found is not None:
                    resumed += self._resume_started(*found, gone, slots)
            elif row.pipeline not in self.plans:
                gone.append(row.run_id)
            elif row.run_id in slots:
                # its node took a slot for it and died before it recorded the start
                self._launch_holder(row, {}, counted=False)
                resumed += 1
            elif row.pipeline not in self._paused:  # else it waits in the store
                self._deadlines.watch(row)
                self._admit_cold(row)
                resumed += 1
        await self._fail_gone(gone)
        if resumed:
            self.log.info("runs_adopted", count=resumed)
        return resumed

    def _resume_started(
        self,
        row: RunRow,
        instances: list[InstanceRow],
        outputs: dict[str, Any],
        gone: list[str],
        slots: set[str],
    ) -> int:
        if row.pipeline not in self.plans:
            gone.append(row.run_id)
            return 0
        if row.run_id in self._runs:
            return 0
        running = row.state == RunState.RUNNING  # counted for its key already (see above)
        if row.run_id in slots:
            self._launch_holder(row, instances_of(instances, outputs), counted=running)
            return 1
        if self.backlog.cold_of(row.pipeline) or row.pipeline in self._loading:
            self._deadlines.watch(row)
            if running:  # behind older ones, to keep order
                self._enqueue_cold(row.pipeline, row.run_id, row.priority)
            else:
                self._admit_cold(row)
        else:
            self.enqueue(row, instances_of(instances, outputs), counted=running)
        return 1

    async def _slot_holders(self, run_ids: list[str]) -> dict[str, RunRow]:
        """The rows of those of ``run_ids`` that hold a slot of their pipeline's across
        the nodes (PostgreSQL; on SQLite none does)."""
        holding = await self.store.run_slots_held(run_ids)
        if not holding:
            return {}
        return {row.run_id: row for row in await self.store.get_runs(sorted(holding))}

    def _launch_holder(self, row: RunRow, prior: dict[str, Instance], *, counted: bool) -> None:
        """Go on at once with a run that holds one of its pipeline's slots across the
        nodes (PostgreSQL), started or not (its node may have taken the slot and died
        before it recorded the start): past this node's own count, or a run here waiting
        for that slot could hold the local one this run would wait for, and neither would
        ever go on.

        :param counted: the run counts for its key already
        """
        if _limited(row):
            if not counted:
                self.keys.count(row.pipeline, *_key(row))
            self._keyed.add(row.run_id)  # its key is released as it leaves
        run = ActiveRun(row, self._plan_of(row), prior, self._driving)
        self._runs[row.run_id] = run
        self._deadlines.watch(row)
        self._launch(run)

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

    def enqueue(
        self, row: RunRow, prior: dict[str, Instance] | None = None, *, counted: bool = False
    ) -> None:
        """Start a recorded run now if its pipeline has a free slot, else queue it; a new
        run (no ``prior``) of a paused pipeline waits in the store, a skipped one ends
        here. A run over its key's limit waits for its key (:mod:`.keys`).

        :param counted: the run counts for its key already (it was running at a restart)
        """
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
        fresh = not prior and row.started_at is None
        if counted or not _limited(row):
            self._place(row, prior, fresh)
            return
        if fresh:
            self._admit_cold(row, row)
            return
        # one that had started waits in memory for its key, as it waits for a slot
        run = ActiveRun(row, self._plan_of(row), prior or {}, self._driving)
        self._runs[row.run_id] = run
        admitted = self.keys.admit(row.pipeline, *_key(row), run, row.priority)
        self._count_held()
        for released in admitted:
            self._admitted(row.pipeline, released)

    def _place(
        self,
        row: RunRow,
        prior: dict[str, Instance] | None,
        fresh: bool,
        run: ActiveRun | None = None,
    ) -> None:
        """Start an admitted run now if its pipeline has a free slot, else queue it."""
        pipeline = row.pipeline
        # a run that never started waits cold (its id only) behind others that do, and
        # when its pipeline's window is full
        if fresh and (self.backlog.cold_of(pipeline) or pipeline in self._loading):
            self._enqueue_cold(pipeline, row.run_id, row.priority)
            return
        free = self.slots.run_slot_free(pipeline)
        if not free and fresh and not self.backlog.has_room(pipeline, row.priority):
            self._enqueue_cold(pipeline, row.run_id, row.priority)
            return
        if run is None:
            run = ActiveRun(row, self._plan_of(row), prior or {}, self._driving)
            self._runs[row.run_id] = run
        if _limited(row):
            self._keyed.add(row.run_id)
        if free:
            self._launch(run)
        else:
            self.backlog.push(pipeline, run, row.priority)

    def _admit_cold(self, waiting: RunRow | WaitingRun, row: RunRow | None = None) -> None:
        """A run that never started (its row in the store, or ``row``) goes on by id: to
        its pipeline's backlog if its key admits it (or it has no limit), else it waits for
        its key."""
        if not _limited(waiting):
            self._enqueue_cold(waiting.pipeline, waiting.run_id, waiting.priority)
            return
        admitted = self.keys.admit(
            waiting.pipeline, *_key(waiting), waiting.run_id, waiting.priority
        )
        self._count_held()
        for released in admitted:
            if released.run == waiting.run_id and row is not None:
                self._place(row, None, True)
            else:
                self._admitted(waiting.pipeline, released)

    def _admitted(self, pipeline: str, released: Released[ActiveRun]) -> None:
        """A run its key admitted (as another of it left) goes on to its pipeline."""
        if isinstance(released.run, str):
            self._enqueue_cold(pipeline, released.run, released.priority)
        else:
            self._place(released.run.row, released.run.prior, False, released.run)

    def _enqueue_cold(self, pipeline: str, run_id: str, priority: int) -> None:
        self.backlog.push_cold(pipeline, run_id, priority)
        self._refill(pipeline)

    def _refill(self, pipeline: str) -> None:
        """Load the next cold runs of ``pipeline`` once its window is half empty, or its
        highest priority waiting is cold only."""
        if pipeline not in self._loading and self.backlog.wants_load(pipeline):
            assert self._tg is not None, "the runner is not serving"
            self._loading[pipeline] = set()
            self._tg.start_soon(self._load_cold, pipeline, name=f"load waiting {pipeline}")

    async def _load_cold(self, pipeline: str) -> None:
        """Load cold runs into ``pipeline``'s window, oldest first, and start what may."""
        backlog = self.backlog
        try:
            # at least one: the highest priority's may come while the window is full
            while ids := backlog.take_cold(
                pipeline, max(1, backlog.window - backlog.loaded_of(pipeline))
            ):
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
                    if run_id not in loading:  # cancelled meanwhile: its key went with it
                        backlog.dropped()
                        continue
                    if found_row is None or found_row.state not in _UNFINISHED:
                        backlog.dropped()
                        if found_row is not None and _limited(found_row):
                            self._release(found_row)
                        continue
                    prior = priors.get(run_id, {})
                    run = ActiveRun(found_row, self._plan_of(found_row), prior, self._driving)
                    self._runs[run_id] = run
                    if _limited(found_row):
                        self._keyed.add(run_id)
                    backlog.settle(pipeline, run, found_row.priority)
                loading.clear()
                self._moved.set()
                self._moved = anyio.Event()
                self._start_waiting(pipeline)
                if not backlog.wants_load(pipeline):
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
        """Whether the run waits by its id only (or is being loaded, or waits for its key)."""
        return (
            self.backlog.is_cold(run_id)
            or any(run_id in s for s in self._loading.values())
            or self.keys.holds(run_id)
        )

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
        self.signals.pause_changed(pipeline)
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
        started = await self._resume(pipeline, durably=True)
        self.signals.pause_changed(pipeline)
        self.log.info("pipeline_unpaused", pipeline=pipeline, by=by, waiting=started)
        return started

    async def _resume(self, pipeline: str, *, durably: bool) -> int:
        """Unpause ``pipeline`` here (and in the store if ``durably``) and start its runs
        that waited in the store (this node's own, on a shared database); returns how
        many."""
        self._unpausing[pipeline] = []
        # what of it waits cold already (it was in the backlog, or waited for its key, when
        # it was paused) is in the store too: read once here, not once per id
        cold = set(self.backlog.cold_ids(pipeline)) | self.keys.held_ids(pipeline)
        seen: set[str] = set()
        started = 0
        try:
            if durably:
                await self.store.set_paused(pipeline, None)
            after = ""
            while True:
                # by id only, a page at a time: each is read again as its turn comes (one
                # cancelled meanwhile is passed over then), so a long pause does not come
                # into memory all at once
                page = await self.store.waiting_runs(pipeline, after=after, limit=_PAGE)
                held_ids = {row.run_id for row in self._unpausing[pipeline]}
                loading = self._loading.get(pipeline, set())
                for waiting in page:
                    run_id = waiting.run_id
                    if run_id in self._runs or run_id in cold or run_id in loading:
                        continue
                    if run_id in held_ids:
                        seen.add(run_id)
                    self._admit_cold(waiting)
                    started += 1
                if len(page) < _PAGE:
                    break
                after = page[-1][0]
        finally:
            held = self._unpausing.pop(pipeline)
        self._paused.pop(pipeline, None)
        # held meanwhile, and not in the pages read (recorded after them)
        for row in held:
            if row.run_id not in seen and row.run_id not in self._runs:
                self._admit_cold(row)
                started += 1
        self._start_waiting(pipeline)
        return started

    def pause_changed(self, pipeline: str, pause: PauseRow | None) -> None:
        """Another daemon on the store paused (``pause``) or unpaused ``pipeline``: so is
        it here, in memory; an unpause starts the runs this daemon recorded meanwhile,
        which wait in the store (the other daemon starts its own)."""
        if pipeline not in self.plans or pipeline in self._unpausing:
            return
        if pause is not None:
            if self._paused.setdefault(pipeline, pause) is pause:
                self.log.info("pipeline_paused_by_peer", pipeline=pipeline, by=pause.paused_by)
        elif pipeline in self._paused:
            self.log.info("pipeline_unpaused_by_peer", pipeline=pipeline)
            assert self._tg is not None, "the runner is not serving"
            self._tg.start_soon(functools.partial(self._resume, pipeline, durably=False))

    def pipelines(self) -> list[str]:
        """The pipelines configured."""
        return list(self.plans)

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

    async def cancel(self, run_id: str, *, reason: str | None = None) -> RunRow:
        """Cancel a run: its running tasks are cancelled, nothing more of it starts.

        :param reason: kept as the run's error (an event that cancelled it)
        :raises NotFound: if the run is not known or already finished
        """
        run = self._runs.get(run_id)
        if run is None:
            # waiting for its key (it holds none), or admitted and cold (it holds one)
            admitted = not self.keys.remove(run_id)
            self._count_held()
            if admitted and not self.backlog.remove_cold(run_id) and not self._unload(run_id):
                raise NotFound(f"no unfinished run {run_id!r}")
            # cold: it will not be started; its row is read to record it cancelled
            row = await self.store.get_run(run_id)
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            run = ActiveRun(row, self._plan_of(row), {}, self._driving)
            self._runs[run_id] = run
            if admitted and _limited(row):
                self._keyed.add(run_id)
            try:
                await run.cancel(reason)
            finally:
                self._moved.set()
                self._moved = anyio.Event()
            return run.row
        if run.engine is None:  # still waiting in the backlog (or for its key), or about to start
            self.backlog.remove(run.row.pipeline, lambda r: r is run)
            self.keys.remove_started(lambda r: r is run)
            self._count_held()
        await run.cancel(reason)
        # a wait of it (a task waiting for an event while others ran) waits no more (one
        # left by a crash here wakes nothing: its run has ended)
        if cancelled := cancelled_waits(await self.store.get_waits(run_id), now()):
            await self.store.submit(cancelled).wait()
        return run.row

    async def cancel_stored(
        self, run_id: str, *, reason: str | None = None, extra: Sequence[Row] = ()
    ) -> RunRow:
        """Cancel a run that is not in memory: parked (waiting for a decision, an event, a
        moment or a child run), held queued while its pipeline is paused, or running on
        another daemon on the same database (cancelled in the store, then signalled to that
        daemon, which stops it); its unfinished children too; ``extra`` rows commit with it.

        :raises NotFound: if there is no such run
        :raises Conflict: if it has finished already
        """
        found = await self.store.run_state(run_id)
        if found is None:
            raise NotFound(f"no run {run_id!r}")
        run, instances, _ = found
        unfinished = {RunState.WAITING, RunState.QUEUED}
        if self.signals.enabled:
            unfinished.add(RunState.RUNNING)
        if run.state not in unfinished:
            raise Conflict(f"run {run_id!r} has finished already ({run.state})")
        stamp = now()
        rows: list[Row] = []
        # one running elsewhere: its daemon writes its tasks' ends as it stops them (the
        # run's row says what was asked, should that daemon miss the signal)
        if run.state != RunState.RUNNING:
            rows.extend(
                replace(i, state=State.CANCELLED.value, updated_at=stamp)
                for i in instances
                if State(i.state) not in (State.SUCCEEDED, State.FAILED, State.UPSTREAM_FAILED)
            )
            rows.extend(
                replace(gate, state="cancelled", decided_at=stamp)
                for gate in await self.store.get_approvals(run_id)
                if gate.state == "waiting"
            )
            rows.extend(cancelled_waits(await self.store.get_waits(run_id), stamp))
        cancelled = replace(run, state=RunState.CANCELLED.value, ended_at=stamp, error=reason)
        rows.append(cancelled)
        rows.extend(extra)
        await self.store.submit(rows).wait()
        self.signals.cancelled(run_id)
        await self.cancel_children(run_id)
        return cancelled

    def resuming(self) -> bool:
        """Whether the runs unfinished at the last stop are still to be resumed (a run
        recorded running is then not in memory yet)."""
        return self._held is not None

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

    def active_run_ids(self) -> list[str]:
        """The runs in memory here (not those waiting by id only)."""
        return list(self._runs)

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
            self.slots.free_run_slot(run.row.pipeline)
            self._start_waiting(run.row.pipeline)

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
        taken is given back)."""
        row, delay = run.row, _SLOT_RETRY_S[0]
        limit = run.plan.config.max_active_runs
        while not run.cancelled:
            if await self.store.take_run_slot(row.pipeline, row.run_id, limit):
                if run.cancelled:  # while it was taken: the cancel's commit kept it
                    await self.store.give_back_run_slot(row.run_id)
                    return False
                return True
            await anyio.sleep(delay)
            delay = min(delay * 2, _SLOT_RETRY_S[1])
        return False

    def _retry_delay_s(self, task: TaskConfig, attempt: int) -> float:
        return backoff_s(
            attempt, first_s=task.retry_backoff, max_s=task.retry_backoff_max, rand=random.random()
        )

    def _left(self, run: ActiveRun, ended: bool) -> None:
        self._runs.pop(run.row.run_id, None)
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

    async def cancel_children(self, run_id: str) -> None:
        """Cancel the unfinished child runs of a run (it was cancelled), and theirs."""
        for child in await self.store.children_of(run_id):
            if child.state in TERMINAL_RUN_STATES:
                continue
            if self.is_active(child.run_id):
                with contextlib.suppress(NotFound):
                    await self.cancel(child.run_id)  # its own children follow as it ends
            else:
                with contextlib.suppress(NotFound, Conflict):
                    await self.cancel_stored(child.run_id)

    async def settle_children(self) -> None:
        """Settle the instances that wait for child runs which ended while the daemon was
        stopped (the child's end was recorded, its parent's was not yet)."""
        for child in await self.store.children_to_settle():
            await self.gates.child_ended(child)

    def _release(self, row: RunRow) -> None:
        """A run of a limited key left (ended, parked, cancelled): admit the next of it."""
        admitted = self.keys.release(row.pipeline, _key(row)[0])
        self._count_held()
        for released in admitted:
            self._admitted(row.pipeline, released)

    def _count_held(self) -> None:
        """Keep the backlog's count of runs waiting for their key (backpressure) in step."""
        held = self.keys.held
        self.backlog.count_elsewhere(held - self._held_counted)
        self._held_counted = held


def _limited(row: RunRow | WaitingRun) -> bool:
    """Whether the run counts for a key with a limit."""
    return row.key_limit is not None and row.flow_key is not None


def _key(row: RunRow | WaitingRun) -> tuple[str, int]:
    """The key of a run that counts for one (:func:`_limited`), and its limit."""
    assert row.flow_key is not None, "the run has no key"
    assert row.key_limit is not None, "the run's key has no limit"
    return row.flow_key, row.key_limit
