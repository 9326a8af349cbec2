"""Idle CPU of the daemon as systemd runs it, beside the same daemon without systemd and
beside a bare asyncio process that only sleeps (the floor), all in the same window.

Each round starts three processes at once: the floor; ``cued run`` on the example
config.toml (webhook, file drop, schedule; its HTTP port moved to a free one); and the
same with a real notification socket and ``WATCHDOG_USEC`` of 30 s, what the unit's
``WatchdogSec=30s`` gives. Once each is up, the CPU time it used (user + system, from
/proc) is read, and again ``--seconds`` later. Medians over ``--rounds``.

Run: ``.venv/bin/python -m bench.service_idle`` (default 3 rounds of 60 s). Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(folder: Path) -> Path:
    text = (_ROOT / "config.toml").read_text()
    text = re.sub(r'listen = "127\.0\.0\.1:8080"', f'listen = "127.0.0.1:{_free_port()}"', text)
    text = text.replace('log_level = "info"', 'log_level = "warning"')
    (folder / "drop").mkdir()
    path = folder / "config.toml"
    path.write_text(text)
    return path


def _cued(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "run"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_ready(notify: socket.socket) -> None:
    notify.settimeout(60)
    while b"READY=1" not in notify.recv(65536):
        pass


def _round(seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as plain_dir, tempfile.TemporaryDirectory() as sd_dir:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = f"\0cued-bench-{os.getpid()}-{time.monotonic_ns()}"
        notify.bind(address)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        probe_address = f"\0cued-bench-probe-{os.getpid()}-{time.monotonic_ns()}"
        probe.bind(probe_address)
        floor = subprocess.Popen(
            [sys.executable, "-c", f"import asyncio; asyncio.run(asyncio.sleep({seconds * 3}))"]
        )
        plain = _cued(_config(Path(plain_dir)), {"NOTIFY_SOCKET": "@" + probe_address[1:]})
        systemd = _cued(
            _config(Path(sd_dir)),
            {"NOTIFY_SOCKET": "@" + address[1:], "WATCHDOG_USEC": "30000000"},
        )
        try:
            _wait_ready(notify)
            _wait_ready(probe)  # the plain one is told apart only by its watchdog
            probe.close()  # from now on its notifications go nowhere, as without systemd
            processes = {"floor": floor, "cued": plain, "cued_systemd": systemd}
            before = {name: _cpu_s(p.pid) for name, p in processes.items()}
            notify.settimeout(0.2)
            datagrams = 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    notify.recv(65536)
                    datagrams += 1
                except TimeoutError:
                    pass
            after = {name: _cpu_s(p.pid) for name, p in processes.items()}
        finally:
            for process in (floor, plain, systemd):
                process.terminate()
                process.wait(60)
            notify.close()
        used = {name: (after[name] - before[name]) / seconds * 100 for name in after}
        return {**used, "datagrams": datagrams}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    rounds = [_round(args.seconds) for _ in range(args.rounds)]
    result = {
        key: round(statistics.median(r[key] for r in rounds), 3)
        for key in ("floor", "cued", "cued_systemd", "datagrams")
    }
    line = {"seconds": args.seconds, "rounds": args.rounds, "cpu_percent": result}
    sys.stdout.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
