"""The ``files`` source in a daemon run in the test's own loop: its config, and waiting for
what it does to runs, events and the landing folder; files of any name dropped into it."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from cued.daemon.config import parse_config

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.assembly import DaemonInfo
    from cued.daemon.config import Config
    from cued.daemon.store import EventRow, RunRow

__all__ = [
    "BAD",
    "PATH_INPUT",
    "READ_TASK",
    "Finished",
    "drop",
    "events_of",
    "files_config",
    "files_config_text",
    "leaves",
    "names_in",
    "output_of",
    "read_dropped",
    "until",
]

READ_TASK = """kind = "python"
function = "tests.support.files_source:read_dropped"
args = { path = "{{ inputs.path }}" }
"""


PATH_INPUT = '{ path = "{{ event.data.path }}" }'


def read_dropped(path: str) -> dict[str, Any]:
    """A task (``python`` kind): what is at the path its run was given."""
    return {"path": path, "text": Path(path).read_text()}


def files_config(
    tmp_path: Path,
    source: str = "",
    *,
    daemon: str = "",
    pipeline: str = "",
    task: str = READ_TASK,
    inputs: str = PATH_INPUT,
) -> Config:
    text = f"""
[http]
listen = "127.0.0.1:0"
[daemon]
{daemon}
[sources.landing]
kind = "files"
path = "landing"
stable_for = "200ms"
{source}
[[triggers]]
source = "landing"
pipeline = "ingest"
inputs = {inputs}
[pipelines.ingest]
inputs = {{ path = "" }}
{pipeline}
[pipelines.ingest.tasks.read]
{task}
"""
    return parse_config(text, file=str(tmp_path / "config.toml"), base_dir=tmp_path)


class Finished:
    """The runs that finish from now on, to wait for."""

    def __init__(self, info: DaemonInfo) -> None:
        self.rows: list[RunRow] = []
        self._more = anyio.Event()
        info.runner.on_run_finished(self._on)

    def _on(self, row: RunRow) -> None:
        self.rows.append(row)
        self._more.set()

    async def wait(self, count: int, timeout_s: float = 10) -> list[RunRow]:
        with anyio.fail_after(timeout_s):
            while len(self.rows) < count:
                await self._more.wait()
                self._more = anyio.Event()
        return self.rows


async def until(done: Callable[[], bool], timeout_s: float = 10) -> None:
    """Poll for an effect nothing signals (a file moved without a run)."""
    with anyio.fail_after(timeout_s):
        while not done():  # noqa: ASYNC110 - nothing signals these effects
            await anyio.sleep(0.02)


async def events_of(info: DaemonInfo) -> list[EventRow]:
    return await info.runner.store.list_events(source="landing", limit=1000)


async def output_of(info: DaemonInfo, run_id: str) -> Any:
    (attempt,) = await info.runner.store.get_attempts(run_id)
    return attempt.output


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in leaves(e)]
    return [exc]


BAD = b"bad-\xff.csv"
"""A name Linux allows and UTF-8 does not."""


def drop(folder: Path, name: bytes, content: bytes = b"x", *, mtime_ns: int | None = None) -> None:
    """Write a file under a name of any bytes, atomically (written hidden, then renamed)."""
    hidden = os.path.join(os.fsencode(folder), b".dropping")
    with open(hidden, "wb") as f:
        f.write(content)
    if mtime_ns is not None:
        os.utime(hidden, ns=(mtime_ns, mtime_ns))
    os.rename(hidden, os.path.join(os.fsencode(folder), name))


def names_in(folder: Path) -> list[bytes]:
    """Every entry of ``folder`` that is not a folder (a link to one is a link), as bytes;
    none while ``folder`` is not there (yet)."""
    raw = os.fsencode(folder)
    if not os.path.isdir(raw):
        return []
    return sorted(
        n for n in os.listdir(raw) if not stat.S_ISDIR(os.lstat(os.path.join(raw, n)).st_mode)
    )


def files_config_text(daemon: str = "", *, stable_for: str = "100ms") -> str:
    """A config file's text like :func:`files_config`, with a task that does nothing."""
    return f"""
[http]
listen = "127.0.0.1:0"
[daemon]
{daemon}
[sources.landing]
kind = "files"
path = "landing"
stable_for = "{stable_for}"
rescan_every = "100ms"
[[triggers]]
source = "landing"
pipeline = "ingest"
inputs = {{ path = "{{{{ event.data.path }}}}" }}
[pipelines.ingest]
inputs = {{ path = "" }}
[pipelines.ingest.tasks.read]
kind = "shell"
command = "true"
"""
