"""How long the runs of a node killed with -9 wait before they run on another node:
``.venv/bin/python -m bench.failover`` (needs the PostgreSQL server at ``--server``,
default ``postgresql://postgres@127.0.0.1:5432``; each round gets a database of its own,
dropped after).

Two daemons (``cued run``, processes of their own) on one database; ``--runs`` webhook
events are posted to the first, each starting a run whose one task writes its run id, its
daemon's pid and the time, then sleeps. Once all of them run on the first daemon, it is
killed with -9; the time from the kill to each run's task starting on the second daemon
is the failover time. Halves, interleaved in ``--rounds`` rounds: ``--leases`` (the
default lease, 5 s, and a shorter one). The floor is the lease itself: a lease-based
design cannot tell a dead node from a slow one sooner.

Prints a Markdown table for BENCHMARKS.md, and every raw JSON line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

CONFIG = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "{url}"
node = "{node}"
lease = "{lease}s"
log_level = "warning"
shutdown_grace = "1s"

[sources.hook]
kind = "webhook"
path = "/hook"

[pipelines.hold]
[pipelines.hold.tasks.stamp]
kind = "shell"
command = "echo $CUED_RUN_ID $PPID $(date +%s.%N) >> {ledger}; sleep 60"

[[triggers]]
source = "hook"
pipeline = "hold"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ledger(path: Path) -> list[tuple[str, int, float]]:
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines()]
    return [(run, int(pid), float(at)) for run, pid, at in lines]


async def _until(check, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("the daemons did not get there")
        await asyncio.sleep(0.01)


async def one_round(server: str, lease_s: float, runs: int) -> dict[str, float]:
    name = f"cued_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(f"{server}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Path(tmp) / "ledger"
            ports = {node: _free_port() for node in ("a", "b")}
            for node, port in ports.items():
                folder = Path(tmp) / node
                folder.mkdir()
                config = folder / "config.toml"
                config.write_text(
                    CONFIG.format(
                        port=port, url=f"{server}/{name}", node=node, lease=lease_s, ledger=ledger
                    )
                )
                daemons[node] = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                    [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "run"],
                    stdout=subprocess.DEVNULL,
                    stderr=(folder / "log").open("wb"),
                    start_new_session=True,  # its tasks in its process group, to kill after
                )
            async with httpx.AsyncClient(timeout=10) as client:

                async def up(port: int) -> bool:
                    try:
                        return (await client.get(f"http://127.0.0.1:{port}/healthz")).is_success
                    except httpx.TransportError:
                        return False

                for port in ports.values():
                    await _until(lambda port=port: up(port))
                for n in range(runs):
                    answer = await client.post(f"http://127.0.0.1:{ports['a']}/hook", json={"n": n})
                    answer.raise_for_status()
            a_pid, b_pid = daemons["a"].pid, daemons["b"].pid

            async def on(pid: int) -> bool:
                return len([r for r in _ledger(ledger) if r[1] == pid]) >= runs

            await _until(lambda: on(a_pid))
            killed_at = time.time()
            os.killpg(a_pid, signal.SIGKILL)
            daemons["a"].wait()
            await _until(lambda: on(b_pid))
            waited = sorted(at - killed_at for _, pid, at in _ledger(ledger) if pid == b_pid)
    finally:
        for daemon in daemons.values():
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(30)
            try:
                os.killpg(daemon.pid, signal.SIGKILL)  # the tasks' sleeps
            except ProcessLookupError:
                pass
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    return {
        "lease_s": lease_s,
        "first_s": waited[0],
        "median_s": statistics.median(waited),
        "last_s": waited[-1],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--leases", default="5,2")
    args = parser.parse_args()
    leases = [float(x) for x in args.leases.split(",")]
    results: dict[float, list[dict[str, float]]] = {lease: [] for lease in leases}
    for round_no in range(args.rounds):
        for lease in leases:
            found = await one_round(args.server, lease, args.runs)
            sys.stderr.write(json.dumps({"round": round_no, **found}) + "\n")
            results[lease].append(found)
    header = (
        "| lease (the floor) | kill -9 to the last run running elsewhere, median of rounds "
        "(min - max) | ratio to the lease | first run, median |"
    )
    lines = [header, "|---|---|---|---|"]
    for lease, found in results.items():
        last = [f["last_s"] for f in found]
        first = [f["first_s"] for f in found]
        lines.append(
            f"| {lease:g} s | {statistics.median(last):.2f} s ({min(last):.2f} - "
            f"{max(last):.2f}) | {statistics.median(last) / lease:.2f}x | "
            f"{statistics.median(first):.2f} s |"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
