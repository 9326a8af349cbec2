"""The unit `cued service unit` prints and `cued service install` writes: checked by
systemd's own tools (`systemd-analyze verify` and `security`), and the install run for
real as root: a system user made, the folders given to it, the unit written."""

from __future__ import annotations

import grp
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess

import pytest

from tests.support.daemon import cued

CONFIG = """
[daemon]
state = "state/cued.db"
shutdown_grace = "20s"

[sources.drop]
kind = "files"
path = "drop"

[pipelines.p.tasks.t]
kind = "sleep"
seconds = 0
"""


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    # installed by `make test` (Debian's systemd package) where it is missing
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: apt-get install systemd"
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def unit(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    printed = cued(config, "service", "unit")
    assert printed.returncode == 0, printed.stderr
    path = tmp_path / "cued.service"
    path.write_text(printed.stdout)
    return path, printed.stdout


def test_the_unit_passes_systemd_analyze_verify(unit):
    path, _ = unit
    checked = _analyze("verify", str(path))
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == "", checked.stderr


def test_the_unit_is_rated_2_0_or_lower_by_systemd_analyze_security(unit):
    path, _ = unit
    rated = _analyze("security", "--offline=yes", "--threshold=20", str(path))
    assert rated.returncode == 0, rated.stdout + rated.stderr
    found = re.search(r"Overall exposure level for cued\.service: (\d+\.\d)", rated.stdout)
    assert found, rated.stdout
    assert float(found.group(1)) <= 2.0


def test_the_unit_follows_the_config(unit, tmp_path):
    _, text = unit
    assert "Type=notify\n" in text
    assert "WatchdogSec=" in text
    assert f" --config {tmp_path / 'config.toml'} run\n" in text
    # shutdown_grace 20 s: the drain, the servers' own grace, and room to close
    assert "TimeoutStopSec=55s\n" in text
    # what the daemon writes outside /var/lib/cued: the state's folder, the drop folder
    assert f"ReadWritePaths={tmp_path / 'state'}\n" in text
    assert f"ReadWritePaths={tmp_path / 'drop'}\n" in text


def test_install_makes_the_user_gives_it_its_folders_and_writes_the_unit(tmp_path):
    assert os.geteuid() == 0, "the install test runs as root, as `make test` does here"
    user = f"cuedt{secrets.token_hex(4)}"
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    units = tmp_path / "units"
    try:
        done = cued(config, "service", "install", "--user", user, "--unit-dir", str(units))
        assert done.returncode == 0, done.stderr
        entry = pwd.getpwnam(user)
        assert entry.pw_shell == "/usr/sbin/nologin"
        assert entry.pw_uid < 1000  # a system user
        assert grp.getgrgid(entry.pw_gid).gr_name == user
        for folder in (tmp_path / "state", tmp_path / "drop"):
            info = folder.stat()
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (entry.pw_uid, 0o700)
        # its group reads the config (which may hold secrets); other users do not
        info = config.stat()
        assert info.st_gid == entry.pw_gid
        assert stat.S_IMODE(info.st_mode) & 0o047 == 0o040
        text = (units / "cued.service").read_text()
        assert f"User={user}\n" in text
        assert "outside '/etc/cued'" in done.stderr
        checked = _analyze("verify", str(units / "cued.service"))
        assert checked.returncode == 0, checked.stderr
        # again: the user is kept, nothing fails
        again = cued(config, "service", "install", "--user", user, "--unit-dir", str(units))
        assert again.returncode == 0, again.stderr
        assert f"user {user!r} kept" in again.stdout
    finally:
        subprocess.run(["userdel", user], capture_output=True, check=False)
        subprocess.run(["groupdel", user], capture_output=True, check=False)
