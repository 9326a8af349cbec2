"""The daemon: wires store, runner and servers into one task group, and stops gracefully.

```
async with store, http client, task group:
    runner.serve        resumes unfinished runs, then runs what is submitted
    control API         on a Unix socket beside the state file (the CLI's way in)
    signals             SIGTERM/SIGINT: stop taking work, let running tasks finish for
                        `shutdown_grace`, then cancel what is left (it runs again on restart)
```
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import tempfile
from contextlib import asynccontextmanager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from .api import build_app
from .errors import CuedError
from .logs import get_logger
from .registry import task_kinds
from .runner import Runner
from .server import serve_asgi
from .sqlite import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from .config import Config

__all__ = ["control_socket_path", "open_runner", "run_daemon"]

_MAX_UDS_PATH = 100  # sun_path holds 108 bytes on Linux; leave room


def control_socket_path(state: Path) -> Path:
    """The daemon's control socket: beside the state file, or in the temp folder (named by
    a hash of the state file's path) when that path is too long for a Unix socket."""
    beside = state.resolve().with_name(state.name + ".sock")
    if len(str(beside)) <= _MAX_UDS_PATH:
        return beside
    digest = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"cued-{digest}.sock"


@contextmanager
def _exclusive(state: Path) -> Iterator[None]:
    """One daemon per state file: a second one would run every run twice."""
    lock_path = state.resolve().with_name(state.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CuedError(f"another cued daemon is running on {str(state)!r}") from None
        yield
    finally:
        os.close(fd)


def _kinds(config: Config) -> dict[str, Any]:
    used = {t.kind for p in config.pipelines.values() for t in p.tasks.values()}
    return {name: cls() for name, cls in task_kinds().items() if name in used}


@asynccontextmanager
async def open_runner(config: Config, *, lock: bool = True) -> AsyncIterator[Runner]:
    """A runner on the config's store, serving in a task group of its own: for the daemon,
    and for ``cued trigger`` when no daemon runs.

    :param lock: take the state file's daemon lock
    :raises CuedError: if another daemon holds the lock
    """
    state = config.state_path
    limits = httpx.Limits(max_connections=config.daemon.max_running_tasks)
    with _exclusive(state) if lock else nullcontext():
        async with (
            open_store(state, synchronous=config.daemon.synchronous) as store,
            httpx.AsyncClient(limits=limits) as http,
            anyio.create_task_group() as tg,
        ):
            runner = Runner(config, store, _kinds(config), http)
            await tg.start(runner.serve)
            try:
                yield runner
            finally:
                tg.cancel_scope.cancel()


async def run_daemon(
    config: Config, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Run the daemon until SIGTERM or SIGINT (or until cancelled)."""
    log = get_logger()
    socket_path = control_socket_path(config.state_path)
    async with open_runner(config) as runner, anyio.create_task_group() as tg:
        await tg.start(lambda task_status: serve_asgi(build_app(runner), uds=str(socket_path), task_status=task_status))
        log.info(
            "daemon_started",
            state=str(config.state_path),
            control_socket=str(socket_path),
            pipelines=sorted(config.pipelines),
        )
        task_status.started()
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("daemon_stopping", signal=signal.Signals(signum).name, grace_s=config.daemon.shutdown_grace)
                break
        with anyio.move_on_after(config.daemon.shutdown_grace):
            await runner.drain()
        left = runner.running_tasks
        if left:
            log.warning("daemon_stopping_tasks", running=left, note="they run again on restart")
        tg.cancel_scope.cancel()
    socket_path.unlink(missing_ok=True)
    log.info("daemon_stopped")
