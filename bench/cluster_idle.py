"""What an idle cluster asks of its database: three daemons (``cued run`` on the example
config.toml, each in a folder of its own, all with ``state`` in one PostgreSQL database on
127.0.0.1:5432) with nothing to do, and the transactions the database counts for them.

pg_stat_statements is not loaded on the server here (it needs a restart), so statements
are counted as the server's transactions on the cluster's database (``xact_commit +
xact_rollback`` of ``pg_stat_database``): each statement a daemon sends outside a
transaction of its own is one, a commit of the store's writer is one. The floor, in the
same windows: a second database with three idle connections and no daemon.

Once the three are up, the first ``--settle`` seconds are left out (a starting daemon
reads its state and prunes once); then ``--rounds`` windows of ``--seconds`` each. The
example's hourly schedule may tick in a window: that is one event and one run, as it
would be.

Run: ``.venv/bin/python -m bench.cluster_idle`` (default 3 windows of 60 s). Prints one
JSON line.
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
from pathlib import Path

import asyncpg

_ROOT = Path(__file__).resolve().parent.parent
_SERVER = "postgresql://postgres@127.0.0.1:5432"
_NODES = 3
_COUNT = (
    "SELECT datname, xact_commit + xact_rollback FROM pg_stat_database "
    "WHERE datname = ANY($1::text[])"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(folder: Path, url: str) -> Path:
    text = (_ROOT / "config.toml").read_text()
    text = re.sub(r'listen = "127\.0\.0\.1:8080"', f'listen = "127.0.0.1:{_free_port()}"', text)
    text = text.replace('state = "cued.db"', f'state = "{url}"')
    text = text.replace('log_level = "info"', 'log_level = "warning"')
    (folder / "drop").mkdir()
    path = folder / "config.toml"
    path.write_text(text)
    return path


async def _counts(admin: asyncpg.Connection, names: list[str]) -> dict[str, int]:
    # the server's cumulative statistics are flushed by each backend within a second
    await asyncio.sleep(1.5)
    return {name: int(n) for name, n in await admin.fetch(_COUNT, names)}


async def _run(rounds: int, seconds: float, settle: float) -> dict[str, object]:
    cluster, floor = f"cued_bench_{secrets.token_hex(4)}", f"cued_floor_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(f"{_SERVER}/postgres")
    for name in (cluster, floor):
        await admin.execute(f'CREATE DATABASE "{name}"')
    idle = [await asyncpg.connect(f"{_SERVER}/{floor}") for _ in range(_NODES)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in range(_NODES):
                folder = Path(tmp) / f"node{n}"
                folder.mkdir()
                config = _config(folder, f"{_SERVER}/{cluster}")
                processes.append(
                    subprocess.Popen(  # noqa: ASYNC220 - returns at once
                        [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "run"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                sock = folder / "postgresql.d" / "control.sock"
                deadline = time.monotonic() + 60
                while not sock.exists():
                    if time.monotonic() > deadline or processes[-1].poll() is not None:
                        raise RuntimeError(f"node {n} did not start")
                    await asyncio.sleep(0.05)
            await asyncio.sleep(settle)
            connections = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", cluster
            )
            windows = []
            for _ in range(rounds):
                before = await _counts(admin, [cluster, floor])
                started = time.monotonic()
                await asyncio.sleep(seconds)
                after = await _counts(admin, [cluster, floor])
                took = time.monotonic() - started
                windows.append({k: (after[k] - before[k]) / took for k in (cluster, floor)})
    finally:
        for process in processes:
            process.terminate()
            process.wait(60)
        for db in idle:
            await db.close()
        for name in (cluster, floor):
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    cluster_s = statistics.median(w[cluster] for w in windows)
    return {
        "nodes": _NODES,
        "seconds": seconds,
        "rounds": rounds,
        "connections": connections,
        "statements_per_s": round(cluster_s, 3),
        "statements_per_s_per_node": round(cluster_s / _NODES, 3),
        "floor_statements_per_s": round(statistics.median(w[floor] for w in windows), 3),
        "windows": [round(w[cluster], 3) for w in windows],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=10.0)
    args = parser.parse_args()
    line = asyncio.run(_run(args.rounds, args.seconds, args.settle))
    sys.stdout.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
