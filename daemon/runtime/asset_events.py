"""Asset events: what a succeeded run tells the daemon about the assets its tasks produce.

A task that ``produces = ["NAME"]`` makes its run, once succeeded, raise one event from the
source ``asset:NAME``, which triggers may listen to. The event carries the task's output
(a list of the outputs of a mapped task). Its id is made of the asset and the run, so the
events a resumed run sends again, after a crash between recording them and recording the
run's end, are recognised by intake as already recorded.

A task that produces assets and fails its data check (:class:`DataCheckFailed`, a ``sql``
task's ``expect``) makes its failed run record, for each of them, a version marked bad:
an ``invalid`` event that starts nothing, with the check's error, shown with the asset's
versions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from cued.daemon.core.assets import asset_event_id, asset_source, failed_check_event_id
from cued.daemon.core.ids import now
from cued.daemon.core.states import State
from cued.daemon.errors import DataCheckFailed
from cued.daemon.sdk.sources import Event

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cued.daemon.core.engine import Instance
    from cued.daemon.core.plan import PipelinePlan
    from cued.daemon.store import RunRow

__all__ = ["AssetSink", "asset_events", "failed_check_events"]


class AssetSink(Protocol):
    """Where asset events go (intake's ``record``)."""

    async def __call__(self, events: list[Event], /) -> object:
        """Record ``events`` durably (awaited before the run is recorded as succeeded)."""


def asset_events(plan: PipelinePlan, row: RunRow, instances: Iterable[Instance]) -> list[Event]:
    """The events of the assets ``row``'s tasks produce, from its ``instances`` as they
    ended (in the order of the plan's tasks and of each task's ``produces``)."""
    outputs: dict[str, list[Any]] = {}
    for inst in instances:
        outputs.setdefault(inst.task, []).append(inst.output)
    events = []
    for name, task in plan.tasks.items():
        for asset in task.config.produces:
            output = outputs.get(name, [None])
            events.append(
                Event(
                    source=asset_source(asset),
                    event_id=asset_event_id(asset, row.run_id),
                    data={
                        "asset": asset,
                        "run_id": row.run_id,
                        "pipeline": row.pipeline,
                        "task": name,
                        "inputs": row.inputs,
                        "output": output if task.config.map is not None else output[0],
                    },
                    meta={"producer": f"{row.pipeline}.{name}"},
                    received_at=now(),
                )
            )
    return events


def failed_check_events(
    plan: PipelinePlan, row: RunRow, instances: Iterable[Instance]
) -> list[Event]:
    """The bad versions of the assets whose producing task in ``row`` failed its data
    check (see the module's documentation)."""
    events: list[Event] = []
    for inst in instances:
        error = inst.error or ""
        task = plan.tasks.get(inst.task)
        if inst.state is not State.FAILED or not error.startswith(DataCheckFailed.PREFIX):
            continue
        events.extend(
            Event(
                source=asset_source(asset),
                event_id=failed_check_event_id(asset, row.run_id, inst.attempts),
                data={
                    "asset": asset,
                    "run_id": row.run_id,
                    "pipeline": row.pipeline,
                    "task": inst.task,
                    "inputs": row.inputs,
                    "check": "failed",
                },
                meta={"producer": f"{row.pipeline}.{inst.task}", "check": "failed"},
                received_at=now(),
                error=error,
            )
            for asset in (task.config.produces if task is not None else ())
        )
    return events
