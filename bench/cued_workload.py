"""cued's half of the core benchmark: the same workload as floor.py and prefect_flow.py.

``--runs`` runs of the pipeline ``wide`` (``--tasks`` no-op ``sleep 0`` tasks, no
dependencies between them), one after another, through cued's own runner with durable
state on: every run and every task state change goes through the SQLite group-commit
writer, and a run counts as done when its final state is committed. Then ``--latency-runs``
runs of a one-task pipeline on an idle runner, timing the moment the run is requested
(``runner.start_run``, which commits the run before it returns) to the moment its task body
starts.

Prints one JSON line on stdout, in the same shape as the other halves.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

from cued.daemon.assembly import open_runner
from cued.daemon.config import parse_config
from cued.daemon.logs import configure_logging

STAMPS: list[float] = []


async def stamp() -> None:
    """The latency pipeline's task body: note when it started."""
    STAMPS.append(time.perf_counter())


CONFIG = """
[daemon]
state = "bench.db"
synchronous = "{synchronous}"
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(runs: int, tasks: int, latency_runs: int, synchronous: str) -> dict[str, object]:
    configure_logging("warning", json=True)
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(
            CONFIG.format(tasks=tasks, synchronous=synchronous), file="bench", base_dir=Path(tmp)
        )
        async with open_runner(config) as runner:
            await runner.wait((await runner.start_run("wide")).run_id)  # warm-up
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(runs):
                row = await runner.wait((await runner.start_run("wide")).run_id)
                assert row.state == "succeeded", row
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started

            # the task imports this file as bench.cued_workload, not as __main__
            from bench.cued_workload import STAMPS as stamps

            latencies = []
            for _ in range(latency_runs):
                requested = time.perf_counter()
                run_id = (await runner.start_run("first")).run_id
                await runner.wait(run_id)
                latencies.append((stamps[-1] - requested) * 1000)
            commits = runner.store.commits  # type: ignore[attr-defined]
    return {
        "name": f"cued (synchronous={synchronous})",
        "runs": runs,
        "tasks": runs * tasks,
        "tasks_per_s": round(runs * tasks / elapsed, 1),
        "per_task_ms": round(elapsed * 1000 / (runs * tasks), 4),
        # CPU time of the process (all its threads) per task: what a busy shared machine
        # disturbs least
        "cpu_per_task_us": round(cpu * 1e6 / (runs * tasks), 1),
        "first_task_p50_ms": round(statistics.median(latencies), 3),
        "first_task_p99_ms": round(percentile(latencies, 0.99), 3),
        "commits": commits,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--latency-runs", type=int, default=500)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    args = parser.parse_args()
    result = anyio.run(main, args.runs, args.tasks, args.latency_runs, args.synchronous)
    sys.stdout.write(json.dumps(result) + "\n")
