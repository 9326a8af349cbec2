"""How the ``cued`` command shows things: tables, and a run followed as it goes.

On a terminal, with colour (``rich``): states coloured, headers bold, a live display of a
run's tasks. Piped, or with ``NO_COLOR`` set (https://no-color.org) or ``TERM=dumb``,
plain text: the tables exactly as they always were (scripts and tests read them), and a
followed run as one line per change.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from cued.daemon.ops.follow import AttemptEnded, AttemptStarted, RunSettled

if TYPE_CHECKING:
    from types import TracebackType
    from typing import IO, Self

    from rich.progress import TaskID

    from cued.daemon.ops.follow import Change

__all__ = [
    "RunView",
    "clip",
    "colour",
    "duration",
    "out",
    "run_view",
    "status",
    "table",
    "timestamp",
]

#: The colour of each run, task or event state, on a terminal.
_STYLES = {
    "succeeded": "green",
    "matched": "green",
    "matches": "green",
    "failed": "bold red",
    "upstream_failed": "red",
    "invalid": "red",
    "error": "bold red",
    "cancelled": "magenta",
    "running": "yellow",
    "queued": "cyan",
    "pending": "cyan",
    "up_for_retry": "yellow",
    "waiting": "blue",
    "unmatched": "dim",
    "held": "blue",
    "dropped": "magenta",
    "no match": "dim",
}


def out(text: str = "") -> None:
    """A line to stdout."""
    sys.stdout.write(text + "\n")


def progress(text: str) -> None:
    """A progress line on stderr: rewritten in place on a terminal, one line each else."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\x1b[K{text}")
    else:
        sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


def progress_done() -> None:
    """End the progress line (on a terminal: the next output starts on a line of its own)."""
    if sys.stderr.isatty():
        sys.stderr.write("\n")


def timestamp(ts: float | None) -> str:
    """A time as ``2026-01-31 12:00:00`` (UTC); ``-`` for none."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def duration(start: float | None, end: float | None) -> str:
    """From ``start`` to ``end`` (``12ms``, ``3.4s``), or to now with a ``+`` if it has
    not ended; ``-`` if it has not started."""
    if start is None:
        return "-"
    seconds = (end if end is not None else time.time()) - start
    text = f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"
    return text if end is not None else text + "+"


def clip(text: str, width: int = 100) -> str:
    """``text`` on one line, cut at ``width`` with an ellipsis."""
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def colour(stream: IO[str] | None = None) -> bool:
    """Whether to colour what goes to ``stream`` (stdout): only on a terminal, and not
    with ``NO_COLOR`` set (to anything not empty) or ``TERM=dumb``."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def table(rows: list[list[str]]) -> None:
    """A table to stdout, the first row its header: columns aligned, two spaces apart."""
    if not colour():
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            line = "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True))
            sys.stdout.write(line.rstrip() + "\n")
        return
    # rich is imported only here and in _LiveView: a command piped does without it
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    shown = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold")
    for name in rows[0]:
        # a terminal narrower than the table folds the last column, never cuts ids
        shown.add_column(name, overflow="fold", no_wrap=name != rows[0][-1])
    for r in rows[1:]:
        shown.add_row(*(Text(cell, style=_STYLES.get(cell, "")) for cell in r))
    Console(highlight=False).print(shown)


class RunView(Protocol):
    """Shows a followed run's changes (:func:`cued.daemon.ops.follow.follow`)."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def show(self, change: Change) -> None: ...


def run_view() -> RunView:
    """A live display on a terminal; else plain lines on stderr (stdout keeps the one
    line that says how the run ended, as it always has, for scripts)."""
    return _LiveView() if colour() or _terminal_without_colour() else _LineView()


def _terminal_without_colour() -> bool:
    # NO_COLOR asks for no colour, not for no display: a terminal still gets the live one
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def _took(change: AttemptEnded) -> str:
    a = change.attempt
    seconds = (a.ended_at or a.started_at) - a.started_at
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def _name(change: AttemptStarted | AttemptEnded) -> str:
    a = change.attempt
    return a.key if a.attempt == 1 else f"{a.key} (attempt {a.attempt})"


class _LineView:
    """``task greet started``, ``task greet succeeded in 12ms``: one line per change."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def show(self, change: Change) -> None:
        if isinstance(change, AttemptStarted):
            line = f"task {_name(change)} started"
        elif isinstance(change, AttemptEnded):
            error = change.attempt.error
            line = f"task {_name(change)} {change.attempt.state} in {_took(change)}" + (
                f": {_one_line(error)}" if error else ""
            )
        else:
            return  # the caller says how the run ended, on stdout
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class _LiveView:
    """A spinner per running task, a mark and its time once it ends."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn

        self._progress = Progress(
            SpinnerColumn(finished_text=""),
            TextColumn("{task.description}"),
            console=Console(highlight=False),
            transient=False,
        )
        self._tasks: dict[tuple[str, int], TaskID] = {}

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def show(self, change: Change) -> None:
        from rich.markup import escape

        if isinstance(change, RunSettled):
            return
        a = change.attempt
        at = (a.key, a.attempt)
        if isinstance(change, AttemptStarted):
            self._tasks[at] = self._progress.add_task(escape(_name(change)), total=None)
            return
        task = self._tasks.get(at)
        if task is None:
            return
        mark, style = ("✓", "green") if a.state == "succeeded" else ("✗", "bold red")
        detail = f"[{style}]{mark} {escape(_name(change))} {a.state} in {_took(change)}[/]"
        if a.error:
            detail += f": {escape(_one_line(a.error)[:200])}"
        self._progress.update(task, description=detail, total=1, completed=1)
        self._progress.stop_task(task)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m {secs}s"


def status(answer: dict[str, Any]) -> str:
    """``cued status``: the daemon, then one line per source (the API's answer)."""
    version = answer.get("config_version") or "not recorded"
    reload = answer.get("last_reload")
    lines = [
        f"cued {answer['version']}, up {_uptime(answer['uptime_s'])}",
        f"active runs: {answer['active_runs']}",
        f"backlog: {answer['backlog']}"
        + (" (saturated: sources held back)" if answer["saturated"] else ""),
        f"config version: {version}",
        "last reload: "
        + (
            "none"
            if not reload
            else f"{reload['outcome']}" + (f" ({reload['error']})" if reload.get("error") else "")
        ),
        "sources:",
    ]
    width = max((len(s["name"]) for s in answer["sources"]), default=0)
    lines.extend(f"  {s['name']:<{width}}  {s['kind']:<9} {s['state']}" for s in answer["sources"])
    if not answer["sources"]:
        lines.append("  (none configured)")
    return "\n".join(lines)
