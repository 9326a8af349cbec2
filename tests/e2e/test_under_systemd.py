"""The unit `cued service install` writes, run by systemd itself (PID 1 of namespaces of
its own, see tests/support/systemd_pid1.py): `systemctl start` returns once the daemon is
ready, and it is, whole, at that moment; the hardened sandbox lets the daemon and a shell
task run; `systemctl reload` applies a good file and fails on a broken one;
`systemctl stop` ends it cleanly; a wedged store writer gets it restarted by
systemd's watchdog.

It runs as root (`--user root`), not as a user of its own: the Python of this machine
lives under /root (pyenv), which no other user may enter. The hardening is the same.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.daemon import cued
from tests.support.raw_http import free_port
from tests.support.systemd_pid1 import booted

CONFIG = """
[http]
listen = "127.0.0.1:{port}"

[daemon]
state = "state/cued.db"
shutdown_grace = "2s"

[sources.hook]
kind = "webhook"
path = "/hooks/go"

[sources.drop]
kind = "files"
path = "drop"

[pipelines.go.tasks.write]
kind = "shell"
command = "echo ran > {out}"

[[triggers]]
source = "hook"
pipeline = "go"
"""


# a shorter watchdog than the unit's 30 s, so the restart comes well before SQLite's
# busy timeout (10 s) would fail the wedged commit and stop the daemon another way
E2E_DROP_IN = """\
[Unit]
DefaultDependencies=no

[Service]
WatchdogSec=4s
"""


def _wedge_the_writer_until_the_watchdog_restarts_it(systemd, folder, port):
    lock = sqlite3.connect(folder / "state" / "cued.db", isolation_level=None, timeout=30)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        # an event comes in; its commit waits on the test's lock (the request waits too)
        threading.Thread(
            target=lambda: _post_ignoring_errors(f"http://127.0.0.1:{port}/hooks/go"),
            daemon=True,
        ).start()
        deadline = time.monotonic() + 60
        while "cued.service: Watchdog timeout" not in systemd.log():
            assert time.monotonic() < deadline, systemd.log()
            time.sleep(0.1)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # Restart=on-failure: up again, ready again
    deadline = time.monotonic() + 60
    while (shown := systemd.show("cued", "NRestarts", "ActiveState"))["ActiveState"] != "active":
        assert time.monotonic() < deadline, systemd.log()
        time.sleep(0.1)
    assert shown["NRestarts"] == "1"
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30).is_success


def _post_ignoring_errors(url: str) -> None:
    # the daemon is killed with the request open: no answer is the expected end
    try:
        httpx.post(url, json={}, timeout=60)
    except httpx.HTTPError:
        pass


@pytest.fixture
def folder():
    # not in /tmp or /var/tmp, which the unit's PrivateTmp= hides from the daemon
    path = Path(tempfile.mkdtemp(prefix="cued-e2e-", dir="/srv"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_systemd_starts_the_installed_unit_when_ready_runs_it_hardened_and_stops_it(folder):
    port = free_port()
    config = folder / "config.toml"
    (folder / "drop").mkdir()
    config.write_text(CONFIG.format(port=port, out=folder / "state" / "ran"))
    units = folder / "units"
    installed = cued(config, "service", "install", "--user", "root", "--unit-dir", str(units))
    assert installed.returncode == 0, installed.stderr
    unit = (units / "cued.service").read_text()

    with booted() as systemd:
        systemd.add_unit("cued.service", unit)
        # the e2e target pulls in nothing of this machine; the unit's own ordering after
        # sysinit would start the machine's early services
        systemd.run("mkdir", "-p", "/run/systemd/system/cued.service.d")
        systemd.add_unit("cued.service.d/e2e.conf", E2E_DROP_IN)
        started = systemd.systemctl("start", "cued.service")
        log = systemd.run("journalctl", "-u", "cued", "--no-pager").stdout
        assert started.returncode == 0, started.stderr + log

        # `systemctl start` has returned: READY=1 came, so all of it answers now
        status = httpx.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=30)
        assert status.status_code == 200, status.text
        assert {s["name"]: s["state"] for s in status.json()["sources"]} == {
            "drop": "taking events",
            "hook": "taking events",
        }
        shown = systemd.show("cued", "ActiveState", "StatusText", "WatchdogUSec", "Type")
        assert shown["ActiveState"] == "active"
        assert shown["Type"] == "notify"
        assert shown["WatchdogUSec"] == "4s"  # the drop-in's: the unit says 30s
        assert "2/2 sources taking events" in shown["StatusText"]

        # a shell task runs in the sandbox (syscall filter, no new privileges, ...)
        hook = httpx.post(f"http://127.0.0.1:{port}/hooks/go", json={}, timeout=30)
        assert hook.status_code == 202, hook.text
        deadline = time.monotonic() + 60
        while not (folder / "state" / "ran").exists():  # written by the task's process
            assert time.monotonic() < deadline, httpx.get(
                f"http://127.0.0.1:{port}/api/v1/runs", timeout=30
            ).text
            time.sleep(0.05)

        # `systemctl reload` waits for the daemon's answer: applied, or refused (a failed
        # reload) with the running configuration kept
        good = config.read_text() + '\n[pipelines.added.tasks.t]\nkind = "sleep"\n'
        config.write_text(good)
        reloaded = systemd.systemctl("reload", "cued.service")
        assert reloaded.returncode == 0, reloaded.stderr
        status = httpx.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=30).json()
        assert (status["config_version"], status["last_reload"]["outcome"]) == (2, "applied")
        config.write_text(good + "\n[pipelines.broken]\nnot_a_key = 1\n")
        refused = systemd.systemctl("reload", "cued.service")
        assert refused.returncode != 0
        assert systemd.show("cued", "ActiveState") == {"ActiveState": "active"}
        config.write_text(good)  # the restart below reads the file again

        _wedge_the_writer_until_the_watchdog_restarts_it(systemd, folder, port)

        stopped = systemd.systemctl("stop", "cued.service")
        assert stopped.returncode == 0, stopped.stderr
        ended = systemd.show("cued", "ActiveState", "Result", "ExecMainStatus")
        assert ended == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
