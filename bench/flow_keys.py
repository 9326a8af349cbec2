"""What per-key concurrency and priority cost: ``.venv/bin/python -m bench.flow_keys``.

The daemon in process (``run_daemon``, SQLite, ``synchronous = "full"``), one pipeline of
one ``sleep 0`` task with 16 run slots; ``--events`` events handed to intake
(``DaemonIntake.record``, what every source calls) in batches of 500, as fast as it takes
them; the half ends when every run has finished. Halves, each in a process of its own, in
rounds (so drift hits them alike):

* ``plain``: the trigger has no key, no limit, no priority (the floor of this workload:
  what the daemon did before);
* ``keys``: ``key`` over ``--keys`` keys, ``concurrency = { limit = 1 }`` and a
  ``priority`` template, so most runs wait for their key (by id) and every end admits the
  next of its key;
* ``flood``: the same, but every event has the same key: all but one run wait for it at
  once (the memory of runs held by key), and they run one after another: its rate is that
  of one run at a time (a tenth of ``--events``, as it is slow by design).

Prints JSON lines on stderr and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[daemon]
state = "state.db"
backlog_high_water = 10000000
backlog_low_water = 5000000
log_level = "warning"

[http]
listen = ""

[sources.flood]
kind = "schedule"
every = "24h"

[pipelines.p]
max_active_runs = 16
inputs = {{ n = 0 }}
[pipelines.p.tasks.t]
kind = "sleep"
seconds = 0

[[triggers]]
source = "flood"
pipeline = "p"
inputs = {{ n = "{{{{ event.data.n }}}}" }}
{flow}
"""

FLOW = {
    "plain": "",
    "keys": 'key = "{{ event.data.k }}"\nconcurrency = { limit = 1 }\n'
    'priority = "{{ event.data.n % 10 }}"',
    "flood": 'key = "one"\nconcurrency = { limit = 1 }\npriority = "{{ event.data.n % 10 }}"',
}
BATCH = 500


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


async def half(args: argparse.Namespace) -> dict[str, Any]:
    from cued.daemon.assembly import run_daemon
    from cued.daemon.config import parse_config
    from cued.daemon.logs import configure_logging
    from cued.daemon.sdk.sources import Event

    configure_logging("warning", json=True)
    folder = Path(args.state_dir)
    config = parse_config(
        CONFIG.format(flow=FLOW[args.half]), file=str(folder / "config.toml"), base_dir=folder
    )
    count = args.events // 10 if args.half == "flood" else args.events
    finished = 0
    done = anyio.Event()

    def on_finished(_row: Any) -> None:
        nonlocal finished
        finished += 1
        if finished == count:
            done.set()

    held_most = 0
    async with anyio.create_task_group() as tg:
        info = await tg.start(run_daemon, config)
        info.runner.on_run_finished(on_finished)
        started = time.perf_counter()
        for first in range(0, count, BATCH):
            events = [
                Event("flood", f"e{n}", {"n": n, "k": f"k{n % args.keys}"})
                for n in range(first, min(first + BATCH, count))
            ]
            await info.intake.record(events)
            held_most = max(held_most, info.runner.keys.held)
        await done.wait()
        elapsed = time.perf_counter() - started
        tg.cancel_scope.cancel()
    return {
        "half": args.half,
        "runs": count,
        "runs_per_s": round(count / elapsed, 1),
        "held_by_key_most": held_most,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_half(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as state_dir:
        command = [
            sys.executable,
            "-m",
            "bench.flow_keys",
            "--half",
            name,
            "--state-dir",
            state_dir,
            "--events",
            str(args.events),
            "--keys",
            str(args.keys),
        ]
        ran = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if ran.returncode != 0:
        sys.stderr.write(ran.stderr)
        raise SystemExit(f"{name} half failed ({ran.returncode})")
    result: dict[str, Any] = json.loads(ran.stdout.strip().splitlines()[-1])
    sys.stderr.write(json.dumps(result) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--half", choices=sorted(FLOW), help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.half is not None:
        sys.stdout.write(json.dumps(anyio.run(half, args)) + "\n")
        return
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in FLOW}
    for _ in range(args.rounds):
        for name in FLOW:
            results[name].append(run_half(name, args))
    floor = statistics.median(r["runs_per_s"] for r in results["plain"])
    sys.stdout.write(
        f"Command: `.venv/bin/python -m bench.flow_keys --events {args.events} "
        f"--keys {args.keys} --rounds {args.rounds}`\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load {os.getloadavg()[0]:.1f} at the end\n\n"
        "| half | runs/s (median) | vs plain | most runs held by key | peak RSS (median) |\n"
        "|---|---|---|---|---|\n"
    )
    for name, rows in results.items():
        rate = statistics.median(r["runs_per_s"] for r in rows)
        rss = statistics.median(r["peak_rss_mb"] for r in rows)
        held = max(r["held_by_key_most"] for r in rows)
        sys.stdout.write(
            f"| {name} | {rate:,.0f} | {rate / floor:.2f}x | {held:,} | {rss:.0f} MB |\n"
        )


if __name__ == "__main__":
    main()
