"""A pipeline's static plan: what every run of it shares, computed once per config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cued.daemon.core import graph
from cued.daemon.core.templates import has_template

if TYPE_CHECKING:
    from cued.daemon.config import PipelineConfig, TaskConfig

__all__ = ["PipelinePlan", "TaskPlan"]


@dataclass(frozen=True)
class TaskPlan:
    """One task and what the scheduler needs to know of it without looking it up again."""

    name: str
    config: TaskConfig
    params: dict[str, Any]
    templated: bool
    """Whether ``params`` hold templates; if not, they are used as they are, unrendered."""
    upstream: frozenset[str]
    """Every task this one needs, directly or not: the ``tasks`` a template may read."""
    children: tuple[str, ...]


@dataclass(frozen=True)
class PipelinePlan:
    name: str
    config: PipelineConfig
    tasks: dict[str, TaskPlan]
    order: tuple[str, ...]
    """Tasks in dependency order."""
    roots: tuple[str, ...] = field(default=())
    produces_assets: bool = False
    """Whether a task of it ``produces`` assets: its succeeded runs hand on their events."""

    @classmethod
    def build(cls, name: str, config: PipelineConfig) -> PipelinePlan:
        deps = {t: c.needs for t, c in config.tasks.items()}
        children: dict[str, list[str]] = {t: [] for t in deps}
        for t, needs in deps.items():
            for n in needs:
                children[n].append(t)
        tasks = {
            t: TaskPlan(
                name=t,
                config=c,
                params=c.params,
                templated=has_template(c.params),
                upstream=frozenset(graph.ancestors(deps, t)),
                children=tuple(children[t]),
            )
            for t, c in config.tasks.items()
        }
        order = tuple(graph.topological_order(deps))
        roots = tuple(t for t in order if not deps[t])
        return cls(
            name=name,
            config=config,
            tasks=tasks,
            order=order,
            roots=roots,
            produces_assets=any(c.produces for c in config.tasks.values()),
        )
