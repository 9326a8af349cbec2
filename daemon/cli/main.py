"""The ``cued`` command: a thin face over :mod:`cued.daemon.ops`, as the API and the UI are.

What changes state goes to the running daemon over its control socket (the API); with no
daemon on the state file, the CLI opens a runner of its own (the assembly's) and calls the
same :mod:`cued.daemon.ops.commands`. Reads go to the state file through
:class:`cued.daemon.ops.queries.Queries` (``cued.daemon.assembly.open_reads``), knowing
only where it is (:mod:`cued.daemon.cli.reads`).

Errors are one clear line on stderr, never a traceback: exit status 2 for an invalid
configuration or usage, 1 for anything else that went wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from cued.daemon.core import untrusted
from cued.daemon.errors import ConfigError, CuedError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cued", description="Event-driven orchestration daemon")
    _global_options(parser, default=os.environ.get("CUED_CONFIG", "config.toml"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the daemon")
    validate = sub.add_parser(
        "validate", help="check the configuration and exit (status 2 if invalid)"
    )
    validate.add_argument(
        "--strict",
        action="store_true",
        help="also check this machine: secrets set, python functions importable, files there",
    )
    trigger = sub.add_parser("trigger", help="start a run of a pipeline now")
    trigger.add_argument("pipeline", type=_text)
    trigger.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        type=_text,
        metavar="KEY=VALUE",
        help="an input (VALUE is read as JSON if it parses, else as text); repeatable",
    )
    trigger.add_argument("--wait", action="store_true", help="wait for the run to finish")
    runs = sub.add_parser("runs", help="list recent runs")
    runs.add_argument("--pipeline", "-p", type=_text)
    runs.add_argument("--state", "-s", type=_text)
    runs.add_argument("--failed", action="store_true", help="only failed runs, with their errors")
    runs.add_argument("--limit", "-n", type=int, default=20)
    show = sub.add_parser("show", help="a run's tasks, attempts, durations, errors and outputs")
    show.add_argument("run_id", type=_text)
    events = sub.add_parser(
        "events", help="recent events: matched, unmatched or invalid, with their runs"
    )
    events.add_argument("--source", "-S", type=_text)
    events.add_argument(
        "--status", "-s", choices=["matched", "unmatched", "invalid", "held", "dropped"]
    )
    events.add_argument("--limit", "-n", type=int, default=20)
    events.add_argument("--data", action="store_true", help="show each event's payload")
    events.add_argument(
        "--full", action="store_true", help="show errors (and payloads) whole, not cut at 100"
    )
    _replay_parser(events)
    backfill = sub.add_parser(
        "backfill",
        help="fire a schedule source's ticks in [--from, --to) as events (kafka: its messages)",
        description="Record a schedule source's ticks in [--from, --to) as events, as the "
        "source would have (same ids: ticks recorded already, by the source or an earlier "
        "backfill, start nothing); a kafka source's messages with a timestamp in the span, "
        "read by a consumer in no group (the group's offsets stay as they are). Times: ISO 8601 (no offset: UTC), 'now' or a time ago "
        "such as --from=-1d (with '=').",
    )
    backfill.add_argument("source", type=_text)
    backfill.add_argument("--from", dest="start", required=True, type=_text, metavar="T")
    backfill.add_argument("--to", dest="end", required=True, type=_text, metavar="T")
    backfill.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="ticks fired at once; the next ones once their runs have ended (default 1)",
    )
    cancel = sub.add_parser("cancel", help="cancel a run; its running tasks are cancelled")
    cancel.add_argument("run_id", type=_text)
    retry = sub.add_parser(
        "retry", help="rerun a finished run from the point of failure, keeping good outputs"
    )
    retry.add_argument("run_id", type=_text)
    retry.add_argument(
        "--task",
        "-t",
        action="append",
        default=[],
        metavar="TASK",
        type=_text,
        help="rerun these tasks and everything downstream (default: the failed ones)",
    )
    clear = sub.add_parser("clear", help="rerun the given tasks of a finished run")
    clear.add_argument("run_id", type=_text)
    clear.add_argument("--task", "-t", action="append", required=True, metavar="TASK", type=_text)
    clear.add_argument("--downstream", action="store_true", help="and everything downstream")
    for verb in ("approve", "reject"):
        gate = sub.add_parser(
            verb,
            help=f"{verb} an approval gate of a run",
            description=f"{verb.capitalize()} an approval gate of a run. The decision is "
            "recorded under the name of the OS user who runs this command: there is no way "
            "to decide under another name (--as NAME is refused unless NAME is yours).",
        )
        gate.add_argument("run_id", type=_text)
        gate.add_argument("task", type=_text, help="the gate's task (name, or name[i] if mapped)")
        gate.add_argument("--comment", "-m", type=_text)
        # kept only to refuse it clearly: it used to let one person decide as anyone
        gate.add_argument("--as", dest="who", type=_text, help=argparse.SUPPRESS)
        if verb == "approve":
            gate.add_argument("--payload", type=_text, help="the proposal as edited, as JSON")
    _logs_parser(sub)
    sub.add_parser("approvals", help="approval gates waiting for a decision")
    sub.add_parser("nodes", help="the daemons sharing the state, and the runs each owns")
    prune = sub.add_parser(
        "prune", help="delete what [retention] lets go now (the daemon does it periodically)"
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="show what would go, by table; delete nothing"
    )
    _more_commands(sub)
    _pause_parsers(sub)
    _config_parsers(sub)
    _service_parsers(sub)
    # `cued validate --config F` as well as `cued --config F validate`: each command takes
    # the global options too, and sets them only when given there (SUPPRESS), so the one
    # before the command stays in force otherwise
    for command in sub.choices.values():
        _global_options(command, default=argparse.SUPPRESS)
    return parser


def _global_options(parser: argparse.ArgumentParser, *, default: str) -> None:
    parser.add_argument(
        "--config",
        "-c",
        default=default,
        help="configuration file (default: $CUED_CONFIG or ./config.toml)",
    )


def _pause_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pause = sub.add_parser(
        "pause",
        help="pause a pipeline: its new runs wait (or are skipped), its events are recorded",
        description="Pause a pipeline, durably (a restart keeps it paused). Runs that have "
        "started go on; new ones are recorded and wait until `cued resume`, or are recorded "
        'as skipped if the pipeline says when_paused = "skip".',
    )
    pause.add_argument("pipeline", type=_text)
    resume = sub.add_parser("resume", help="resume a paused pipeline: the runs that waited start")
    resume.add_argument("pipeline", type=_text)


def _config_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser(
        "reload",
        help="have the running daemon read its configuration file again and apply it",
        description="The daemon checks the file first: an invalid one is refused (its "
        "problems are printed, with file and line, status 2) and the running configuration "
        "is kept. A valid one is applied in place; sources whose settings did not change "
        "keep running, and runs already started finish as they began. SIGHUP does the same.",
    )
    versions = sub.add_parser(
        "config", help="the configuration versions the daemon loaded: history, show, diff, rollback"
    )
    verbs = versions.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    history = verbs.add_parser("history", help="every version loaded, newest first")
    history.add_argument("--limit", "-n", type=int, default=20)
    show = verbs.add_parser("show", help="the text of a version")
    show.add_argument("version", type=_version)
    diff = verbs.add_parser("diff", help="what changed from version A to version B")
    diff.add_argument("old", type=_version, metavar="A")
    diff.add_argument("new", type=_version, metavar="B")
    rollback = verbs.add_parser(
        "rollback",
        help="write a version back to the configuration file, and have the daemon reload it",
    )
    rollback.add_argument("version", type=_version)
    for verb in verbs.choices.values():
        _global_options(verb, default=argparse.SUPPRESS)


def _version(arg: str) -> int:
    number = untrusted.decimal(arg, max_digits=18)
    if number is None or number < 1:
        raise argparse.ArgumentTypeError(f"{arg!r} is not a config version (1 or more)")
    return number


def _logs_parser(sub: Any) -> None:
    logs = sub.add_parser(
        "logs",
        help="a run's live log: what its tasks printed and logged, their requests",
        description="Lines the run's task attempts wrote (stdout, stderr, log records, "
        "requests), oldest first. An attempt keeps its latest [daemon] task_log_lines.",
    )
    logs.add_argument("run_id", type=_text)
    logs.add_argument(
        "task", nargs="?", type=_text, help="only this task's (name, or name[i] if mapped)"
    )
    logs.add_argument("--attempt", "-a", type=_attempt, help="only this attempt's")
    logs.add_argument(
        "--follow", "-f", action="store_true", help="print lines as they come, until the run ends"
    )


def _service_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser(
        "status",
        help="the running daemon: version, uptime, sources, backlog, active runs "
        "(status 3 if none runs)",
    )
    service = sub.add_parser("service", help="run cued as a systemd service")
    verbs = service.add_subparsers(dest="service_command", required=True, metavar="COMMAND")
    unit = verbs.add_parser("unit", help="print the systemd unit for this configuration")
    install = verbs.add_parser(
        "install",
        help="create the user and folders and write the unit (as root)",
        description="Create the daemon's system user (and group), give it the state "
        "folder and the folders of files sources, let its group read the configuration, "
        "and write cued.service; then: systemctl enable --now cued.",
    )
    for parser in (unit, install):
        parser.add_argument("--user", default="cued", type=_text, help="the OS user (cued)")
        _global_options(parser, default=argparse.SUPPRESS)
    install.add_argument(
        "--unit-dir",
        default="/etc/systemd/system",
        type=_text,
        help="where to write cued.service (/etc/systemd/system)",
    )


def _attempt(arg: str) -> int:
    number = int(arg)
    if not 1 <= number < 2**63:
        raise argparse.ArgumentTypeError(f"{arg!r} is not an attempt number (1 or more)")
    return number


def _replay_parser(events: argparse.ArgumentParser) -> None:
    verbs = events.add_subparsers(dest="events_command", metavar="COMMAND")
    replay = verbs.add_parser(
        "replay",
        help="match stored events again against today's triggers",
        description="Match stored events again against today's triggers: runs that did not "
        "run for an event yet start (all of them with --force), linked to the event. Choose "
        "one event by id, or events by --source, --since, --until and --status. Times: ISO "
        "8601 (no offset: UTC), 'now' or a time ago such as --since=-1h (with '=': a "
        "value that starts with '-' is read as an option otherwise).",
    )
    replay.add_argument("event_id", nargs="?", type=_text)
    replay.add_argument("--source", dest="replay_source", type=_text, metavar="S")
    replay.add_argument("--since", type=_text, metavar="T", help="received at or after T")
    replay.add_argument("--until", type=_text, metavar="T", help="received before T")
    replay.add_argument(
        "--status",
        dest="replay_status",
        type=_text,
        metavar="S",
        help="matched, unmatched or invalid",
    )
    replay.add_argument(
        "--trigger",
        type=_text,
        metavar="N",
        help="only this trigger: its name, SOURCE->PIPELINE or its number from 1",
    )
    replay.add_argument(
        "--force", action="store_true", help="start runs again where they ran for the event"
    )
    _global_options(replay, default=argparse.SUPPRESS)


def _text(arg: str) -> str:
    """An argument as text: bytes of it that are not UTF-8 (which Python keeps as lone
    surrogates, and no JSON body, store or terminal takes) escaped as ``\\xNN``."""
    return untrusted.os_name(arg)[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # the commands import what they use (the config's models, the store, HTTP, the
        # daemon): `cued --help` and a usage error need none of it, and the reads of the
        # state file (`cued runs`, `cued show`) only the store
        from cued.daemon.cli import reads

        if args.command in reads.COMMANDS and not getattr(args, "events_command", None):
            status = reads.run(args)
        else:
            from cued.daemon.cli import commands

            status = commands.run(args)
        sys.stdout.flush()  # here, where a reader gone is caught, not at exit
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    except (CuedError, BaseExceptionGroup) as exc:
        # errors raised inside a task group arrive wrapped in an exception group
        leaf = _leaf(exc)
        if isinstance(leaf, BrokenPipeError):
            return _reader_gone()
        if isinstance(leaf, ConfigError):
            for problem in [*leaf.problems, *leaf.warnings]:
                sys.stderr.write(f"{problem}\n")
            sys.stderr.write(f"cued: {len(leaf.problems)} problem(s) in {args.config}\n")
            return 2
        if isinstance(leaf, CuedError):
            sys.stderr.write(f"cued: error: {leaf}\n")
            return 1
        raise


def _reader_gone() -> int:
    """The reader of stdout left (``cued show RUN | head``): stop quietly, as ``cat``
    does. Python would print a second BrokenPipeError flushing stdout at exit: point
    stdout at /dev/null first."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141  # 128 + SIGPIPE, what a shell reports for a program ended by it


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _more_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = sub.add_parser(
        "init",
        help="write a commented starter configuration (and its drop folder)",
        description="Write a commented starter configuration that runs as written: a "
        "webhook, a folder of file drops and an hourly schedule, each starting one "
        "pipeline. An existing file is never overwritten.",
    )
    init.add_argument(
        "path", nargs="?", type=_text, help="where to write it (default: the --config path)"
    )
    store = sub.add_parser("store", help="the state itself: copy it to another store")
    store_verbs = store.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    copy = store_verbs.add_parser(
        "copy",
        help="copy the whole state into an empty store (SQLite to PostgreSQL, or back)",
        description="Copy every run, task, attempt, event, approval, alert and dedupe key "
        "from one store into another that is empty, and check that every table holds as "
        "many rows in both. Stop the daemon first. A store is a SQLite file's path, a "
        "postgresql:// URL, or env:NAME holding either.",
    )
    copy.add_argument("--from", dest="source", required=True, type=_text, metavar="STORE")
    copy.add_argument("--to", dest="target", required=True, type=_text, metavar="STORE")
    triggers = sub.add_parser("triggers", help="the configuration's triggers")
    verbs = triggers.add_subparsers(dest="triggers_command", required=True, metavar="COMMAND")
    test = verbs.add_parser(
        "test",
        help="try a trigger on stored events: which would match, with what inputs",
        description="Render a trigger's when, inputs and dedupe key against events stored "
        "from its source and show which would match and with what inputs; nothing is "
        "started. A field of event.data that the when reads and no event has is named.",
    )
    test.add_argument(
        "trigger",
        type=_text,
        help="its name, SOURCE->PIPELINE if it has none, or its number among [[triggers]] from 1",
    )
    which = test.add_mutually_exclusive_group()
    which.add_argument(
        "--last", "-n", type=int, default=10, help="the last N events of its source (10)"
    )
    which.add_argument("--event", "-e", type=_text, metavar="ID", help="this event only")
    _global_options(test, default=argparse.SUPPRESS)
