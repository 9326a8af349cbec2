"""The daemon's files on disk are its user's alone: the state file, its WAL and
shared-memory files and the lock file are 0600, since they hold event payloads, headers and
task outputs; files an older version left readable by others are tightened at start."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.daemon import Daemon, cued

CONFIG = """
[daemon]
state = "state.db"
[http]
listen = ""
[pipelines.hello.tasks.greet]
kind = "shell"
argv = ["echo", "hello"]
"""


def write_config(folder: Path) -> Path:
    config = folder / "config.toml"
    config.write_text(CONFIG)
    return config


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_state_files_are_the_daemons_users_alone(tmp_path):
    config = write_config(tmp_path)
    state = tmp_path / "state.db"
    daemon = Daemon(config, state)
    await daemon.start()
    try:
        assert cued(config, "trigger", "hello", "--wait").returncode == 0
        names = ["state.db", "state.db-wal", "state.db-shm", "state.db.lock"]
        modes = {name: mode_of(tmp_path / name) for name in names}
    finally:
        assert daemon.stop() == 0
    assert modes == dict.fromkeys(names, 0o600)


async def test_state_files_left_readable_by_others_are_tightened_at_start(tmp_path):
    config = write_config(tmp_path)
    state = tmp_path / "state.db"
    # as an older version left them
    assert cued(config, "trigger", "hello").returncode == 0
    for name in ("state.db", "state.db.lock"):
        (tmp_path / name).chmod(0o644)
    daemon = Daemon(config, state)
    await daemon.start()
    try:
        modes = {name: mode_of(tmp_path / name) for name in ("state.db", "state.db.lock")}
    finally:
        assert daemon.stop() == 0
    logged = [json.loads(line) for line in daemon.log.read_text().splitlines()]
    tightened = {
        Path(e["path"]).name: (e["was"], e["now"])
        for e in logged
        if e["event"] == "file_mode_tightened"
    }
    assert modes == {"state.db": 0o600, "state.db.lock": 0o600}
    assert tightened == {"state.db": ("0644", "0600"), "state.db.lock": ("0644", "0600")}


def test_another_user_reading_the_state_is_told_whose_it_is_in_one_line(tmp_path):
    # tmp_path's folders are root's 0700: a world-readable copy of the folder lets `nobody`
    # reach the config, and the state file itself stays 0600, as the daemon leaves it
    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o755)
        config = write_config(folder)
        assert cued(config, "trigger", "hello", "--wait").returncode == 0
        config.chmod(0o644)
        as_nobody = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "runs"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(folder)
    assert as_nobody.returncode == 1
    assert as_nobody.stderr.count("\n") == 1, as_nobody.stderr
    assert "only OS user 'root' may read it" in as_nobody.stderr
    assert "Traceback" not in as_nobody.stderr
