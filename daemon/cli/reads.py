"""The ``cued`` commands that only read the state file (``runs``, ``show``, ``events``,
``approvals``, ``logs``, ``nodes``): through :class:`cued.daemon.ops.queries.Queries`, opened with
where the state is and nothing else of the configuration
(:mod:`cued.daemon.config.state`, :mod:`cued.daemon.reading`).

They answer at once: this module imports neither the configuration's models nor the
daemon's parts (the web stack, Kafka, httpx), nor structlog unless a line is logged;
a test holds it so (tests/e2e/test_cli_imports.py).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio

from cued.daemon.cli import render
from cued.daemon.config.state import StateSettings, read_state_settings, shown_url
from cued.daemon.errors import NotFound
from cued.daemon.logs import configure_logging
from cued.daemon.ops.queries import waits_for
from cued.daemon.reading import open_reads

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    from cued.daemon.store import RunRow

__all__ = ["COMMANDS", "run"]


def run(args: argparse.Namespace) -> int:
    """Do the read ``args`` (parsed) say; returns the exit status."""
    state = read_state_settings(args.config)
    if state is None:
        # its [daemon] table is not plainly valid: the whole check says what is wrong (and
        # if it finds nothing, the read goes on under what it read)
        from cued.daemon.config import load_config

        config = load_config(args.config)
        state = StateSettings(
            config.state_location(), config.daemon.synchronous, config.daemon.log_level
        )
    configure_logging(state.log_level)
    return anyio.run(_READS[args.command], state, args)


async def _approvals(state: StateSettings, args: argparse.Namespace) -> int:
    async with open_reads(state) as queries:
        gates = [g.gate for g in await queries.waiting_gates()]
    table = [["RUN", "TASK", "SINCE", "DEADLINE", "APPROVERS", "MESSAGE"]]
    table.extend(
        [
            g.run_id,
            g.key,
            render.timestamp(g.requested_at),
            render.timestamp(g.deadline_at),
            ", ".join(g.approvers) or "any approver",
            render.clip(g.message, 60),
        ]
        for g in gates
    )
    render.table(table)
    return 0


async def _runs(state: StateSettings, args: argparse.Namespace) -> int:
    wanted = "failed" if args.failed else args.state
    async with open_reads(state) as queries:
        page = await queries.runs_page(limit=args.limit, pipeline=args.pipeline, state=wanted)
    rows = page.items
    # failed runs are the dead letters: with their error and the event that started them
    table = [
        ["RUN", "PIPELINE", "STATE", "CREATED", "DURATION"]
        + (["EVENT", "ERROR"] if args.failed else [])
    ]
    for r in rows:
        line = [
            r.run_id,
            r.pipeline,
            r.state,
            render.timestamp(r.created_at),
            render.duration(r.started_at, r.ended_at),
        ]
        if args.failed:
            line += [r.event_id or "-", r.error or ""]
        table.append(line)
    render.table(table)
    return 0


async def _show(state: StateSettings, args: argparse.Namespace) -> int:
    async with open_reads(state) as queries:
        # the CLI shows no assets: it needs no pipeline plans, no configuration
        shown = await queries.run_detail(args.run_id, assets=False)
    if shown is None:
        raise NotFound(f"no run {args.run_id!r} in {shown_url(state.location)!r}")
    run, instances, attempts = shown.run, shown.instances, shown.attempts
    # as the instances are listed
    order = {i.key: n for n, i in enumerate(instances)}
    gates = sorted((g for g in shown.gates if g.gate.key in order), key=lambda g: order[g.gate.key])
    _print_run(run)
    if shown.waiting_for:
        render.out(f"waits     {shown.waiting_for}")
    for child in shown.children:
        render.out(f"child     {child.run_id} ({child.pipeline}, {child.state})")
    # a run flow control started: its event's note says which window (key, batch) and
    # how many events it took in
    for note in (shown.event.error or "").split("; ") if shown.event else ():
        if run.run_id in note:
            render.out(f"held      {note}")
    render.out()
    render.table(
        [["TASK", "STATE", "ATTEMPTS"]] + [[i.key, i.state, str(i.attempts)] for i in instances]
    )
    render.out()
    table = [["TASK", "ATTEMPT", "STATE", "STARTED", "DURATION", "ERROR / OUTPUT"]]
    for a in attempts:
        detail = a.error if a.error else ("" if a.output is None else json.dumps(a.output))
        if a.cost is not None:
            detail = f"cost {a.cost:g}; " + detail
        table.append(
            [
                a.key,
                str(a.attempt),
                a.state,
                render.timestamp(a.started_at),
                render.duration(a.started_at, a.ended_at),
                render.clip(detail or ""),
            ]
        )
    render.table(table)
    if shown.waits:
        render.out()
        table = [["WAIT", "STATE", "SINCE", "UNTIL", "FOR", "WOKEN BY"]]
        table += [
            [
                w.key,
                w.state,
                render.timestamp(w.opened_at),
                render.timestamp(w.deadline_at),
                render.clip(waits_for(w), 80),
                w.event_id or "-",
            ]
            for w in shown.waits
        ]
        render.table(table)
    if gates:
        render.out()
        table = [["GATE", "STATE", "ASKED", "WHO", "DECISION", "WHEN", "COMMENT"]]
        for found in gates:
            g = found.gate
            table.append(
                [
                    g.key,
                    g.state,
                    render.timestamp(g.requested_at),
                    "",
                    "",
                    render.timestamp(g.decided_at),
                    render.clip(g.message, 50),
                ]
            )
            table.extend(
                [
                    "",
                    "",
                    "",
                    d.who,
                    d.decision,
                    render.timestamp(d.decided_at),
                    render.clip(d.comment or "", 50),
                ]
                for d in found.decisions
            )
        render.table(table)
    return 0


async def _events(state: StateSettings, args: argparse.Namespace) -> int:
    async with open_reads(state) as queries:
        page = await queries.events_page(limit=args.limit, source=args.source, status=args.status)
    rows = page.items
    table = [
        [
            "EVENT",
            "SOURCE",
            "STATUS",
            "RECEIVED",
            "RUNS",
            "ERROR" + (" / DATA" if args.data else ""),
        ]
    ]
    for e in rows:
        detail = e.error or ""
        if args.data:
            detail = (detail + " " if detail else "") + json.dumps(e.data)
        table.append(
            [
                e.event_id,
                e.source,
                e.status,
                render.timestamp(e.received_at),
                " ".join(e.run_ids) or "-",
                detail if args.full else render.clip(detail),
            ]
        )
    render.table(table)
    return 0


async def _nodes(state: StateSettings, args: argparse.Namespace) -> int:
    async with open_reads(state) as queries:
        nodes = await queries.nodes()
    table = [["NODE", "STATE", "GENERATION", "HOST", "PID", "STARTED", "LEASE UNTIL", "RUNS"]]
    table.extend(
        [
            n.node,
            "gone" if not n.alive else "lease lapsed" if n.expired else "alive",
            str(n.generation),
            n.host,
            str(n.pid),
            render.timestamp(n.started_at),
            render.timestamp(n.expires_at) if n.lease_s else "-",
            str(n.runs),
        ]
        for n in nodes
    )
    render.table(table)
    return 0


def _print_run(run: RunRow) -> None:
    render.out(f"run       {run.run_id}")
    render.out(f"pipeline  {run.pipeline}")
    render.out(f"state     {run.state}")
    render.out(f"created   {render.timestamp(run.created_at)}")
    render.out(f"duration  {render.duration(run.started_at, run.ended_at)}")
    render.out(f"inputs    {json.dumps(run.inputs)}")
    if run.event_id:
        render.out(f"event     {run.event_id}")
    if run.parent_run_id is not None:
        render.out(f"parent    {run.parent_run_id} (task {run.parent_key})")
    if run.flow_key is not None:
        limit = f" (limit {run.key_limit})" if run.key_limit is not None else ""
        render.out(f"key       {run.flow_key}{limit}")
    render.out(f"priority  {run.priority}")
    if run.config_version is not None:
        version = run.config_version
        render.out(f"config    version {version} (cued config show {version})")
    if run.error:
        render.out(f"error     {run.error}")


#: How often ``cued logs --follow`` looks for new lines.
_FOLLOW_EVERY_S = 0.5


async def _logs(state: StateSettings, args: argparse.Namespace) -> int:
    after = 0
    async with open_reads(state) as queries:
        while True:
            page = await queries.task_logs(
                args.run_id, task=args.task, attempt=args.attempt, after=after
            )
            for line in page.lines:
                clock = datetime.fromtimestamp(line.at, UTC).strftime("%H:%M:%S")
                render.out(f"{clock} {line.key}#{line.attempt} {line.stream}: {line.line}")
            sys.stdout.flush()
            after = page.after
            if page.lines:
                continue  # a full page: there may be more at once
            if not args.follow or page.finished:
                return 0
            await anyio.sleep(_FOLLOW_EVERY_S)


_READS: dict[str, Callable[[StateSettings, argparse.Namespace], Awaitable[int]]] = {
    "runs": _runs,
    "show": _show,
    "events": _events,
    "approvals": _approvals,
    "logs": _logs,
    "nodes": _nodes,
}

#: The commands this module does.
COMMANDS = frozenset(_READS)
