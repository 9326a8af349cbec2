"""Run start to first task start through a running daemon, as a user's script would do it.

The daemon runs in its own process (``cued run``) on a temporary config; this process asks
it for runs over its control socket (HTTP over a Unix socket, what ``cued trigger`` uses),
one after another on an otherwise idle daemon. The one task of each run returns
``time.time()`` when its body starts; the latency is that minus ``time.time()`` taken just
before the request was sent. Both clocks are the same machine's wall clock.

Prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

from cued.daemon.assembly import control_socket_path

CONFIG = """
[daemon]
state = "state.db"
log_level = "warning"

[pipelines.first]
[pipelines.first.tasks.stamp]
kind = "python"
function = "time:time"
"""


async def main(runs: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(CONFIG)
        state = Path(tmp) / "state.db"
        socket_path = control_socket_path(state)
        command = [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "run"]
        daemon = subprocess.Popen(command)  # noqa: ASYNC220 - returns at once
        try:
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path), retries=50)
            async with httpx.AsyncClient(transport=transport, base_url="http://cued") as client:
                with anyio.fail_after(20):
                    while not socket_path.exists():  # noqa: ASYNC110 - another process
                        await anyio.sleep(0.01)
                requested: dict[str, float] = {}
                for i in range(runs + 10):
                    before = time.time()
                    response = await client.post("/api/v1/pipelines/first/runs?wait=true", json={})
                    response.raise_for_status()
                    if i >= 10:  # the first few warm the daemon up
                        requested[response.json()["run_id"]] = before
        finally:
            daemon.terminate()
            daemon.wait(30)
        with sqlite3.connect(state) as db:
            started = dict(
                db.execute(
                    "SELECT run_id, output FROM attempts WHERE state = 'succeeded'"
                ).fetchall()
            )
    latencies = sorted((float(started[r]) - t) * 1000 for r, t in requested.items())
    return {
        "name": "cued daemon, trigger over the control socket",
        "runs": runs,
        "first_task_p50_ms": round(statistics.median(latencies), 3),
        "first_task_p99_ms": round(
            latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))], 3
        ),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    sys.stdout.write(json.dumps(anyio.run(main, args.runs)) + "\n")
