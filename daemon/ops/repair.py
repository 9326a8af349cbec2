"""Repairing recorded runs: rerun from the point of failure, clear tasks, cancel.

A rerun resets the chosen task instances to pending, keeping their attempt numbers (so the
run's history keeps every attempt of every rerun) and giving them their retries afresh;
instances that succeeded and are not chosen keep their outputs and do not run again. The
reset commits in one transaction, then the run resumes from the store exactly as after a
crash.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from cued.daemon.core import graph
from cued.daemon.core.engine import RunState, State
from cued.daemon.core.ids import now
from cued.daemon.errors import Conflict, InvalidRequest, NotFound
from cued.daemon.store import InstanceGone, RunRow

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cued.daemon.ops.host import Daemon
    from cued.daemon.store import Row

__all__ = ["cancel", "rerun"]

_RERUN = frozenset({State.FAILED, State.UPSTREAM_FAILED, State.CANCELLED})


async def rerun(
    daemon: Daemon, run_id: str, *, tasks: Sequence[str] = (), downstream: bool = True
) -> RunRow:
    """Run a finished run again from the point of failure.

    :param tasks: the tasks to run again; none: those that failed, were skipped because
        something upstream failed, or were cancelled
    :param downstream: also everything downstream of them (for named tasks; the failed
        ones always take their downstream along)
    :raises NotFound: if the run or a named task does not exist
    :raises Conflict: if the run is not finished
    :raises InvalidRequest: if nothing is there to rerun, or its pipeline is gone
    """
    if daemon.is_active(run_id):
        raise Conflict(f"run {run_id!r} is still running: wait for it, or cancel it first")
    found = await daemon.store.run_state(run_id)
    if found is None:
        raise NotFound(f"no run {run_id!r}")
    run, instances, _ = found
    if run.state in (RunState.WAITING, RunState.QUEUED, RunState.RUNNING):
        raise Conflict(f"run {run_id!r} is {run.state}, not finished: it cannot be rerun now")
    plan = daemon.plans.get(run.pipeline)
    if plan is None:
        raise InvalidRequest(
            f"pipeline {run.pipeline!r} of run {run_id!r} is no longer in the configuration"
        )
    deps = {name: t.config.needs for name, t in plan.tasks.items()}
    if tasks:
        if unknown := [t for t in tasks if t not in plan.tasks]:
            raise NotFound(
                f"pipeline {run.pipeline!r} has no task {unknown[0]!r} (tasks: {', '.join(plan.tasks)})"
            )
        chosen = set(tasks) | (graph.descendants(deps, set(tasks)) if downstream else set())
    else:
        failed = {i.task for i in instances if State(i.state) in _RERUN}
        if not failed:
            raise InvalidRequest(
                f"nothing failed in run {run_id!r} ({run.state}): name tasks to run them again"
            )
        chosen = failed | graph.descendants(deps, failed)
    stamp = now()
    rows: list[Row] = []
    for inst in instances:
        if inst.task not in chosen:
            continue
        if inst.attempts == 0:
            rows.append(InstanceGone(run_id, inst.key))  # never ran: made anew if needed
        else:
            rows.append(
                replace(
                    inst,
                    state=State.PENDING.value,
                    error=None,
                    retry_base=inst.attempts,
                    updated_at=stamp,
                )
            )
    queued = replace(run, state=RunState.QUEUED.value, ended_at=None, error=None)
    rows.append(queued)
    await daemon.store.submit(rows).wait()
    daemon.log.info("run_rerun", run_id=run_id, tasks=sorted(chosen))
    await daemon.resume_recorded(run_id)
    return queued


async def cancel(daemon: Daemon, run_id: str) -> RunRow:
    """Cancel a run, whether it runs here, is parked waiting for a decision, waits for
    its paused pipeline, or runs on another daemon on the same database (cancelled in the
    store, then signalled to that daemon, which stops it).

    :raises NotFound: if there is no such run
    :raises Conflict: if it has finished already
    """
    if daemon.is_active(run_id):
        return await daemon.cancel(run_id)
    found = await daemon.store.run_state(run_id)
    if found is None:
        raise NotFound(f"no run {run_id!r}")
    run, instances, _ = found
    # waiting: parked at a gate; queued and not here: held while its pipeline is paused
    # (or queued on another daemon); running and not here: on another daemon
    unfinished = {RunState.WAITING, RunState.QUEUED}
    if daemon.signals.enabled:
        unfinished.add(RunState.RUNNING)
    if run.state not in unfinished:
        raise Conflict(f"run {run_id!r} has finished already ({run.state})")
    stamp = now()
    rows: list[Row] = []
    # one running elsewhere: its daemon writes its tasks' ends as it stops them (the run's
    # row says what was asked, should that daemon miss the signal)
    if run.state != RunState.RUNNING:
        rows.extend(
            replace(i, state=State.CANCELLED.value, updated_at=stamp)
            for i in instances
            if State(i.state) not in (State.SUCCEEDED, State.FAILED, State.UPSTREAM_FAILED)
        )
        rows.extend(
            replace(gate, state="cancelled", decided_at=stamp)
            for gate in await daemon.store.get_approvals(run_id)
            if gate.state == "waiting"
        )
    cancelled = replace(run, state=RunState.CANCELLED.value, ended_at=stamp)
    rows.append(cancelled)
    await daemon.store.submit(rows).wait()
    daemon.signals.cancelled(run_id)
    return cancelled
