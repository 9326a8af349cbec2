"""Reads: the one read model the API, the UI and the CLI share.

A run's detail, pages of runs and of events (one cursor format, :mod:`.cursors`), counts
of runs by state, gates waiting for a decision, events with the runs they started, assets
and lineage (:mod:`.lineage`). Every answer is domain data: store rows in frozen
dataclasses, never a face's shape (the API turns them into :mod:`cued.daemon.web.schemas`,
the UI into HTML, the CLI into tables).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from cued.daemon.core.assets import asset_source
from cued.daemon.core.flow import held_note
from cued.daemon.core.states import TERMINAL_RUN_STATES
from cued.daemon.errors import CuedError, NotFound
from cued.daemon.ops import lineage
from cued.daemon.ops.cursors import Page, event_position, page_of, run_position

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from cued.daemon.config import Config
    from cued.daemon.core.plan import PipelinePlan
    from cued.daemon.ops.host import Daemon
    from cued.daemon.store import (
        ApprovalRow,
        AttemptRow,
        ConfigVersionRow,
        DecisionRow,
        EventRow,
        InstanceRow,
        LogLineRow,
        NodeRow,
        PauseRow,
        RunRow,
        Store,
        WaitRow,
    )

__all__ = [
    "AssetDetail",
    "AssetSummary",
    "EventDetail",
    "EventHold",
    "EventLineage",
    "Gate",
    "Load",
    "LogPage",
    "Queries",
    "RunDetail",
    "load",
    "waits_for",
]


@dataclass(frozen=True, slots=True)
class Gate:
    """An approval gate with the decisions made on its current attempt."""

    gate: ApprovalRow
    decisions: list[DecisionRow]

    @classmethod
    def of(cls, gate: ApprovalRow, decisions: Sequence[DecisionRow]) -> Gate:
        """``gate`` with those of ``decisions`` that are on it, in its current attempt."""
        return cls(
            gate,
            [
                d
                for d in decisions
                if d.run_id == gate.run_id and d.key == gate.key and d.attempt == gate.attempt
            ],
        )


def waits_for(wait: WaitRow) -> str:
    """What a wait waits for, as the faces say it: ``an event of 'payments' where
    event.data.order_id == inputs.order_id``, ``the time``."""
    if wait.kind == "timer":
        return "the time"
    where = f" where {wait.match}" if wait.match else ""
    return f"an event of {wait.source!r}{where}"


@dataclass(frozen=True, slots=True)
class RunDetail:
    """A run with everything recorded about it."""

    run: RunRow
    instances: list[InstanceRow]
    attempts: list[AttemptRow]
    """Every attempt of every rerun, by the time it started."""
    gates: list[Gate]
    """Its approval gates, by the time each asked."""
    event: EventRow | None
    """The event that started it, if one did and ``[retention]`` kept it."""
    assets: list[lineage.ProducedAsset]
    """The asset versions it produced, by asset name."""
    waits: list[WaitRow]
    """Its waits (for an event, for a moment), by the time each began."""
    children: list[RunRow]
    """The child runs its ``pipeline`` tasks started, oldest first."""
    waiting_for: str | None = None
    """Why a queued run has not started: ``waiting for key 'K' (limit 1)``, or ``waiting
    for a run slot (max_active_runs 2)``; None if it does not wait for one of them."""

    def attempts_of(self, key: str) -> list[AttemptRow]:
        """The attempts of the instance ``key``, oldest first."""
        return sorted((a for a in self.attempts if a.key == key), key=lambda a: a.attempt)


@dataclass(frozen=True, slots=True)
class LogPage:
    """Live log lines of a run, in order, and where the next page starts."""

    run: RunRow
    """The run as it was before the lines were read: once it is finished, no line
    follows the last one read."""
    lines: list[LogLineRow]
    after: int
    """Ask with this ``after`` for the lines that follow (the last one's ``seq``)."""

    @property
    def finished(self) -> bool:
        return self.run.state in TERMINAL_RUN_STATES


@dataclass(frozen=True, slots=True)
class EventHold:
    """Flow control holds an event (for one of its triggers): in which window, of which
    key, until when."""

    trigger: str
    key: str
    kind: str
    """``debounce``, ``batch`` or ``delay`` (a throttle's)"""
    window: str
    phase: str
    """``open`` (more events may join), ``closed`` (full) or ``slotted`` (it took a
    throttle slot: its run starts at ``due_at``)"""
    seq: int
    """The event's place in the window."""
    held: int
    """Events in the window so far."""
    due_at: float | None
    """When the window is released (``None``: a batch that only its size closes)."""


@dataclass(frozen=True, slots=True)
class EventDetail:
    """An event and the runs it started (those still kept), in the order it started them."""

    event: EventRow
    runs: list[RunRow]
    holds: list[EventHold] = field(default_factory=list)
    """Where flow control holds it now."""


@dataclass(frozen=True, slots=True)
class EventLineage:
    """Where an event came from, and what followed from it."""

    event: EventRow
    upstream: list[lineage.UpstreamStep]
    """For an asset event: the run that produced it, the event that started that run, and
    on back; nearest first."""
    runs: list[lineage.LineageRun]
    """The runs it started, their assets and the runs those started, onwards."""
    truncated: bool
    """The graph was cut at its depth or size limit."""


@dataclass(frozen=True, slots=True)
class AssetSummary:
    """An asset, configured or produced, with its latest version."""

    name: str
    producers: list[str]
    consumers: list[str]
    versions: int
    latest: EventRow | None
    latest_run_id: str | None
    """The run that produced the latest version (as its event's data says)."""


@dataclass(frozen=True, slots=True)
class AssetDetail:
    """An asset and a page of its versions, newest first."""

    name: str
    producers: list[str]
    consumers: list[str]
    versions: Page[lineage.AssetVersion]


@dataclass(frozen=True, slots=True)
class Load:
    """How busy the running daemon is now (held in memory, not in the store)."""

    backlog: int
    """Runs waiting for a slot of their pipeline."""
    high_water: int
    """Sources pause once this many runs wait..."""
    low_water: int
    """...and take events again once fewer than this wait."""
    saturated: bool
    """Sources are paused (backpressure)."""
    running_tasks: int


def load(daemon: Daemon) -> Load:
    """How busy ``daemon`` is now."""
    backlog = daemon.backlog
    return Load(
        backlog.depth,
        backlog.high_water,
        backlog.low_water,
        backlog.saturated,
        daemon.slots.running_tasks,
    )


class Queries:
    """The reads of one store under one configuration.

    :param config: the configuration the store is kept under. Without one (a face that
        read only where the state file is: the CLI's ``cued runs``), the reads that need
        none answer as ever, and one that needs it (assets, lineage, triggers) raises
        :class:`~cued.daemon.errors.CuedError`.
    :param plans: the pipelines' plans (the running daemon's; built from ``config`` when
        first needed if not given)
    """

    @classmethod
    def of(cls, daemon: Daemon) -> Queries:
        """The reads of the running daemon's store, under its configuration (the one
        running now: it follows reloads)."""
        queries = cls(daemon.store, daemon.config, daemon.plans)
        queries._daemon = daemon
        return queries

    def __init__(
        self,
        store: Store,
        config: Config | None = None,
        plans: Mapping[str, PipelinePlan] | None = None,
    ) -> None:
        self._store = store
        self._daemon: Daemon | None = None
        self._config = config
        self._plans = plans

    @property
    def config(self) -> Config:
        """The configuration the reads are under (the running daemon's, if any: it
        follows reloads).

        :raises CuedError: if these reads were made without one
        """
        if self._daemon is not None:
            return self._daemon.config
        if self._config is None:
            raise CuedError("this read needs the configuration, and none was loaded")
        return self._config

    @property
    def plans(self) -> Mapping[str, PipelinePlan]:
        """The pipelines' plans, by name."""
        if self._plans is None:
            # here, not at the top: planning brings the template engine, which a read of
            # runs does without
            from cued.daemon.core.plan import PipelinePlan

            config = self.config
            self._plans = {
                name: PipelinePlan.build(name, p) for name, p in config.pipelines.items()
            }
        return self._plans

    async def ping(self) -> None:
        """Answer a trivial query of the store (readiness).

        :raises StoreError: if the store cannot answer
        """
        await self._store.ping()

    # -- runs -----------------------------------------------------------------------------

    async def run_detail(self, run_id: str, *, assets: bool = True) -> RunDetail | None:
        """A run with its task instances, their attempts, its approval gates with their
        decisions, its waits, the event that started it and the assets it produced; ``None`` if
        there is no such run.

        :param assets: find the assets it produced (its pipeline's plan says which to
            look for); without, ``assets`` is empty and no configuration is needed
        """
        store = self._store
        run = await store.get_run(run_id)
        if run is None:
            return None
        gates = await store.get_approvals(run_id)
        decisions = await store.get_decisions(run_id) if gates else []
        started_by = await store.get_events([run.event_id]) if run.event_id else []
        return RunDetail(
            run,
            await store.get_instances(run_id),
            await store.get_attempts(run_id),
            [Gate.of(g, decisions) for g in gates],
            started_by[0] if started_by else None,
            await lineage.produced(store, self.plans, run) if assets else [],
            await store.get_waits(run_id),
            await store.children_of(run_id),
            await self.waiting_for(run),
        )

    async def waiting_for(self, run: RunRow) -> str | None:
        """Why a queued run has not started (its key is at its limit, or its pipeline at
        its ``max_active_runs``), as the store shows it; None if neither holds it."""
        if run.state != "queued":
            return None
        if run.flow_key is not None and run.key_limit is not None:
            running = await self._store.count_running(run.pipeline, run.flow_key)
            if running >= run.key_limit:
                return f"waiting for key {run.flow_key!r} (limit {run.key_limit})"
        if self._config is None and self._daemon is None:
            return None  # the limit is in the configuration
        pipeline = self.config.pipelines.get(run.pipeline)
        if pipeline is not None:
            limit = pipeline.max_active_runs
            if await self._store.count_running(run.pipeline) >= limit:
                return f"waiting for a run slot (max_active_runs {limit})"
        return None

    async def runs_page(
        self,
        *,
        limit: int,
        pipeline: str | None = None,
        state: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        cursor: str | None = None,
    ) -> Page[RunRow]:
        """Runs, newest first, a page at a time.

        :param cursor: ``next_cursor`` of the page before
        :raises InvalidRequest: if ``cursor`` is not one a page gave
        """
        rows = await self._store.list_runs(
            limit=limit + 1,
            pipeline=pipeline,
            state=state,
            before=None if cursor is None else run_position(cursor),
            created_after=created_after,
            created_before=created_before,
        )
        return page_of(rows, limit, lambda r: (r.created_at, r.run_id))

    async def task_logs(
        self,
        run_id: str,
        *,
        task: str | None = None,
        attempt: int | None = None,
        after: int = 0,
        limit: int = 1000,
    ) -> LogPage:
        """A run's live log lines numbered above ``after``, oldest first, at most
        ``limit``: of all its tasks, or of one (an instance's key, or a task's name for
        all its instances), or of one attempt of it.

        :raises NotFound: if there is no such run
        """
        # the run first: lines committed with its end are there when it shows finished
        run = await self._store.get_run(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        lines = await self._store.get_log_lines(
            run_id, task=task, attempt=attempt, after=after, limit=limit
        )
        return LogPage(run, lines, lines[-1].seq if lines else after)

    async def runs(self, run_ids: Sequence[str]) -> list[RunRow]:
        """These runs (those kept), in the order of ``run_ids``."""
        return lineage.in_order(await self._store.get_runs(run_ids), run_ids)

    async def run_counts(self) -> dict[str, int]:
        """How many runs are in each state (states without runs are left out)."""
        return await self._store.count_runs_by_state()

    async def started_by(self, runs: Sequence[RunRow]) -> dict[str, EventRow]:
        """The events (those kept) that started these runs, by event id."""
        ids = sorted({r.event_id for r in runs if r.event_id is not None})
        return {e.event_id: e for e in await self._store.get_events(ids)} if ids else {}

    # -- pipelines ------------------------------------------------------------------------

    async def paused(self) -> dict[str, PauseRow]:
        """The paused pipelines (as recorded), by name."""
        return await self._store.paused_pipelines()

    # -- nodes ----------------------------------------------------------------------------

    async def nodes(self) -> list[NodeRow]:
        """The daemons sharing the state (one on SQLite), by name, with the unfinished
        runs each owns."""
        return await self._store.list_nodes()

    # -- configuration versions -----------------------------------------------------------

    async def config_versions(self, limit: int = 100) -> list[ConfigVersionRow]:
        """The configurations the daemon loaded, newest first."""
        return await self._store.config_versions(limit=limit)

    async def config_version(self, version: int) -> ConfigVersionRow:
        """One configuration the daemon loaded.

        :raises NotFound: if there is no such version
        """
        row = await self._store.config_version(version)
        if row is None:
            raise NotFound(f"no config version {version}")
        return row

    async def config_diff(self, old: int, new: int) -> str:
        """What changed from version ``old`` to ``new``, as a unified diff of their text
        (empty if they are the same).

        :raises NotFound: if either is no version
        """
        a, b = await self.config_version(old), await self.config_version(new)
        return "".join(
            difflib.unified_diff(
                a.text.splitlines(keepends=True),
                b.text.splitlines(keepends=True),
                fromfile=f"version {old}",
                tofile=f"version {new}",
            )
        )

    # -- approvals ------------------------------------------------------------------------

    async def waiting_gates(self, limit: int = 100) -> list[Gate]:
        """Gates waiting for a decision, oldest first, with the decisions made so far."""
        return [
            Gate.of(g, await self._store.get_decisions(g.run_id, g.key))
            for g in await self._store.list_approvals(state="waiting", limit=limit)
        ]

    async def waiting_count(self) -> int:
        """How many gates wait for a decision."""
        return await self._store.count_waiting_approvals()

    # -- events ---------------------------------------------------------------------------

    async def events_page(
        self,
        *,
        limit: int,
        source: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
    ) -> Page[EventRow]:
        """Events, newest first, a page at a time.

        :param source: a source's name, or ``asset:NAME``
        :raises InvalidRequest: if ``cursor`` is not one a page gave
        """
        rows = await self._store.list_events(
            limit=limit + 1,
            source=source,
            status=status,
            before=None if cursor is None else event_position(cursor),
        )
        return page_of(await self._why_held(rows), limit, _event_at)

    async def dedupe_seen(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
        """When each (trigger, dedupe key) pair last started a run (pairs never seen, or
        pruned, are left out)."""
        return await self._store.dedupe_seen(keys) if keys else {}

    async def event(self, event_id: str) -> EventRow:
        """:raises NotFound: if there is no such event (or it is no longer kept)"""
        found = await self._store.get_events([event_id])
        if not found:
            raise NotFound(f"no event {event_id!r}")
        return (await self._why_held(found))[0]

    async def _why_held(self, events: list[EventRow]) -> list[EventRow]:
        """``events``, those held by flow control with a note of where each waits (from
        its holds: the store keeps no note of an event held)."""
        held = [e.event_id for e in events if e.status == "held"]
        if not held:
            return events
        notes: dict[str, list[str]] = {}
        for h, w in await self._store.event_holds(held):
            note = held_note(w.trigger, w.key, w.kind, w.window_id, h.seq, w.due_at)
            notes.setdefault(h.event_id, []).append(note)
        return [
            replace(e, error="; ".join([*([e.error] if e.error else []), *notes[e.event_id]]))
            if e.event_id in notes
            else e
            for e in events
        ]

    async def event_detail(self, event_id: str) -> EventDetail:
        """An event and the runs it started.

        :raises NotFound: if there is no such event
        """
        event = await self.event(event_id)
        return EventDetail(event, await self.runs(event.run_ids), await self.event_holds(event_id))

    async def event_holds(self, event_id: str) -> list[EventHold]:
        """Where flow control holds an event now (nowhere, once its windows are released)."""
        return [
            EventHold(w.trigger, w.key, w.kind, w.window_id, w.phase, h.seq, w.held, w.due_at)
            for h, w in await self._store.event_holds([event_id])
        ]

    async def lineage(self, event_id: str) -> EventLineage:
        """Where an event came from (for an asset event: the run that produced it, the
        event that started that run, and so on back) and what followed from it.

        :raises NotFound: if there is no such event
        """
        event = await self.event(event_id)
        budget = lineage.Budget()
        upstream = await lineage.upstream(self._store, event, budget)
        runs = await lineage.downstream(self._store, self.plans, event.run_ids, budget)
        return EventLineage(event, upstream, runs, budget.truncated)

    # -- assets ---------------------------------------------------------------------------

    async def assets(self) -> list[AssetSummary]:
        """Every asset, configured or produced, by name."""
        made_by = lineage.producers(self.config)
        produced = {name: (n, e) for name, n, e in await self._store.list_assets()}
        found = []
        for name in sorted(set(made_by) | set(produced)):
            count, latest = produced.get(name, (0, None))
            run_id = None if latest is None else lineage.data_of(latest).get("run_id")
            found.append(
                AssetSummary(
                    name,
                    made_by.get(name, []),
                    lineage.consumers(self.config, name),
                    count,
                    latest,
                    run_id if isinstance(run_id, str) else None,
                )
            )
        return found

    async def asset(self, name: str, *, limit: int, cursor: str | None = None) -> AssetDetail:
        """An asset's versions, newest first, a page at a time.

        :raises NotFound: if no task produces ``name`` and it has no versions
        :raises InvalidRequest: if ``cursor`` is not one a page gave
        """
        made_by = lineage.producers(self.config)
        rows = await self._store.list_events(
            limit=limit + 1,
            source=asset_source(name),
            before=None if cursor is None else event_position(cursor),
        )
        if not rows and cursor is None and name not in made_by:
            raise NotFound(f"no asset {name!r}")
        page = page_of(rows, limit, _event_at)
        return AssetDetail(
            name,
            made_by.get(name, []),
            lineage.consumers(self.config, name),
            Page(await lineage.asset_versions(self._store, page.items), page.next_cursor),
        )


def _event_at(row: EventRow) -> tuple[float, str]:
    return row.received_at, row.event_id
