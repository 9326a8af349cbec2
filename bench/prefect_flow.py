"""Peer half of the core benchmark: the same workload on Prefect 3, default local set-up.

Workload (the same as ``floor.py`` and the engine): runs one after another, each of
``--tasks`` no-op tasks started at once with no dependencies between them, durable state on.
Here a run is one flow run; the flow submits its tasks with ``Task.map`` on the default
task runner (``ThreadPoolTaskRunner``) and waits for all of them. Durable state is
Prefect's own: the ephemeral API server (started on the first flow call, as a subprocess)
persisting flow and task run states to SQLite. The task body is a no-op that only stamps
when it started, as in the floor, so the work per task is the same: one body call plus
the durable state changes the orchestrator records for it.

Run it through ``bench/run_prefect.sh`` (own venv, fresh ``PREFECT_HOME``, telemetry off,
``PREFECT_API_URL`` unset). One warm-up flow run starts the server (~13 s) and is not
timed. The default is 10 runs, not 100: a full 100 x 100 takes 5-7 minutes here; the
per-task figures compare the same work per task, and ``runs`` says what was run.

Measured:

* ``tasks_per_s``: task instances / wall time from the first timed flow call to the return
  of the last one (minus ``--gap`` sleeps, if any).
* ``first_task_p50_ms`` / ``first_task_p99_ms``: per run, ``time.time()`` just before the
  flow is called to the earliest ``time.time()`` taken at the start of one of its task
  bodies (wall clock, since bodies run in worker threads). With few runs, p99 is close
  to the maximum.
* ``peak_rss_mb``: peak RSS of this (client) process; ``peak_rss_with_server_mb`` adds
  the peak RSS of its child processes (the ephemeral API server).
* ``db_catch_up_s``: Prefect 3 reports task run states to the server asynchronously, so a
  flow can return before all its task runs are stored. After the timed runs, the server
  is polled until it holds every timed task run as COMPLETED; this is how long that took
  (``None`` if it did not within ``--catch-up-timeout``).

``--gap S`` sleeps S seconds before each timed run, outside the timed wall. Not the
benchmark workload (runs are back to back); it shows how much of the start latency is the
server still digesting the previous run: here, back to back, a flow body starts ~2 s after
the call; after a few idle seconds, ~0.1 s.

Prints one JSON line on stdout; Prefect's own logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import prefect
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

if TYPE_CHECKING:
    from uuid import UUID

# Wall-clock start stamps of the task bodies of the current flow run (list.append is
# atomic under the GIL, and the worker threads share this process).
_body_starts: list[float] = []


@task
def noop(i: int) -> None:
    _body_starts.append(time.time())


@flow
def bench_flow(tasks: int) -> None:
    noop.map(range(tasks)).result()  # waits for every task; raises if one failed


def one_run(tasks: int) -> tuple[float, UUID]:
    """Run one flow; return (seconds from request to first body start, flow run id)."""
    _body_starts.clear()
    requested = time.time()
    state = bench_flow(tasks, return_state=True)
    if not state.is_completed():
        raise RuntimeError(f"flow run ended in {state!r}")
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    if len(_body_starts) != tasks:
        raise RuntimeError(f"{len(_body_starts)} task bodies ran, expected {tasks}")
    return min(_body_starts) - requested, flow_run_id


def completed_task_runs(flow_run_ids: list[UUID]) -> int:
    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
    completed = TaskRunFilter(
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED]))
    )
    count, page = 0, 200
    with get_client(sync_client=True) as client:
        while True:
            got = client.read_task_runs(
                flow_run_filter=flow_runs, task_run_filter=completed, limit=page, offset=count
            )
            count += len(got)
            if len(got) < page:
                return count


def wait_for_catch_up(flow_run_ids: list[UUID], expected: int, timeout: float) -> float | None:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if completed_task_runs(flow_run_ids) >= expected:
            return time.perf_counter() - start
        time.sleep(0.2)
    return None


def _hwm_kib(pid: int) -> int:
    """Peak RSS (VmHWM) of a live process in KiB, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def percentile(samples: list[float], pct: int) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


def bench(runs: int, tasks: int, gap: float, catch_up_timeout: float) -> dict[str, Any]:
    t = time.perf_counter()
    one_run(tasks)  # warm-up: starts the ephemeral API server
    warmup_s = time.perf_counter() - t

    latencies: list[float] = []
    flow_run_ids: list[UUID] = []
    wall = 0.0
    for _ in range(runs):
        if gap:
            time.sleep(gap)
        t0 = time.perf_counter()
        latency, flow_run_id = one_run(tasks)
        wall += time.perf_counter() - t0
        latencies.append(latency)
        flow_run_ids.append(flow_run_id)

    n = runs * tasks
    catch_up = wait_for_catch_up(flow_run_ids, n, catch_up_timeout)
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = sum(_hwm_kib(pid) for pid in _descendants(os.getpid()))
    return {
        "name": "prefect",
        "runs": runs,
        "tasks_per_run": tasks,
        "tasks": n,
        "wall_s": round(wall, 3),
        "tasks_per_s": round(n / wall, 1),
        "first_task_p50_ms": round(percentile(latencies, 50) * 1e3, 2),
        "first_task_p99_ms": round(percentile(latencies, 99) * 1e3, 2),
        "peak_rss_mb": round(self_kib / 1024, 1),
        "peak_rss_with_server_mb": round((self_kib + children_kib) / 1024, 1),
        "gap_s": gap,
        "warmup_s": round(warmup_s, 2),
        "db_catch_up_s": None if catch_up is None else round(catch_up, 2),
        "prefect": prefect.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed flow runs (default 10)")
    parser.add_argument("--tasks", type=int, default=100, help="no-op tasks per flow run")
    parser.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="untimed idle seconds before each run (default 0: back to back, the workload)",
    )
    parser.add_argument(
        "--catch-up-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the server to store every task run",
    )
    args = parser.parse_args()
    if args.runs < 1 or args.tasks < 1:
        parser.error("--runs and --tasks must be >= 1")
    result = bench(args.runs, args.tasks, args.gap, args.catch_up_timeout)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
