"""What a pool's slots in the database cost one node on PostgreSQL, side by side in one run:
``.venv/bin/python -m bench.shared_pools`` (needs the PostgreSQL server at ``--server``,
default ``postgresql://postgres@127.0.0.1:5432``; each half gets a database of its own,
dropped after).

Halves, each in a process of its own, in ``--rounds`` rounds (so drift hits all alike), each
``--runs`` runs of ``--tasks`` no-op tasks (mapped, one run after another) through cued's
runner on PostgreSQL:

* ``no pool``: the tasks name no pool (the floor of the other two);
* ``pool, per node``: the tasks share a pool of ``--pool`` slots counted in the node's memory
  only (the slots in the database switched off in this process: cued before pools held
  across nodes);
* ``pool, shared``: the same pool, each attempt also taking one of its slots in the database
  (and the commit of its end giving it back, waking the next).

Prints a Markdown table for BENCHMARKS.md, and every raw JSON line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.store_engines import ROOT, _fresh

CONFIG = """
[daemon]
state = "{state}"
max_running_tasks = 256
log_level = "warning"
pools = {{ few = {pool} }}

[pipelines.wide]
max_active_runs = 1
inputs = {{ n = {tasks} }}
[pipelines.wide.tasks.noop]
kind = "sleep"
seconds = 0
map = "{{{{ range(inputs.n) | list }}}}"
{pooled}
"""

HALVES = ("no pool", "pool, per node", "pool, shared")


async def half(kind: str, state: str, runs: int, tasks: int, pool: int) -> dict[str, Any]:
    from cued.daemon.assembly import open_runner
    from cued.daemon.config import parse_config
    from cued.daemon.logs import configure_logging
    from cued.daemon.runtime import runner as runner_module

    if kind == "pool, per node":
        runner_module.SharedSlots = lambda store: None  # type: ignore[assignment,misc]
    configure_logging("warning", json=True)
    pooled = "" if kind == "no pool" else 'pool = "few"'
    with tempfile.TemporaryDirectory() as tmp:
        text = CONFIG.format(state=state, tasks=tasks, pool=pool, pooled=pooled)
        config = parse_config(text, file="bench", base_dir=Path(tmp))
        async with open_runner(config) as runner:
            await runner.wait((await runner.start_run("wide")).run_id)  # warm-up
            started = time.perf_counter()
            for _ in range(runs):
                row = await runner.wait((await runner.start_run("wide")).run_id)
                assert row.state == "succeeded", row
            elapsed = time.perf_counter() - started
            commits = runner.store.commits  # type: ignore[attr-defined]
    return {"tasks_per_s": round(runs * tasks / elapsed, 1), "commits": commits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--half", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = ["--runs", str(args.runs), "--tasks", str(args.tasks), "--pool", str(args.pool)]
    if args.half:
        kind, state = args.half
        result = asyncio.run(half(kind, state, args.runs, args.tasks, args.pool))
        sys.stdout.write(json.dumps(result) + "\n")
        return
    rows: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for kind in HALVES:
            with _fresh(args.server) as url:
                out = subprocess.run(
                    [sys.executable, "-m", "bench.shared_pools", *sizes, "--half", kind, url],
                    cwd=ROOT, capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
            result = json.loads(out.strip().splitlines()[-1])
            sys.stderr.write(json.dumps({"half": kind, **result}) + "\n")
            rows.setdefault(kind, []).append(result)

    def med(kind: str) -> float:
        return statistics.median(float(r["tasks_per_s"]) for r in rows[kind])

    lines = ["| half | task instances/s (median) | vs no pool | vs pool, per node |"]
    lines.append("|---|---|---|---|")
    lines += [
        f"| {kind} | {med(kind):,.0f} | {med(kind) / med('no pool'):.2f}x "
        f"| {med(kind) / med('pool, per node'):.2f}x |"
        for kind in HALVES
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
