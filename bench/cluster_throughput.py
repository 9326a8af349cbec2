"""A webhook flood through one, two and three daemons on one PostgreSQL database, and
through one daemon on SQLite, side by side in one run: ``.venv/bin/python -m
bench.cluster_throughput`` (needs the PostgreSQL server at ``--server``, default
``postgresql://postgres@127.0.0.1:5432``; each half gets a database, or a folder, of its
own, dropped after).

Every daemon (``cued run``, a process of its own, a config folder of its own) has the
same config: one webhook source whose trigger starts a run of a pipeline of ``--tasks``
no-op tasks (``sleep``, 0 s, no dependencies between them) for each request. The halves,
interleaved in ``--rounds`` rounds (so the machine's drift hits all alike):

* 1 node on SQLite (``synchronous = full``, the default);
* 1, 2 and 3 nodes on one PostgreSQL database (the nodes on this one machine share its
  cores with each other, with the server and with the client).

Each half: a warm-up (a few events per node, to their end), then ``--events`` webhook
requests, ``--concurrency`` in flight, spread evenly over the nodes (client ``i`` posts
to node ``i mod N``); a ``429`` (backlog full) is sent again after 50 ms, and counted.
Measured from the stored timestamps: runs/s and task instances/s from the first request
sent to the last run ended (``runs.ended_at``), and the latency from each request sent to
its run's first task attempt starting (``attempts.started_at``), p50 / p99, under the
flood. Then ``--paced`` requests one after another (each waits for its run to end), over
the nodes in turn: the same latency on an idle cluster.

Prints a Markdown table for BENCHMARKS.md, and every raw JSON line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

CONFIG = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "{state}"
node = "n{n}"
log_level = "warning"
max_running_tasks = 256
backlog_high_water = 10000
backlog_low_water = 5000

[sources.hook]
kind = "webhook"
path = "/hook"

[pipelines.flood]
{tasks}

[[triggers]]
source = "hook"
pipeline = "flood"
"""

TASK = """[pipelines.flood.tasks.t{i}]
kind = "sleep"
seconds = 0
"""

_ENDED = "('succeeded', 'failed', 'cancelled', 'skipped')"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _State:
    """Reads of one half's store: a SQLite file or a PostgreSQL database."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.pg = where.startswith("postgresql://")

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        if self.pg:
            db = await asyncpg.connect(self.where)
            try:
                return [tuple(r) for r in await db.fetch(sql)]
            finally:
                await db.close()
        with sqlite3.connect(f"file:{self.where}?mode=ro", uri=True, timeout=30) as db:
            return db.execute(sql).fetchall()

    async def ended(self) -> int:
        return int((await self.fetch(f"SELECT count(*) FROM runs WHERE state IN {_ENDED}"))[0][0])

    async def timings(self) -> dict[str, tuple[str, float, float]]:
        """Each run's state, when its first task attempt started, when it ended."""
        rows = await self.fetch(
            "SELECT r.run_id, r.state, min(a.started_at), r.ended_at FROM runs r "
            "JOIN attempts a ON a.run_id = r.run_id GROUP BY r.run_id, r.state, r.ended_at"
        )
        return {str(r[0]): (str(r[1]), float(r[2]), float(r[3] or 0.0)) for r in rows}


async def _until_ended(state: _State, count: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while await state.ended() < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} runs did not end in {timeout_s} s")
        await asyncio.sleep(0.2)


async def _post(client: httpx.AsyncClient, port: int, n: int) -> tuple[str, float, int]:
    """Post one event until it is taken; its run, when it was first sent, how many 429s."""
    sent, refused = time.time(), 0
    while True:
        answer = await client.post(f"http://127.0.0.1:{port}/hook", json={"n": n})
        if answer.status_code != 429:
            answer.raise_for_status()
            (run_id,) = answer.json()["runs"]
            return str(run_id), sent, refused
        refused += 1
        await asyncio.sleep(0.05)


def _client(connections: int) -> httpx.AsyncClient:
    # a connection idle for as long as the daemon keeps one open (uvicorn's keep-alive,
    # 5 s, httpx's default expiry too) may be closed under the request sent on it: on a
    # starved machine the flood's connections idle that long, so they expire sooner
    limits = httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2
    )
    return httpx.AsyncClient(timeout=60, limits=limits)


async def _drive(
    ports: list[int], state: _State, events: int, concurrency: int, paced: int
) -> dict[str, Any]:
    warm = 5 * len(ports)
    async with _client(len(ports)) as client:
        for n in range(warm):
            await _post(client, ports[n % len(ports)], -1)
    await _until_ended(state, warm)
    sent: list[tuple[str, float]] = []
    refused = 0
    counter = iter(range(events))
    async with _client(concurrency) as client:

        async def worker(i: int) -> None:
            nonlocal refused
            port = ports[i % len(ports)]
            for n in counter:
                run_id, at, r = await _post(client, port, n)
                sent.append((run_id, at))
                refused += r

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    await _until_ended(state, warm + events)
    # then one at a time, each to its end, over the nodes in turn
    idle: list[tuple[str, float]] = []
    async with _client(len(ports)) as client:
        for n in range(paced):
            run_id, at, _ = await _post(client, ports[n % len(ports)], n)
            idle.append((run_id, at))
            await _until_ended(state, warm + events + n + 1)
    timings = await state.timings()
    first = min(at for _, at in sent)
    last = max(timings[run_id][2] for run_id, _ in sent)
    flood = [(timings[run_id][1] - at) * 1000 for run_id, at in sent]
    quiet = [(timings[run_id][1] - at) * 1000 for run_id, at in idle]
    failed = sum(timings[run_id][0] != "succeeded" for run_id, _ in sent)
    return {
        "runs_per_s": round(events / (last - first), 1),
        "event_to_task_p50_ms": round(statistics.median(flood), 2),
        "event_to_task_p99_ms": round(percentile(flood, 0.99), 2),
        "idle_event_to_task_p50_ms": round(statistics.median(quiet), 2) if quiet else None,
        "idle_event_to_task_p99_ms": round(percentile(quiet, 0.99), 2) if quiet else None,
        "refused_429": refused,
        "failed": failed,
    }


async def _up(ports: list[int], daemons: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=5) as client:
        for port, daemon in zip(ports, daemons, strict=True):
            while True:
                if daemon.poll() is not None:
                    raise RuntimeError(f"the daemon on port {port} exited ({daemon.returncode})")
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).is_success:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the daemon on port {port} did not start")
                await asyncio.sleep(0.05)


async def one_half(server: str | None, nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    """``nodes`` daemons on a new database of ``server`` (None: one daemon on SQLite)."""
    admin, name = None, f"cued_bench_{secrets.token_hex(4)}"
    daemons: list[subprocess.Popen[bytes]] = []
    tasks = "\n".join(TASK.format(i=i) for i in range(args.tasks))
    with tempfile.TemporaryDirectory() as tmp:
        if server is None:
            url, where = "state.db", str(Path(tmp) / "n0" / "state.db")
        else:
            admin = await asyncpg.connect(f"{server}/postgres")
            await admin.execute(f'CREATE DATABASE "{name}"')
            url = where = f"{server}/{name}"
        try:
            ports = [_free_port() for _ in range(nodes)]
            for n, port in enumerate(ports):
                folder = Path(tmp) / f"n{n}"
                folder.mkdir()
                config = folder / "config.toml"
                config.write_text(CONFIG.format(port=port, state=url, n=n, tasks=tasks))
                daemons.append(
                    subprocess.Popen(  # noqa: ASYNC220 - returns at once
                        [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "run"],
                        stdout=subprocess.DEVNULL,
                        stderr=(folder / "log").open("wb"),
                    )
                )
            await _up(ports, daemons)
            found = await _drive(ports, _State(where), args.events, args.concurrency, args.paced)
        except Exception:
            # what the daemons said (and whether they still run) goes with the failure
            for n, daemon in enumerate(daemons):
                said = (Path(tmp) / f"n{n}" / "log").read_text(errors="replace")[-3000:]
                sys.stderr.write(f"node n{n}, exit status {daemon.poll()}:\n{said}\n")
            raise
        finally:
            for daemon in daemons:
                daemon.terminate()
            for daemon in daemons:
                daemon.wait(60)
            if admin is not None:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                await admin.close()
    found["tasks_per_s"] = round(found["runs_per_s"] * args.tasks, 1)
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--paced", type=int, default=100)
    parser.add_argument("--nodes", default="1,2,3", help="PostgreSQL halves: nodes in each")
    args = parser.parse_args()
    halves: dict[str, tuple[str | None, int]] = {"1 node, SQLite": (None, 1)}
    for nodes in (int(x) for x in args.nodes.split(",")):
        halves[f"{nodes} node{'s' if nodes > 1 else ''}, PostgreSQL"] = (args.server, nodes)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in halves}
    loads = [os.getloadavg()]
    failed: dict[str, int] = dict.fromkeys(halves, 0)
    for round_no in range(args.rounds):
        for name, (server, nodes) in halves.items():
            try:
                found = await one_half(server, nodes, args)
            except (httpx.HTTPError, RuntimeError, TimeoutError) as exc:
                # reported beside the medians of the rounds that completed
                failed[name] += 1
                sys.stderr.write(f"round {round_no}, {name}: failed: {exc!r}\n")
                continue
            finally:
                loads.append(os.getloadavg())
            sys.stderr.write(json.dumps({"round": round_no, "half": name, **found}) + "\n")
            results[name].append(found)

    def med(name: str, key: str) -> float:
        found = [float(r[key]) for r in results[name]]
        return statistics.median(found) if found else float("nan")

    pg1 = next(name for name in halves if name.endswith("PostgreSQL"))
    one_minute = [load[0] for load in loads]
    lines = [
        (
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}; load average (1 min) {min(one_minute):.1f}-"
            f"{max(one_minute):.1f} while it ran; medians of {args.rounds} rounds; "
            f"{args.events} events, {args.concurrency} in flight, {args.tasks} no-op tasks "
            "per run."
        ),
        "",
        (
            "| what | runs/s | task instances/s | vs 1 node on PostgreSQL | vs SQLite "
            "| event to task start p50 / p99, flood | the same, one at a time | 429s |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    lines.extend(
        f"| {name} | {med(name, 'runs_per_s'):,.0f} | {med(name, 'tasks_per_s'):,.0f} "
        f"| {med(name, 'runs_per_s') / med(pg1, 'runs_per_s'):.2f}x "
        f"| {med(name, 'runs_per_s') / med('1 node, SQLite', 'runs_per_s'):.2f}x "
        f"| {med(name, 'event_to_task_p50_ms'):.1f} ms / "
        f"{med(name, 'event_to_task_p99_ms'):.1f} ms "
        f"| {med(name, 'idle_event_to_task_p50_ms'):.1f} ms / "
        f"{med(name, 'idle_event_to_task_p99_ms'):.1f} ms "
        f"| {sum(int(r['refused_429']) for r in results[name])} |"
        for name in halves
    )
    lines.extend(
        f"\n{name}: {count} of {args.rounds} rounds failed (see stderr); medians of the others."
        for name, count in failed.items()
        if count
    )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
