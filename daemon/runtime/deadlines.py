"""Deadlines (SLAs): a run, or a task of it, still unfinished ``deadline`` after the run was
created raises a ``deadline_missed`` alert, once.

Times come from the store (the run's creation), so a deadline that passed while the daemon
was down is missed at start; the alert's id is made of the rule, the run and the task, so
it is raised once however often it is found missed.
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

import anyio

from cued.daemon.core.ids import now
from cued.daemon.core.states import TERMINAL_RUN_STATES, TERMINAL_TASK_STATES, RunState, State
from cued.daemon.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cued.daemon.core.plan import PipelinePlan
    from cued.daemon.runtime.run_alerts import RunAlerts
    from cued.daemon.store import RunRow, Store

__all__ = ["Deadlines"]


class Deadlines:
    """Watches the deadlines of unfinished runs; serve :meth:`run` in the runner's group.

    :param plans: the pipelines' plans, by name (their deadlines and their tasks')
    :param store: where runs are (read when a deadline comes)
    :param alerts: raises ``deadline_missed``
    """

    def __init__(self, plans: Mapping[str, PipelinePlan], store: Store, alerts: RunAlerts) -> None:
        self._plans = plans
        self._store = store
        self._alerts = alerts
        self._log = get_logger()
        self._due: list[tuple[float, str, str]] = []  # (at, run id, task or "")
        self._watched: set[tuple[str, str]] = set()
        self._rows: dict[str, RunRow] = {}
        self._wake = anyio.Event()
        self._marks: dict[str, list[tuple[str, float]]] = {}
        """Each pipeline's deadlines (task, seconds; "" for the run's own), made once."""

    def watch(self, row: RunRow) -> None:
        """Watch the deadlines of ``row``'s pipeline and tasks (once per run)."""
        # most pipelines have none: every run comes here
        for task, deadline in self._marks_of(row.pipeline):
            if (row.run_id, task) in self._watched:
                continue
            self._watched.add((row.run_id, task))
            self._rows[row.run_id] = row
            heapq.heappush(self._due, (row.created_at + deadline, row.run_id, task))
            self._wake.set()

    def _marks_of(self, pipeline: str) -> list[tuple[str, float]]:
        marks = self._marks.get(pipeline)
        if marks is None:
            plan = self._plans.get(pipeline)
            if plan is None:
                return []
            marks = self._marks[pipeline] = [
                (task, deadline)
                for task, deadline in [
                    ("", plan.config.deadline),
                    *((name, t.config.deadline) for name, t in plan.tasks.items()),
                ]
                if deadline is not None
            ]
        return marks

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        # runs parked at a gate, or waiting cold, are not in memory: watch them from the
        # store (only those of pipelines with deadlines: a backlog may hold very many)
        with_deadlines = [
            name
            for name, plan in self._plans.items()
            if plan.config.deadline is not None
            or any(t.config.deadline is not None for t in plan.tasks.values())
        ]
        for pipeline in with_deadlines:
            for state in (RunState.WAITING, RunState.QUEUED, RunState.RUNNING):
                for row in await self._store.list_runs(
                    pipeline=pipeline, state=state.value, limit=1_000_000
                ):
                    self.watch(row)
        task_status.started()
        while True:
            self._wake = anyio.Event()
            delay = self._due[0][0] - now() if self._due else math.inf
            if delay <= 0:
                at, run_id, task = heapq.heappop(self._due)
                self._watched.discard((run_id, task))
                await self._check(run_id, task, at)
                continue
            with anyio.move_on_after(delay):
                await self._wake.wait()

    async def _check(self, run_id: str, task: str, at: float) -> None:
        store = self._store
        row = await store.get_run(run_id)
        if row is None or RunState(row.state) in TERMINAL_RUN_STATES:
            return
        if task:
            instances = [i for i in await store.get_instances(run_id) if i.task == task]
            if instances and all(State(i.state) in TERMINAL_TASK_STATES for i in instances):
                return
        what = f"task {task!r} of run {run_id}" if task else f"run {run_id}"
        self._log.warning(
            "deadline_missed", run_id=run_id, pipeline=row.pipeline, task=task or None
        )
        rows = self._alerts.deadline_missed(
            row, task, at, f"{what} ({row.pipeline}) missed its deadline"
        )
        if rows:
            await store.submit(rows).wait()
            self._alerts.wake()
