"""One node on PostgreSQL against one node on SQLite, side by side in one run:
``.venv/bin/python -m bench.store_engines`` (needs the PostgreSQL server at
``--server``, default ``postgresql://postgres@127.0.0.1:5432``; each half gets a database of
its own, dropped after).

Halves, each in a process of its own, in ``--rounds`` rounds (so drift hits all alike):

* cued, tasks: the core workload (bench/cued_workload.py's: ``--runs`` runs of ``--tasks``
  no-op tasks, one run after another, every state change committed) through cued's runner,
  on a SQLite file (``synchronous = full``, the default) and on a PostgreSQL database; and
  the start latency in process (run requested -> its task body starts);
* floor: the bare library's group commit (bench/floor.py: two durable rows per task, one
  writer, one transaction per batch), with aiosqlite and with asyncpg;
* cued, events: the daemon (``cued run``) with a webhook source; on an idle daemon, events
  posted one after another, each starting a run whose one task returns ``time.time()``
  when its body starts: event sent -> task started, p50 / p99.

Prints a Markdown table for BENCHMARKS.md, and every raw JSON line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

ROOT = Path(__file__).resolve().parent.parent

TASKS_CONFIG = """
[daemon]
state = "{state}"
max_running_tasks = 256
log_level = "warning"

[pipelines.wide]
max_active_runs = 1
inputs = {{ n = {tasks} }}
[pipelines.wide.tasks.noop]
kind = "sleep"
seconds = 0
map = "{{{{ range(inputs.n) | list }}}}"

[pipelines.first]
[pipelines.first.tasks.stamp]
kind = "python"
function = "bench.cued_workload:stamp"
"""

EVENTS_CONFIG = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "{state}"
log_level = "warning"
[sources.hook]
kind = "webhook"
path = "/hook"
[pipelines.stamp.tasks.t]
kind = "python"
function = "time:time"
[[triggers]]
source = "hook"
pipeline = "stamp"
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the halves (each runs in a process of its own) -----------------------------------------


async def tasks_half(state: str, runs: int, tasks: int, latency_runs: int) -> dict[str, Any]:
    import resource

    from bench.cued_workload import STAMPS
    from cued.daemon.assembly import open_runner
    from cued.daemon.config import parse_config
    from cued.daemon.logs import configure_logging

    configure_logging("warning", json=True)
    with tempfile.TemporaryDirectory() as tmp:
        text = TASKS_CONFIG.format(state=state, tasks=tasks)
        config = parse_config(text, file="bench", base_dir=Path(tmp))
        async with open_runner(config) as runner:
            await runner.wait((await runner.start_run("wide")).run_id)  # warm-up
            started = time.perf_counter()
            for _ in range(runs):
                row = await runner.wait((await runner.start_run("wide")).run_id)
                assert row.state == "succeeded", row
            elapsed = time.perf_counter() - started
            latencies = []
            for _ in range(latency_runs):
                requested = time.perf_counter()
                await runner.wait((await runner.start_run("first")).run_id)
                latencies.append((STAMPS[-1] - requested) * 1000)
            commits = runner.store.commits  # type: ignore[attr-defined]
    return {
        "tasks_per_s": round(runs * tasks / elapsed, 1),
        "first_task_p50_ms": round(statistics.median(latencies), 3),
        "first_task_p99_ms": round(percentile(latencies, 0.99), 3),
        "commits": commits,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


class _PgAsSqlite:
    """An asyncpg connection as floor.py's writer uses an aiosqlite one: ``executemany``
    inside a transaction begun on the first statement, ``commit`` ending it."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.tx: Any = None

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if self.tx is None:
            self.tx = self.conn.transaction()
            await self.tx.start()
        numbers = iter(range(1, 100))
        await self.conn.executemany(re.sub(r"\?", lambda _: f"${next(numbers)}", sql), rows)

    async def commit(self) -> None:
        await self.tx.commit()
        self.tx = None


async def pg_floor_half(url: str, runs: int, tasks: int) -> dict[str, Any]:
    import asyncpg

    from bench import floor

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE task_instances (run_id BIGINT, task_id BIGINT, state TEXT, "
            "updated_at DOUBLE PRECISION, PRIMARY KEY (run_id, task_id))"
        )
        writer = floor.GroupCommitWriter(_PgAsSqlite(conn))  # type: ignore[arg-type]
        runner = asyncio.ensure_future(writer.run())
        await floor.one_run(writer, -1, tasks)  # warm-up
        started = time.perf_counter()
        latencies = [await floor.one_run(writer, r, tasks) for r in range(runs)]
        elapsed = time.perf_counter() - started
        writer.close()
        await runner
    finally:
        await conn.close()
    return {
        "tasks_per_s": round(runs * tasks / elapsed, 1),
        "first_task_p50_ms": round(statistics.median(latencies) * 1000, 3),
        "first_task_p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
    }


def events_half(state: str, events: int) -> dict[str, Any]:
    import httpx

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        sqlite = not state.startswith("postgresql://")
        config.write_text(EVENTS_CONFIG.format(port=port, state=state))
        command = [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "run"]
        daemon = subprocess.Popen(command, cwd=ROOT)
        sent: list[tuple[str, float]] = []
        try:
            _wait_listening(port)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                for i in range(events + 10):
                    before = time.time()
                    (run_id,) = client.post("/hook", json={"n": i}).json()["runs"]
                    while client.get(f"/api/v1/runs/{run_id}").json()["state"] not in (
                        "succeeded",
                        "failed",
                    ):
                        time.sleep(0.001)
                    if i >= 10:  # the first few warm the daemon up
                        sent.append((run_id, before))
        finally:
            daemon.terminate()
            daemon.wait(60)
        started = asyncio.run(_task_starts(str(Path(tmp) / state) if sqlite else state, sent))
    latencies = [(started[run_id] - at) * 1000 for run_id, at in sent]
    return {
        "event_to_task_p50_ms": round(statistics.median(latencies), 3),
        "event_to_task_p99_ms": round(percentile(latencies, 0.99), 3),
    }


async def _task_starts(state: str, sent: list[tuple[str, float]]) -> dict[str, float]:
    from cued.daemon.store.opening import open_store_at

    async with open_store_at(state) as store:
        return {run_id: float((await store.get_attempts(run_id))[0].output) for run_id, _ in sent}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# -- the run of all halves ------------------------------------------------------------------


@asynccontextmanager
async def _database(server: str) -> AsyncIterator[str]:
    import asyncpg

    name = f"cued_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{server}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextmanager
def _fresh(server: str | None) -> Iterator[str]:
    """A state for one half: a SQLite file's name (in the half's own folder), or a new
    database's URL."""
    if server is None:
        yield "state.db"
        return
    loop = asyncio.new_event_loop()
    cm = _database(server)
    try:
        yield loop.run_until_complete(cm.__aenter__())
    finally:
        loop.run_until_complete(cm.__aexit__(None, None, None))
        loop.close()


def _half(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.store_engines", "--half", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    sys.stderr.write(json.dumps({"half": args[0], "state": args[1][:12], **result}) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--latency-runs", type=int, default=300)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--half", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.half:
        kind, state = args.half
        if kind == "tasks":
            with tempfile.TemporaryDirectory() as tmp:
                where = state if state.startswith("postgresql://") else str(Path(tmp) / state)
                result = asyncio.run(tasks_half(where, args.runs, args.tasks, args.latency_runs))
        elif kind == "pg-floor":
            result = asyncio.run(pg_floor_half(state, args.runs, args.tasks))
        else:
            result = events_half(state, args.events)
        sys.stdout.write(json.dumps(result) + "\n")
        return
    sizes = ["--runs", str(args.runs), "--tasks", str(args.tasks)]
    rows: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for engine, server in (("SQLite", None), ("PostgreSQL", args.server)):
            with _fresh(server) as state:
                rows.setdefault(f"tasks {engine}", []).append(
                    _half("tasks", state, *sizes, "--latency-runs", str(args.latency_runs))
                )
            with _fresh(server) as state:
                rows.setdefault(f"events {engine}", []).append(
                    _half("events", state, "--events", str(args.events))
                )
        floor = subprocess.run(
            [sys.executable, "bench/floor.py", *sizes], cwd=ROOT, capture_output=True, text=True,
            check=True,
        ).stdout  # fmt: skip
        rows.setdefault("floor SQLite", []).append(json.loads(floor.strip().splitlines()[-1]))
        with _fresh(args.server) as url:
            rows.setdefault("floor PostgreSQL", []).append(_half("pg-floor", url, *sizes))

    def med(name: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in rows[name])

    lines = [
        "| what | task instances/s | vs its floor | start to first task p50 / p99 | event to task start p50 / p99 (daemon, idle) |",
        "|---|---|---|---|---|",
    ]
    for engine in ("SQLite", "PostgreSQL"):
        t, f, e = f"tasks {engine}", f"floor {engine}", f"events {engine}"
        lines.append(
            f"| cued on {engine} | {med(t, 'tasks_per_s'):,.0f} "
            f"| {med(t, 'tasks_per_s') / med(f, 'tasks_per_s'):.2f}x "
            f"| {med(t, 'first_task_p50_ms'):.2f} ms / {med(t, 'first_task_p99_ms'):.2f} ms "
            f"| {med(e, 'event_to_task_p50_ms'):.2f} ms / {med(e, 'event_to_task_p99_ms'):.2f} ms |"
        )
    for engine, lib in (("SQLite", "aiosqlite"), ("PostgreSQL", "asyncpg")):
        f = f"floor {engine}"
        lines.append(
            f"| floor: asyncio + {lib} group commit | {med(f, 'tasks_per_s'):,.0f} | 1.00x "
            f"| {med(f, 'first_task_p50_ms'):.2f} ms / {med(f, 'first_task_p99_ms'):.2f} ms | - |"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
