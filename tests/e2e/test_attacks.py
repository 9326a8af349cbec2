"""Attacks a review of the hardening (issue 8) tried on a real daemon, each stated as what
must hold:

- with ``recursive = true``, a folder tree ~1,000 deep does not kill the daemon;
- in open mode, another local user cannot trigger runs (as the daemon's user) over
  loopback TCP.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from tests.support.attacks import API
from tests.support.daemon import Daemon, query, wait_for
from tests.support.raw_http import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator


NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every local user may enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="cued-review-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=True)  # rmtree recurses too deep


RECURSIVE = """
[daemon]
state = "state.db"
[http]
listen = ""
[sources.landing]
kind = "files"
path = "landing"
recursive = true
stable_for = "0s"
rescan_every = "100ms"
[[triggers]]
source = "landing"
pipeline = "ingest"
[pipelines.ingest.tasks.read]
kind = "shell"
argv = ["true"]
"""


async def test_a_folder_tree_deeper_than_pythons_recursion_limit_does_not_kill_the_daemon(
    shared_dir: Path,
) -> None:
    """Linux allows ~2,000 levels of one-letter folders within PATH_MAX; the listing
    recurses once per level, and Python stops at ~1,000."""
    config = shared_dir / "config.toml"
    config.write_text(RECURSIVE)
    landing = shared_dir / "landing"
    landing.mkdir()
    deep = os.open(landing, os.O_RDONLY)
    for _ in range(1100):
        os.mkdir("d", dir_fd=deep)
        inner = os.open("d", os.O_RDONLY, dir_fd=deep)
        os.close(deep)
        deep = inner
    os.close(deep)
    daemon = Daemon(config, shared_dir / "state.db")
    await daemon.start()
    try:
        (landing / "after.csv").write_text("x")
        await wait_for(
            lambda: (
                (landing / "processed" / "after.csv").exists()
                or (daemon.process is not None and daemon.process.poll() is not None)
            )
        )
        alive = daemon.process is not None and daemon.process.poll() is None
    finally:
        daemon.stop()
    assert alive, daemon.log.read_text()[-2000:]
    assert (landing / "processed" / "after.csv").exists()


# -- open mode: every local user -----------------------------------------------------------


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


async def test_in_open_mode_another_local_user_cannot_start_runs_as_the_daemons_user(
    shared_dir: Path,
) -> None:
    """The control socket lets in only the daemon's user, root and its control group; the
    open API on loopback TCP lets any local user trigger (and cancel, retry) runs, which
    run as the daemon's user: the same takeover by another door."""
    port = free_port()
    config = shared_dir / "config.toml"
    config.write_text(API.replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
    config.chmod(0o644)
    state = shared_dir / "state.db"
    daemon = Daemon(config, state)
    await daemon.start()
    try:
        # the HTTP server listens a moment after the control socket answers
        await wait_for(lambda: listening(port))
        done = await anyio.run_process(
            [
                *NOBODY,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                "{}",
                f"http://127.0.0.1:{port}/api/v1/pipelines/echo/runs",
            ],
            check=False,
        )
        runs = int(query(state, "SELECT count(*) FROM runs")[0][0])
    finally:
        assert daemon.stop() == 0
    assert done.returncode == 0, done.stderr
    assert runs == 0, f"user nobody started a run (HTTP {done.stdout.decode()})"
