"""Reload under load: how long a reload takes, and what events sent meanwhile go through.

The daemon runs in its own process (``cued run``) with 100 pipelines (one ``sleep`` task
each, ``seconds = 0``; its attempt's start is recorded) and 4 webhook sources, with 100
triggers (each request names the pipeline it starts). Senders post events at a steady
pace over keep-alive connections, each stamped with ``time.time()`` when it was sent.
Meanwhile this process rewrites the config file and sends ``SIGHUP``, ``--reloads`` times,
one every ``--every`` seconds, alternating two configs that differ in one pipeline, one
trigger and one source (a webhook whose settings changed: it is replaced, its path handed
over).

Measured, per half (``reloads`` and, side by side in the same invocation, ``steady``: the
same load with no reload):
- reload time: ``SIGHUP`` sent to the daemon answering with the new version on its control
  socket (polled every millisecond), and the daemon's own ``config_reloaded`` seconds;
- refused: requests answered anything but ``202``;
- event to task start (sent stamp to the task body's ``time.time()``), p50 / p99, for the
  events sent during a reload (from ``SIGHUP`` to 100 ms after it was done) and for all.

Prints one JSON line per half and round on stderr, and a summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from cued.daemon.assembly import control_socket_path

PIPELINES = 100
SOURCES = 4
#: Events sent within this long after a reload ended count as sent during it.
AFTER_S = 0.1


def config(variant: int, port: int) -> str:
    parts = [
        f'[daemon]\nstate = "state.db"\nlog_level = "info"\n[http]\nlisten = "127.0.0.1:{port}"\n'
    ]
    for p in range(PIPELINES):
        active = 16 + variant if p == 0 else 16
        parts.append(
            f"[pipelines.p{p:03}]\nmax_active_runs = {active}\n"
            f'[pipelines.p{p:03}.tasks.stamp]\nkind = "sleep"\n'
        )
    for s in range(SOURCES):
        limit = 1_000_000 + variant if s == SOURCES - 1 else 1_000_000
        parts.append(
            f'[sources.h{s}]\nkind = "webhook"\npath = "/h{s}"\nmax_body_bytes = {limit}\n'
        )
    for p in range(PIPELINES):
        name = f"t{p}-{variant}" if p == 1 else f"t{p}"
        parts.append(
            f'[[triggers]]\nname = "{name}"\nsource = "h{p % SOURCES}"\npipeline = "p{p:03}"\n'
            f"when = \"event.data.p == 'p{p:03}'\"\n"
        )
    return "\n".join(parts)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _version(control: httpx.AsyncClient) -> int:
    answer = await control.get("/api/v1/config")
    version: int = answer.json()["version"]
    return version


async def half(*, reloads: int, every_s: float, rate: float, senders: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "config.toml"
        port = _free_port()
        file.write_text(config(0, port))
        state = Path(tmp) / "state.db"
        log = Path(tmp) / "daemon.log"
        command = [sys.executable, "-m", "cued.daemon.cli", "--config", str(file), "run"]
        with log.open("wb") as out:
            daemon = subprocess.Popen(command, stderr=out)  # noqa: ASYNC220 - returns at once
        socket_path = control_socket_path(state)
        statuses: list[int] = []
        windows: list[tuple[float, float]] = []
        reload_s: list[float] = []
        try:
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path), retries=50)
            async with httpx.AsyncClient(transport=transport, base_url="http://cued") as control:
                with anyio.fail_after(30):
                    while not socket_path.exists():  # noqa: ASYNC110 - another process
                        await anyio.sleep(0.01)
                    while (await control.get("/readyz")).status_code != 200:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                stop = anyio.Event()

                async def send(worker: int) -> None:
                    # on a fixed schedule (not after each answer): a slow answer does not
                    # lower the load, as a real sender's would not
                    pace, due = senders / rate, anyio.current_time() + worker / rate
                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                        n = worker
                        while not stop.is_set():
                            p = n % PIPELINES
                            body = {"p": f"p{p:03}", "sent": time.time()}
                            answer = await client.post(f"/h{p % SOURCES}", json=body)
                            statuses.append(answer.status_code)
                            n += senders
                            due += pace
                            await anyio.sleep(max(0.0, due - anyio.current_time()))

                async with anyio.create_task_group() as tg:
                    for worker in range(senders):
                        tg.start_soon(send, worker)
                    await anyio.sleep(every_s)  # warm
                    for r in range(1, reloads + 1):
                        before = await _version(control)
                        file.write_text(config(r % 2, port))
                        began = time.time()
                        daemon.send_signal(signal.SIGHUP)
                        with anyio.fail_after(30):
                            while await _version(control) == before:  # noqa: ASYNC110
                                await anyio.sleep(0.001)
                        ended = time.time()
                        windows.append((began, ended + AFTER_S))
                        reload_s.append(ended - began)
                        await anyio.sleep(every_s)
                    if not reloads:
                        await anyio.sleep(every_s * 10)
                    stop.set()
                await anyio.sleep(1.0)  # the last runs finish
        finally:
            daemon.terminate()
            daemon.wait(30)
        with sqlite3.connect(state) as db:
            rows = db.execute(
                "SELECT e.data, a.started_at FROM runs r JOIN events e ON r.event_id = e.event_id "
                "JOIN attempts a ON a.run_id = r.run_id WHERE a.state = 'succeeded'"
            ).fetchall()
            events = db.execute("SELECT count(*) FROM events").fetchone()[0]
        inside = [
            json.loads(line).get("seconds")
            for line in log.read_text().splitlines()
            if '"config_reloaded"' in line
        ]
    sent_started = [(json.loads(d)["sent"], float(started)) for d, started in rows]
    all_ms = sorted((s - t) * 1000 for t, s in sent_started)
    during_ms = sorted(
        (s - t) * 1000 for t, s in sent_started if any(a <= t <= b for a, b in windows)
    )
    return {
        "reloads": reloads,
        "requests": len(statuses),
        "refused": sum(1 for s in statuses if s != 202),
        "events": events,
        "runs_started": len(rows),
        "reload_ms_p50": _ms(reload_s, 0.5),
        "reload_ms_max": round(max(reload_s) * 1000, 1) if reload_s else None,
        "reload_inside_ms_p50": _ms([s for s in inside if s is not None], 0.5),
        "during_events": len(during_ms),
        "during_p50_ms": _pct(during_ms, 0.5),
        "during_p99_ms": _pct(during_ms, 0.99),
        "all_p50_ms": _pct(all_ms, 0.5),
        "all_p99_ms": _pct(all_ms, 0.99),
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, round(q * (len(values) - 1)))], 2)


def _ms(seconds: list[float], q: float) -> float | None:
    return _pct(sorted(s * 1000 for s in seconds), q)


async def main(rounds: int, reloads: int, every_s: float, rate: float, senders: int) -> None:
    results: dict[str, list[dict[str, Any]]] = {"reloads": [], "steady": []}
    for _ in range(rounds):
        for name, count in (("reloads", reloads), ("steady", 0)):
            result = await half(reloads=count, every_s=every_s, rate=rate, senders=senders)
            sys.stderr.write(json.dumps({"half": name, **result}) + "\n")
            results[name].append(result)
    summary = {
        name: {
            key: statistics.median(v)
            if (v := [r[key] for r in runs if r[key] is not None])
            else None
            for key in runs[0]
        }
        for name, runs in results.items()
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between reloads")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second, in all")
    parser.add_argument("--senders", type=int, default=8)
    args = parser.parse_args()
    anyio.run(main, args.rounds, args.reloads, args.every, args.rate, args.senders)
