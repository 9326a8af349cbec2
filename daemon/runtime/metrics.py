"""Prometheus metrics of the daemon, in a registry of its own (not prometheus-client's
global one: two daemons in one process, as in tests, must not clash).

Counters follow the store: every commit hands its rows to :meth:`Metrics.committed`, so
what is counted is what is durable. A row that changed twice within one commit (group
commit keeps the last) is counted in its last state only: the counters of transitions
count committed states. Gauges are read when scraped from what the runner shows of its
load (:class:`Observed`): its slots and its backlog.

====================================  ========================================================
metric                                what
====================================  ========================================================
cued_events_total{source,status}      events recorded (matched, unmatched, invalid)
cued_runs_total{pipeline,state}       runs committed in each state (queued, running, ...)
cued_tasks_total{pipeline,state}      task instances committed in each state
cued_task_duration_seconds            attempts that ended, by pipeline and task kind
cued_store_commit_seconds             how long each group commit took
cued_runs_running / cued_runs_queued  runs holding a slot now / waiting for one (backlog)
cued_tasks_running / cued_tasks_queued  attempts running now / waiting for a task slot
cued_backlog_depth                    runs waiting in the backlog
cued_backpressure                     1 while the backlog is saturated (sources pause)
====================================  ========================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from cued.daemon.store import AttemptRow, EventRow, InstanceRow, RunRow

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from prometheus_client.metrics_core import Metric

    from cued.daemon.core.plan import PipelinePlan
    from cued.daemon.runtime.backlog import Backlog
    from cued.daemon.runtime.slots import Slots
    from cued.daemon.store import Row

__all__ = ["CONTENT_TYPE", "Metrics", "Observed"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_ENDED = frozenset({"succeeded", "failed", "cancelled"})
_PIPELINES_KEPT = 10_000  # run id -> pipeline, for rows that do not name their pipeline


class Observed(Protocol):
    """What the metrics read of the runner (a port: the runner is one)."""

    @property
    def plans(self) -> Mapping[str, PipelinePlan]:
        """The pipelines, for the task kinds of attempts."""

    @property
    def slots(self) -> Slots:
        """Runs and attempts running, and attempts waiting for a slot."""

    @property
    def backlog(self) -> Backlog[Any]:
        """Runs waiting for a slot."""


class Metrics:
    """The daemon's metrics; register :meth:`committed` with ``store.on_commit``.

    :param runner: read for the gauges, and for task kinds
    """

    def __init__(self, runner: Observed) -> None:
        self._runner = runner
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "cued_events",
            "Events recorded, by source and status",
            ["source", "status"],
            registry=self.registry,
        )
        self.runs = Counter(
            "cued_runs",
            "Run state changes committed, by pipeline and the state entered",
            ["pipeline", "state"],
            registry=self.registry,
        )
        self.tasks = Counter(
            "cued_tasks",
            "Task instance state changes committed, by pipeline and the state entered",
            ["pipeline", "state"],
            registry=self.registry,
        )
        self.task_duration = Histogram(
            "cued_task_duration_seconds",
            "Duration of task attempts that ended, by pipeline and task kind",
            ["pipeline", "kind"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.commit = Histogram(
            "cued_store_commit_seconds",
            "Duration of the store's group commits",
            buckets=_COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_RunnerGauges(runner))
        self._pipelines: dict[str, str] = {}
        """Run id to pipeline, for rows that do not name their pipeline: every change of
        a run's tasks commits after (or with) a row of the run itself (queued, running, or
        requeued by a rerun or a decision); the last written kept."""
        self._children: dict[tuple[int, tuple[str, str]], Any] = {}
        """Each metric's child by labels, bound once (labels are few: pipelines, states,
        sources, kinds)."""

    def committed(self, seconds: float, rows: Sequence[Row]) -> None:
        """Count what a commit made durable (a ``store.on_commit`` listener).

        The rows of a commit are counted by labels first, and each counter is moved once
        per labels, through its child bound once (not ``labels()`` per row)."""
        self.commit.observe(seconds)
        runs: dict[tuple[str, str], int] = {}
        tasks: dict[tuple[str, str], int] = {}
        events: dict[tuple[str, str], int] = {}
        pipelines = self._pipelines
        for row in rows:  # runs come first: their pipelines name the rows that follow
            # rows are records, never subclassed: their type is looked at, not their bases
            if type(row) is RunRow:
                # the pipeline of a run whose row was written last moves to the end
                pipelines.pop(row.run_id, None)
                pipelines[row.run_id] = row.pipeline
                key = (row.pipeline, row.state)
                runs[key] = runs.get(key, 0) + 1
            elif type(row) is InstanceRow:
                key = (pipelines.get(row.run_id, "unknown"), row.state)
                tasks[key] = tasks.get(key, 0) + 1
            elif type(row) is AttemptRow:
                if row.ended_at is not None and row.state in _ENDED:
                    pipeline = pipelines.get(row.run_id, "unknown")
                    self._child(
                        self.task_duration, (pipeline, self._kind(pipeline, row.key))
                    ).observe(max(0.0, row.ended_at - row.started_at))
            elif type(row) is EventRow:
                key = (row.source, row.status)
                events[key] = events.get(key, 0) + 1
        while len(pipelines) > _PIPELINES_KEPT:  # the oldest written go first
            del pipelines[next(iter(pipelines))]
        for counter, counts in ((self.runs, runs), (self.tasks, tasks), (self.events, events)):
            for labels, n in counts.items():
                self._child(counter, labels).inc(n)

    def _child(self, metric: Any, labels: tuple[str, str]) -> Any:
        child = self._children.get((id(metric), labels))
        if child is None:
            child = self._children[id(metric), labels] = metric.labels(*labels)
        return child

    def render(self) -> bytes:
        """The metrics in Prometheus' text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def _kind(self, pipeline: str, key: str) -> str:
        plan = self._runner.plans.get(pipeline)
        task = plan.tasks.get(key.partition("[")[0]) if plan is not None else None
        return task.config.kind if task is not None else "unknown"


class _RunnerGauges:
    """What runs and waits now, read from the runner at each scrape."""

    def __init__(self, runner: Observed) -> None:
        self._runner = runner

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        slots, backlog = self._runner.slots, self._runner.backlog
        for name, doc, value in (
            ("cued_runs_running", "Runs holding a slot now", slots.active_runs),
            ("cued_runs_queued", "Runs waiting for a slot (the backlog)", backlog.depth),
            ("cued_tasks_running", "Task attempts running now", slots.running_tasks),
            ("cued_tasks_queued", "Task attempts waiting for a slot", slots.tasks_waiting),
            ("cued_backlog_depth", "Runs waiting in the backlog", backlog.depth),
            (
                "cued_backpressure",
                "1 while the backlog is saturated and sources pause, else 0",
                int(backlog.saturated),
            ),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
