"""The daemon as a real subprocess, for tests of what survives a crash."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from cued.daemon.assembly import control_socket_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Sequence
    from pathlib import Path

UNFINISHED = "SELECT count(*) FROM runs WHERE state NOT IN ('succeeded', 'failed', 'cancelled')"


def cued(
    config: Path, *args: str, timeout_s: float = 30, run_as: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run the ``cued`` command line to the end.

    :param run_as: a command that runs the rest as another user (``setpriv ...``)
    """
    return subprocess.run(
        [*run_as, sys.executable, "-m", "cued.daemon.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


class Daemon:
    """``cued run`` in a subprocess; ``start`` returns once its control socket answers."""

    def __init__(self, config: Path, state: Path, *, run_as: Sequence[str] = ()) -> None:
        """:param run_as: a command that runs the rest as another user (``setpriv ...``)"""
        self.config = config
        self.state = state
        self.run_as = list(run_as)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = config.parent / "daemon.log"

    async def start(self, timeout_s: float = 20) -> None:
        command = [sys.executable, "-m", "cued.daemon.cli", "--config", str(self.config), "run"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [*self.run_as, *command],
                stdout=log,
                stderr=log,
            )
        socket_path = control_socket_path(self.state)
        with anyio.fail_after(timeout_s):
            # nothing signals readiness across processes but the socket itself
            while not await _answers(socket_path):
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"daemon exited with {self.process.returncode}:\n{self.log.read_text()}"
                    )
                await anyio.sleep(0.02)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout_s: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def webhook_config(daemon: str = "") -> str:
    """The head of a config for :func:`write_config` and :func:`post_events`: the HTTP front
    on ``@PORT@``, the state in ``state.db``, ``[daemon]`` settings ``daemon`` besides, and
    the webhook source ``hook`` at ``/hook`` (the delivery id in ``X-Delivery``)."""
    return f"""
[http]
listen = "127.0.0.1:@PORT@"
[daemon]
state = "state.db"
{daemon}
shutdown_grace = "1s"

[sources.hook]
kind = "webhook"
path = "/hook"
id_header = "X-Delivery"
"""


def write_config(directory: Path, template: str, **values: object) -> Path:
    """``directory``/config.toml: ``template`` with each ``@NAME@`` replaced by ``values[NAME]``."""
    for name, value in values.items():
        template = template.replace(f"@{name}@", str(value))
    config = directory / "config.toml"
    config.write_text(template)
    return config


@contextlib.asynccontextmanager
async def killed_after(config: Path, state: Path) -> AsyncIterator[Daemon]:
    """Start the daemon; kill -9 it when the block ends, however it ends."""
    daemon = Daemon(config, state)
    await daemon.start()
    try:
        yield daemon
    finally:
        daemon.kill9()


@contextlib.asynccontextmanager
async def stopped_after(config: Path, state: Path) -> AsyncIterator[Daemon]:
    """Start the daemon; stop it when the block ends, and check that it exited with 0."""
    daemon = Daemon(config, state)
    await daemon.start()
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0


async def run_to_the_end(config: Path, state: Path, timeout_s: float = 120) -> None:
    """Start the daemon, wait until every run in ``state`` has ended, and stop it."""
    async with stopped_after(config, state):
        await wait_for(lambda: query(state, UNFINISHED) == [(0,)], timeout_s=timeout_s)


async def post_events(
    port: int, events: Iterable[tuple[str, Any]], *, path: str = "/hook", check: bool = True
) -> list[httpx.Response]:
    """POST each ``(delivery id, JSON body)`` to the webhook source at ``path``, in order,
    the id in ``X-Delivery``.

    :param check: assert that each was accepted (202)
    """
    responses = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for delivery, body in events:
            response = await client.post(path, json=body, headers={"x-delivery": delivery})
            assert not check or response.status_code == 202, response.text
            responses.append(response)
    return responses


async def _answers(socket_path: Path) -> bool:
    if not socket_path.exists():  # noqa: ASYNC240 - a stat, not I/O that blocks
        return False
    try:
        stream = await anyio.connect_unix(socket_path)
    except OSError:
        return False
    await stream.aclose()
    return True


def query(state: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the daemon's state file directly (WAL lets us while it writes)."""
    with sqlite3.connect(state, timeout=10) as db:
        return db.execute(sql, args).fetchall()


async def wait_for(predicate, timeout_s: float = 30, interval_s: float = 0.02) -> None:
    """Poll ``predicate`` until true: for effects in another process, which cannot signal us."""
    with anyio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - effects in another process
            await anyio.sleep(interval_s)


def wait_until(predicate, *, what: str, timeout_s: float = 30, interval_s: float = 0.02) -> None:
    """:func:`wait_for` for tests that are not async (hypothesis drives them)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s}s for {what}")
        time.sleep(interval_s)
