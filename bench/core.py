"""The core benchmark, all halves side by side in one run: ``make bench`` (or
``.venv/bin/python -m bench.core``).

Each half runs in a process of its own (so peak RSS is its own), in rounds: cued with
``synchronous=full`` (the default), cued with ``normal``, the bare floor; the same again
``--rounds`` times, so machine drift hits every half alike; medians are reported, with the
ratios to the floor. Then the start-to-first-task latency through a running daemon, and
Prefect 3 once (its own venv; ``--prefect-runs`` runs of the same 100-task flow, since a
full 100 x 100 takes minutes; per-task work is the same, so the rates compare).

Prints a Markdown table for BENCHMARKS.md and every raw JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str]) -> dict[str, object]:
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    sys.stderr.write(json.dumps(result) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefect-runs", type=int, default=10, help="0 skips Prefect")
    args = parser.parse_args()
    py = sys.executable
    halves = {
        "cued, synchronous=full (default)": [
            py,
            "-m",
            "bench.cued_workload",
            "--synchronous",
            "full",
        ],
        "cued, synchronous=normal": [py, "-m", "bench.cued_workload", "--synchronous", "normal"],
        "floor: asyncio.gather + aiosqlite group commit (normal)": [py, "bench/floor.py"],
    }
    results: dict[str, list[dict[str, object]]] = {name: [] for name in halves}
    for _ in range(args.rounds):
        for name, cmd in halves.items():
            results[name].append(run(cmd))
    daemon = run([py, "-m", "bench.daemon_latency"])
    prefect = None
    if args.prefect_runs:
        prefect = run(
            ["bash", "bench/run_prefect.sh", "--runs", str(args.prefect_runs), "--tasks", "100"]
        )

    def med(name: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in results[name])  # type: ignore[arg-type]

    floor = "floor: asyncio.gather + aiosqlite group commit (normal)"
    lines = [
        (
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; medians of {args.rounds} rounds; "
            "100 runs x 100 no-op tasks, runs one after another."
        ),
        "",
        "| what | task instances/s | vs floor | start to first task p50 / p99 | peak RSS |",
        "|---|---|---|---|---|",
    ]
    lines.extend(
        f"| {name} | {med(name, 'tasks_per_s'):,.0f} "
        f"| {med(name, 'tasks_per_s') / med(floor, 'tasks_per_s'):.2f}x "
        f"| {med(name, 'first_task_p50_ms'):.2f} ms / {med(name, 'first_task_p99_ms'):.2f} ms "
        f"| {med(name, 'peak_rss_mb'):.0f} MB |"
        for name in halves
    )
    lines.append(
        f"| cued daemon, run requested over its control socket (HTTP on a Unix socket) | - | - "
        f"| {daemon['first_task_p50_ms']} ms / {daemon['first_task_p99_ms']} ms | - |"
    )
    if prefect:
        cued_rate = med("cued, synchronous=full (default)", "tasks_per_s")
        lines.append(
            f"| Prefect {prefect.get('prefect', '3')}, {prefect['runs']} runs x 100 tasks | "
            f"{float(prefect['tasks_per_s']):,.1f} | cued (full) is {cued_rate / float(prefect['tasks_per_s']):,.0f}x faster "  # type: ignore[arg-type]
            f"| {prefect['first_task_p50_ms']} ms / {prefect['first_task_p99_ms']} ms "
            f"| {prefect.get('peak_rss_with_server_mb', prefect.get('peak_rss_mb'))} MB with its server |"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
