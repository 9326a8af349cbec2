"""Waiting runs on disk under a flood: ``.venv/bin/python -m bench.cold_backlog``.

The daemon in process (``run_daemon``, SQLite, ``synchronous = "full"``), backpressure
off (high water 10,000,000), one pipeline of one ``sleep`` task with few run slots, so it
drains a known ~``--drain`` runs/s. Events are handed to intake (``DaemonIntake.record``,
what every source calls) at ``--ratio`` times that, for ``--seconds``: the backlog grows
all along. Every 5 s the process's RSS (``VmRSS``) is sampled, with how many runs wait.
Then the daemon stops and a fresh process starts it again on the same state, with all
those runs waiting, and reports its RSS once it is up (the restart's cost).

Prints JSON lines on stderr and a Markdown summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

[pipelines.slow]
max_active_runs = {slots}
inputs = {{ n = 0 }}
[pipelines.slow.tasks.t]
kind = "sleep"
seconds = {task_s}

[[triggers]]
source = "flood"
pipeline = "slow"
inputs = {{ n = "{{{{ event.data.n }}}}" }}
"""

SLOTS = 4


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def config_at(folder: Path, drain: float) -> Any:
    from cued.daemon.config import parse_config

    text = CONFIG.format(slots=SLOTS, task_s=SLOTS / drain)
    return parse_config(text, file=str(folder / "config.toml"), base_dir=folder)


async def flood(args: argparse.Namespace) -> dict[str, Any]:
    from cued.daemon.assembly import run_daemon
    from cued.daemon.logs import configure_logging
    from cued.daemon.sdk.sources import Event

    configure_logging("warning", json=True)
    folder = Path(args.state_dir)
    rate = args.drain * args.ratio
    finished = 0

    def on_finished(_row: Any) -> None:
        nonlocal finished
        finished += 1

    samples: list[dict[str, Any]] = []
    async with anyio.create_task_group() as tg:
        info = await tg.start(run_daemon, config_at(folder, args.drain))
        info.runner.on_run_finished(on_finished)
        started = time.monotonic()
        sent = 0
        next_sample = started
        while (elapsed := time.monotonic() - started) < args.seconds:
            due = int(elapsed * rate) + 1
            if due > sent:
                events = [
                    Event("flood", f"e{n}", {"n": n}, received_at=time.time())
                    for n in range(sent, due)
                ]
                await info.intake.record(events)
                sent = due
            if time.monotonic() >= next_sample:
                sample = {
                    "t_s": round(elapsed, 1),
                    "rss_mb": rss_mb(),
                    "waiting": info.runner.backlog.depth,
                    # (the tree before issue 10 loaded every waiting run: it has no count)
                    "loaded": getattr(info.runner.backlog, "loaded", info.runner.backlog.depth),
                    "sent": sent,
                    "finished": finished,
                }
                samples.append(sample)
                sys.stderr.write(json.dumps(sample) + "\n")
                next_sample += 5
            await anyio.sleep(0.01)
        elapsed = time.monotonic() - started
        tg.cancel_scope.cancel()
    return {
        "half": "flood",
        "seconds": round(elapsed, 1),
        "sent_per_s": round(sent / elapsed),
        "drained_per_s": round(finished / elapsed, 1),
        "waiting_at_end": samples[-1]["waiting"],
        "samples": samples,
        "peak_rss_mb": peak_rss_mb(),
    }


async def restart(args: argparse.Namespace) -> dict[str, Any]:
    from cued.daemon.assembly import run_daemon
    from cued.daemon.logs import configure_logging

    configure_logging("warning", json=True)
    async with anyio.create_task_group() as tg:
        info = await tg.start(run_daemon, config_at(Path(args.state_dir), args.drain))
        await anyio.sleep(5)
        result = {
            "half": "restart",
            "waiting": info.runner.backlog.depth,
            "loaded": getattr(info.runner.backlog, "loaded", info.runner.backlog.depth),
            "rss_mb": rss_mb(),
            "peak_rss_mb": peak_rss_mb(),
        }
        tg.cancel_scope.cancel()
    return result


def half(name: str, args: argparse.Namespace, state_dir: str) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "bench.cold_backlog",
        "--half",
        name,
        "--state-dir",
        state_dir,
        "--seconds",
        str(args.seconds),
        "--drain",
        str(args.drain),
        "--ratio",
        str(args.ratio),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{name} half failed ({done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--drain", type=float, default=100, help="runs/s the pipeline drains")
    parser.add_argument("--ratio", type=float, default=10, help="events/s sent per run drained")
    parser.add_argument("--half", choices=["flood", "restart"], help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.half is not None:
        runner = flood if args.half == "flood" else restart
        sys.stdout.write(json.dumps(anyio.run(runner, args)) + "\n")
        return
    with tempfile.TemporaryDirectory() as state_dir:
        flooded = half("flood", args, state_dir)
        restarted = half("restart", args, state_dir)
    samples = flooded["samples"]
    settled = [s for s in samples if s["t_s"] >= 10]  # past the start's imports and caches
    low, high = min(s["rss_mb"] for s in settled), max(s["rss_mb"] for s in settled)
    command = (
        f".venv/bin/python -m bench.cold_backlog --seconds {args.seconds:g} "
        f"--drain {args.drain:g} --ratio {args.ratio:g}"
    )
    lines = [
        f"Command: `{command}` (pid {os.getpid()})",
        "",
        "| t (s) | RSS | runs waiting | of them loaded | events sent | runs finished |",
        "|---|---|---|---|---|---|",
        *(
            f"| {s['t_s']:.0f} | {s['rss_mb']:.0f} MB | {s['waiting']:,} | {s['loaded']:,} "
            f"| {s['sent']:,} | {s['finished']:,} |"
            for s in samples
        ),
        "",
        (
            f"Flood: {flooded['sent_per_s']:,} events/s sent, {flooded['drained_per_s']:,} "
            f"runs/s drained ({flooded['sent_per_s'] / max(flooded['drained_per_s'], 1):.1f}x); "
            f"RSS from 10 s on between {low:.0f} and {high:.0f} MB "
            f"({(high / low - 1) * 100:.1f}% above its low), peak {flooded['peak_rss_mb']:.0f} MB."
        ),
        (
            f"Restart with {restarted['waiting']:,} runs waiting ({restarted['loaded']:,} "
            f"loaded): RSS {restarted['rss_mb']:.0f} MB 5 s after start, peak "
            f"{restarted['peak_rss_mb']:.0f} MB."
        ),
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
