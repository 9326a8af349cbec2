"""What each ``cued`` command does, once :mod:`cued.daemon.cli.main` has parsed it: reads
through :class:`cued.daemon.ops.queries.Queries`, actions through the running daemon's
control socket or, with none, through :mod:`cued.daemon.ops.commands` on a runner of the
CLI's own."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import tomllib
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import httpx
from pydantic import ValidationError

from cued.daemon.assembly import (
    control_socket_path,
    copy_state_between,
    open_runner,
    open_state,
    run_daemon,
)
from cued.daemon.cli import render
from cued.daemon.config import Config, DaemonConfig, load_config
from cued.daemon.config.starter import STARTER_CONFIG, STARTER_DROP_FOLDER
from cued.daemon.config.strict import environment_problems
from cued.daemon.core import untrusted
from cued.daemon.errors import ConfigError, CuedError, DaemonUnavailable, NotFound
from cued.daemon.logs import configure_logging, get_logger
from cued.daemon.ops import commands, trials
from cued.daemon.ops.follow import RunSettled, follow
from cued.daemon.ops.queries import Queries
from cued.daemon.web.control import os_user_name

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    from cued.daemon.ops.host import Daemon
    from cued.daemon.store import RunRow

__all__ = ["run"]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def run(args: argparse.Namespace) -> int:
    """Do what ``args`` (parsed) say; returns the exit status."""
    if args.command == "init":
        return _init(args)
    if args.command in ("reload", "config", "status"):
        # these must work when the file is invalid: a rollback is how to mend it, and
        # the daemon runs on its last good configuration meanwhile
        config = _state_of(args.config)
        configure_logging(config.daemon.log_level)
        return anyio.run(_COMMANDS[args.command], config, args)
    if args.command == "store":  # no configuration: both stores are named
        return anyio.run(_store_copy, args)
    config = load_config(args.config)
    configure_logging(config.daemon.log_level)
    if args.command == "service":
        return _service(config, args)
    if args.command == "validate":
        if args.strict and (problems := environment_problems(config, args.config)):
            raise ConfigError(problems, list(config.warnings))
        for warning in config.warnings:
            sys.stderr.write(f"{warning}\n")
        pipelines = len(config.pipelines)
        tasks = sum(len(p.tasks) for p in config.pipelines.values())
        warned = f", {len(config.warnings)} warning(s)" if config.warnings else ""
        here = ", and on this machine" if args.strict else ""
        _out(f"{args.config}: valid ({pipelines} pipelines, {tasks} tasks{warned}){here}")
        return 0
    if args.command == "run":
        log = get_logger()
        for warning in config.warnings:
            log.warning("config_warning", problem=str(warning))
        anyio.run(run_daemon, config)
        return 0
    return anyio.run(_COMMANDS[args.command], config, args)


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
        async with open_runner(config) as daemon:
            run_id = (await commands.trigger(daemon, args.pipeline, inputs)).run_id
            if args.pipeline in daemon.paused:
                _out(_waits_paused(args.pipeline, run_id))
                return 0
            _out(f"started run {run_id} of {args.pipeline} (no daemon runs: running it here)")
            if args.wait:
                await _follow_run(Queries.of(daemon), run_id)
            row = await commands.wait(daemon, run_id)
        _out(f"run {run_id}: {row.state}" + (f": {row.error}" if row.error else ""))
        return 0 if row.state == "succeeded" else 1
    data = response.json()
    if not args.wait:
        _out(f"started run {data['run_id']} of {args.pipeline}")
        return 0
    # the run is followed in the state file the daemon writes, as it goes
    async with open_state(config) as state:
        if data.get("state") == "queued" and args.pipeline in await state.queries.paused():
            _out(_waits_paused(args.pipeline, data["run_id"]))
            return 0
        row = await _follow_run(state.queries, data["run_id"])
    _out(f"run {row.run_id}: {row.state}" + (f": {row.error}" if row.error else ""))
    return 0 if row.state == "succeeded" else 1


async def _follow_run(queries: Queries, run_id: str) -> RunRow:
    """Show run ``run_id``'s tasks as they start and end; its row once it has ended (or
    waits for a decision)."""
    with render.run_view() as view:
        async with aclosing(follow(queries, run_id)) as changes:
            async for change in changes:
                view.show(change)
                if isinstance(change, RunSettled):
                    return change.run
    raise AssertionError("follow ends with RunSettled")  # pragma: no cover


async def _act(
    config: Config, path: str, body: Any, here: Callable[[Daemon], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """POST to the running daemon, or, if none runs on this state file, do it here."""
    try:
        return dict((await _control(config, "POST", path, body)).json())
    except DaemonUnavailable:
        async with open_runner(config) as daemon:
            return await here(daemon)


def _say_run(data: dict[str, Any]) -> int:
    _out(
        f"run {data['run_id']}: {data['state']}"
        + (f": {data['error']}" if data.get("error") else "")
    )
    return 0 if data["state"] in ("succeeded", "waiting", "cancelled") else 1


async def _cancel(config: Config, args: argparse.Namespace) -> int:
    async def here(daemon: Daemon) -> dict[str, Any]:
        return _fields(await commands.cancel(daemon, args.run_id))

    data = await _act(config, f"/api/v1/runs/{args.run_id}/cancel", None, here)
    _out(f"run {data['run_id']}: {data['state']}")
    return 0


async def _retry(config: Config, args: argparse.Namespace) -> int:
    downstream = getattr(args, "downstream", True)

    async def here(daemon: Daemon) -> dict[str, Any]:
        row = await commands.rerun(daemon, args.run_id, tasks=args.task, downstream=downstream)
        return _fields(await commands.wait(daemon, row.run_id))

    body = {"tasks": args.task, "downstream": downstream}
    return _say_run(await _act(config, f"/api/v1/runs/{args.run_id}/retry?wait=true", body, here))


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
    gate = await _act(config, path, body, here)
    if gate["state"] == "waiting":
        _out(
            f"gate {args.task} of run {args.run_id}: {args.command}d by {who}; "
            f"waiting for {gate['min_approvals']} approvals"
        )
    else:
        _out(f"gate {args.task} of run {args.run_id}: {gate['state']}")
    return 0


async def _pause(config: Config, args: argparse.Namespace) -> int:
    pausing = args.command == "pause"
    who = os_user_name(os.geteuid())  # as the daemon names us over the control socket

    async def here(daemon: Daemon) -> dict[str, Any]:
        if pausing:
            await commands.pause(daemon, args.pipeline, who=who)
            return {"paused": True, "when_paused": config.pipelines[args.pipeline].when_paused}
        state = await commands.unpause(daemon, args.pipeline, who=who)
        return {"paused": False, "started": state.started}

    verb = "pause" if pausing else "resume"
    data = await _act(
        config, f"/api/v1/pipelines/{quote(args.pipeline, safe='')}/{verb}", None, here
    )
    if data["paused"]:
        waits = "are skipped" if data.get("when_paused") == "skip" else "wait"
        _out(f"pipeline {args.pipeline}: paused (new runs {waits} until `cued resume`)")
    else:
        started = data.get("started") or 0
        _out(
            f"pipeline {args.pipeline}: resumed ({started} waiting run{'' if started == 1 else 's'} started)"
        )
    return 0


async def _approvals(config: Config, args: argparse.Namespace) -> int:
    async with open_state(config) as state:
        gates = [g.gate for g in await state.queries.waiting_gates()]
    table = [["RUN", "TASK", "SINCE", "DEADLINE", "APPROVERS", "MESSAGE"]]
    table.extend(
        [
            g.run_id,
            g.key,
            _time(g.requested_at),
            _time(g.deadline_at),
            ", ".join(g.approvers) or "any approver",
            _clip(g.message, 60),
        ]
        for g in gates
    )
    _table(table)
    return 0


async def _status(config: Config, args: argparse.Namespace) -> int:
    try:
        answer = (await _control(config, "GET", "/api/v1/status")).json()
    except DaemonUnavailable as exc:
        sys.stderr.write(f"cued: not running ({exc})\n")
        return 3  # what `systemctl status` and LSB init scripts say of a stopped service
    _out(render.status(answer))
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
    _out(f"user {args.user!r} {created}; folders: {', '.join(map(str, done.folders))}")
    _out(f"wrote {done.unit_path}")
    if not done.reloaded:
        _out("systemd does not run here: run `systemctl daemon-reload` where it does")
    _out("next: systemctl enable --now cued")
    return 0


def _fields(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__slots__}


async def _runs(config: Config, args: argparse.Namespace) -> int:
    state = "failed" if args.failed else args.state
    async with open_state(config) as local:
        page = await local.queries.runs_page(limit=args.limit, pipeline=args.pipeline, state=state)
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
            _time(r.created_at),
            _duration(r.started_at, r.ended_at),
        ]
        if args.failed:
            line += [r.event_id or "-", r.error or ""]
        table.append(line)
    _table(table)
    return 0


async def _show(config: Config, args: argparse.Namespace) -> int:
    async with open_state(config) as state:
        shown = await state.queries.run_detail(args.run_id)
    if shown is None:
        raise NotFound(f"no run {args.run_id!r} in {config.state_shown!r}")
    run, instances, attempts = shown.run, shown.instances, shown.attempts
    # as the instances are listed
    order = {i.key: n for n, i in enumerate(instances)}
    gates = sorted((g for g in shown.gates if g.gate.key in order), key=lambda g: order[g.gate.key])
    _print_run(run)
    _out()
    _table([["TASK", "STATE", "ATTEMPTS"]] + [[i.key, i.state, str(i.attempts)] for i in instances])
    _out()
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
                _time(a.started_at),
                _duration(a.started_at, a.ended_at),
                _clip(detail or ""),
            ]
        )
    _table(table)
    if gates:
        _out()
        table = [["GATE", "STATE", "ASKED", "WHO", "DECISION", "WHEN", "COMMENT"]]
        for found in gates:
            g = found.gate
            table.append(
                [
                    g.key,
                    g.state,
                    _time(g.requested_at),
                    "",
                    "",
                    _time(g.decided_at),
                    _clip(g.message, 50),
                ]
            )
            table.extend(
                ["", "", "", d.who, d.decision, _time(d.decided_at), _clip(d.comment or "", 50)]
                for d in found.decisions
            )
        _table(table)
    return 0


async def _events(config: Config, args: argparse.Namespace) -> int:
    async with open_state(config) as state:
        page = await state.queries.events_page(
            limit=args.limit, source=args.source, status=args.status
        )
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
                _time(e.received_at),
                " ".join(e.run_ids) or "-",
                detail if args.full else _clip(detail),
            ]
        )
    _table(table)
    return 0


async def _prune(config: Config, args: argparse.Namespace) -> int:
    # through the daemon if one runs: its writer is the one that writes; else here
    try:
        if args.dry_run:
            response = await _control(config, "GET", "/api/v1/retention")
        else:
            response = await _control(config, "POST", "/api/v1/retention/prune")
        done = dict(response.json())
    except DaemonUnavailable:
        async with open_state(config) as state:
            done = await commands.prune(state, dry_run=args.dry_run)
    cutoffs = done["cutoffs"]
    dedupe = cutoffs["dedupe_keys"]
    _out("what goes:")
    _out(f"  finished runs that ended before  {_cutoff(cutoffs['runs'])}")
    _out(f"  events received before           {_cutoff(cutoffs['events'])}")
    _out(f"  alerts raised before             {_cutoff(cutoffs['alerts'])}, once sent or given up")
    for trigger, before in sorted(dedupe.items()):
        _out(f"  dedupe keys of trigger {trigger!r} seen before {_cutoff(before)}")
    _out(f"  other dedupe keys seen before    {_cutoff(cutoffs['dedupe_keys_other'])}")
    _out()
    counts: dict[str, int] = done["counts"]
    _table([["TABLE", "ROWS"], *([table, str(n)] for table, n in counts.items())])
    total = sum(counts.values())
    _out()
    _out(
        f"{total} rows would go (dry run: nothing deleted)"
        if args.dry_run
        else f"{total} rows deleted"
    )
    return 0


def _cutoff(at: float | None) -> str:
    return "(kept for ever)" if at is None else _time(at) + " UTC"


def _print_run(run: RunRow) -> None:
    _out(f"run       {run.run_id}")
    _out(f"pipeline  {run.pipeline}")
    _out(f"state     {run.state}")
    _out(f"created   {_time(run.created_at)}")
    _out(f"duration  {_duration(run.started_at, run.ended_at)}")
    _out(f"inputs    {json.dumps(run.inputs)}")
    if run.event_id:
        _out(f"event     {run.event_id}")
    if run.config_version is not None:
        _out(f"config    version {run.config_version} (cued config show {run.config_version})")
    if run.error:
        _out(f"error     {run.error}")


#: How often ``cued logs --follow`` looks for new lines.
_FOLLOW_EVERY_S = 0.5


async def _logs(config: Config, args: argparse.Namespace) -> int:
    after = 0
    async with open_state(config) as state:
        while True:
            page = await state.queries.task_logs(
                args.run_id, task=args.task, attempt=args.attempt, after=after
            )
            for line in page.lines:
                clock = datetime.fromtimestamp(line.at, UTC).strftime("%H:%M:%S")
                _out(f"{clock} {line.key}#{line.attempt} {line.stream}: {line.line}")
            sys.stdout.flush()
            after = page.after
            if page.lines:
                continue  # a full page: there may be more at once
            if not args.follow or page.finished:
                return 0
            await anyio.sleep(_FOLLOW_EVERY_S)


def _time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _duration(start: float | None, end: float | None) -> str:
    if start is None:
        return "-"
    seconds = (end if end is not None else time.time()) - start
    text = f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"
    return text if end is not None else text + "+"


def _clip(text: str, width: int = 100) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: list[list[str]]) -> None:
    # plain when piped, as it always was; coloured on a terminal
    render.table(rows)


# -- init, triggers test ----------------------------------------------------------------


async def _store_copy(args: argparse.Namespace) -> int:
    def progress(table: str, rows: int) -> None:
        sys.stderr.write(f"\r{table}: {rows} rows")
        sys.stderr.flush()

    counts = await copy_state_between(args.source, args.target, progress=progress)
    sys.stderr.write("\n")
    _table([["TABLE", "ROWS"], *([table, str(n)] for table, n in counts.items())])
    _out(f"copied {sum(counts.values())} rows; every table holds as many in both")
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
    _out(f"wrote {path} (and the folder {drop}/ it watches)")
    _out(f"next: cued --config {path} run")
    return 0


async def _triggers(config: Config, args: argparse.Namespace) -> int:
    async with open_state(config) as state:
        tried = await trials.try_trigger(
            state.queries, args.trigger, last=args.last, event_id=args.event
        )
    trigger = tried.trigger
    _out(f"trigger {tried.number}: {trigger.key} ({trigger.source} -> {trigger.pipeline})")
    _out(f"  when    {trigger.when or '(always)'}")
    _out(f"  inputs  {json.dumps(trigger.inputs)}")
    if trigger.dedupe is not None:
        _out(f"  dedupe  {trigger.dedupe}")
    _out()
    if not tried.trials:
        _out(f"no events of source {trigger.source!r} are stored yet: nothing to try")
        return 0
    table = [["EVENT", "RECEIVED", "WOULD", "INPUTS / ERROR"]]
    for t in tried.trials:
        detail = t.error or ("" if t.inputs is None else json.dumps(t.inputs))
        if t.dedupe_key is not None:
            seen = (
                ""
                if t.key_seen_at is None
                else f" (started a run {_time(t.key_seen_at)}: a new one would be a duplicate)"
            )
            detail = f"dedupe {t.dedupe_key!r}{seen}; {detail}"
        table.append([t.event.event_id, _time(t.event.received_at), t.outcome, _clip(detail)])
    _table(table)
    matched = sum(t.outcome == "matches" for t in tried.trials)
    _out()
    _out(f"{matched} of {len(tried.trials)} events would match (nothing was started)")
    for field in tried.missing_fields:
        sys.stderr.write(
            f"cued: warning: when reads {field}, which none of these events has "
            "(a misspelt field?)\n"
        )
    return 0


def _state_of(path: str) -> Config:
    """The configuration at ``path``, or, if it is invalid, one with only its ``[daemon]
    state`` (which says where the daemon's state and control socket are).

    :raises ConfigError: if not even that can be read
    """
    try:
        return load_config(path)
    except ConfigError as exc:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            state = raw.get("daemon", {}).get("state", DaemonConfig().state)
            lenient = Config(daemon=DaemonConfig(state=state))
        except (OSError, ValueError, AttributeError, ValidationError):
            raise exc from None
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
        _out(f"refused: the daemon keeps config version {outcome.get('version')}")
        return 2
    changes = outcome.get("changes") or {}
    _out(
        f"reloaded: config version {outcome.get('version')}"
        + (f", {json.dumps(changes)}" if changes else ", nothing changed")
    )
    return 1 if outcome.get("problems") else 0


async def _config(config: Config, args: argparse.Namespace) -> int:
    verb = args.config_command
    async with open_state(config) as state:
        queries = state.queries
        if verb == "history":
            rows = await queries.config_versions(args.limit)
            table = [["VERSION", "LOADED", "HASH", "FILE"]]
            table += [[str(r.version), _time(r.loaded_at), r.hash[:12], r.file] for r in rows]
            _table(table)
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
    _out(f"wrote config version {args.version} to {args.config}")
    try:
        response = await _control(config, "POST", "/api/v1/config/reload")
    except DaemonUnavailable:
        _out("no daemon runs on this state file: it loads this version when it starts")
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
    "reload": _reload,
    "config": _config,
    "status": _status,
    "logs": _logs,
    "retry": _retry,
    "clear": _retry,
    "approve": _decide,
    "reject": _decide,
    "approvals": _approvals,
    "trigger": _trigger,
    "runs": _runs,
    "show": _show,
    "events": _events,
    "cancel": _cancel,
    "prune": _prune,
    "pause": _pause,
    "resume": _pause,
    "triggers": _triggers,
}
