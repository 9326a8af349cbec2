"""Webhook benchmark: ``.venv/bin/python -m bench.webhook`` (needs ``wrk``: ``apt-get
install wrk``).

Side by side, in rounds, each in its own process:

* cued: the daemon on a config with one webhook source whose trigger starts a run (one
  ``sleep 0`` task) for every request; 202 once the event and its run are committed;
* bare: bench/webhook_bare.py, a Starlette endpoint that commits the body and answers 202.

wrk posts a ~100-byte JSON body from 2 threads over 32 connections for ``--seconds``;
requests/s and wrk's latency percentiles are reported, and non-2xx answers counted (cued
answers 429 when the backlog is saturated). Then, on an idle daemon, the latency from
sending a request to the run's task starting (p50/p99, sequential requests).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "state.db"
log_level = "warning"
max_running_tasks = 256
backlog_high_water = 10000
backlog_low_water = 5000
[sources.hook]
kind = "webhook"
path = "/hook"
[pipelines.p]
max_active_runs = 256
inputs = {{ n = 0 }}
[pipelines.p.tasks.t]
kind = "sleep"
[pipelines.stamp]
[pipelines.stamp.tasks.t]
kind = "python"
function = "time:time"
[[triggers]]
source = "hook"
pipeline = "p"
when = "event.data.kind == 'load'"
inputs = {{ n = "{{{{ event.data.n }}}}" }}
[[triggers]]
source = "hook"
pipeline = "stamp"
when = "event.data.kind == 'stamp'"
"""

LUA = """
wrk.method = "POST"
wrk.body = '{"kind": "load", "n": 1, "customer": "acme", "total": 123.45, "items": [1, 2, 3]}'
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk(port: int, seconds: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            "-c32",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/hook",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def run_cued(tmp: Path, seconds: int, script: Path, latency_runs: int) -> dict[str, object]:
    port = free_port()
    config = tmp / "config.toml"
    config.write_text(CONFIG.format(port=port))
    for f in tmp.glob("state.db*"):
        f.unlink()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "run"], cwd=ROOT
    )
    try:
        wait_listening(port)
        result: dict[str, object] = dict(wrk(port, seconds, script))
        time.sleep(2)  # let the runs started under load finish
        latencies = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(latency_runs):
                sent = time.time()
                runs = client.post("/hook", json={"kind": "stamp"}).json()["runs"]
                (run_id,) = runs
                while True:
                    row = client.get(f"/api/v1/runs/{run_id}").json()
                    if row["state"] in ("succeeded", "failed"):
                        break
                    time.sleep(0.001)
                latencies.append((run_id, sent))
    finally:
        daemon.terminate()
        daemon.wait(60)
    import sqlite3

    with sqlite3.connect(tmp / "state.db") as db:
        started = dict(
            db.execute(
                "SELECT run_id, output FROM attempts WHERE key = 't' AND output != 'null'"
            ).fetchall()
        )
        events = db.execute("SELECT count(*) FROM events").fetchone()[0]
        runs_done = db.execute(
            "SELECT count(*) FROM runs WHERE pipeline = 'p' AND state = 'succeeded'"
        ).fetchone()[0]
    lat = sorted((float(started[r]) - t) * 1000 for r, t in latencies)
    result.update(
        events_recorded=events,
        runs_succeeded=runs_done,
        event_to_task_p50_ms=round(statistics.median(lat), 3),
        event_to_task_p99_ms=round(lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))], 3),
    )
    return result


def run_bare(tmp: Path, seconds: int, script: Path) -> dict[str, object]:
    port = free_port()
    db = tmp / "bare.db"
    for f in tmp.glob("bare.db*"):
        f.unlink()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "webhook_bare.py"), str(port), str(db)]
    )
    try:
        wait_listening(port)
        return dict(wrk(port, seconds, script))
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--latency-runs", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        script = tmp / "post.lua"
        script.write_text(LUA)
        cued, bare = [], []
        for _ in range(args.rounds):
            cued.append(run_cued(tmp, args.seconds, script, args.latency_runs))
            sys.stderr.write(json.dumps({"cued": cued[-1]}) + "\n")
            bare.append(run_bare(tmp, args.seconds, script))
            sys.stderr.write(json.dumps({"bare": bare[-1]}) + "\n")

    def med(rows: list[dict[str, object]], key: str) -> float:
        return statistics.median(float(r[key]) for r in rows)  # type: ignore[arg-type]

    lines = [
        "| what | requests/s to 202 | vs bare | latency p50 / p99 (under load) | non-2xx | event to task start p50 / p99 (idle) |",
        "|---|---|---|---|---|---|",
        (
            f"| cued webhook -> event + run committed | {med(cued, 'rps'):,.0f} "
            f"| {med(cued, 'rps') / med(bare, 'rps'):.2f}x "
            f"| {med(cued, 'p50_ms'):.2f} ms / {med(cued, 'p99_ms'):.2f} ms | {med(cued, 'non_2xx'):.0f} "
            f"| {med(cued, 'event_to_task_p50_ms'):.2f} ms / {med(cued, 'event_to_task_p99_ms'):.2f} ms |"
        ),
        (
            f"| bare Starlette + aiosqlite group commit | {med(bare, 'rps'):,.0f} | 1.00x "
            f"| {med(bare, 'p50_ms'):.2f} ms / {med(bare, 'p99_ms'):.2f} ms | {med(bare, 'non_2xx'):.0f} | - |"
        ),
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
