"""Admission: the runs a runner holds in memory, and how each gets to start.

A recorded run goes through its key (:class:`~cued.daemon.runtime.keys.KeyGate`: at most
its limit of a key's runs at once), then its pipeline's slots (``max_active_runs``,
:class:`~cued.daemon.runtime.slots.Slots`), waiting in the
:class:`~cued.daemon.runtime.backlog.Backlog` meanwhile: a window of each pipeline's runs
loaded, the rest *cold* (by id only) and loaded from the store a window at a time as their
turn nears. :class:`Admission` is the runner's base: the state every part of the runner
shares (resumption, pausing, cancellation), and the moves that place a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from cued.daemon.core.engine import RunState
from cued.daemon.errors import NotFound
from cued.daemon.runtime.active_run import ActiveRun
from cued.daemon.runtime.instance_rows import instances_of

if TYPE_CHECKING:
    import structlog

    from cued.daemon.core.engine import Instance
    from cued.daemon.core.plan import PipelinePlan
    from cued.daemon.runtime.active_run import Driving
    from cued.daemon.runtime.backlog import Backlog
    from cued.daemon.runtime.deadlines import Deadlines
    from cued.daemon.runtime.drivers import Drivers
    from cued.daemon.runtime.gates import Gates
    from cued.daemon.runtime.keys import KeyGate, Released
    from cued.daemon.runtime.signals import Signals
    from cued.daemon.runtime.slots import Slots
    from cued.daemon.runtime.waits import Waits
    from cued.daemon.store import PauseRow, RunRow, Store, WaitingRun

__all__ = ["PAGE", "UNFINISHED", "Admission", "key_of", "limited"]

UNFINISHED = (RunState.QUEUED, RunState.RUNNING)
PAGE = 10_000
"""Waiting runs read at a time, at a restart or an unpause."""


class Admission:
    """The runs in memory and their admission: by key, then by their pipeline's slots,
    waiting loaded or cold in the backlog. The base of
    :class:`~cued.daemon.runtime.runner.Runner`, which sets these attributes up (and says
    what each is)."""

    store: Store
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
    _paused: dict[str, PauseRow]
    _unpausing: dict[str, list[RunRow]]
    _plans_of: dict[int | None, dict[str, PipelinePlan]]

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
        id), not parked, held for its paused pipeline, or finished."""
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
            self._enqueue_cold(waiting.pipeline, waiting.run_id, waiting.priority)
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
                    if found_row is None or found_row.state not in UNFINISHED:
                        backlog.dropped()
                        if found_row is not None and limited(found_row):
                            self._release(found_row)
                        continue
                    prior = priors.get(run_id, {})
                    run = ActiveRun(found_row, self._plan_of(found_row), prior, self._driving)
                    self._runs[run_id] = run
                    if limited(found_row):
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

    def _launch(self, run: ActiveRun) -> None:
        assert self._drivers is not None, "the runner is not serving"
        self.slots.take_run_slot(run.row.pipeline)
        self._drivers.launch(run)

    def _is_cold(self, run_id: str) -> bool:
        """Whether the run waits by its id only (or is being loaded, or waits for its key)."""
        return (
            self.backlog.is_cold(run_id)
            or any(run_id in s for s in self._loading.values())
            or self.keys.holds(run_id)
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


def limited(row: RunRow | WaitingRun) -> bool:
    """Whether the run counts for a key with a limit."""
    return row.key_limit is not None and row.flow_key is not None


def key_of(row: RunRow | WaitingRun) -> tuple[str, int]:
    """The key of a run that counts for one (:func:`limited`), and its limit."""
    assert row.flow_key is not None, "the run has no key"
    assert row.key_limit is not None, "the run's key has no limit"
    return row.flow_key, row.key_limit
