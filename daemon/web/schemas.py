"""What the API takes and answers, as pydantic models: the OpenAPI document is made from
them, and the live stream's messages use the same shapes.

Times are seconds since the epoch (floats), as stored. Responses are frozen models; request
bodies also forbid unknown keys, so a typo is an error rather than silently ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from cued.daemon.ops.queries import waits_for

if TYPE_CHECKING:
    from cued.daemon.config import PipelineConfig, TriggerConfig
    from cued.daemon.ops import lineage, queries
    from cued.daemon.ops.cursors import Page
    from cued.daemon.ops.status import DaemonStatus
    from cued.daemon.runtime.replay import ReplayReport
    from cued.daemon.store import (
        ApprovalRow,
        AttemptRow,
        DecisionRow,
        EventRow,
        InstanceRow,
        PauseRow,
        RunRow,
        WaitRow,
    )

__all__ = [
    "Approval",
    "ApprovalUpdate",
    "Asset",
    "AssetDetail",
    "AssetRef",
    "AssetVersion",
    "AssetVersionBrief",
    "Attempt",
    "DecideBody",
    "Decision",
    "DecisionUpdate",
    "ErrorDetail",
    "ErrorResponse",
    "Event",
    "EventDetail",
    "EventLineage",
    "EventPage",
    "EventSummary",
    "Health",
    "LastReload",
    "LineageAsset",
    "LineageRun",
    "LogLine",
    "LogPage",
    "LogUpdate",
    "LoginBody",
    "Node",
    "Pipeline",
    "PruneCutoffs",
    "PruneReport",
    "RetryBody",
    "Run",
    "RunDetail",
    "RunPage",
    "RunUpdate",
    "Session",
    "SessionCreated",
    "SourceState",
    "Status",
    "TaskBrief",
    "TaskInstance",
    "TaskSpec",
    "TaskUpdate",
    "TriggerBody",
    "TriggerSpec",
    "UpstreamStep",
    "Wait",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)

    @classmethod
    def from_row(cls, row: object) -> Self:
        """The model of a store row whose fields it shares by name."""
        return cls.model_validate(row)


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- errors ------------------------------------------------------------------------------


class ErrorDetail(_Model):
    code: str = Field(examples=["not_found"])
    message: str


class ErrorResponse(_Model):
    """Every error: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


# -- pipelines ---------------------------------------------------------------------------


class TaskSpec(_Model):
    """A task as configured (its kind's parameters are left out: they may hold secrets)."""

    name: str
    kind: str
    needs: list[str]
    produces: list[str]
    map: str | None
    trigger_rule: str
    retries: int
    timeout_s: float | None
    pool: str | None
    deadline_s: float | None


class TriggerSpec(_Model):
    """A trigger that starts the pipeline."""

    name: str
    source: str
    when: str | None
    dedupe: str | None

    @classmethod
    def of(cls, trigger: TriggerConfig) -> TriggerSpec:
        return cls(
            name=trigger.ref, source=trigger.source, when=trigger.when, dedupe=trigger.dedupe
        )


class Pipeline(_Model):
    name: str
    inputs: dict[str, Any] = Field(description="declared inputs with their defaults")
    max_active_runs: int
    deadline_s: float | None
    tasks: list[TaskSpec]
    triggers: list[TriggerSpec]
    when_paused: Literal["queue", "skip"] = Field(
        description="while paused, new runs wait (queue) or are recorded as skipped (skip)"
    )
    paused: bool = False
    paused_at: float | None = None
    paused_by: str | None = None
    started: int | None = Field(
        None, description="after a resume: how many runs that had waited were started"
    )

    @classmethod
    def of(
        cls,
        name: str,
        config: PipelineConfig,
        triggers: list[TriggerConfig],
        pause: PauseRow | None = None,
        *,
        started: int | None = None,
    ) -> Pipeline:
        return cls(
            name=name,
            inputs=config.inputs,
            max_active_runs=config.max_active_runs,
            deadline_s=config.deadline,
            when_paused=config.when_paused,
            paused=pause is not None,
            paused_at=pause.paused_at if pause else None,
            paused_by=pause.paused_by if pause else None,
            started=started,
            tasks=[
                TaskSpec(
                    name=task_name,
                    kind=t.kind,
                    needs=list(t.needs),
                    produces=list(t.produces),
                    map=t.map,
                    trigger_rule=t.trigger_rule,
                    retries=t.retries,
                    timeout_s=t.timeout,
                    pool=t.pool,
                    deadline_s=t.deadline,
                )
                for task_name, t in config.tasks.items()
            ],
            triggers=[TriggerSpec.of(t) for t in triggers if t.pipeline == name],
        )


# -- runs --------------------------------------------------------------------------------


class Run(_Model):
    run_id: str = Field(description="sorts by creation time")
    pipeline: str
    state: str = Field(
        description="queued, running, waiting (for a decision), succeeded, failed, cancelled, "
        "skipped (its pipeline was paused)"
    )
    inputs: dict[str, Any]
    created_at: float
    started_at: float | None
    ended_at: float | None
    error: str | None
    event_id: str | None = Field(description="the event that started it, if one did")
    config_version: int | None = Field(
        None,
        description="the configuration version it started under (GET /api/v1/config/versions/N)",
    )
    flow_key: str | None = Field(
        None, description="the flow-control key its trigger gave it (the trigger's `key`)"
    )
    key_limit: int | None = Field(
        None, description="runs of its key (in its pipeline) that may be active at once"
    )
    priority: int = Field(5, description="0-9: the higher starts first when runs wait for a slot")
    parent_run_id: str | None = Field(
        None, description="the run whose `pipeline` task started this one (a child run)"
    )
    parent_key: str | None = Field(None, description="that task's instance in the parent")
    parent_attempt: int | None = Field(None, description="that instance's attempt")


class RunPage(_Model):
    items: list[Run]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page"
    )

    @classmethod
    def of(cls, page: Page[RunRow]) -> RunPage:
        return cls(items=[Run.from_row(r) for r in page.items], next_cursor=page.next_cursor)


class Attempt(_Model):
    attempt: int
    state: str = Field(
        description="running, waiting, succeeded, failed, cancelled, interrupted (by a stop)"
    )
    started_at: float
    ended_at: float | None
    error: str | None
    output: Any = None
    cost: float | None = Field(description="what an AI step spent in this attempt")
    usage: dict[str, Any] | None = Field(description="token usage an AI step reported")


class TaskInstance(_Model):
    key: str = Field(description="the task's name, or name[i] for an instance of a mapped task")
    task: str
    map_index: int | None
    state: str
    error: str | None
    updated_at: float
    attempts: list[Attempt] = Field(description="every attempt of every rerun, oldest first")

    @classmethod
    def of(cls, row: InstanceRow, attempts: list[AttemptRow]) -> TaskInstance:
        return cls(
            key=row.key,
            task=row.task,
            map_index=row.map_index,
            state=row.state,
            error=row.error,
            updated_at=row.updated_at,
            attempts=[Attempt.from_row(a) for a in sorted(attempts, key=lambda a: a.attempt)],
        )


class Decision(_Model):
    attempt: int
    who: str
    decision: str = Field(description="approve or reject")
    comment: str | None
    payload: Any = None
    decided_at: float


class Node(_Model):
    """A daemon sharing the state: one on SQLite; on PostgreSQL each that joined, with
    its lease (renewed by the database's clock) and what it owns."""

    node: str
    generation: int = Field(description="its incarnation: a new one at each start")
    alive: bool = Field(description="false once it stopped, or was found gone")
    expired: bool = Field(description="its lease lapsed: the other nodes adopt its runs")
    host: str
    pid: int
    lease_s: float = Field(description="0 on SQLite: its one node holds no lease")
    started_at: float
    renewed_at: float
    expires_at: float
    runs: int = Field(description="the unfinished runs it owns")


class Approval(_Model):
    """An approval gate: what it asks, and who decided what."""

    run_id: str
    key: str
    attempt: int
    message: str
    approvers: list[str]
    min_approvals: int
    on_timeout: str
    payload: Any = None
    requested_at: float
    deadline_at: float | None
    state: str = Field(description="waiting, approved, rejected, timed_out, cancelled")
    decided_at: float | None
    decisions: list[Decision] = Field(description="of the gate's current attempt")

    @classmethod
    def of(cls, row: ApprovalRow, decisions: list[DecisionRow]) -> Approval:
        return cls(
            run_id=row.run_id,
            key=row.key,
            attempt=row.attempt,
            message=row.message,
            approvers=list(row.approvers),
            min_approvals=row.min_approvals,
            on_timeout=row.on_timeout,
            payload=row.payload,
            requested_at=row.requested_at,
            deadline_at=row.deadline_at,
            state=row.state,
            decided_at=row.decided_at,
            decisions=[
                Decision.from_row(d)
                for d in decisions
                if d.run_id == row.run_id and d.key == row.key and d.attempt == row.attempt
            ],
        )


# -- events ------------------------------------------------------------------------------


class EventSummary(_Model):
    event_id: str
    source: str = Field(description="a source's name, or asset:NAME")
    received_at: float
    status: str = Field(
        description="matched, unmatched, invalid; held (flow control holds it: see `holds` "
        "of the event) or dropped (a throttle dropped its run)"
    )
    run_ids: list[str] = Field(description="the runs it started, or that it was merged into")
    error: str | None = Field(
        description="what went wrong, and notes: which trigger and key hold it and until "
        "when, the run it was merged into, or why it was dropped"
    )

    @classmethod
    def of(cls, row: EventRow) -> EventSummary:
        return cls(
            event_id=row.event_id,
            source=row.source,
            received_at=row.received_at,
            status=row.status,
            run_ids=list(row.run_ids),
            error=row.error,
        )


class Event(EventSummary):
    data: Any = None
    meta: dict[str, Any] = Field(
        description="where it came from: headers, topic/partition/offset, path, tick"
    )

    @classmethod
    def of(cls, row: EventRow) -> Event:
        return cls(**EventSummary.of(row).model_dump(), data=row.data, meta=row.meta)


class EventPage(_Model):
    items: list[EventSummary]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page"
    )

    @classmethod
    def of(cls, page: Page[EventRow]) -> EventPage:
        return cls(items=[EventSummary.of(r) for r in page.items], next_cursor=page.next_cursor)


class EventHold(_Model):
    """Flow control (debounce, throttle, batch) holds the event in a window."""

    trigger: str
    key: str = Field(description="the flow-control key the trigger's `key` gave")
    kind: Literal["debounce", "batch", "delay"]
    window: str
    phase: Literal["open", "closed", "slotted"]
    seq: int = Field(description="the event's place in the window")
    held: int = Field(description="events in the window so far")
    due_at: float | None = Field(description="when the window is released")


class EventDetail(Event):
    runs: list[Run] = Field(description="the runs it started")
    holds: list[EventHold] = Field(
        description="where flow control holds it now (why it waits: which trigger, key, "
        "window or batch, until when); its notes in `error` say what became of it"
    )

    @classmethod
    def of_detail(cls, detail: queries.EventDetail) -> EventDetail:
        return cls(
            **Event.of(detail.event).model_dump(),
            runs=[Run.from_row(r) for r in detail.runs],
            holds=[EventHold.from_row(h) for h in detail.holds],
        )


class AssetRef(_Model):
    """An asset a run produced: its asset event, and the runs that event started."""

    asset: str
    event_id: str
    runs: list[str]


class Wait(_Model):
    """A task instance parked until an event comes (``wait_event``) or a moment (``sleep``
    with ``until``)."""

    key: str
    attempt: int
    kind: str = Field(description="event or timer")
    waits_for: str = Field(description="what it waits for, in words")
    source: str | None
    match: str | None
    until: float | None = Field(description="its deadline (timeout), or a timer's moment")
    on_timeout: str
    opened_at: float
    state: str = Field(description="waiting, matched, expired, cancelled")
    event_id: str | None = Field(description="the event that woke it")
    settled_at: float | None

    @classmethod
    def of(cls, row: WaitRow) -> Wait:
        return cls(
            key=row.key,
            attempt=row.attempt,
            kind=row.kind,
            waits_for=waits_for(row),
            source=row.source,
            match=row.match,
            until=row.deadline_at,
            on_timeout=row.on_timeout,
            opened_at=row.opened_at,
            state=row.state,
            event_id=row.event_id,
            settled_at=row.settled_at,
        )


class RunDetail(Run):
    tasks: list[TaskInstance]
    approvals: list[Approval]
    waits: list[Wait] = Field(description="its waits for an event or a moment")
    event: EventSummary | None = Field(description="the event that started the run")
    assets: list[AssetRef] = Field(description="the assets the run produced")
    waiting_for: str | None = Field(
        None,
        description="why a queued run has not started: `waiting for key 'K' (limit 1)`, "
        "`waiting for a run slot (max_active_runs 2)`",
    )
    children: list[Run] = Field(
        default_factory=list, description="the child runs its `pipeline` tasks started"
    )

    @classmethod
    def of(cls, detail: queries.RunDetail) -> RunDetail:
        return cls(
            waiting_for=detail.waiting_for,
            children=[Run.from_row(c) for c in detail.children],
            **Run.from_row(detail.run).model_dump(),
            tasks=[TaskInstance.of(i, detail.attempts_of(i.key)) for i in detail.instances],
            approvals=[Approval.of(g.gate, g.decisions) for g in detail.gates],
            waits=[Wait.of(w) for w in detail.waits],
            event=EventSummary.of(detail.event) if detail.event else None,
            assets=[
                AssetRef(asset=p.asset, event_id=p.event.event_id, runs=list(p.event.run_ids))
                for p in detail.assets
            ],
        )


class LogLine(_Model):
    seq: int = Field(description="the line's place among the run's lines")
    key: str = Field(description="the task instance that wrote it")
    attempt: int
    at: float
    stream: str = Field(
        description="stdout, stderr (a program's), log (a python task's records), http, "
        "llm, cued (the daemon's note of dropped lines), or a plugin's own"
    )
    line: str


class LogPage(_Model):
    run_id: str
    state: str = Field(description="the run's state before the lines were read")
    finished: bool = Field(description="the run is finished: no line follows these")
    lines: list[LogLine]
    after: int = Field(description="pass as `after` for the lines that follow")

    @classmethod
    def of(cls, page: queries.LogPage) -> LogPage:
        return cls(
            run_id=page.run.run_id,
            state=page.run.state,
            finished=page.finished,
            lines=[
                LogLine(
                    seq=r.seq, key=r.key, attempt=r.attempt, at=r.at, stream=r.stream, line=r.line
                )
                for r in page.lines
            ],
            after=page.after,
        )


# -- lineage -----------------------------------------------------------------------------


class TaskBrief(_Model):
    key: str
    task: str
    state: str


class LineageRun(_Model):
    """A run, its tasks, and the assets it produced with what they started in turn."""

    run: Run
    tasks: list[TaskBrief]
    assets: list[LineageAsset]
    children: list[LineageRun] = Field(
        default_factory=list, description="the child runs its `pipeline` tasks started"
    )

    @classmethod
    def of(cls, found: lineage.LineageRun) -> LineageRun:
        return cls(
            run=Run.from_row(found.run),
            tasks=[TaskBrief(key=i.key, task=i.task, state=i.state) for i in found.tasks],
            assets=[LineageAsset.of(a) for a in found.assets],
            children=[LineageRun.of(c) for c in found.children],
        )


class LineageAsset(_Model):
    asset: str
    event: EventSummary
    runs: list[LineageRun] = Field(description="the runs this version of the asset started")

    @classmethod
    def of(cls, found: lineage.LineageAsset) -> LineageAsset:
        return cls(
            asset=found.asset,
            event=EventSummary.of(found.event),
            runs=[LineageRun.of(r) for r in found.runs],
        )


class UpstreamStep(_Model):
    """One step back: the run that produced an asset event, and the event that started
    that run."""

    asset: str
    run: Run | None
    event: EventSummary | None

    @classmethod
    def of(cls, step: lineage.UpstreamStep) -> UpstreamStep:
        return cls(
            asset=step.asset,
            run=Run.from_row(step.run) if step.run else None,
            event=EventSummary.of(step.event) if step.event else None,
        )


class EventLineage(_Model):
    event: EventSummary
    upstream: list[UpstreamStep] = Field(
        description="for an asset event: the run that produced it, the event that started "
        "that run, and so on back, nearest first"
    )
    runs: list[LineageRun] = Field(description="the runs the event started, and onwards")
    truncated: bool = Field(description="the graph was cut at its depth or size limit")

    @classmethod
    def of(cls, found: queries.EventLineage) -> EventLineage:
        return cls(
            event=EventSummary.of(found.event),
            upstream=[UpstreamStep.of(s) for s in found.upstream],
            runs=[LineageRun.of(r) for r in found.runs],
            truncated=found.truncated,
        )


# -- assets ------------------------------------------------------------------------------


class AssetVersionBrief(_Model):
    event_id: str
    run_id: str | None
    produced_at: float
    bad: bool = Field(False, description="its producing task failed its data check")


class Asset(_Model):
    name: str
    producers: list[str] = Field(description="pipeline.task of the tasks that produce it")
    consumers: list[str] = Field(description="pipelines that asset:NAME triggers start")
    versions: int
    latest: AssetVersionBrief | None

    @classmethod
    def of(cls, found: queries.AssetSummary) -> Asset:
        latest = found.latest
        return cls(
            name=found.name,
            producers=found.producers,
            consumers=found.consumers,
            versions=found.versions,
            latest=None
            if latest is None
            else AssetVersionBrief(
                event_id=latest.event_id,
                run_id=found.latest_run_id,
                produced_at=latest.received_at,
                bad=latest.status == "invalid",
            ),
        )


class AssetVersion(_Model):
    """One version: the asset event, the run that produced it (and the event that started
    that run), and the runs the version started."""

    event_id: str
    produced_at: float
    run_id: str | None
    task: str | None
    bad: bool = Field(
        False, description="its producing task failed its data check (error says how)"
    )
    error: str | None = None
    run: Run | None
    started_by: EventSummary | None
    runs: list[Run]

    @classmethod
    def of(cls, version: lineage.AssetVersion) -> AssetVersion:
        return cls(
            event_id=version.event.event_id,
            produced_at=version.event.received_at,
            run_id=version.run_id,
            task=version.task,
            bad=version.event.status == "invalid",
            error=version.event.error,
            run=Run.from_row(version.run) if version.run else None,
            started_by=EventSummary.of(version.started_by) if version.started_by else None,
            runs=[Run.from_row(r) for r in version.runs],
        )


class AssetDetail(_Model):
    name: str
    producers: list[str]
    consumers: list[str]
    versions: list[AssetVersion] = Field(description="newest first")
    next_cursor: str | None

    @classmethod
    def of(cls, found: queries.AssetDetail) -> AssetDetail:
        return cls(
            name=found.name,
            producers=found.producers,
            consumers=found.consumers,
            versions=[AssetVersion.of(v) for v in found.versions.items],
            next_cursor=found.versions.next_cursor,
        )


# -- requests ----------------------------------------------------------------------------


class TriggerBody(_Body):
    inputs: dict[str, Any] = Field(default_factory=dict)


class RetryBody(_Body):
    tasks: list[str] = Field(
        default_factory=list,
        description="tasks to run again; none: those that failed (and what follows them)",
    )
    downstream: bool = Field(True, description="also rerun what follows the named tasks")


class DecideBody(_Body):
    comment: str | None = None
    payload: Any = Field(None, description="the proposal as edited; absent: as proposed")
    who: str | None = Field(
        None,
        description="none, or the caller's own name (a token's user; on the control socket "
        "the OS user): a decision is recorded under whoever makes it, and another name is "
        "refused with 403",
    )


class LoginBody(_Body):
    token: str


# -- session, health ---------------------------------------------------------------------


class Session(_Model):
    name: str
    roles: list[str]
    groups: list[str]
    via: str = Field(description="token, cookie, open (no users configured) or local")


class SessionCreated(Session):
    csrf_token: str = Field(
        description="also in the cookie cued_csrf: send it as X-CSRF-Token with every "
        "request that changes state"
    )


class Health(_Model):
    status: str
    checks: dict[str, str]


class SourceState(_Model):
    name: str
    kind: str
    state: Literal["starting", "taking events", "held back", "stopped", "failed"] = Field(
        description="held back: the backlog is saturated and the source pauses"
    )


class LastReload(_Model):
    at: float
    outcome: str
    error: str | None = None


class Status(_Model):
    """How the running daemon is (``cued status``)."""

    version: str = Field(description="cued's version")
    started_at: float = Field(description="when the daemon started (Unix time)")
    uptime_s: float
    sources: list[SourceState]
    backlog: int = Field(description="runs waiting for a slot")
    saturated: bool = Field(description="the backlog is past its high water: sources pause")
    active_runs: int = Field(description="runs holding a slot now")
    config_version: int | None = Field(
        None, description="the version of the configuration it runs (`cued config history`)"
    )
    last_reload: LastReload | None = Field(None, description="none before the first reload")

    @classmethod
    def of(cls, status: DaemonStatus) -> Self:
        reload = status.last_reload
        return cls(
            version=status.version,
            started_at=status.started_at,
            uptime_s=round(status.uptime_s, 3),
            sources=[SourceState(name=s.name, kind=s.kind, state=s.state) for s in status.sources],
            backlog=status.backlog,
            saturated=status.saturated,
            active_runs=status.active_runs,
            config_version=status.config_version,
            last_reload=None
            if reload is None
            else LastReload(at=reload.at, outcome=reload.outcome, error=reload.error),
        )


# -- retention ---------------------------------------------------------------------------


class PruneCutoffs(_Model):
    """What is old enough to go: each a time, ``null`` when that kind is kept for ever."""

    runs: float | None = Field(description="finished runs that ended before this")
    events: float | None = Field(description="events received before this")
    alerts: float | None = Field(description="alerts raised before this, sent or given up")
    dedupe_keys: dict[str, float] = Field(description="by trigger: keys seen before this")
    dedupe_keys_other: float | None = Field(
        description="keys of triggers no longer configured, seen before this"
    )


class ReplayBody(_Body):
    """Which stored events to match again against today's triggers: one by id, or those
    of a source received in ``[since, until)`` with a status."""

    event_id: str | None = None
    source: str | None = None
    since: str | None = Field(None, description="ISO 8601 (no offset: UTC), 'now' or '-1h'")
    until: str | None = Field(None, description="the same; the span ends before it")
    status: Literal["matched", "unmatched", "invalid", "held", "dropped"] | None = None
    trigger: str | None = Field(
        None, description="only this trigger: its name, SOURCE->PIPELINE or number from 1"
    )
    force: bool = Field(False, description="start runs again where they ran for the event")


class EventReplayed(_Model):
    event_id: str
    source: str
    outcome: Literal["started", "held", "duplicate", "unmatched", "invalid", "error"]
    run_ids: list[str]
    skipped: list[str]
    errors: list[str]


class ReplayResult(_Model):
    """What a replay did: events tried, runs started, skipped as duplicates, no match."""

    tried: int
    runs_started: int
    held: int
    duplicates: int
    unmatched: int
    invalid: int
    errors: int
    events: list[EventReplayed]

    @classmethod
    def of(cls, report: ReplayReport) -> ReplayResult:
        return cls(
            tried=report.tried,
            runs_started=report.runs_started,
            held=report.count("held"),
            duplicates=report.count("duplicate"),
            unmatched=report.count("unmatched"),
            invalid=report.count("invalid"),
            errors=report.count("error"),
            events=[EventReplayed.model_validate(e) for e in report.events],
        )


class BackfillBody(_Body):
    """A span of a source's past to fire again (a schedule's ticks in ``[from, to)``)."""

    from_: str = Field(alias="from", description="ISO 8601 (no offset: UTC), 'now' or '-1h'")
    to: str = Field(description="the same; the span ends before it, and not after now")
    concurrency: int = Field(
        1, description="events recorded at once; the next ones once their runs have ended"
    )


class BackfillResult(_Model):
    """What a backfill did: events (ticks) in the span, recorded now, recorded before
    (started nothing), runs started and how they ended."""

    events: int
    recorded: int
    duplicates: int
    run_ids: list[str]
    ended: dict[str, int]


class PruneReport(_Model):
    """What a prune deleted (or, ``dry_run``, would delete), by table."""

    dry_run: bool
    cutoffs: PruneCutoffs
    counts: dict[str, int]


# -- live stream messages ----------------------------------------------------------------


class RunUpdate(_Model):
    """``event: run``: a run's state as committed (inputs left out)."""

    run_id: str
    pipeline: str
    state: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    error: str | None
    event_id: str | None


class LogUpdate(_Model):
    """``event: log``: an attempt's live log has new lines (one message per attempt and
    commit; read them with ``GET /api/v1/runs/{run_id}/logs?after=``)."""

    run_id: str
    key: str
    attempt: int
    seq: int = Field(description="the number of the last of the new lines")


class TaskUpdate(_Model):
    """``event: task``: a task instance's state as committed."""

    run_id: str
    key: str
    task: str
    map_index: int | None
    state: str
    attempts: int
    error: str | None
    updated_at: float


class ApprovalUpdate(_Model):
    """``event: approval``: a gate asks, or is settled."""

    run_id: str
    key: str
    attempt: int
    state: str
    message: str
    approvers: list[str]
    min_approvals: int
    requested_at: float
    deadline_at: float | None
    decided_at: float | None

    @classmethod
    def of(cls, row: ApprovalRow) -> ApprovalUpdate:
        return cls(
            run_id=row.run_id,
            key=row.key,
            attempt=row.attempt,
            state=row.state,
            message=row.message,
            approvers=list(row.approvers),
            min_approvals=row.min_approvals,
            requested_at=row.requested_at,
            deadline_at=row.deadline_at,
            decided_at=row.decided_at,
        )


class DecisionUpdate(_Model):
    """``event: decision``: someone decided on a gate (it may still wait for others)."""

    run_id: str
    key: str
    attempt: int
    who: str
    decision: str
    comment: str | None
    decided_at: float


LineageRun.model_rebuild()
