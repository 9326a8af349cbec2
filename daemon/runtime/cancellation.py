"""Cancellation: a run in memory (:meth:`Cancellation.cancel`), wherever it waits (loaded,
cold, for its key) or runs; one in the store only (:meth:`Cancellation.cancel_stored`:
parked, held for its paused pipeline, or running on another daemon on the same database);
and a cancelled run's unfinished child runs, and theirs.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio

from cued.daemon.core.engine import RunState, State
from cued.daemon.core.ids import now
from cued.daemon.core.states import TERMINAL_RUN_STATES
from cued.daemon.errors import Conflict, NotFound
from cued.daemon.runtime.active_run import ActiveRun
from cued.daemon.runtime.admission import Admission, limited
from cued.daemon.runtime.waits import cancelled_waits

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cued.daemon.store import Row, RunRow

__all__ = ["Cancellation"]


class Cancellation(Admission):
    """Cancelling runs, and their child runs (a part of
    :class:`~cued.daemon.runtime.runner.Runner`)."""

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
                # counted in the store, if anywhere here: cancelled there
                stored = await self.store.get_run(run_id)
                if run_id in self._runs:  # placed meanwhile, by a read of the waiting runs
                    return await self.cancel(run_id, reason=reason)
                if stored is not None and self._waits_stored(stored):
                    return await self.cancel_stored(run_id, reason=reason)
                raise NotFound(f"no unfinished run {run_id!r}")
            # cold: it will not be started; its row is read to record it cancelled
            row = await self.store.get_run(run_id)
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            run = ActiveRun(row, self._plan_of(row), {}, self._driving)
            self._runs[run_id] = run
            if admitted and limited(row):
                self._keyed.add(run_id)
            try:
                await run.cancel(reason)
            finally:
                self._moved.set()
                self._moved = anyio.Event()
            return run.row
        if run.engine is None:  # still waiting in the backlog (or for its key), or about to start
            if self.backlog.remove(run.row.pipeline, lambda r: r is run) is not None:
                self._refill(run.row.pipeline)  # the next cold ones, if the window half-empties
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
        # a read of the waiting runs out meanwhile may have found it queued (and placed
        # it), here or, for a run another node waits, there (told by the signal)
        await self._stop_stored(run)
        self.signals.cancelled(run_id)
        await self.cancel_children(run_id)
        return cancelled

    def cancelled_elsewhere(self, run_id: str) -> None:
        """Another node cancelled a run that is not in memory here: a read of waiting runs
        out now (a claim) may have found it queued before that cancel's commit, and passes
        it over (one that placed it already made it active: it is cancelled as such)."""
        for reading in self._stopped.values():
            reading.add(run_id)

    async def _stop_stored(self, run: RunRow) -> None:
        """A run not in memory was cancelled in the store: if it waited cold there
        (counted, not known by id), it counts no more; one a read meanwhile found before
        the cancel's commit does not start, whether the read is still out or has placed
        it in memory (a read of the waiting runs, or a decision that resumed it)."""
        if run.run_id in self._runs:
            await self.cancel(run.run_id)  # read (and placed) before the cancel's commit
        elif (reading := self._stopped.get(run.pipeline)) is not None:
            reading.add(run.run_id)  # the read out may have found it queued: passed over
        else:
            self.backlog.remove_stored(run.pipeline, run.run_id, run.priority)

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
