"""cued under systemd, with a test in systemd's place: the real notification protocol on a
real AF_UNIX datagram socket, a real inherited listening socket, the journal's stream.

- READY=1 comes only once the store is open, unfinished runs are resumed, every source
  takes events and the HTTP listener answers;
- watchdog pings come while the daemon makes progress, and stop while the store writer
  is wedged (the test holds SQLite's write lock from another connection);
- RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a reload, applied or refused;
- STOPPING=1 at SIGTERM, then a clean exit;
- socket activation: HTTP served on the socket passed as descriptor 3, and a connection
  made before the daemon started is answered;
- under JOURNAL_STREAM, `<N>` lines without timestamps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading

import httpx
import pytest

from tests.support.daemon import cued, query
from tests.support.raw_http import free_port
from tests.support.systemd import NotifySocket, spawn_daemon

CONFIG = """
[http]
listen = "127.0.0.1:{port}"

[daemon]
state = "state.db"
shutdown_grace = "1s"

[sources.hook]
kind = "webhook"
path = "/hooks/hold"

[sources.drop]
kind = "files"
path = "drop"

[sources.tick]
kind = "schedule"
every = "1h"
catchup = "none"

[pipelines.hold.tasks.wait]
kind = "shell"
command = "while [ ! -f {release} ]; do sleep 0.05; done"

[[triggers]]
source = "hook"
pipeline = "hold"
"""


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "drop").mkdir()
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(port=port, release=tmp_path / "release"))
    yield config, port
    (tmp_path / "release").touch()  # no task's shell loop outlives the test


def _stop(process, timeout_s: float = 60) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _ready(message) -> bool:
    return message.get("READY") == "1"


def test_ready_comes_only_once_store_resume_sources_and_listener_are_up(setup, tmp_path):
    config, port = setup
    state = tmp_path / "state.db"
    log = tmp_path / "daemon.log"
    # a run left unfinished by a kill -9, for the next start to resume
    with NotifySocket() as notify:
        first = spawn_daemon(config, env={"NOTIFY_SOCKET": notify.address}, stderr=log)
        try:
            notify.until(_ready, alive=first)
            answer = httpx.post(f"http://127.0.0.1:{port}/hooks/hold", json={}, timeout=30)
            assert answer.status_code == 202, answer.text
            (run_id,) = answer.json()["runs"]
            notify.until(lambda m: "1 run active" in m.get("STATUS", ""), alive=first)
        finally:
            first.kill()
            first.wait()
    assert query(state, "SELECT state FROM runs WHERE run_id = ?", run_id) == [("running",)]

    with NotifySocket(abstract=True) as notify:
        daemon = spawn_daemon(config, env={"NOTIFY_SOCKET": notify.address}, stderr=log)
        try:
            before = notify.until(_ready, alive=daemon)
            # nothing said ready before this, and this one says it all at once
            assert [m for m in before if "READY" in m] == [before[-1]]
            assert "1 run active" in before[-1]["STATUS"]
            assert "3/3 sources taking events" in before[-1]["STATUS"]
            # at READY, without waiting: the listener answers, the webhook is mounted (a
            # path not served yet would answer 503), the unfinished run is in memory again
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                ready = http.get("/readyz")
                assert ready.status_code == 200, ready.text
                status = http.get("/api/v1/status").json()
                assert {s["name"]: s["state"] for s in status["sources"]} == {
                    "drop": "taking events",
                    "hook": "taking events",
                    "tick": "taking events",
                }
                assert status["active_runs"] == 1
                assert status["config_version"] == 1  # the same text at each start
                assert status["last_reload"] is None
                hooked = http.post("/hooks/hold", json={"again": True})
                assert hooked.status_code == 202, hooked.text
            # `cued status` reads the same through the control socket
            shown = cued(config, "status")
            assert shown.returncode == 0, shown.stderr
            assert "hook" in shown.stdout
            assert "taking events" in shown.stdout
        finally:
            assert _stop(daemon) == 0, log.read_text()
    assert cued(config, "status").returncode == 3  # none runs now


def test_stopping_is_sent_at_sigterm_and_the_daemon_exits_cleanly(setup, tmp_path):
    config, _ = setup
    log = tmp_path / "daemon.log"
    with NotifySocket() as notify:
        daemon = spawn_daemon(config, env={"NOTIFY_SOCKET": notify.address}, stderr=log)
        try:
            notify.until(_ready, alive=daemon)
            daemon.send_signal(signal.SIGTERM)
            notify.until(lambda m: m.get("STOPPING") == "1", alive=daemon)
        finally:
            assert _stop(daemon) == 0, log.read_text()
    # systemd's variables are the daemon's alone: no task's process inherits them
    assert "NOTIFY_SOCKET" not in log.read_text()


def test_a_reload_is_reloading_then_ready_and_cued_status_names_its_version(setup, tmp_path):
    config, port = setup
    log = tmp_path / "daemon.log"
    with NotifySocket() as notify:
        daemon = spawn_daemon(config, env={"NOTIFY_SOCKET": notify.address}, stderr=log)
        try:
            notify.until(_ready, alive=daemon)
            config.write_text(config.read_text() + '\n[pipelines.added.tasks.t]\nkind = "sleep"\n')
            daemon.send_signal(signal.SIGHUP)
            around = notify.until(_ready, alive=daemon)
            # RELOADING=1 with the monotonic clock's time (Type=notify-reload), then READY=1
            (reloading,) = [m for m in around if m.get("RELOADING") == "1"]
            assert int(reloading["MONOTONIC_USEC"]) > 0
            assert around.index(reloading) < len(around) - 1
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                status = http.get("/api/v1/status").json()
            assert status["config_version"] == 2
            assert status["last_reload"]["outcome"] == "applied"
            # a file that does not check is refused: READY=1 again, the old version runs on
            config.write_text(config.read_text() + "\n[pipelines.broken]\nnot_a_key = 1\n")
            daemon.send_signal(signal.SIGHUP)
            notify.until(lambda m: m.get("RELOADING") == "1", alive=daemon)
            notify.until(_ready, alive=daemon)
            shown = cued(config, "status")
            assert "config version: 2" in shown.stdout, shown.stdout
            assert "last reload: refused" in shown.stdout, shown.stdout
        finally:
            assert _stop(daemon) == 0, log.read_text()


def test_watchdog_pings_stop_while_the_store_writer_is_wedged_and_come_back(setup, tmp_path):
    config, port = setup
    state = tmp_path / "state.db"
    log = tmp_path / "daemon.log"
    env = {"WATCHDOG_USEC": "2000000"}  # a ping each second while all is well
    with NotifySocket() as notify:
        daemon = spawn_daemon(config, env={**env, "NOTIFY_SOCKET": notify.address}, stderr=log)
        try:
            notify.until(_ready, alive=daemon)
            for _ in range(2):
                notify.until(lambda m: m.get("WATCHDOG") == "1", alive=daemon)

            # wedge the writer: the test holds SQLite's write lock, an event comes in
            lock = sqlite3.connect(state, isolation_level=None, timeout=30)
            lock.execute("BEGIN EXCLUSIVE")
            answers: list[int] = []
            poster = threading.Thread(
                target=lambda: answers.append(
                    httpx.post(
                        f"http://127.0.0.1:{port}/hooks/hold", json={}, timeout=60
                    ).status_code
                )
            )
            poster.start()
            try:
                withheld = notify.until(
                    lambda m: "watchdog withheld: store writer stalled" in m.get("STATUS", ""),
                    alive=daemon,
                )
                # one check later it is still withheld, and no ping came in between
                between = notify.until(
                    lambda m: "watchdog withheld" in m.get("STATUS", ""), alive=daemon
                )
                assert not any("WATCHDOG" in m for m in between), between
                assert withheld[-1] != between[-1]
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            poster.join(60)
            assert answers == [202]
            # the writer committed: pings again
            notify.until(lambda m: m.get("WATCHDOG") == "1", alive=daemon)
        finally:
            assert _stop(daemon) == 0, log.read_text()
    assert "watchdog_withheld" in log.read_text()
    assert "watchdog_resumed" in log.read_text()


def _listening(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(16)
    return sock


def test_socket_activation_serves_http_on_the_passed_socket(setup, tmp_path):
    config, port = setup
    log = tmp_path / "daemon.log"
    passed = _listening()
    passed_port = passed.getsockname()[1]
    # a client connects while no daemon runs yet (a restart): the kernel queues it
    early = socket.create_connection(("127.0.0.1", passed_port), timeout=60)
    early.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    with NotifySocket() as notify:
        daemon = spawn_daemon(
            config,
            env={"NOTIFY_SOCKET": notify.address},
            stderr=log,
            pass_fds=(passed.fileno(),),
            listen_pid=True,
        )
        passed.close()  # the daemon holds it now
        try:
            notify.until(_ready, alive=daemon)
            answer = b""
            while chunk := early.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert httpx.get(f"http://127.0.0.1:{passed_port}/readyz", timeout=30).is_success
            # [http] listen is not bound: the passed socket takes its place
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        finally:
            early.close()
            assert _stop(daemon) == 0, log.read_text()
    assert '"socket_activated": true' in log.read_text()


def test_a_passed_socket_beyond_loopback_is_refused_with_an_open_api(setup, tmp_path):
    config, _ = setup
    log = tmp_path / "daemon.log"
    passed = _listening("0.0.0.0")
    daemon = spawn_daemon(config, env={}, stderr=log, pass_fds=(passed.fileno(),), listen_pid=True)
    passed.close()
    assert daemon.wait(60) == 1
    assert "listens beyond loopback" in log.read_text()


def test_under_journal_stream_each_record_is_one_priority_line_without_timestamp(setup, tmp_path):
    config, _ = setup
    log = tmp_path / "daemon.log"
    log.touch()
    stream = os.stat(log)
    with NotifySocket() as notify:
        daemon = spawn_daemon(
            config,
            env={
                "NOTIFY_SOCKET": notify.address,
                "JOURNAL_STREAM": f"{stream.st_dev}:{stream.st_ino}",
            },
            stderr=log,
        )
        try:
            notify.until(_ready, alive=daemon)
        finally:
            assert _stop(daemon) == 0, log.read_text()
    lines = log.read_text().splitlines()
    started = next(line for line in lines if "daemon_started" in line)
    assert started.startswith("<6>daemon_started ")
    assert "timestamp" not in started
    assert all(line.startswith(("<6>", "<4>", "<3>", "<7>")) for line in lines), lines


def test_json_lines_stay_when_journal_stream_names_another_file(setup, tmp_path):
    """The variable is inherited by whatever the daemon's stderr is redirected to."""
    config, _ = setup
    log = tmp_path / "daemon.log"
    other = os.stat(config)
    with NotifySocket() as notify:
        daemon = spawn_daemon(
            config,
            env={
                "NOTIFY_SOCKET": notify.address,
                "JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}",
            },
            stderr=log,
        )
        try:
            notify.until(_ready, alive=daemon)
        finally:
            assert _stop(daemon) == 0, log.read_text()
    started = next(
        json.loads(line) for line in log.read_text().splitlines() if "daemon_started" in line
    )
    assert started["event"] == "daemon_started"
    assert "timestamp" in started
