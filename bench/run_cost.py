"""What one run costs the runner, without a source: ``.venv/bin/python -m bench.run_cost``.

``--runs`` queued runs of a one-task pipeline (``sleep 0``), recorded through the store in
batches of 500 (as an intake batch records them) and handed to the runner at once, each
batch as soon as it is committed; ``synchronous = "full"``. Prints one JSON line: runs/s
from the first batch to the last run finished, and the CPU time of the whole process (every
thread) per run, which a busy shared machine disturbs far less than the wall clock.

The same file runs in an older tree (it uses only ``Runner.new_run``, ``Runner.enqueue``,
``Runner.on_run_finished`` and ``store.submit``), for before/after figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import anyio
import anyio.lowlevel

from cued.daemon.assembly import open_runner
from cued.daemon.config import parse_config
from cued.daemon.logs import configure_logging

CONFIG = """
[daemon]
state = "bench.db"
synchronous = "full"
log_level = "warning"
backlog_high_water = 10000000
backlog_low_water = 5000000

[pipelines.noop]
max_active_runs = 10000000
[pipelines.noop.tasks.t]
kind = "sleep"
seconds = 0
"""
BATCH = 500


async def main(runs: int) -> dict[str, object]:
    configure_logging("warning", json=True)
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(CONFIG, file="bench", base_dir=Path(tmp))
        async with open_runner(config) as runner:
            finished = 0
            all_finished = anyio.Event()

            def on_finished(_row: object) -> None:
                nonlocal finished
                finished += 1
                if finished == runs:
                    all_finished.set()

            runner.on_run_finished(on_finished)
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(0, runs, BATCH):
                rows = [runner.new_run("noop") for _ in range(BATCH)]
                await runner.store.submit(list(rows)).wait()
                for row in rows:
                    runner.enqueue(row)
                await anyio.lowlevel.checkpoint()  # let the runs begin
            with anyio.fail_after(600):
                await all_finished.wait()
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
    return {
        "name": "cued runner, one-task runs",
        "runs": runs,
        "runs_per_s": round(runs / elapsed),
        "cpu_per_run_us": round(cpu * 1e6 / runs, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20_000, help="a multiple of 500")
    args = parser.parse_args()
    sys.stdout.write(json.dumps(anyio.run(main, args.runs)) + "\n")
