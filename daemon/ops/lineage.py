"""Lineage, read from the store: which runs an event started, which assets those produced
and what the assets started in turn; and back, from an asset event to the run that
produced it and the event that started that run.

Assets leave no table of their own: a run that produces ``NAME`` and succeeds records the
asset event ``asset:NAME:RUN_ID`` (source ``asset:NAME``, both spelt by
:mod:`cued.daemon.core.assets`), and its data names the run and the task. So a run's
assets are found by id, and an asset's versions are the events of its source.

What it answers is domain data (store rows in frozen dataclasses); the faces turn it into
what they show (the API: :mod:`cued.daemon.web.schemas`).

```
event --run_ids--> run --(produces)--> asset:NAME:RUN --run_ids--> run --> ...
  ^                 |  \
  +---event_id------+   +--(a pipeline task)--> child run (parent_run_id) --> ...
                             and back: asset event --data.run_id--> run --event_id--> event
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cued.daemon.core.assets import asset_event_id, asset_of, asset_source

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from cued.daemon.config import Config
    from cued.daemon.core.plan import PipelinePlan
    from cued.daemon.store import EventRow, InstanceRow, RunRow, Store

__all__ = [
    "AssetVersion",
    "Budget",
    "LineageAsset",
    "LineageRun",
    "ProducedAsset",
    "UpstreamStep",
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


@dataclass(frozen=True, slots=True)
class ProducedAsset:
    """A version of an asset that a run produced: its event, and the task that produces
    it (as the pipeline is configured now)."""

    asset: str
    task: str
    event: EventRow


@dataclass(frozen=True, slots=True)
class LineageRun:
    """A run in a lineage graph, with its tasks and the assets it produced."""

    run: RunRow
    tasks: list[InstanceRow]
    assets: list[LineageAsset]
    children: list[LineageRun] = field(default_factory=list)
    """The child runs its ``pipeline`` tasks started, and onwards."""


@dataclass(frozen=True, slots=True)
class LineageAsset:
    """An asset version a run produced, and the runs this version started."""

    asset: str
    event: EventRow
    runs: list[LineageRun]


@dataclass(frozen=True, slots=True)
class UpstreamStep:
    """One step back from an asset event: the run that produced it (if still kept) and
    the event that started that run (if one did and it is kept)."""

    asset: str
    run: RunRow | None
    event: EventRow | None


@dataclass(frozen=True, slots=True)
class AssetVersion:
    """An asset event as a version: the run that produced it, the event that started that
    run, and the runs the version started."""

    event: EventRow
    run_id: str | None
    task: str | None
    run: RunRow | None
    started_by: EventRow | None
    runs: list[RunRow]


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
    return sorted({t.pipeline for t in config.triggers if t.source == asset_source(asset)})


async def produced(
    store: Store, plans: Mapping[str, PipelinePlan], run: RunRow
) -> list[ProducedAsset]:
    """The asset versions a run produced, by asset name (its pipeline as configured says
    which to look for)."""
    plan = plans.get(run.pipeline)
    if plan is None:
        return []
    # by asset: the last task that produces it, as the pipeline's tasks are listed
    made_by = {a: name for name, t in plan.tasks.items() for a in t.config.produces}
    ids = {a: asset_event_id(a, run.run_id) for a in sorted(made_by)}
    if not ids:
        return []
    found = {e.event_id: e for e in await store.get_events(list(ids.values()))}
    return [ProducedAsset(a, made_by[a], found[i]) for a, i in ids.items() if i in found]


async def downstream(
    store: Store,
    plans: Mapping[str, PipelinePlan],
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
        tasks = await store.get_instances(run.run_id)
        assets = [
            LineageAsset(
                p.asset,
                p.event,
                await downstream(store, plans, p.event.run_ids, budget, depth + 1),
            )
            for p in await produced(store, plans, run)
        ]
        children = [c.run_id for c in await store.children_of(run.run_id)]
        found.append(
            LineageRun(
                run, tasks, assets, await downstream(store, plans, children, budget, depth + 1)
            )
        )
    return found


async def upstream(store: Store, event: EventRow, budget: Budget) -> list[UpstreamStep]:
    """For an asset event: the run that produced it and the event that started that run,
    and on back while that is an asset event too; nearest first."""
    steps: list[UpstreamStep] = []
    seen = {event.event_id}
    while (asset := asset_of(event.source)) is not None:
        if len(steps) >= budget.depth:
            budget.truncated = True
            break
        producer_id = data_of(event).get("run_id")
        producer = await store.get_run(producer_id) if isinstance(producer_id, str) else None
        before = (
            await store.get_events([producer.event_id]) if producer and producer.event_id else []
        )
        steps.append(UpstreamStep(asset, producer, before[0] if before else None))
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
                row,
                producer_id if isinstance(producer_id, str) else None,
                task if isinstance(task, str) else None,
                producer,
                started_by,
                [runs[r] for r in row.run_ids if r in runs],
            )
        )
    return versions
