"""Admission: the runs a runner holds in memory, and how each gets to start.

A recorded run goes through its key (:class:`~cued.daemon.runtime.keys.KeyGate`: at most
its limit of a key's runs at once), then its pipeline's slots (``max_active_runs``,
:class:`~cued.daemon.runtime.slots.Slots`), waiting in the
:class:`~cued.daemon.runtime.backlog.Backlog` meanwhile: a window of each pipeline's runs
loaded, the rest *cold* (counted, their rows in the store) and read from the store a window
at a time as their turn nears. :class:`Admission` is the runner's base: the state every
part of the runner shares (resumption, pausing, cancellation), and the moves that place a
run.

On a database several nodes share, every run that waits is *claimed* as it is read
(:meth:`~cued.daemon.store.Store.next_waiting`): a node drives only the runs it claimed,
and a node with a free slot and nothing of its own waiting claims the next runs of
another node's (it learns of them by a notice, :mod:`~cued.daemon.runtime.claims`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from cued.daemon.core.engine import RunState
from cued.daemon.core.priorities import PRIORITIES
from cued.daemon.errors import NotFound
from cued.daemon.runtime.active_run import ActiveRun
from cued.daemon.runtime.instance_rows import instances_of

if TYPE_CHECKING:
    from collections.abc import Callable

    import structlog

    from cued.daemon.core.engine import Instance
    from cued.daemon.core.plan import PipelinePlan
    from cued.daemon.runtime.active_run import Driving
    from cued.daemon.runtime.backlog import Backlog, Taken
    from cued.daemon.runtime.deadlines import Deadlines
    from cued.daemon.runtime.drivers import Drivers
    from cued.daemon.runtime.gates import Gates
    from cued.daemon.runtime.inline import Stepper
    from cued.daemon.runtime.keys import KeyGate, Released
    from cued.daemon.runtime.signals import Signals
    from cued.daemon.runtime.slots import Slots
    from cued.daemon.runtime.waits import Waits
    from cued.daemon.sdk.tracing import Tracing
    from cued.daemon.store import PauseRow, RunRow, Store, WaitingRun

__all__ = ["PAGE", "UNFINISHED", "Admission", "key_of", "limited", "tell_nobody"]

UNFINISHED = (RunState.QUEUED, RunState.RUNNING)
PAGE = 10_000
"""Waiting runs read at a time, at a restart or an unpause."""
TELL_EVERY_S = 0.1
"""The other nodes are told that runs of a pipeline wait here at most this often."""


class Admission:
    """The runs in memory and their admission: by key, then by their pipeline's slots,
    waiting loaded or cold in the backlog. The base of
    :class:`~cued.daemon.runtime.runner.Runner`, which sets these attributes up (and says
    what each is)."""

    store: Store
    tracing: Tracing
    plans: dict[str, PipelinePlan]
    backlog: Backlog[ActiveRun]
    slots: Slots
    gates: Gates
    waits: Waits
    log: structlog.typing.FilteringBoundLogger
    keys: KeyGate[ActiveRun]
    signals: Signals
    _deadlines: Deadlines
    _driving: Driving
    _runs: dict[str, ActiveRun]
    _keyed: set[str]
    _held_counted: int
    _loading: dict[str, set[str]]
    _moved: anyio.Event
    _held: list[RunRow] | None
    _tg: anyio.abc.TaskGroup | None
    _drivers: Drivers[ActiveRun] | None
    _stepper: Stepper | None
    _paused: dict[str, PauseRow]
    _unpausing: dict[str, list[RunRow]]
    _plans_of: dict[int | None, dict[str, PipelinePlan]]
    _elsewhere: set[str]
    """Pipelines whose runs may wait on other nodes (a notice said so): claimed here while
    this node has a free slot of theirs and nothing of theirs waiting."""
    _stopped: dict[str, set[str]]
    """Runs cancelled in the store while a read of their pipeline's waiting runs was out:
    the read may have found them still queued."""
    _waiting_notice: Callable[[str], None]
    """Tells the other nodes that runs of a pipeline wait here (a no-op alone)."""
    _told: dict[str, float]
    """When each pipeline's waiting runs were last told of."""

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

    def is_active(self, run_id: str) -> bool:
        """Whether the run is queued or running here (in memory, or cold: waiting by its
        id), not parked, held for its paused pipeline, or finished. A run that waits cold
        counted in the store is not (nothing of it is in memory): :meth:`cancel` and
        :meth:`wait` find it there."""
        return run_id in self._runs or self._is_cold(run_id)

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
        if row.run_id in self._runs and not prior and row.started_at is None:
            # read from the store before it was handed over here (intake hands a run
            # over after its commit), in the place of a counted run that still waits
            if not limited(row):
                self.backlog.recount(row.pipeline, row.priority)
                self._refill(row.pipeline)
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
        if counted or not limited(row):
            self._place(row, prior, fresh)
            return
        if fresh:
            self._admit_cold(row, row)
            return
        # one that had started waits in memory for its key, as it waits for a slot
        run = ActiveRun(row, self._plan_of(row), prior or {}, self._driving)
        self._runs[row.run_id] = run
        admitted = self.keys.admit(row.pipeline, *key_of(row), run, row.priority)
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
        # a run that never started waits cold behind others that do, and when its
        # pipeline's window is full
        if fresh and (self.backlog.cold_of(pipeline) or pipeline in self._loading):
            self._enqueue_cold(pipeline, row.run_id, row.priority, stored=not limited(row))
            return
        free = self.slots.run_slot_free(pipeline)
        if fresh and self.store.claims_waiting_runs:
            # where nodes claim the runs, it is claimed before it starts (another node may
            # have claimed it first): by its id if a slot is free here, so that it is
            # known here (active: a cancel or a rerun finds it) until it starts; counted in
            # the store if it has to wait, for any node to claim
            self._enqueue_cold(
                pipeline, row.run_id, row.priority, stored=not free and not limited(row)
            )
            return
        if not free and fresh and not self.backlog.has_room(pipeline, row.priority):
            self._enqueue_cold(pipeline, row.run_id, row.priority, stored=not limited(row))
            return
        if fresh and not limited(row):
            self.backlog.passed(pipeline, row.run_id, row.priority)  # the store's reads skip it
        if run is None:
            run = ActiveRun(row, self._plan_of(row), prior or {}, self._driving)
            self._runs[row.run_id] = run
        if limited(row):
            self._keyed.add(row.run_id)
        if free:
            self._launch(run)
        else:
            self.backlog.push(pipeline, run, row.priority)

    def _admit_cold(self, waiting: RunRow | WaitingRun, row: RunRow | None = None) -> None:
        """A run that never started (its row in the store, or ``row``) goes on by id: to
        its pipeline's backlog if its key admits it (or it has no limit), else it waits for
        its key."""
        if not limited(waiting):
            self._enqueue_cold(waiting.pipeline, waiting.run_id, waiting.priority, stored=True)
            return
        admitted = self.keys.admit(
            waiting.pipeline, *key_of(waiting), waiting.run_id, waiting.priority
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
            self._enqueue_cold(pipeline, released.run, released.priority, stored=False)
        else:
            self._place(released.run.row, released.run.prior, False, released.run)

    def _enqueue_cold(self, pipeline: str, run_id: str, priority: int, *, stored: bool) -> None:
        """A run waits cold: in the store, counted (``stored``: it never started and
        counts for no key's limit, so its lane's read finds it), else by its id."""
        backlog = self.backlog
        if stored:
            backlog.push_stored(pipeline, run_id, priority)
        else:
            backlog.push_cold(pipeline, run_id, priority)
        self._refill(pipeline)
        if stored and pipeline not in self._loading:
            self._tell_waiting(pipeline)  # it waits here, past a window, for any node

    def _tell_waiting(self, pipeline: str) -> None:
        """Tell the other nodes that runs of ``pipeline`` wait here: at most every
        :data:`TELL_EVERY_S` (a flood of runs is one notice, not one per run)."""
        at = anyio.current_time()
        if at - self._told.get(pipeline, -TELL_EVERY_S) >= TELL_EVERY_S:
            self._told[pipeline] = at
            self._waiting_notice(pipeline)

    def _refill(self, pipeline: str) -> None:
        """Load the next cold runs of ``pipeline`` once its window is half empty, or its
        highest priority waiting is cold only; or claim another node's, if it may."""
        if pipeline not in self._loading and (
            self.backlog.wants_load(pipeline) or self._may_claim(pipeline)
        ):
            assert self._tg is not None, "the runner is not serving"
            self._loading[pipeline] = set()
            self._tg.start_soon(self._load_cold, pipeline, name=f"load waiting {pipeline}")

    def _may_claim(self, pipeline: str) -> bool:
        """Whether to claim runs of ``pipeline`` that wait on other nodes: some may (a
        notice said so), and here it has a free slot and nothing waiting."""
        return (
            pipeline in self._elsewhere
            and pipeline not in self._paused
            and not self.backlog.loaded_of(pipeline)
            and not self.backlog.cold_of(pipeline)
            and self.slots.run_slot_free(pipeline)
        )

    def on_waiting(self, tell: Callable[[str], None]) -> None:
        """Call ``tell(pipeline)`` as runs of ``pipeline`` come to wait here (for the
        other nodes, which may claim them)."""
        self._waiting_notice = tell

    def peer_waiting(self, pipeline: str) -> None:
        """Another node said runs of ``pipeline`` wait there: claim them while a slot of
        theirs is free here."""
        if pipeline in self.plans:
            self._elsewhere.add(pipeline)
            if self._tg is not None:
                self._refill(pipeline)

    async def _load_cold(self, pipeline: str) -> None:
        """Load cold runs into ``pipeline``'s window, oldest first, and start what may;
        then claim runs that wait on other nodes, while it may."""
        backlog = self.backlog
        stopped = self._stopped[pipeline] = set()
        try:
            # at least one: the highest priority's may come while the window is full
            while taken := backlog.take(
                pipeline, max(1, backlog.window - backlog.loaded_of(pipeline))
            ):
                loading = self._loading[pipeline] = set(taken.ids)
                by_id = set(taken.ids)
                ordered, rows = await self._read_taken(pipeline, taken)
                loading.update(run_id for run_id in ordered if run_id not in by_id)
                priors = await self._priors_of(rows)
                for run_id in ordered:
                    if run_id not in by_id and (run_id in stopped or run_id in self._runs):
                        # cancelled in the store while it was read; or read before it was
                        # handed over here, which placed it (a counted one still waits)
                        backlog.dropped()
                        if run_id not in stopped:
                            backlog.recount(pipeline, rows[run_id].priority)
                        continue
                    if run_id not in loading:  # cancelled meanwhile: its key went with it
                        backlog.dropped()
                        continue
                    self._loaded(pipeline, rows.get(run_id), priors.get(run_id, {}))
                loading.clear()
                backlog.loaded_all(pipeline)
                self._moved.set()
                self._moved = anyio.Event()
                self._start_waiting(pipeline)
                if taken.stored and backlog.cold_of(pipeline):
                    self._tell_waiting(pipeline)  # runs wait here past a window
                if not backlog.wants_load(pipeline):
                    break
            while self._may_claim(pipeline) and (row := await self._claim_elsewhere(pipeline)):
                if row.run_id in stopped or row.run_id in self._runs:
                    continue
                if row.state not in UNFINISHED:
                    continue
                run = ActiveRun(row, self._plan_of(row), {}, self._driving)
                self._runs[row.run_id] = run
                self._deadlines.watch(row)
                backlog.push(pipeline, run, row.priority)
                self._start_waiting(pipeline)
        finally:
            backlog.loaded_all(pipeline)
            del self._loading[pipeline]
            del self._stopped[pipeline]
        self._refill(pipeline)  # what came cold while the last rows were read

    async def _priors_of(self, rows: dict[str, RunRow]) -> dict[str, dict[str, Instance]]:
        """The instances of the runs read that had started (resumed at a restart, they go
        on from them), their rows replaced by the latest."""
        priors: dict[str, dict[str, Instance]] = {}
        for row in list(rows.values()):
            if row.started_at is not None and (found := await self.store.run_state(row.run_id)):
                rows[row.run_id], instances, outputs = found
                priors[row.run_id] = instances_of(instances, outputs)
        return priors

    def _loaded(self, pipeline: str, row: RunRow | None, prior: dict[str, Instance]) -> None:
        """A cold run read from the store waits loaded; one cancelled or finished
        meanwhile (or gone) waits no more."""
        backlog = self.backlog
        if row is None or row.state not in UNFINISHED:
            backlog.dropped()
            if row is not None and limited(row):
                self._release(row)
            return
        if row.run_id in self._runs:
            # placed in memory another way while it was read (a clean-clone CI run saw a
            # node adopting runs drive one twice at once, the second from a cold read
            # with its first start in it): a run is driven once; the other counts its key
            backlog.dropped()
            return
        run = ActiveRun(row, self._plan_of(row), prior, self._driving)
        self._runs[row.run_id] = run
        if limited(row):
            self._keyed.add(row.run_id)
        backlog.settle(pipeline, run, row.priority)

    async def _read_taken(self, pipeline: str, taken: Taken) -> tuple[list[str], dict[str, RunRow]]:
        """The rows of cold runs taken out (claimed, on a shared database), and their ids in
        the order they are to wait: those known by id, then each lane's read."""
        ordered = list(taken.ids)
        rows = {row.run_id: row for row in await self.store.claim_runs(taken.ids)}
        for priority, after, asked in taken.stored:
            found = await self.store.next_waiting(pipeline, priority, after=after, limit=asked)
            self.backlog.read(pipeline, priority, asked, [row.run_id for row in found])
            ordered += (row.run_id for row in found)
            rows.update((row.run_id, row) for row in found)
        return ordered, rows

    async def _claim_elsewhere(self, pipeline: str) -> RunRow | None:
        """Claim the next run of ``pipeline`` that waits on any node (the highest priority
        first, the oldest first within one); None if none waits, and none is claimed until
        another notice says some wait."""
        for priority in PRIORITIES:
            found = await self.store.next_waiting(
                pipeline, priority, after="", limit=1, anyone=True
            )
            if found:
                return found[0]
        self._elsewhere.discard(pipeline)
        return None

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

    def _launch(self, run: ActiveRun) -> None:
        assert self._drivers is not None, "the runner is not serving"
        self.slots.take_run_slot(run.row.pipeline)
        # a run whose first (and often only) attempt runs inline begins in the runner's
        # stepper, and gets a driver only if it has to wait for something: a driver, its
        # wake-up and a cancel scope per run were most of a one-task run's cost. Not where
        # a run slot is the other nodes' too (taking it awaits), nor with tracing (a run's
        # span is the driver's to open and close)
        if (
            self._stepper is not None
            and not self.store.shares_run_slots
            and not self.tracing.enabled
            and run.begin_stepped(self._stepper)
        ):
            return
        self._drivers.launch(run)

    def _is_cold(self, run_id: str) -> bool:
        """Whether the run waits by its id only (or is being loaded, or waits for its key)."""
        return (
            self.backlog.is_cold(run_id)
            or any(run_id in s for s in self._loading.values())
            or self.keys.holds(run_id)
        )

    def _waits_stored(self, row: RunRow) -> bool:
        """Whether the run (its row as the store has it) waits cold in the store here,
        counted in its lane, not known by id: its id is past the lane's cursor, or a read
        of its pipeline's waiting runs is out."""
        return (
            row.state == RunState.QUEUED
            and row.started_at is None
            and not limited(row)
            and row.run_id not in self._runs
            and (
                row.pipeline in self._loading
                or self.backlog.is_stored(row.pipeline, row.run_id, row.priority)
            )
        )

    def _unload(self, run_id: str) -> bool:
        """Take a run being loaded out of its batch (it will not start); False if it is
        not being loaded."""
        for loading in self._loading.values():
            if run_id in loading:
                loading.discard(run_id)
                return True
        return False

    def _release(self, row: RunRow) -> None:
        """A run of a limited key left (ended, parked, cancelled): admit the next of it."""
        admitted = self.keys.release(row.pipeline, key_of(row)[0])
        self._count_held()
        for released in admitted:
            self._admitted(row.pipeline, released)

    def _count_held(self) -> None:
        """Keep the backlog's count of runs waiting for their key (backpressure) in step."""
        held = self.keys.held
        self.backlog.count_elsewhere(held - self._held_counted)
        self._held_counted = held


def tell_nobody(pipeline: str) -> None:
    """Runs of ``pipeline`` wait here, and no other node is there to claim them."""


def limited(row: RunRow | WaitingRun) -> bool:
    """Whether the run counts for a key with a limit."""
    return row.key_limit is not None and row.flow_key is not None


def key_of(row: RunRow | WaitingRun) -> tuple[str, int]:
    """The key of a run that counts for one (:func:`limited`), and its limit."""
    assert row.flow_key is not None, "the run has no key"
    assert row.key_limit is not None, "the run's key has no limit"
    return row.flow_key, row.key_limit
