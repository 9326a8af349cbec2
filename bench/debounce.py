"""Debounce of 100,000 events over 1,000 keys: ``.venv/bin/python -m bench.debounce``.

The daemon's intake and runner in process (``open_intake``, no source: events are handed
to intake in batches of 500, as a Kafka source hands them), one trigger with
``key = "{{ event.data.k }}"`` and ``debounce = { period = "30s" }``, events spread round
robin over the keys. Flow control's clock stands still while the events come (so however
slow the machine, all of them fall in one quiet window per key), then moves past the
period and the timer releases the windows.

``--pg postgresql://USER@HOST:PORT`` keeps the state in a new database of that server
(dropped after): there, flow control decides in the database's transactions, as for
several nodes (``cued.daemon.store.pg_flow``).

Figures: events/s through intake (recorded and held, one transaction per batch), runs
started (there must be exactly one per key), how long the release of every window took,
the keys flow control kept in memory, and the process's RSS before the events, with all
of them held, and at the peak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

CONFIG = """
[daemon]
state = "state.db"
log_level = "warning"
backlog_high_water = 10000000
backlog_low_water = 5000000

[sources.feed]
kind = "webhook"
path = "/feed"

[pipelines.sync]
inputs = {{ k = "" }}
[pipelines.sync.tasks.t]
kind = "sleep"
seconds = 0

[[triggers]]
source = "feed"
pipeline = "sync"
key = "{{{{ event.data.k }}}}"
inputs = {{ k = "{{{{ event.data.k }}}}" }}
debounce = {{ period = "30s", keep = "{keep}" }}
"""


@contextlib.asynccontextmanager
async def _state(server: str | None) -> AsyncIterator[str]:
    """Where the state is kept: ``state.db``, or a new database of ``server``."""
    if server is None:
        yield "state.db"
        return
    import asyncpg

    name = f"cued_bench_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        db = await asyncpg.connect(f"{server}/postgres")
        try:
            await db.execute(sql)
        finally:
            await db.close()

    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        await admin(f'DROP DATABASE "{name}" WITH (FORCE)')


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def bench(args: argparse.Namespace) -> dict[str, object]:
    from cued.daemon.assembly import open_intake
    from cued.daemon.config import parse_config
    from cued.daemon.logs import configure_logging
    from cued.daemon.sdk.sources import Event

    configure_logging("warning", json=True)
    with tempfile.TemporaryDirectory() as tmp:
        async with _state(args.pg) as state:
            text = CONFIG.format(keep=args.keep).replace('state = "state.db"', f'state = "{state}"')
            config = parse_config(text, file="bench", base_dir=Path(tmp))
            async with open_intake(config) as (runner, intake):
                clock_at = time.time()
                intake.flow.clock = lambda: clock_at
                rss_before = rss_mb()
                started = time.perf_counter()
                for first in range(0, args.events, 500):
                    batch = [
                        Event("feed", f"e{i}", {"k": f"k{i % args.keys}", "i": i})
                        for i in range(first, min(first + 500, args.events))
                    ]
                    await intake.record(batch)
                intake_s = time.perf_counter() - started
                rss_held = rss_mb()
                keys_in_memory = intake.flow.held_keys()
                runs_before = len(await runner.store.list_runs(limit=10_000_000))
                released_at = time.perf_counter()
                clock_at += 31
                with anyio.fail_after(600):
                    while await runner.store.flow_next_due() is not None:
                        await intake.flow.settle_due(runner)
                release_s = time.perf_counter() - released_at
                runs = await runner.store.list_runs(limit=10_000_000)
                keys = {r.inputs["k"] for r in runs}
    assert runs_before == 0, runs_before
    assert len(runs) == args.keys == len(keys), (len(runs), len(keys))
    return {
        "events": args.events,
        "keys": args.keys,
        "keep": args.keep,
        "store": "postgresql" if args.pg else "sqlite",
        "intake_events_per_s": round(args.events / intake_s),
        "runs_started": len(runs),
        "release_s": round(release_s, 3),
        "keys_in_memory_while_held": keys_in_memory,
        "rss_before_mb": round(rss_before, 1),
        "rss_all_held_mb": round(rss_held, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--keep", choices=["first", "last", "all"], default="last")
    parser.add_argument("--pg", help="a PostgreSQL server (URL without a database)")
    args = parser.parse_args()
    sys.stdout.write(json.dumps(anyio.run(bench, args)) + "\n")


if __name__ == "__main__":
    main()
