"""A run in memory: its engine's decisions carried out, attempt by attempt.

The runner drives a run in one coroutine (:meth:`ActiveRun.drive`) under a cancel scope
of its own, so cancelling a run cancels exactly its attempts; a run whose first attempt
runs inline begins instead in the runner's stepper with no coroutine of its own
(:meth:`ActiveRun.begin_stepped`), waiting in line for a task slot if none is free, and
gets a driver only if something of it has to wait. While the engine asks for one
thing at a time the coroutine carries it out itself; a task group comes only when two
things of the run must go on at once, and in it attempts of kinds that do no I/O are
stepped in turns by one task (:mod:`~cued.daemon.runtime.inline`), the others get a task
each. Every change the engine makes goes to the store; an attempt's result is durable
before anything downstream of it starts (a result nothing starts on rides with the next
commit, which commits before the run's end), and the alerts it raises commit with it. A
run leaves memory when its end is committed (:meth:`ActiveRun.finish`: the writer calls
back) or when nothing of it runs and a gate waits for a decision (:meth:`ActiveRun.park`):
it is then in the store only, until the decision resumes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import anyio

from cued.daemon.core.engine import Finish, RunEngine, RunState, Start, State, Wait
from cued.daemon.core.ids import now
from cued.daemon.errors import CuedError
from cued.daemon.runtime.asset_events import asset_events, failed_check_events
from cued.daemon.runtime.attempts import stopped_row
from cued.daemon.runtime.gates import gate_row
from cued.daemon.runtime.inline import (
    Begun,
    LazyLog,
    RunningRows,
    Stepper,
    attempt_span,
    end_attempt_span,
)
from cued.daemon.runtime.instance_rows import instance_row, run_row
from cued.daemon.runtime.waits import wait_row
from cued.daemon.sdk.kinds import AwaitingDecision, Meter
from cued.daemon.sdk.tracing import NO_SPAN, Span
from cued.daemon.store import AttemptRow, RunRow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import structlog

    from cued.daemon.config import TaskConfig
    from cued.daemon.core.engine import Command, Instance
    from cued.daemon.core.plan import PipelinePlan
    from cued.daemon.runtime.asset_events import AssetSink
    from cued.daemon.runtime.attempts import InlineAttempt, Outcome, TaskAttempts
    from cued.daemon.runtime.gates import Gates
    from cued.daemon.runtime.run_alerts import RunAlerts
    from cued.daemon.runtime.slots import Slots
    from cued.daemon.runtime.waits import Waits
    from cued.daemon.sdk.kinds import AwaitingEvent, AwaitingRun, AwaitingTime
    from cued.daemon.sdk.tracing import Tracing
    from cued.daemon.store import Durable, Row, Store

__all__ = ["ActiveRun", "Driving"]


@dataclass(frozen=True)
class Driving:
    """What every run is driven with: the runner's parts, and its callbacks."""

    store: Store
    attempts: TaskAttempts
    slots: Slots
    alerts: RunAlerts
    gates: Gates
    waits: Waits
    assets: AssetSink | None
    """Where the asset events of a succeeded run go, before the run is recorded as
    succeeded: a crash in between resumes the run, which finishes again and sends the same
    events, which intake recognises."""
    retry_delay_s: Callable[[TaskConfig, int], float]
    """How long to wait before the retry that follows an attempt of a task."""
    left: Callable[[ActiveRun, bool], None]
    """The run left memory: ended (True), or parked at a gate (False)."""
    log: structlog.typing.FilteringBoundLogger
    tracing: Tracing
    """Makes the spans of the run's attempts."""
    new_child: Callable[[RunRow, str, int, AwaitingRun], RunRow]
    """The child run (to record) that attempt N of a parent's instance asks for.

    :raises CuedError: if it cannot start (unknown pipeline or input, paused to skip)"""
    start_child: Callable[[RunRow], None]
    """Queue a child run once it is recorded."""
    hand_on: Callable[[ActiveRun], None]
    """Have a driver drive a run the runner's stepper stepped (see
    :meth:`ActiveRun.begin_stepped`) from where it is: it needs to wait for something."""
    stepped_ended: Callable[[ActiveRun], None]
    """A run the runner's stepper stepped has nothing left to run: record its end, as a
    driver would once :meth:`ActiveRun.drive` returns, and free its slot."""


class ActiveRun:
    """One run in memory.

    :param row: the run as recorded
    :param plan: its pipeline's plan
    :param prior: its instances as recorded, by key (a resumed run goes on from them)
    """

    def __init__(
        self, row: RunRow, plan: PipelinePlan, prior: dict[str, Instance], driving: Driving
    ) -> None:
        self.row = row
        self.plan = plan
        self.engine: RunEngine | None = None
        """Set once the run starts (None while it waits for a slot)."""
        self._done: anyio.Event | None = None
        self._left = False
        self.span: Span = NO_SPAN
        """The span of this time the run is driven: its attempts' spans hang from it."""
        self._prior = prior
        self._driving = driving
        self._store = driving.store
        self._scope: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._stepper: Stepper | None = None
        self._stepped: tuple[Stepper, Begun, InlineAttempt] | None = None
        """Its attempt the runner's stepper steps, while it does (no driver drives it)."""
        self._slot_wait: Callable[[], bool] | None = None
        """Takes the run out of the line for a task slot it waits in to begin stepped."""
        self._pending: list[Command] = []
        """What the engine asked for when the run was begun, for :meth:`drive` to do."""
        self._handed: Callable[[], Awaitable[list[Command]]] | None = None
        """What a driver does first when it is handed a run the runner stepped."""
        self._cancelled = False
        self._cancel_reason: str | None = None
        self._fresh = False

    @property
    def left(self) -> bool:
        """Whether the run has left memory (ended or parked)."""
        return self._left

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled before it started."""
        return self._cancelled

    async def wait_left(self) -> None:
        """Return once the run has left memory (ended or parked)."""
        if self._left:
            return
        if self._done is None:
            # made only for a waiter: most runs have none, and an event per run costs
            self._done = anyio.Event()
        await self._done.wait()

    def _leave(self, ended: bool) -> None:
        self._left = True
        if self._done is not None:
            self._done.set()
        self._driving.left(self, ended)

    @property
    def prior(self) -> dict[str, Instance]:
        """Its instances as recorded when it came into memory (empty for a new run)."""
        return self._prior

    def _open(self) -> list[Command]:
        """Start the run in memory: its engine, and its start (which rides with the next
        commit: nothing waits for it on its own); returns what the engine asks for first."""
        # a run that never started has no log lines yet: its attempts need not look
        self._fresh = self.row.started_at is None
        self.row = run_row(self.row, RunState.RUNNING.value, self.row.started_at or now())
        engine = self.engine = RunEngine(self.plan, self.row.run_id, self.row.inputs, self._prior)
        self._driving.log.info(
            "run_started",
            run_id=self.row.run_id,
            pipeline=self.row.pipeline,
            resumed=bool(self._prior),
        )
        commands = engine.begin()
        self._write([self.row])
        return commands

    def begin_stepped(self, stepper: Stepper) -> bool:
        """Start the run with its first attempt stepped by the runner's ``stepper``, with no
        driver, task or cancel scope of its own, if it can be: it starts with one attempt
        that runs inline (:meth:`_inline`). Most runs of one cheap task then start and end
        in the stepper's turns. False if not: the run may have started all the same, and
        :meth:`drive` goes on from where it is.

        The stepped attempt's end is told to :meth:`attempt_ended`; whatever then has to
        wait (a commit before a downstream task, a live log, a gate) is handed to a driver
        (``Driving.hand_on``), and a run with nothing left to run ends there and then
        (``Driving.stepped_ended``)."""
        if self._cancelled:
            return False
        commands = self._open()
        if len(commands) == 1 and isinstance(commands[0], Start):
            start = commands[0]
            if self._inline(start, stepper) or self._queue_inline(start, stepper):
                return True
        self._pending = commands
        return False

    def _queue_inline(self, start: Start, stepper: Stepper) -> bool:
        """Wait in line for a global task slot, with no task, to begin ``start`` stepped
        once it is handed one (an attempt of no pool that runs inline); False if it cannot."""
        driving = self._driving
        if (
            self.plan.tasks[start.instance.task].config.pool is not None
            or driving.tracing.enabled
            or driving.slots.task_slot_free  # free, so :meth:`_inline` failed for another cause
            or not driving.attempts.runs_inline(self.plan, start)
        ):
            return False
        forget = driving.slots.take_task_slot_later(partial(self._slot_handed, start, stepper))
        if forget is None:
            return False  # draining
        self._slot_wait = forget
        return True

    def _slot_handed(self, start: Start, stepper: Stepper) -> None:
        """A global task slot was handed to the run that waits in line for one (see
        :meth:`_queue_inline`): its attempt begins stepped. Called from the code that gave
        the slot back, so nothing here gives one back there and then: a run whose attempt
        cannot begin inline after all (its live log does not open now) hands the slot back
        in its driver."""
        self._slot_wait = None
        if stepper.stopping:
            # given back by an attempt the stopping runner stops: the run stays as it is
            # in the store (its attempt queued) for the restart, and the slot with it
            return
        if not self._inline_begin(start, None, stepper):
            self._handed = partial(self._slot_given_back, start)
            self._driving.hand_on(self)

    async def _slot_given_back(self, start: Start) -> list[Command]:
        self._driving.slots.give_back_task_slot(None)
        return [start]

    async def drive(self) -> RunState | None:
        """Start the run (or go on with one :meth:`begin_stepped` began) and drive it until
        nothing of it runs; returns the engine's state then (None if the run was cancelled
        before it started).

        While the engine asks for one thing at a time (one attempt, or one retry's wait),
        the run's own coroutine carries it out under the run's cancel scope; a task group
        (a task per attempt) comes only once two things must go on at once. Most runs (one
        task, or a chain) never need one."""
        if self._cancelled:
            return None  # cancelled between leaving the backlog and starting here
        if self.engine is None:
            commands = self._open()
        else:
            commands, self._pending = self._pending, []
        engine = self.engine
        assert engine is not None
        with anyio.CancelScope() as scope:
            self._scope = scope
            if (handed := self._handed) is not None:
                self._handed = None
                commands = await handed()
            if engine.state is not RunState.RUNNING:
                commands = []  # cancelled while it waited for a driver: nothing starts
            while len(commands) == 1 and not isinstance(commands[0], Finish):
                (command,) = commands
                if isinstance(command, Start):
                    commands = await self._attempt_steps(command)
                elif isinstance(command, Wait):
                    commands = await self._retry_steps(command)
                self._write()
            if any(not isinstance(c, Finish) for c in commands):
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    self._stepper = Stepper(tg)
                    self._apply(tg, commands)
                self._tg = self._stepper = None
            else:
                self._write()
        return engine.state

    async def cancel(self, reason: str | None = None) -> None:
        """Cancel the run: its running tasks are cancelled, nothing more of it starts.
        Returns once it has left memory.

        :param reason: kept as the run's error (an event that cancelled it)
        """
        self._cancel_reason = reason
        if self.engine is None:  # still waiting in the backlog, or about to start
            self._cancelled = True
            await self.finish(RunState.CANCELLED)
            await self.wait_left()
            return
        if self.engine.cancel():  # empty if it has just finished: let it finish as it did
            self._write()
            if self._scope is not None:
                self._scope.cancel()
            elif (forget := self._slot_wait) is not None:
                # in line for a task slot to begin stepped: out of it, and it ends here
                self._slot_wait = None
                if forget():
                    self._driving.stepped_ended(self)
            elif (stepped := self._stepped) is not None:
                # stepped by the runner: no scope to cancel; its attempt is stopped here
                self._stepped = None
                stepper, begun, attempt = stepped
                if stepper.withdraw(begun):
                    attempt.stop()
                    await self.attempt_stopped(begun, attempt)
                    self._driving.stepped_ended(self)
            # else it waits for a driver (handed on): the driver finds it cancelled
        await self.wait_left()

    def settle_gate(self, key: str, *, ok: bool, output: Any, error: str | None) -> bool:
        """Settle the waiting instance ``key`` as recorded; False if the run is not
        running, or ``key`` does not wait."""
        if self.engine is None or self._tg is None:
            return False
        inst = next((i for i in self.engine.instances() if i.key == key), None)
        if inst is None or inst.state is not State.WAITING:
            return False
        if ok:
            commands = self.engine.succeeded(inst, output)
        else:
            commands = self.engine.failed(inst, error or "rejected", retryable=False, output=output)
        self._apply(self._tg, commands)
        return True

    async def park(self) -> None:
        """Nothing of the run runs, and a gate waits for a decision: leave it in the store
        (its slot freed, nothing of it in memory) until the decision resumes it."""
        self.row = run_row(
            self.row, RunState.WAITING.value, self.row.started_at, self.row.ended_at, self.row.error
        )
        with anyio.CancelScope(shield=True):
            await self._commit([self.row])
        self._driving.log.info("run_waiting", run_id=self.row.run_id, pipeline=self.row.pipeline)
        self._leave(False)

    async def finish(self, state: RunState) -> None:
        """Record the run's end in ``state``, with the alert it raises; a succeeded run
        first hands on the events of the assets it produced, a failed one the bad versions
        its data checks found. Returns once the end is submitted: the run leaves memory
        once it is committed (:meth:`wait_left`)."""
        engine, driving = self.engine, self._driving
        if (
            state is RunState.SUCCEEDED
            and driving.assets is not None
            and engine is not None
            and (events := asset_events(self.plan, self.row, engine.instances()))
        ):
            if (traceparent := self.span.traceparent) is not None:
                # the runs an asset starts continue the trace of the run that produced it
                events = [replace(e, meta={**e.meta, "traceparent": traceparent}) for e in events]
            await driving.assets(events)
        if (
            state is RunState.FAILED
            and driving.assets is not None
            and engine is not None
            and (bad := failed_check_events(self.plan, self.row, engine.instances()))
        ):
            await driving.assets(bad)  # recorded before the run's end, like a good version
        self.record_end(state)

    def record_end(self, state: RunState) -> None:
        """Submit the run's end in ``state``, with the alert it raises (see
        :meth:`finish`, which first hands on the events of its assets)."""
        engine, driving = self.engine, self._driving
        error = None
        if state is RunState.FAILED and engine is not None:
            failed = [i for i in engine.instances() if i.state is State.FAILED]
            error = "; ".join(f"{i.key}: {i.error}" for i in failed[:3]) or None
        elif state is RunState.CANCELLED:
            error = self._cancel_reason
        self.row = run_row(self.row, state.value, self.row.started_at, now(), error)
        rows: list[Row] = [self.row]
        reruns = 0
        if engine is not None:
            rows.extend(instance_row(self.row.run_id, i) for i in engine.drain_changes())
            reruns = sum(i.retry_base for i in engine.instances())
        rows.extend(driving.alerts.run_ended(self.row, state, reruns, error))
        # nothing waits here for the commit (no task, no shielded scope per run): the run
        # leaves memory, and is seen to have ended, when the writer calls back; what the
        # runner does meanwhile (the next run started) commits after it, in order
        self._store.submit(rows).then(self._end_recorded)

    def _end_recorded(self, error: BaseException | None) -> None:
        """The writer's call once the run's end is committed."""
        if error is not None:
            return  # the writer has stopped, and the daemon with it: a restart resumes it
        driving = self._driving
        driving.alerts.wake()
        driving.log.info(
            "run_finished", run_id=self.row.run_id, pipeline=self.row.pipeline, state=self.row.state
        )
        self._leave(True)

    # -- carrying out the engine's commands --------------------------------------------

    def _apply(self, tg: anyio.abc.TaskGroup, commands: list[Command]) -> None:
        self._write()
        for command in commands:
            if isinstance(command, Start):
                if not self._inline(command):
                    tg.start_soon(self._attempt, tg, command)
            elif isinstance(command, Wait):
                tg.start_soon(self._retry_later, tg, command)
            # Finish needs nothing here: the run's task group empties and drive returns

    def _write(self, extra: list[Row] | None = None) -> Durable | None:
        """Submit the instances the engine changed, and ``extra`` rows, in one go."""
        assert self.engine is not None
        rows: list[Row] = [instance_row(self.row.run_id, i) for i in self.engine.drain_changes()]
        if extra:
            rows.extend(extra)
        return self._store.submit(rows) if rows else None

    async def _commit(self, rows: list[Row]) -> None:
        """:meth:`_write` ``rows`` (not empty) and wait until they are durable."""
        durable = self._write(rows)
        assert durable is not None
        await durable.wait()

    async def _retry_later(self, tg: anyio.abc.TaskGroup, command: Wait) -> None:
        self._apply(tg, await self._retry_steps(command))

    async def _retry_steps(self, command: Wait) -> list[Command]:
        """Wait out a retry's backoff; returns what the engine asks for then."""
        assert self.engine is not None
        task = self.plan.tasks[command.instance.task].config
        await anyio.sleep(self._driving.retry_delay_s(task, command.attempt))
        return self.engine.retry_due(command.instance)

    async def _attempt(self, tg: anyio.abc.TaskGroup, start: Start) -> None:
        self._apply(tg, await self._attempt_steps(start))

    async def _attempt_steps(self, start: Start) -> list[Command]:
        """Run the attempt ``start`` and record how it ended; returns what the engine asks
        for next."""
        slots = self._driving.slots
        pool = self.plan.tasks[start.instance.task].config.pool
        if slots.take_task_slot_now(pool):  # the usual case: no context managers to enter
            try:
                begun, outcome = await self._attempt_run(start, pool)
            finally:
                slots.give_back_task_slot(pool)
        else:
            holder = (self.row.run_id, start.instance.key, start.attempt)
            async with slots.task_slot(pool, holder):
                with slots.running():
                    begun, outcome = await self._attempt_run(start, pool)
        return await self._ended(begun, self._kept(begun, outcome))

    async def _attempt_run(self, start: Start, pool: str | None) -> tuple[Begun, Outcome]:
        """Run the attempt ``start`` (its slot taken) until it ends, as it ended."""
        driving = self._driving
        begun = self._begin(start, pool, self._attempt_log(start), Meter())
        span = begun.span = attempt_span(
            driving.tracing,
            self.span,
            self.row,
            start,
            self.plan.tasks[start.instance.task].config.kind,
        )
        args = (self.plan, self.row, start, begun.log, begun.meter)
        try:
            if span:
                with driving.tracing.current(span):
                    return begun, await driving.attempts.run(*args, fresh=self._fresh)
            return begun, await driving.attempts.run(*args, fresh=self._fresh)
        except anyio.get_cancelled_exc_class():
            self._stopped(begun)
            raise

    def _attempt_log(self, start: Start) -> structlog.typing.FilteringBoundLogger:
        return cast(
            "structlog.typing.FilteringBoundLogger",
            LazyLog(
                self._driving.log,
                run_id=self.row.run_id,
                pipeline=self.row.pipeline,
                task=start.instance.key,
                attempt=start.attempt,
            ),
        )

    def _begin(
        self,
        start: Start,
        pool: str | None,
        log: structlog.typing.FilteringBoundLogger,
        meter: Meter,
    ) -> Begun:
        """Mark ``start``'s instance running (its slot taken)."""
        assert self.engine is not None
        self.engine.started(start.instance)
        started_at = now()
        # built only if a commit begins while it runs: an attempt that ends first writes
        # its end alone (a kill -9 before that commit leaves it queued: it runs again
        # after the restart, with the same idempotency key)
        running = RunningRows(self.row.run_id, start, started_at)
        self._store.provisional(running)
        if self._driving.log.is_enabled_for(logging.DEBUG):
            log.debug("task_started")
        return Begun(start, pool, started_at, running, log, meter, NO_SPAN)

    def _stopped(self, begun: Begun) -> None:
        """Record an attempt stopped before it ended: a cancelled run marks its instances
        cancelled; a daemon shutting down leaves them running, so that a restart runs
        them again."""
        assert self.engine is not None
        self._store.withdraw(begun.running)
        state = "cancelled" if self.engine.state is RunState.CANCELLED else "interrupted"
        run_id, start = self.row.run_id, begun.start
        self._store.submit(
            [
                instance_row(run_id, start.instance),
                stopped_row(run_id, start, state, begun.started_at, begun.meter),
            ]
        )
        end_attempt_span(begun.span, begun.meter, state, None)

    def _kept(self, begun: Begun, outcome: Outcome) -> Outcome:
        """The attempt ended as ``outcome``: as it is kept, its start withdrawn."""
        self._store.withdraw(begun.running)  # what it ended as replaces it
        outcome = outcome.kept()
        end_attempt_span(
            begun.span,
            begun.meter,
            "failed" if outcome.error else ("waiting" if outcome.awaiting else "succeeded"),
            outcome.error,
        )
        return outcome

    async def _ended(self, begun: Begun, outcome: Outcome) -> list[Command]:
        """Record how an attempt ended (``outcome``, kept); returns what the engine asks
        for next."""
        inst, attempt, started_at = begun.start.instance, begun.start.attempt, begun.started_at
        if (ask := outcome.awaiting) is not None:
            if isinstance(ask, AwaitingDecision):
                await self._await_decision(inst, attempt, started_at, ask)
            else:
                await self._await_wakeup(inst, attempt, started_at, ask)
            return []
        if (child := outcome.child) is not None:
            return await self._start_child(inst, attempt, started_at, child)
        commands, durable_first = self._concluded(begun, outcome)
        if durable_first:
            await self._commit(durable_first)
            self._driving.alerts.wake()
        return commands

    def _concluded(self, begun: Begun, outcome: Outcome) -> tuple[list[Command], list[Row]]:
        """Tell the engine how an attempt ended (succeeded or failed); returns what it asks
        for next, and the rows to commit before that is carried out (empty: submitted)."""
        engine, driving, start = self.engine, self._driving, begun.start
        assert engine is not None
        inst, run_id = start.instance, self.row.run_id
        ended_at = now()
        if outcome.error is None:
            if driving.log.is_enabled_for(logging.DEBUG):
                begun.log.debug("task_succeeded", duration_s=round(ended_at - begun.started_at, 6))
            commands = engine.succeeded(inst, outcome.output)
        else:
            commands = engine.failed(inst, outcome.error, retryable=outcome.retryable)
            begun.log.warning(
                "task_failed", error=outcome.error, will_retry=inst.state is State.UP_FOR_RETRY
            )
        extra: list[Row] = [
            outcome.attempt_row(run_id, start, begun.started_at, ended_at, begun.meter)
        ]
        if inst.state is State.FAILED:  # no retry left, or none would help
            extra.extend(
                driving.alerts.task_failed(self.row, inst.key, start.attempt, outcome.error)
            )
            return commands, extra
        if all(isinstance(c, Finish) for c in commands):
            # nothing starts on this result: it rides with the next commit, which whatever
            # comes next of this run (its end, or a sibling's result) waits for (the store
            # commits in order)
            self._write(extra)
            return commands, []
        # durable before anything downstream starts: a succeeded task never runs again
        return commands, extra

    # -- attempts stepped in turns (inline.py): by the run's stepper, or the runner's ------

    def _inline(self, start: Start, stepper: Stepper | None = None) -> bool:
        """Begin ``start`` as an attempt ``stepper`` (the run's own by default) steps, if it
        can be one: its kind runs inline, a slot is free now, and tracing is off (a span is
        made current in the attempt's context); False, with nothing begun, if not."""
        driving = self._driving
        if (stepper or self._stepper) is None or driving.tracing.enabled:
            return False
        pool = self.plan.tasks[start.instance.task].config.pool
        if not driving.slots.take_task_slot_now(pool):
            return False
        if self._inline_begin(start, pool, stepper):
            return True
        driving.slots.give_back_task_slot(pool)
        return False

    def _inline_begin(self, start: Start, pool: str | None, stepper: Stepper | None) -> bool:
        """Begin ``start`` stepped by ``stepper`` (the runner's; None: the run's own), its
        slot taken; False, beginning nothing, if it cannot run inline."""
        driving = self._driving
        log, meter = self._attempt_log(start), Meter()
        attempt = driving.attempts.inline(self.plan, self.row, start, log, meter, fresh=self._fresh)
        if attempt is None:
            return False
        begun = self._begin(start, pool, log, meter)
        if stepper is not None:
            self._stepped = (stepper, begun, attempt)
        else:
            stepper = self._stepper
            assert stepper is not None
        stepper.add(begun, attempt, self)
        return True

    def attempt_ended(self, begun: Begun, attempt: InlineAttempt, outcome: Outcome) -> None:
        """See :class:`~cued.daemon.runtime.inline.Stepped`."""
        self._stepped = None
        if attempt.lines is not None and not attempt.lines.exit_now():
            # it wrote lines: they commit before its end does (a task waits for that)
            self._go_on(partial(self._end_later, begun, attempt, outcome))
            return
        self._driving.slots.give_back_task_slot(begun.pool)
        outcome = self._kept(begun, outcome)
        if outcome.awaiting is not None or outcome.child is not None:
            self._go_on(partial(self._end_later, begun, None, outcome))
            return
        commands, durable_first = self._concluded(begun, outcome)
        if durable_first:
            self._go_on(partial(self._commit_first, durable_first, commands))
        elif (tg := self._tg) is not None:
            self._apply(tg, commands)
        elif all(isinstance(c, Finish) for c in commands):
            # stepped by the runner, and nothing of the run is left to run: it ends here,
            # with no driver (its result rides with the run's end, in one commit)
            self._write()
            self._driving.stepped_ended(self)
        else:
            self._pending = commands
            self._driving.hand_on(self)

    def attempt_waits(self, begun: Begun, attempt: InlineAttempt) -> None:
        """See :class:`~cued.daemon.runtime.inline.Stepped`."""
        self._stepped = None
        self._go_on(partial(self._resume, begun, attempt))

    async def attempt_stopped(self, begun: Begun, attempt: InlineAttempt) -> None:
        """See :class:`~cued.daemon.runtime.inline.Stepped`."""
        if attempt.lines is not None and not attempt.lines.exit_now():
            await attempt.lines.__aexit__(None, None, None)  # shielded: commits its lines
        self._stopped(begun)
        self._driving.slots.give_back_task_slot(begun.pool)

    def _go_on(self, later: Callable[[], Awaitable[list[Command]]]) -> None:
        """Go on with ``later`` where it can wait, then with what the engine asks for: in a
        task of the run's group, or, for a run the runner's stepper stepped, in a driver
        (under the run's cancel scope)."""
        if (tg := self._tg) is not None:
            tg.start_soon(self._apply_later, tg, later)
        else:
            self._handed = later
            self._driving.hand_on(self)

    async def _apply_later(
        self, tg: anyio.abc.TaskGroup, later: Callable[[], Awaitable[list[Command]]]
    ) -> None:
        self._apply(tg, await later())

    async def _commit_first(self, rows: list[Row], commands: list[Command]) -> list[Command]:
        await self._commit(rows)
        self._driving.alerts.wake()
        return commands

    async def _end_later(
        self, begun: Begun, attempt: InlineAttempt | None, outcome: Outcome
    ) -> list[Command]:
        """The end of an inline attempt that waits for a commit (its lines', or its
        result's) or parks (a gate, a wait, a child run); ``attempt`` is given if its lines
        wait. Returns what the engine asks for next."""
        if attempt is not None:
            assert attempt.lines is not None
            await attempt.lines.__aexit__(None, None, None)
            self._driving.slots.give_back_task_slot(begun.pool)
            outcome = self._kept(begun, outcome)
        return await self._ended(begun, outcome)

    async def _resume(self, begun: Begun, attempt: InlineAttempt) -> list[Command]:
        """Go on with an inline attempt that waits on something after all, until it ends;
        returns what the engine asks for next."""
        assert self.engine is not None
        if self.engine.state is not RunState.RUNNING:
            # cancelled while it waited for a driver (the runner's stepper let it go)
            attempt.stop()
            await self.attempt_stopped(begun, attempt)
            return []
        try:
            outcome = await attempt.resume()
        except anyio.get_cancelled_exc_class():
            await self.attempt_stopped(begun, attempt)
            raise
        if attempt.lines is not None and not attempt.lines.exit_now():
            return await self._end_later(begun, attempt, outcome)
        self._driving.slots.give_back_task_slot(begun.pool)
        return await self._ended(begun, self._kept(begun, outcome))

    async def _start_child(
        self, inst: Instance, attempt: int, started_at: float, ask: AwaitingRun
    ) -> list[Command]:
        """Record the child run a ``pipeline`` task asks for with the attempt's wait, in one
        transaction (one child per attempt, whatever crashes), then queue it: the instance
        waits, holding no slot, until the child ends (:meth:`Gates.child_ended`)."""
        engine, driving = self.engine, self._driving
        assert engine is not None
        run_id = self.row.run_id
        try:
            child = driving.new_child(self.row, inst.key, attempt, ask)
        except CuedError as exc:
            error = f"child run not started: {exc}"
            commands = engine.failed(inst, error, retryable=False)
            await self._commit(
                [AttemptRow(run_id, inst.key, attempt, "failed", started_at, now(), error)]
            )
            return commands
        engine.waiting(inst)
        await self._commit([AttemptRow(run_id, inst.key, attempt, "waiting", started_at), child])
        driving.log.info("child_run_started", run_id=run_id, task=inst.key, child=child.run_id)
        driving.start_child(child)
        return []

    async def _await_decision(
        self, inst: Instance, attempt: int, started_at: float, ask: AwaitingDecision
    ) -> None:
        assert self.engine is not None
        self.engine.waiting(inst)
        # a gate's task `timeout` is how long to wait for the decision
        gate = gate_row(
            self.row.run_id, inst.key, attempt, ask, self.plan.tasks[inst.task].config.timeout
        )
        rows: list[Row] = [
            AttemptRow(self.row.run_id, inst.key, attempt, "waiting", started_at),
            gate,
            *self._driving.alerts.approval_waiting(self.row, inst.key, attempt, ask.message),
        ]
        await self._commit(rows)
        self._driving.log.info(
            "approval_waiting", run_id=self.row.run_id, task=inst.key, message=ask.message
        )
        self._driving.gates.opened()
        self._driving.alerts.wake()

    async def _await_wakeup(
        self, inst: Instance, attempt: int, started_at: float, ask: AwaitingEvent | AwaitingTime
    ) -> None:
        """Park ``inst`` on a wait (an event, or a moment): durable before the run leaves
        memory, and woken by :class:`~cued.daemon.runtime.waits.Waits`."""
        engine = self.engine
        assert engine is not None
        engine.waiting(inst)
        wait = wait_row(
            self.row.run_id,
            inst.key,
            attempt,
            ask,
            # a wait's task `timeout` is how long to wait for the event
            timeout_s=self.plan.tasks[inst.task].config.timeout,
            context=engine.context_of(inst),
            started_at=started_at,
        )
        await self._commit(
            [AttemptRow(self.row.run_id, inst.key, attempt, "waiting", started_at), wait]
        )
        self._driving.log.info(
            "task_waiting",
            run_id=self.row.run_id,
            task=inst.key,
            kind=wait.kind,
            source=wait.source,
            until=wait.deadline_at,
        )
        self._driving.waits.wake()
