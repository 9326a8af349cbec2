"""HTTP API benchmark: ``.venv/bin/python -m bench.api``.

The latency of ``GET /api/v1/runs?limit=50`` with 100,000 runs in the store, side by side
with the bare query: the same SELECT (``cued.daemon.store.sqlite.runs_query``) through aiosqlite
in this process, on the same file at the same time. The daemon runs as ``cued run`` in its
own process, with a viewer token required, and is asked over HTTP on loopback, one request
after another on a keep-alive connection (the time includes reading the whole answer).

The runs are written straight through the store's ``submit`` in batches of 10,000 (ids
made at evenly spread times, four pipelines, 80% succeeded, 15% failed, 5% cancelled), so
the daemon has nothing to resume. Cases: the first page; a page 90,000 runs deep (its
cursor); the first page of one pipeline's failed runs; and a page of it 2,000 runs deep;
and, as the floor of any answer over HTTP here, ``GET /healthz``.
Each round measures every case, HTTP then bare, so drift hits both alike; each query plan
is printed, and must be an index range scan (no sort of the table).

Prints a Markdown table on stdout, the raw figures of every round as JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import httpx

from cued.daemon.core.ids import id_at, new_id
from cued.daemon.store import RunRow
from cued.daemon.store.sqlite import open_store, runs_query

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-viewer-token"
PIPELINES = ("ingest", "report", "publish", "cleanup")

CONFIG = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "state.db"
log_level = "warning"

[auth.users.bench]
token = "{token}"
roles = ["viewer"]
{pipelines}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def state_of(i: int) -> str:
    n = i % 20
    return "failed" if n < 3 else "cancelled" if n == 3 else "succeeded"


async def populate(state: Path, runs: int, batch: int = 10_000) -> float:
    """Write ``runs`` finished runs through the store; returns the seconds it took."""
    started = time.perf_counter()
    t0 = time.time() - runs  # one run a second, ending now
    async with open_store(state, synchronous="normal") as store:
        for first in range(0, runs, batch):
            rows = []
            for i in range(first, min(first + batch, runs)):
                at = t0 + i
                rows.append(
                    RunRow(
                        id_at(at)[:10] + new_id()[10:],  # made at `at`: ids sort by time
                        PIPELINES[i % len(PIPELINES)],
                        state_of(i),
                        {"n": i, "day": "2026-11-25"},
                        at,
                        at,
                        at + 0.5,
                        "boom: exit 1" if state_of(i) == "failed" else None,
                    )
                )
            await store.submit(list(rows)).wait()
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 30) -> None:
    with anyio.fail_after(timeout_s):
        while True:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await anyio.sleep(0.05)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        state = tmp / "state.db"
        populate_s = await populate(state, args.runs)
        sys.stderr.write(json.dumps({"populated": args.runs, "seconds": round(populate_s, 2)}))
        sys.stderr.write("\n")
        port = free_port()
        pipelines = "".join(f'\n[pipelines.{p}.tasks.t]\nkind = "sleep"\n' for p in PIPELINES)
        config = tmp / "config.toml"
        config.write_text(CONFIG.format(port=port, token=TOKEN, pipelines=pipelines))
        daemon = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "run"], cwd=ROOT
        )
        try:
            async with (
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}",
                    headers={"authorization": f"Bearer {TOKEN}"},
                    timeout=30,
                ) as client,
                aiosqlite.connect(state) as db,
            ):
                await wait_ready(client)
                return await rounds(args, client, db)
        finally:
            daemon.terminate()
            daemon.wait(60)


async def rounds(
    args: argparse.Namespace, client: httpx.AsyncClient, db: aiosqlite.Connection
) -> dict[str, Any]:
    depth = min(90_000, args.runs * 9 // 10)
    (deep_cursor,) = await _one(
        db, "SELECT run_id FROM runs ORDER BY run_id DESC LIMIT 1 OFFSET ?", depth
    )
    filtered_depth = min(2_000, args.runs // 40)
    (filtered_cursor,) = await _one(
        db,
        "SELECT run_id FROM runs WHERE pipeline = 'report' AND state = 'failed' "
        "ORDER BY run_id DESC LIMIT 1 OFFSET ?",
        filtered_depth,
    )
    cases: dict[str, dict[str, Any]] = {
        "first page": {},
        f"{depth:,} deep (cursor)": {"cursor": deep_cursor},
        "pipeline + state": {"pipeline": "report", "state": "failed"},
        f"pipeline + state, {filtered_depth:,} deep": {
            "pipeline": "report",
            "state": "failed",
            "cursor": filtered_cursor,
        },
    }
    plans = {}
    for case, params in cases.items():
        sql, sql_args = _query(params)
        plan = await db.execute_fetchall("EXPLAIN QUERY PLAN " + sql, sql_args)
        plans[case] = " / ".join(row[3] for row in plan)
        assert "TEMP B-TREE" not in plans[case], plans[case]
        sys.stderr.write(json.dumps({"case": case, "plan": plans[case]}) + "\n")
    http: dict[str, list[float]] = {case: [] for case in cases}
    bare: dict[str, list[float]] = {case: [] for case in cases}
    floor: list[float] = []
    for round_ in range(args.rounds):
        # the HTTP floor: the same client and server, an endpoint that does nothing
        for _ in range(args.requests):
            started = time.perf_counter()
            (await client.get("/healthz")).raise_for_status()
            floor.append((time.perf_counter() - started) * 1000)
        for case, params in cases.items():
            query = {"limit": 50} | params
            sql, sql_args = _query(params)
            for _ in range(args.warmup):
                (await client.get("/api/v1/runs", params=query)).raise_for_status()
                await db.execute_fetchall(sql, sql_args)
            took_http, took_bare = [], []
            for _ in range(args.requests):
                started = time.perf_counter()
                answer = await client.get("/api/v1/runs", params=query)
                answer.raise_for_status()
                assert len(answer.json()["items"]) == 50
                took_http.append((time.perf_counter() - started) * 1000)
            for _ in range(args.requests):
                started = time.perf_counter()
                rows = await db.execute_fetchall(sql, sql_args)
                assert len(rows) == 51
                took_bare.append((time.perf_counter() - started) * 1000)
            http[case] += took_http
            bare[case] += took_bare
            sys.stderr.write(
                json.dumps(
                    {
                        "round": round_,
                        "case": case,
                        "http_p50_ms": round(statistics.median(took_http), 3),
                        "http_p99_ms": round(percentile(took_http, 0.99), 3),
                        "bare_p50_ms": round(statistics.median(took_bare), 3),
                        "bare_p99_ms": round(percentile(took_bare, 0.99), 3),
                    }
                )
                + "\n"
            )
    return {"http": http, "bare": bare, "plans": plans, "floor": floor}


async def _one(db: aiosqlite.Connection, sql: str, *args: Any) -> tuple[Any, ...]:
    rows = list(await db.execute_fetchall(sql, args))
    return tuple(rows[0])


def _query(params: dict[str, Any]) -> tuple[str, list[Any]]:
    # what the endpoint asks the store for: one more than the page, to know if more follow
    return runs_query(
        limit=51,
        pipeline=params.get("pipeline"),
        state=params.get("state"),
        before=params.get("cursor"),
    )


def machine() -> str:
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return (
        f"{platform.machine()}, {os.cpu_count()} cores (nproc), {mem_kib / 2**20:.0f} GiB RAM, "
        f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="per case and round")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    result = anyio.run(measure, args)
    lines = [
        f"Machine: {machine()}, {time.strftime('%Y-%m-%d')}.",
        "",
        (
            f"| `GET /api/v1/runs?limit=50`, {args.runs:,} runs | HTTP p50 / p99 "
            "| bare query p50 / p99 | HTTP minus bare (p50) | query plan |"
        ),
        "|---|---|---|---|---|",
    ]
    for case, took in result["http"].items():
        bare = result["bare"][case]
        lines.append(
            f"| {case} | {statistics.median(took):.2f} ms / {percentile(took, 0.99):.2f} ms "
            f"| {statistics.median(bare):.3f} ms / {percentile(bare, 0.99):.3f} ms "
            f"| {statistics.median(took) - statistics.median(bare):.2f} ms "
            f"| {result['plans'][case]} |"
        )
    floor = result["floor"]
    lines.append(
        f"| HTTP floor: `GET /healthz` (no token, no query) | {statistics.median(floor):.2f} ms "
        f"/ {percentile(floor, 0.99):.2f} ms | - | - | - |"
    )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
