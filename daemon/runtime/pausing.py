"""Pausing pipelines.

A paused pipeline (:meth:`Pausing.pause`, recorded in the store) starts no new run: its
new runs are recorded queued and stay in the store only (not in memory, not in the
backlog, so a long pause neither fills memory nor holds back other pipelines' sources),
or are recorded ``skipped`` if its ``when_paused`` says so. Runs that had started go on.
:meth:`Pausing.unpause` starts what waited, oldest first, as its slots allow.
"""

from __future__ import annotations

import functools

from cued.daemon.core.ids import now
from cued.daemon.runtime.admission import PAGE, Admission, limited
from cued.daemon.store import PauseRow

__all__ = ["Pausing"]


class Pausing(Admission):
    """Pausing and unpausing pipelines, here and on the other daemons of the store (a part
    of :class:`~cued.daemon.runtime.runner.Runner`)."""

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
        # it was paused) is in the store too: its ids read once here, not once per id;
        # what waits counted in the store is known by its lane's cursor
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
                page = await self.store.waiting_runs(pipeline, after=after, limit=PAGE)
                held_ids = {row.run_id for row in self._unpausing[pipeline]}
                loading = self._loading.get(pipeline, set())
                for waiting in page:
                    run_id = waiting.run_id
                    if run_id in self._runs or run_id in cold or run_id in loading:
                        continue
                    if not limited(waiting) and self.backlog.is_stored(
                        pipeline, run_id, waiting.priority
                    ):
                        continue  # counted in the store already
                    if run_id in held_ids:
                        seen.add(run_id)
                    self._admit_cold(waiting)
                    started += 1
                if len(page) < PAGE:
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
