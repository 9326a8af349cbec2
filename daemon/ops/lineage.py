"""Lineage, read from the store: which runs an event started, which assets those produced
and what the assets started in turn; and back, from an asset event to the run that
produced it and the event that started that run.

Assets leave no table of their own: a run that produces ``NAME`` and succeeds records the
asset event ``asset:NAME:RUN_ID`` (source ``asset:NAME``), and its data names the run and
the task. So a run's assets are found by id, and an asset's versions are the events of
its source.

```
event --run_ids--> run --(produces)--> asset:NAME:RUN --run_ids--> run --> ...
  ^                 |
  +---event_id------+        and back: asset event --data.run_id--> run --event_id--> event
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cued.daemon.web.schemas import (
    AssetVersion,
    EventSummary,
    LineageAsset,
    LineageRun,
    Run,
    TaskBrief,
    UpstreamStep,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cued.daemon.config import Config
    from cued.daemon.core.plan import PipelinePlan
    from cued.daemon.store import EventRow, RunRow, Store

__all__ = [
    "Budget",
    "asset_versions",
    "consumers",
    "data_of",
    "downstream",
    "in_order",
    "produced",
    "producers",
    "upstream",
]

MAX_DEPTH = 8
MAX_RUNS = 200


@dataclass
class Budget:
    """How much of a lineage graph may still be walked; ``truncated`` once it ran out."""

    runs: int = MAX_RUNS
    depth: int = MAX_DEPTH
    truncated: bool = False
    seen: set[str] = field(default_factory=set)


def data_of(row: EventRow) -> dict[str, Any]:
    return row.data if isinstance(row.data, dict) else {}


def in_order(rows: Sequence[RunRow], ids: Sequence[str]) -> list[RunRow]:
    """``rows`` in the order of ``ids`` (those found)."""
    by_id = {r.run_id: r for r in rows}
    return [by_id[i] for i in ids if i in by_id]


def producers(config: Config) -> dict[str, list[str]]:
    """For each asset, ``pipeline.task`` of the tasks that produce it."""
    found: dict[str, list[str]] = {}
    for pipeline, p in config.pipelines.items():
        for task, t in p.tasks.items():
            for asset in t.produces:
                found.setdefault(asset, []).append(f"{pipeline}.{task}")
    return found


def consumers(config: Config, asset: str) -> list[str]:
    """The pipelines that the asset's events start."""
    return sorted({t.pipeline for t in config.triggers if t.source == f"asset:{asset}"})


async def produced(
    store: Store, plans: dict[str, PipelinePlan], run: RunRow
) -> list[tuple[str, EventRow]]:
    """The asset events a run produced (its pipeline as configured says which to look for)."""
    plan = plans.get(run.pipeline)
    assets = sorted({a for t in plan.tasks.values() for a in t.config.produces}) if plan else []
    if not assets:
        return []
    ids = {a: f"asset:{a}:{run.run_id}" for a in assets}
    found = {e.event_id: e for e in await store.get_events(list(ids.values()))}
    return [(a, found[i]) for a, i in ids.items() if i in found]


async def downstream(
    store: Store,
    plans: dict[str, PipelinePlan],
    run_ids: Sequence[str],
    budget: Budget,
    depth: int = 0,
) -> list[LineageRun]:
    """The runs ``run_ids``, each with its tasks and the assets it produced, and the runs
    those started, and so on, within ``budget``."""
    if not run_ids:
        return []
    if depth >= budget.depth:
        budget.truncated = True
        return []
    found = []
    for run in in_order(await store.get_runs(run_ids), run_ids):
        if run.run_id in budget.seen:
            continue
        if budget.runs <= 0:
            budget.truncated = True
            break
        budget.runs -= 1
        budget.seen.add(run.run_id)
        tasks = [
            TaskBrief(key=i.key, task=i.task, state=i.state)
            for i in await store.get_instances(run.run_id)
        ]
        assets = [
            LineageAsset(
                asset=asset,
                event=EventSummary.of(event),
                runs=await downstream(store, plans, event.run_ids, budget, depth + 1),
            )
            for asset, event in await produced(store, plans, run)
        ]
        found.append(LineageRun(run=Run.from_row(run), tasks=tasks, assets=assets))
    return found


async def upstream(store: Store, event: EventRow, budget: Budget) -> list[UpstreamStep]:
    """For an asset event: the run that produced it and the event that started that run,
    and on back while that is an asset event too; nearest first."""
    steps: list[UpstreamStep] = []
    seen = {event.event_id}
    while event.source.startswith("asset:"):
        if len(steps) >= budget.depth:
            budget.truncated = True
            break
        producer_id = data_of(event).get("run_id")
        producer = await store.get_run(producer_id) if isinstance(producer_id, str) else None
        before = (
            await store.get_events([producer.event_id]) if producer and producer.event_id else []
        )
        steps.append(
            UpstreamStep(
                asset=event.source.removeprefix("asset:"),
                run=Run.from_row(producer) if producer else None,
                event=EventSummary.of(before[0]) if before else None,
            )
        )
        if not before or before[0].event_id in seen:
            break
        event = before[0]
        seen.add(event.event_id)
    return steps


async def asset_versions(store: Store, rows: Sequence[EventRow]) -> list[AssetVersion]:
    """Asset events as versions: each with the run that produced it, the event that started
    that run, and the runs the version started."""
    made_by = {r.event_id: data_of(r).get("run_id") for r in rows}
    wanted = {p for p in made_by.values() if isinstance(p, str)}
    wanted |= {run_id for r in rows for run_id in r.run_ids}
    runs = {r.run_id: r for r in await store.get_runs(sorted(wanted))}
    starters = sorted({r.event_id for r in runs.values() if r.event_id})
    events = {e.event_id: e for e in await store.get_events(starters)}
    versions = []
    for row in rows:
        producer_id = made_by[row.event_id]
        producer = runs.get(producer_id) if isinstance(producer_id, str) else None
        started_by = events.get(producer.event_id) if producer and producer.event_id else None
        task = data_of(row).get("task")
        versions.append(
            AssetVersion(
                event_id=row.event_id,
                produced_at=row.received_at,
                run_id=producer_id if isinstance(producer_id, str) else None,
                task=task if isinstance(task, str) else None,
                run=Run.from_row(producer) if producer else None,
                started_by=EventSummary.of(started_by) if started_by else None,
                runs=[Run.from_row(runs[r]) for r in row.run_ids if r in runs],
            )
        )
    return versions
