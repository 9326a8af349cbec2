"""Resumption: runs go on from the store, where a runner finds them recorded but not in
memory: those unfinished when the daemon last stopped (:meth:`Resumption.resume_unfinished`),
those adopted from a node that is gone (:meth:`Resumption.resume_adopted`), and a parked
one whose decision came, or one that is rerun (:meth:`Resumption.resume_recorded`).

A run that had started goes on from its instances; one that never started waits cold
(counted in its lane, its row in the store; by id if it counts for a key's limit) until
its turn comes. On PostgreSQL a run that holds one of its pipeline's slots across
the nodes goes on at once (:meth:`Resumption._launch_holder`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cued.daemon.core.engine import RunState
from cued.daemon.core.ids import now
from cued.daemon.errors import NotFound
from cued.daemon.runtime.active_run import ActiveRun
from cued.daemon.runtime.admission import PAGE, UNFINISHED, Admission, key_of, limited
from cued.daemon.runtime.instance_rows import instances_of

if TYPE_CHECKING:
    from cued.daemon.core.engine import Instance
    from cued.daemon.store import InstanceRow, RunRow

__all__ = ["Resumption"]


class Resumption(Admission):
    """Resuming recorded runs into memory (a part of
    :class:`~cued.daemon.runtime.runner.Runner`)."""

    _resumed_ids: set[str]
    """The new runs held while unfinished ones were resumed that the store's pages had."""

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
            if limited(row) and row.state == RunState.RUNNING and row.run_id not in self._runs:
                self.keys.count(row.pipeline, *key_of(row))
        # (PostgreSQL) those that hold a slot of their pipeline's across the nodes
        slots = await self.store.run_slots_held([row.run_id for row, _, _ in started])
        after = ""
        while True:
            page = await self.store.waiting_runs(after=after, limit=PAGE)
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
            if len(page) < PAGE:
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
            if limited(row) and row.state == RunState.RUNNING and not self.is_active(row.run_id):
                self.keys.count(row.pipeline, *key_of(row))
        for row in rows:
            if row.state not in UNFINISHED or self.is_active(row.run_id):
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
                self._enqueue_cold(row.pipeline, row.run_id, row.priority, stored=False)
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
        if limited(row):
            if not counted:
                self.keys.count(row.pipeline, *key_of(row))
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

    def resuming(self) -> bool:
        """Whether the runs unfinished at the last stop are still to be resumed (a run
        recorded running is then not in memory yet)."""
        return self._held is not None

    async def settle_children(self) -> None:
        """Settle the instances that wait for child runs which ended while the daemon was
        stopped (the child's end was recorded, its parent's was not yet)."""
        for child in await self.store.children_to_settle():
            await self.gates.child_ended(child)
