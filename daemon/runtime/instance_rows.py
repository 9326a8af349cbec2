"""Task instances between the engine and the store: the store knows rows, not the engine's
:class:`~cued.daemon.core.engine.Instance`, so the runner translates both ways here; and a
run's row as its state changes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cued.daemon.core.engine import Instance, State
from cued.daemon.core.ids import now
from cued.daemon.store import InstanceRow, RunRow

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["instance_row", "instances_of", "run_row"]


def instance_row(run_id: str, inst: Instance) -> InstanceRow:
    """The store's row of the engine's instance ``inst`` of the run ``run_id``, as of now."""
    return InstanceRow(
        run_id,
        inst.key,
        inst.task,
        inst.index,
        inst.state.value,
        inst.attempts,
        inst.error,
        now(),
        inst.retry_base,
    )


def instances_of(rows: Iterable[InstanceRow], outputs: Mapping[str, Any]) -> dict[str, Instance]:
    """The engine's instances, by key, of a recorded run: its instance ``rows`` and the
    ``outputs`` of those that succeeded, by key (what a resumed run starts from)."""
    return {
        i.key: Instance(
            i.task,
            i.map_index,
            State(i.state),
            i.attempts,
            outputs.get(i.key),
            i.error,
            i.retry_base,
        )
        for i in rows
    }


def run_row(
    row: RunRow,
    state: str,
    started_at: float | None,
    ended_at: float | None = None,
    error: str | None = None,
) -> RunRow:
    """``row`` in ``state``: built, not ``dataclasses.replace``d (twice per run)."""
    return RunRow(
        row.run_id,
        row.pipeline,
        state,
        row.inputs,
        row.created_at,
        started_at,
        ended_at,
        error,
        row.event_id,
        row.traceparent,
        row.config_version,
        row.flow_key,
        row.key_limit,
        row.priority,
        row.parent_run_id,
        row.parent_key,
        row.parent_attempt,
    )
