"""What each ``cued`` command does, once :mod:`cued.daemon.cli.main` has parsed it: reads
through :class:`cued.daemon.ops.queries.Queries`, actions through the running daemon's
control socket or, with none, through :mod:`cued.daemon.ops.commands` on a runner of the
CLI's own."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import tomllib
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import httpx
from pydantic import ValidationError

from cued.daemon.cli import render
from cued.daemon.config import Config, DaemonConfig, load_config
from cued.daemon.config.moments import parse_moment
from cued.daemon.config.starter import STARTER_CONFIG, STARTER_DROP_FOLDER
from cued.daemon.config.state import read_state_settings
from cued.daemon.core import untrusted
from cued.daemon.core.ids import now
from cued.daemon.errors import ConfigError, CuedError, DaemonUnavailable, NotFound
from cued.daemon.logs import configure_logging, get_logger
from cued.daemon.web.control_path import control_socket_path, os_user_name

# Imported where a command needs them, not here: the daemon's wiring (the assembly, with
# the web server, the store and every connector), the actions and the reads of ops, the
# API's models. A command that goes through the running daemon's socket needs none of
# them, and they are most of a second of its start (bench/cli.py).
if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    from cued.daemon.ops.host import Daemon
    from cued.daemon.ops.queries import Queries
    from cued.daemon.store import RunRow

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Do what ``args`` (parsed) say; returns the exit status."""
    if args.command == "init":
        return _init(args)
    if args.command in ("reload", "config", "status"):
        # these must work when the file is invalid: a rollback is how to mend it, and
        # the daemon runs on its last good configuration meanwhile; reload and status
        # only ask the daemon, and read no more of the file than where its socket is
        config = _state_of(args.config, whole=args.command == "config")
        configure_logging(config.daemon.log_level)
        return anyio.run(_COMMANDS[args.command], config, args)
    if args.command in _THROUGH_THE_DAEMON and not getattr(args, "wait", False):
        # a running daemon checked its own configuration: here only where its socket is
        # is read, and the whole file only if none runs and the command is done here
        config = _state_of(args.config, whole=False)
        configure_logging(config.daemon.log_level)
        return anyio.run(_COMMANDS[args.command], config, args)
    if args.command == "store":  # no configuration: both stores are named
        return anyio.run(_store_copy, args)
    config = _whole(args.config)
    if args.command == "service":
        return _service(config, args)
    if args.command == "validate":
        if args.strict:
            from cued.daemon.config.strict import environment_problems

            if problems := environment_problems(config, args.config):
                raise ConfigError(problems, list(config.warnings))
        for warning in config.warnings:
            sys.stderr.write(f"{warning}\n")
        pipelines = len(config.pipelines)
        tasks = sum(len(p.tasks) for p in config.pipelines.values())
        warned = f", {len(config.warnings)} warning(s)" if config.warnings else ""
        here = ", and on this machine" if args.strict else ""
        render.out(f"{args.config}: valid ({pipelines} pipelines, {tasks} tasks{warned}){here}")
        return 0
    if args.command == "run":
        from cued.daemon.assembly import run_daemon

        log = get_logger()
        for warning in config.warnings:
            log.warning("config_warning", problem=str(warning))
        anyio.run(run_daemon, config)
        return 0
    return anyio.run(_COMMANDS[args.command], config, args)


#: The commands that ask the running daemon, or with none do it here (``trigger --wait``
#: follows the run in the state, through the pipelines' plans: the whole file first).
_THROUGH_THE_DAEMON = frozenset(
    {"trigger", "cancel", "retry", "clear", "approve", "reject", "pause", "resume"}
)


def _whole(path: str) -> Config:
    """The whole configuration at ``path``, for a command done here (no daemon runs),
    checked as ``cued run`` checks it, and logging as it says."""
    config = load_config(path)
    configure_logging(config.daemon.log_level)
    return config


def _parse_inputs(pairs: list[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CuedError(f"input {pair!r} is not KEY=VALUE")
        inputs[key] = _input_value(key, value)
    return inputs


def _input_value(key: str, value: str) -> Any:
    """``value`` as JSON if it is JSON (through :mod:`cued.daemon.core.untrusted`, as the API
    reads it), else as text.

    :raises CuedError: if it is JSON that cued does not keep (``NaN``, ``1e999``, nested
        deeper than the API takes)
    """
    if not value.strip():
        return value
    parsed = untrusted.json_value(value.encode("utf-8"))
    if parsed.error is None:
        return parsed.data
    try:
        json.loads(value)
    except (ValueError, RecursionError):  # not JSON at all: text
        return value
    raise CuedError(f"input {key!r} {parsed.error.removeprefix('body ')}")


async def _control(config: Config, method: str, path: str, body: Any = None) -> httpx.Response:
    """A request to the running daemon over its control socket.

    :raises DaemonUnavailable: if no daemon answers there
    """
    socket_path = control_socket_path(config.state_path)
    try:
        socket_path.stat()
    except PermissionError:
        raise _not_allowed(socket_path) from None
    except OSError as exc:
        raise DaemonUnavailable(f"no daemon socket at {str(socket_path)!r}") from exc
    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://cued", timeout=None
    ) as client:
        try:
            response = await client.request(method, path, json=body)
        except httpx.TransportError as exc:
            if _caused_by(exc, PermissionError):
                raise _not_allowed(socket_path) from exc
            raise DaemonUnavailable(f"no daemon answers on {str(socket_path)!r}: {exc}") from exc
    if response.status_code >= 400:
        message = response.json().get("error", {}).get("message", response.text)
        raise (NotFound if response.status_code == 404 else CuedError)(message)
    return response


def _not_allowed(socket_path: Path) -> CuedError:
    # not DaemonUnavailable: a daemon runs, and doing it here instead would be wrong
    return CuedError(
        f"permission denied on the control socket {str(socket_path)!r}: only the daemon's "
        "own user, root and members of its [daemon] control_group may use it"
    )


def _waits_paused(pipeline: str, run_id: str) -> str:
    return (
        f"run {run_id}: queued: pipeline {pipeline!r} is paused, the run starts at "
        f"`cued resume {pipeline}`"
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is in the chain of causes of ``exc`` (httpx wraps the OSError)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, kind):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


async def _trigger(config: Config, args: argparse.Namespace) -> int:
    inputs = _parse_inputs(args.input)
    path = f"/api/v1/pipelines/{args.pipeline}/runs"
    try:
        response = await _control(config, "POST", path, {"inputs": inputs})
    except DaemonUnavailable:
        # no daemon on this state file: run it here, to the end
        from cued.daemon.assembly import open_runner
        from cued.daemon.ops import commands
        from cued.daemon.ops.queries import Queries

        async with open_runner(_whole(args.config)) as daemon:
            run_id = (await commands.trigger(daemon, args.pipeline, inputs)).run_id
            if args.pipeline in daemon.paused:
                render.out(_waits_paused(args.pipeline, run_id))
                return 0
            render.out(f"started run {run_id} of {args.pipeline} (no daemon runs: running it here)")
            if args.wait:
                await _follow_run(Queries.of(daemon), run_id)
            row = await commands.wait(daemon, run_id)
        render.out(f"run {run_id}: {row.state}" + (f": {row.error}" if row.error else ""))
        return 0 if row.state == "succeeded" else 1
    data = response.json()
    if not args.wait:
        render.out(f"started run {data['run_id']} of {args.pipeline}")
        return 0
    # the run is followed in the state file the daemon writes, as it goes
    from cued.daemon.assembly import open_state

    async with open_state(config) as state:
        if data.get("state") == "queued" and args.pipeline in await state.queries.paused():
            render.out(_waits_paused(args.pipeline, data["run_id"]))
            return 0
        row = await _follow_run(state.queries, data["run_id"])
    render.out(f"run {row.run_id}: {row.state}" + (f": {row.error}" if row.error else ""))
    return 0 if row.state == "succeeded" else 1


async def _events(config: Config, args: argparse.Namespace) -> int:
    """``cued events replay`` (``cued events`` alone is a read: :mod:`.reads`)."""
    from cued.daemon.ops import commands
    from cued.daemon.ops.replay import ReplayRequest, replay
    from cued.daemon.web.schemas import ReplayResult

    request = ReplayRequest(
        event_id=args.event_id,
        source=args.replay_source,
        since=args.since,
        until=args.until,
        status=args.replay_status,
        trigger=args.trigger,
        force=args.force,
    )

    async def here(daemon: Daemon) -> dict[str, Any]:
        result = ReplayResult.of(await replay(daemon, request))
        for event in result.events:  # as `cued trigger` with no daemon: to their end
            for run_id in event.run_ids:
                row = await commands.wait(daemon, run_id)
                render.out(f"run {run_id}: {row.state}" + (f": {row.error}" if row.error else ""))
        return result.model_dump()

    body = {f: getattr(request, f) for f in request.__slots__}
    data = await _act(config, args, "/api/v1/events/replay", body, here)
    return _say_replay(data)


def _say_replay(data: dict[str, Any]) -> int:
    for event in data["events"]:
        line = f"event {event['event_id']} ({event['source']}): {event['outcome']}"
        if event["run_ids"]:
            line += f", started run {', '.join(event['run_ids'])}"
        for why in [*event["skipped"], *event["errors"]]:
            line += f"; {why}"
        render.out(line)
    render.out(
        f"replayed {data['tried']} event(s): {data['runs_started']} run(s) started, "
        + (f"{data['held']} held by flow control, " if data["held"] else "")
        + f"{data['duplicates']} skipped as duplicates, {data['unmatched']} no match, "
        f"{data['invalid']} invalid, {data['errors']} with errors"
    )
    return 1 if data["errors"] else 0


async def _backfill(config: Config, args: argparse.Namespace) -> int:
    # the ticks are listed here (checking the arguments, with no daemon asked), then
    # fired in groups of --concurrency: by the daemon, one request per group, or here
    from cued.daemon.ops.backfill import MAX_CONCURRENCY, backfill, backfill_events

    at = now()
    ticks = await backfill_events(config, args.source, args.start, args.end, at=at)
    # the groups' spans are sent as instants: "-1h" would move with the daemon's clock
    last = datetime.fromtimestamp(parse_moment(args.end, at, name="--to"), UTC).isoformat()
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise CuedError(
            f"--concurrency {args.concurrency!r} is not between 1 and {MAX_CONCURRENCY}"
        )
    total = {"recorded": 0, "duplicates": 0, "runs": 0}
    ended: dict[str, int] = {}

    def progress(
        done: int, recorded: int, duplicates: int, runs: int, states: dict[str, int]
    ) -> None:
        total.update(recorded=recorded, duplicates=duplicates, runs=runs)
        ended.clear()
        ended.update(states)
        render.progress(
            f"backfill {args.source}: {done}/{len(ticks)} ticks, {recorded} recorded, "
            f"{duplicates} recorded before, {runs} run(s) started"
        )

    try:
        # a probe: with no daemon, everything is done here below
        await _control(config, "GET", "/api/v1/status")
    except DaemonUnavailable:
        from cued.daemon.assembly import open_intake

        async with open_intake(config) as (runner, intake):
            report = await backfill(
                runner,
                intake,
                args.source,
                args.start,
                args.end,
                concurrency=args.concurrency,
                progress=lambda r: progress(
                    r.done, r.recorded, r.duplicates, len(r.run_ids), r.ended
                ),
            )
        total.update(recorded=report.recorded, duplicates=report.duplicates)
        total.update(runs=len(report.run_ids))
        ended.update(report.ended)
    else:
        done = recorded = duplicates = runs = 0
        states: dict[str, int] = {}
        for first in range(0, len(ticks), args.concurrency):
            group = ticks[first : first + args.concurrency]
            after = first + args.concurrency
            end = ticks[after][0].isoformat() if after < len(ticks) else last
            body = {"from": group[0][0].isoformat(), "to": end, "concurrency": len(group)}
            path = f"/api/v1/sources/{quote(args.source, safe='')}/backfill"
            data = (await _control(config, "POST", path, body)).json()
            done += data["events"]  # Kafka: messages of one timestamp go in one group
            recorded += data["recorded"]
            duplicates += data["duplicates"]
            runs += len(data["run_ids"])
            for state, n in data["ended"].items():
                states[state] = states.get(state, 0) + n
            progress(done, recorded, duplicates, runs, states)
    render.progress_done()
    how = ", ".join(f"{n} {state}" for state, n in sorted(ended.items())) or "none started"
    render.out(
        f"backfill {args.source}: {len(ticks)} tick(s), {total['recorded']} recorded, "
        f"{total['duplicates']} recorded before (started nothing), {total['runs']} run(s): {how}"
    )
    return 0 if set(ended) <= {"succeeded", "waiting"} else 1


async def _follow_run(queries: Queries, run_id: str) -> RunRow:
    """Show run ``run_id``'s tasks as they start and end; its row once it has ended (or
    waits for a decision)."""
    from cued.daemon.ops.follow import RunSettled, follow

    with render.run_view() as view:
        async with aclosing(follow(queries, run_id)) as changes:
            async for change in changes:
                view.show(change)
                if isinstance(change, RunSettled):
                    return change.run
    raise AssertionError("follow ends with RunSettled")  # pragma: no cover


async def _act(
    config: Config,
    args: argparse.Namespace,
    path: str,
    body: Any,
    here: Callable[[Daemon], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """POST to the running daemon, or, if none runs on this state file, do it here (on
    the whole configuration of ``args.config``)."""
    try:
        return dict((await _control(config, "POST", path, body)).json())
    except DaemonUnavailable:
        from cued.daemon.assembly import open_runner

        async with open_runner(_whole(args.config)) as daemon:
            return await here(daemon)


def _say_run(data: dict[str, Any]) -> int:
    render.out(
        f"run {data['run_id']}: {data['state']}"
        + (f": {data['error']}" if data.get("error") else "")
    )
    return 0 if data["state"] in ("succeeded", "waiting", "cancelled") else 1


async def _cancel(config: Config, args: argparse.Namespace) -> int:
    async def here(daemon: Daemon) -> dict[str, Any]:
        from cued.daemon.ops import commands

        return _fields(await commands.cancel(daemon, args.run_id))

    data = await _act(config, args, f"/api/v1/runs/{args.run_id}/cancel", None, here)
    render.out(f"run {data['run_id']}: {data['state']}")
    return 0


async def _retry(config: Config, args: argparse.Namespace) -> int:
    downstream = getattr(args, "downstream", True)

    async def here(daemon: Daemon) -> dict[str, Any]:
        from cued.daemon.ops import commands

        row = await commands.rerun(daemon, args.run_id, tasks=args.task, downstream=downstream)
        return _fields(await commands.wait(daemon, row.run_id))

    body = {"tasks": args.task, "downstream": downstream}
    path = f"/api/v1/runs/{args.run_id}/retry?wait=true"
    return _say_run(await _act(config, args, path, body, here))


async def _decide(config: Config, args: argparse.Namespace) -> int:
    approve = args.command == "approve"
    # the daemon names us by our OS user (SO_PEERCRED); deciding here, without it, the same
    who = os_user_name(os.geteuid())
    if args.who is not None and args.who != who:
        raise CuedError(
            f"--as {args.who!r} is refused: a decision is recorded under the name of the OS "
            f"user who makes it, {who!r}"
        )
    body: dict[str, Any] = {"comment": args.comment}
    if getattr(args, "payload", None) is not None:
        parsed = untrusted.json_value(args.payload.encode("utf-8"))
        if parsed.error is not None:
            raise CuedError(f"--payload {parsed.error.removeprefix('body ')}")
        body["payload"] = parsed.data

    async def here(daemon: Daemon) -> dict[str, Any]:
        from cued.daemon.ops import commands

        found = await commands.decide(
            daemon,
            args.run_id,
            args.task,
            who=who,
            approve=approve,
            comment=args.comment,
            payload=body.get("payload", commands.AS_PROPOSED),
        )
        if found.gate.state != "waiting":
            # the run goes on here: see it to its end or next gate
            await commands.wait(daemon, args.run_id)
        return _fields(found.gate)

    path = f"/api/v1/runs/{args.run_id}/tasks/{args.task}/{args.command}"
    gate = await _act(config, args, path, body, here)
    if gate["state"] == "waiting":
        render.out(
            f"gate {args.task} of run {args.run_id}: {args.command}d by {who}; "
            f"waiting for {gate['min_approvals']} approvals"
        )
    else:
        render.out(f"gate {args.task} of run {args.run_id}: {gate['state']}")
    return 0


async def _pause(config: Config, args: argparse.Namespace) -> int:
    pausing = args.command == "pause"
    who = os_user_name(os.geteuid())  # as the daemon names us over the control socket

    async def here(daemon: Daemon) -> dict[str, Any]:
        from cued.daemon.ops import commands

        if pausing:
            await commands.pause(daemon, args.pipeline, who=who)
            plan = daemon.plans[args.pipeline]  # there: pause raised NotFound if not
            return {"paused": True, "when_paused": plan.config.when_paused}
        state = await commands.unpause(daemon, args.pipeline, who=who)
        return {"paused": False, "started": state.started}

    verb = "pause" if pausing else "resume"
    data = await _act(
        config, args, f"/api/v1/pipelines/{quote(args.pipeline, safe='')}/{verb}", None, here
    )
    if data["paused"]:
        waits = "are skipped" if data.get("when_paused") == "skip" else "wait"
        render.out(f"pipeline {args.pipeline}: paused (new runs {waits} until `cued resume`)")
    else:
        started = data.get("started") or 0
        render.out(
            f"pipeline {args.pipeline}: resumed ({started} waiting run{'' if started == 1 else 's'} started)"
        )
    return 0


async def _status(config: Config, args: argparse.Namespace) -> int:
    try:
        answer = (await _control(config, "GET", "/api/v1/status")).json()
    except DaemonUnavailable as exc:
        sys.stderr.write(f"cued: not running ({exc})\n")
        return 3  # what `systemctl status` and LSB init scripts say of a stopped service
    render.out(render.status(answer))
    return 0


def _service(config: Config, args: argparse.Namespace) -> int:
    # imported here: only these two commands need them
    from cued.daemon.service.install import install, unit_settings
    from cued.daemon.service.unit import render_unit

    path = Path(args.config)
    if args.service_command == "unit":
        sys.stdout.write(render_unit(unit_settings(config, path, user=args.user)))
        return 0
    done = install(config, path, user=args.user, unit_dir=Path(args.unit_dir))
    for warning in done.warnings:
        sys.stderr.write(f"cued: warning: {warning}\n")
    created = "created" if done.user_created else "kept"
    render.out(f"user {args.user!r} {created}; folders: {', '.join(map(str, done.folders))}")
    render.out(f"wrote {done.unit_path}")
    if not done.reloaded:
        render.out("systemd does not run here: run `systemctl daemon-reload` where it does")
    render.out("next: systemctl enable --now cued")
    return 0


def _fields(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__slots__}


async def _prune(config: Config, args: argparse.Namespace) -> int:
    # through the daemon if one runs: its writer is the one that writes; else here
    try:
        if args.dry_run:
            response = await _control(config, "GET", "/api/v1/retention")
        else:
            response = await _control(config, "POST", "/api/v1/retention/prune")
        done = dict(response.json())
    except DaemonUnavailable:
        from cued.daemon.assembly import open_state
        from cued.daemon.ops import commands

        async with open_state(config) as state:
            done = await commands.prune(state, dry_run=args.dry_run)
    cutoffs = done["cutoffs"]
    dedupe = cutoffs["dedupe_keys"]
    render.out("what goes:")
    render.out(f"  finished runs that ended before  {_cutoff(cutoffs['runs'])}")
    render.out(f"  events received before           {_cutoff(cutoffs['events'])}")
    render.out(
        f"  alerts raised before             {_cutoff(cutoffs['alerts'])}, once sent or given up"
    )
    for trigger, before in sorted(dedupe.items()):
        render.out(f"  dedupe keys of trigger {trigger!r} seen before {_cutoff(before)}")
    render.out(f"  other dedupe keys seen before    {_cutoff(cutoffs['dedupe_keys_other'])}")
    render.out()
    counts: dict[str, int] = done["counts"]
    render.table([["TABLE", "ROWS"], *([table, str(n)] for table, n in counts.items())])
    total = sum(counts.values())
    render.out()
    render.out(
        f"{total} rows would go (dry run: nothing deleted)"
        if args.dry_run
        else f"{total} rows deleted"
    )
    return 0


def _cutoff(at: float | None) -> str:
    return "(kept for ever)" if at is None else render.timestamp(at) + " UTC"


# -- init, triggers test ----------------------------------------------------------------


async def _store_copy(args: argparse.Namespace) -> int:
    def progress(table: str, rows: int) -> None:
        sys.stderr.write(f"\r{table}: {rows} rows")
        sys.stderr.flush()

    from cued.daemon.assembly import copy_state_between

    counts = await copy_state_between(args.source, args.target, progress=progress)
    sys.stderr.write("\n")
    render.table([["TABLE", "ROWS"], *([table, str(n)] for table, n in counts.items())])
    render.out(f"copied {sum(counts.values())} rows; every table holds as many in both")
    return 0


def _init(args: argparse.Namespace) -> int:
    path = Path(args.path if args.path is not None else args.config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # "x": never overwrite, even a file that appears between a check and the write
        with path.open("x", encoding="utf-8") as out:
            out.write(STARTER_CONFIG)
    except FileExistsError:
        raise CuedError(f"{str(path)!r} exists already: not overwritten") from None
    except OSError as exc:
        raise CuedError(f"cannot write {str(path)!r}: {exc.strerror}") from None
    drop = path.parent / STARTER_DROP_FOLDER
    try:
        drop.mkdir(exist_ok=True)
    except OSError as exc:
        raise CuedError(f"cannot create the folder {str(drop)!r}: {exc.strerror}") from None
    render.out(f"wrote {path} (and the folder {drop}/ it watches)")
    render.out(f"next: cued --config {path} run")
    return 0


async def _triggers(config: Config, args: argparse.Namespace) -> int:
    from cued.daemon.assembly import open_state
    from cued.daemon.ops import trials

    async with open_state(config) as state:
        tried = await trials.try_trigger(
            state.queries, args.trigger, last=args.last, event_id=args.event
        )
    trigger = tried.trigger
    render.out(f"trigger {tried.number}: {trigger.ref} ({trigger.source} -> {trigger.pipeline})")
    render.out(f"  when    {trigger.when or '(always)'}")
    render.out(f"  inputs  {json.dumps(trigger.inputs)}")
    if trigger.dedupe is not None:
        render.out(f"  dedupe  {trigger.dedupe}")
    render.out()
    if not tried.trials:
        render.out(f"no events of source {trigger.source!r} are stored yet: nothing to try")
        return 0
    table = [["EVENT", "RECEIVED", "WOULD", "INPUTS / ERROR"]]
    for t in tried.trials:
        detail = t.error or ("" if t.inputs is None else json.dumps(t.inputs))
        if t.dedupe_key is not None:
            seen = (
                ""
                if t.key_seen_at is None
                else f" (started a run {render.timestamp(t.key_seen_at)}: a new one would be a duplicate)"
            )
            detail = f"dedupe {t.dedupe_key!r}{seen}; {detail}"
        table.append(
            [
                t.event.event_id,
                render.timestamp(t.event.received_at),
                t.outcome,
                render.clip(detail),
            ]
        )
    render.table(table)
    matched = sum(t.outcome == "matches" for t in tried.trials)
    render.out()
    render.out(f"{matched} of {len(tried.trials)} events would match (nothing was started)")
    for field in tried.missing_fields:
        sys.stderr.write(
            f"cued: warning: when reads {field}, which none of these events has "
            "(a misspelt field?)\n"
        )
    return 0


def _state_of(path: str, *, whole: bool) -> Config:
    """The configuration at ``path``, or one with only its ``[daemon] state`` (which says
    where the daemon's state and control socket are): that alone unless ``whole``, if its
    ``[daemon]`` table is plainly valid; else if the whole file is invalid.

    :raises ConfigError: if not even that can be read
    """
    if not whole and read_state_settings(path) is not None:
        lenient = _daemon_only(path)
        if lenient is not None:
            return lenient
    try:
        return load_config(path)
    except ConfigError:
        lenient = _daemon_only(path)
        if lenient is None:
            raise
        return lenient


def _daemon_only(path: str) -> Config | None:
    """A configuration of only the ``[daemon] state`` of the file at ``path``, if it has
    one that reads."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        state = raw.get("daemon", {}).get("state", DaemonConfig().state)
        lenient = Config(daemon=DaemonConfig(state=state))
    except (OSError, ValueError, AttributeError, ValidationError):
        return None
    lenient._base_dir = Path(path).absolute().parent
    return lenient


async def _reload(config: Config, args: argparse.Namespace) -> int:
    try:
        response = await _control(config, "POST", "/api/v1/config/reload")
    except DaemonUnavailable as exc:
        raise CuedError(f"no daemon runs on this state file, nothing to reload ({exc})") from exc
    return _say_reload(response.json())


def _say_reload(outcome: dict[str, Any]) -> int:
    for problem in outcome.get("problems", []):
        sys.stderr.write(f"{problem}\n")
    if not outcome.get("applied"):
        render.out(f"refused: the daemon keeps config version {outcome.get('version')}")
        return 2
    changes = outcome.get("changes") or {}
    render.out(
        f"reloaded: config version {outcome.get('version')}"
        + (f", {json.dumps(changes)}" if changes else ", nothing changed")
    )
    return 1 if outcome.get("problems") else 0


async def _config(config: Config, args: argparse.Namespace) -> int:
    verb = args.config_command
    from cued.daemon.assembly import open_state

    async with open_state(config) as state:
        queries = state.queries
        if verb == "history":
            rows = await queries.config_versions(args.limit)
            table = [["VERSION", "LOADED", "HASH", "FILE"]]
            table += [
                [str(r.version), render.timestamp(r.loaded_at), r.hash[:12], r.file] for r in rows
            ]
            render.table(table)
            return 0
        if verb == "show":
            sys.stdout.write((await queries.config_version(args.version)).text)
            return 0
        if verb == "diff":
            sys.stdout.write(await queries.config_diff(args.old, args.new))
            return 0
        text = (await queries.config_version(args.version)).text
    return await _rollback(config, args, text)


async def _rollback(config: Config, args: argparse.Namespace, text: str) -> int:
    """Write version ``args.version``'s text to the configuration file, then have the
    daemon reload it."""
    _write_whole(Path(args.config), text)
    render.out(f"wrote config version {args.version} to {args.config}")
    try:
        response = await _control(config, "POST", "/api/v1/config/reload")
    except DaemonUnavailable:
        render.out("no daemon runs on this state file: it loads this version when it starts")
        return 0
    return _say_reload(response.json())


def _write_whole(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once (a reader, the daemon reloading, never sees
    half of it), keeping its permissions."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, temporary = tempfile.mkstemp(
        dir=path.absolute().parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


_COMMANDS = {
    "events": _events,
    "backfill": _backfill,
    "reload": _reload,
    "config": _config,
    "status": _status,
    "retry": _retry,
    "clear": _retry,
    "approve": _decide,
    "reject": _decide,
    "trigger": _trigger,
    "cancel": _cancel,
    "prune": _prune,
    "pause": _pause,
    "resume": _pause,
    "triggers": _triggers,
}
