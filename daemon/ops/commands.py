"""Acts: what the API, the UI (through the API) and the CLI ask the daemon to do.

```
trigger       start a run of a pipeline (and wait for its end, if asked)
cancel        cancel a run that runs or waits for a decision          (.repair)
rerun         run a finished run again from the point of failure      (.repair)
decide        approve or reject an approval gate, as its caller
wait          see a run to its end (or to its next gate)
prune         delete what [retention] lets go now, or count it (a dry run)
pause         pause a pipeline: its new runs wait (or are skipped), durably
unpause       resume a paused pipeline: what waited starts
reload        read the configuration file again and apply it (or refuse it)
```

A request that the state of a run or gate does not allow now raises
:class:`~cued.daemon.errors.Conflict`; the faces tell it by its type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cued.daemon.core.ids import now
from cued.daemon.ops.queries import Gate
from cued.daemon.ops.repair import cancel, rerun
from cued.daemon.runtime import retention

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cued.daemon.ops.host import Daemon, Recorded, Reloading
    from cued.daemon.runtime.reload import ReloadOutcome
    from cued.daemon.store import PauseRow, RunRow

__all__ = [
    "AS_PROPOSED",
    "PipelineState",
    "cancel",
    "decide",
    "pause",
    "prune",
    "reload",
    "rerun",
    "trigger",
    "unpause",
    "wait",
]

AS_PROPOSED: Any = object()
"""The ``payload`` of a decision that takes a gate's proposal as it is."""


async def trigger(
    daemon: Daemon,
    pipeline: str,
    inputs: dict[str, Any] | None = None,
    *,
    wait: bool = False,
    traceparent: str | None = None,
) -> RunRow:
    """Start a run (recorded before this returns); inputs not given take their defaults.

    :param wait: return once the run has finished (or waits for a decision)
    :param traceparent: the caller's W3C trace context, parsed: the run continues its trace
    :raises NotFound: if there is no such pipeline
    :raises InvalidRequest: if an input is not declared by the pipeline
    """
    row = await daemon.start_run(pipeline, inputs, traceparent=traceparent)
    return await daemon.wait(row.run_id) if wait else row


async def wait(daemon: Daemon, run_id: str) -> RunRow:
    """Wait for a run to finish (or to park at a gate) and return its row.

    :raises NotFound: if there is no such run
    """
    return await daemon.wait(run_id)


async def decide(
    daemon: Daemon,
    run_id: str,
    key: str,
    *,
    who: str,
    approve: bool,
    comment: str | None = None,
    payload: Any = AS_PROPOSED,
    groups: Iterable[str] = (),
) -> Gate:
    """Record ``who``'s decision on gate ``key`` of run ``run_id`` (settling the gate if
    that decides it); returns the gate as it now stands, with its decisions.

    :param groups: groups ``who`` belongs to besides those of ``[auth.users]``
    :param payload: the proposal as edited by ``who`` (default: as proposed)
    :raises NotFound: if there is no such gate
    :raises Conflict: if the gate was settled already
    :raises Forbidden: if ``who`` is not among its approvers
    """
    extra = {} if payload is AS_PROPOSED else {"payload": payload}
    gate = await daemon.gates.decide(
        run_id,
        key,
        who=who,
        approve=approve,
        comment=comment,
        groups=frozenset(groups) | daemon.config.auth.groups_of(who),
        **extra,
    )
    return Gate.of(gate, await daemon.store.get_decisions(run_id, key))


async def prune(recorded: Recorded, *, dry_run: bool = False) -> dict[str, Any]:
    """Delete now what ``[retention]`` lets go (in small transactions that take turns with
    the daemon's other writes), or with ``dry_run`` only count it; returns the report of
    :func:`cued.daemon.runtime.retention.report`."""
    policy = retention.policy(recorded.config, now())
    store = recorded.store
    counts = await (store.prunable(policy) if dry_run else store.prune(policy))
    return retention.report(policy, counts, dry_run=dry_run)


@dataclass(frozen=True)
class PipelineState:
    """Whether a pipeline is paused (since when, by whom), after a pause or unpause."""

    pipeline: str
    pause: PauseRow | None
    started: int = 0
    """Runs that had waited and were started by an unpause."""


async def pause(daemon: Daemon, pipeline: str, *, who: str | None = None) -> PipelineState:
    """Pause ``pipeline`` (durably, before this returns): its runs that have started go
    on; new ones are recorded and wait, or are recorded as skipped (its ``when_paused``).
    Pausing a paused pipeline changes nothing.

    :raises NotFound: if there is no such pipeline
    """
    return PipelineState(pipeline, await daemon.pause(pipeline, by=who))


async def unpause(daemon: Daemon, pipeline: str, *, who: str | None = None) -> PipelineState:
    """Resume ``pipeline`` (durably) and start the runs that waited, oldest first, as its
    ``max_active_runs`` allows. Resuming a pipeline that is not paused changes nothing.

    :raises NotFound: if there is no such pipeline
    """
    return PipelineState(pipeline, None, await daemon.unpause(pipeline, by=who))


async def reload(daemon: Reloading) -> ReloadOutcome:
    """Read the configuration file again and apply it in place; an invalid one is refused
    (the outcome says why, file:line) and the running one is kept."""
    return await daemon.reload()
