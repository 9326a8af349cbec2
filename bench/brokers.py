"""The ``mqtt``, ``amqp`` and ``redis_stream`` sources against their bare clients' floor,
side by side in one run: ``.venv/bin/python -m bench.brokers`` (``--kind`` to pick one).

Against the brokers of this machine (Mosquitto 127.0.0.1:1883, RabbitMQ 127.0.0.1:5672,
Redis 127.0.0.1:6379). In rounds, for each kind, each half in a process of its own with
a topic session, queue or stream of its own, filled with ``--messages`` ~100-byte JSON
messages before anything is timed (MQTT: at most 1,000, what Mosquitto queues by default
for a session that is away; more would be dropped by the broker):

* **floor**: the bare client (redis-py ``XREADGROUP`` of 500; aio-pika with prefetch 500;
  aiomqtt with paho's manual acks, receive maximum 500) + one aiosqlite transaction per
  batch (one row per message; WAL, ``synchronous`` as given) + the acknowledgement
  (``XACK``; one ``basic.ack`` multiple; a PUBACK per message): the least a consumer that
  records before it acknowledges must do.
* **cued**: the daemon in process (``run_daemon``): the source (batches of 500, prefetch /
  receive maximum 500), intake, a trigger every event fires, a pipeline of one ``sleep 0``
  task, ``max_active_runs`` high so no run waits.

Throughput: messages / seconds from the first message taken (floor: its first batch;
cued: the earliest ``received_at`` recorded) to the last recorded and acknowledged (floor:
after its last ack; cued: when the store holds every event, polled every 20 ms). cued's
figure also gives when the last run finished. Latency: on an idle consumer,
``--latency-messages`` messages one at a time, each carrying ``perf_counter()`` taken just
before it is sent, to the floor's commit / the run's task body starting (same process,
same clock). Prints every JSON line on stderr and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aio_pika
import aiomqtt
import aiosqlite
import anyio
import redis.asyncio as aioredis
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("redis_stream", "amqp", "mqtt")
HALVES = ("floor", "cued", "cued-events")
BATCH = 500
MQTT_QUEUE_LIMIT = 1000
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"

STAMPS: list[float] = []
"""Latency half: when each run's task body started (``perf_counter``)."""


async def stamp(sent: float) -> None:
    """The latency pipeline's task body: note when it started."""
    STAMPS.append(time.perf_counter())


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


# -- the brokers: a place of one half's own, filled, removed ----------------------------


def mqtt_connect(name: str, *, clean: bool, expiry: int = 3600) -> aiomqtt.Client:
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = expiry
    properties.ReceiveMaximum = BATCH
    return aiomqtt.Client(
        MQTT_HOST,
        MQTT_PORT,
        identifier=name,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=clean,
        properties=properties,
    )


async def prepare(kind: str, name: str) -> None:
    if kind == "mqtt":  # the session the consumer resumes, so messages wait in it
        async with mqtt_connect(name, clean=True) as client:
            await client.subscribe(f"{name}/#", qos=1)
    elif kind == "amqp":
        async with await aio_pika.connect(AMQP_URL) as connection:
            channel = await connection.channel()
            await channel.declare_queue(name, durable=True)
    else:
        client = aioredis.Redis.from_url(REDIS_URL)
        await client.xgroup_create(name, "bench", id="0", mkstream=True)
        await client.aclose()


@contextlib.asynccontextmanager
async def publisher(kind: str, name: str) -> AsyncIterator[Callable[[bytes], Awaitable[Any]]]:
    """One connection that sends one message at a time, confirmed by the broker."""
    if kind == "mqtt":
        async with aiomqtt.Client(MQTT_HOST, MQTT_PORT) as client:
            yield lambda body: client.publish(f"{name}/orders", body, qos=1)
    elif kind == "amqp":
        async with await aio_pika.connect(AMQP_URL) as connection:
            channel = await connection.channel(publisher_confirms=True)
            yield lambda body: channel.default_exchange.publish(
                aio_pika.Message(body), routing_key=name
            )
    else:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            yield lambda body: client.xadd(name, {"data": body})
        finally:
            await client.aclose()


async def fill(kind: str, name: str, payloads: list[bytes]) -> None:
    if kind == "mqtt":
        async with aiomqtt.Client(MQTT_HOST, MQTT_PORT, max_inflight_messages=100) as client:
            for body in payloads:
                await client.publish(f"{name}/orders", body, qos=1)
    elif kind == "amqp":
        async with await aio_pika.connect(AMQP_URL) as connection:
            channel = await connection.channel(publisher_confirms=True)
            for i in range(0, len(payloads), 500):
                await asyncio.gather(
                    *(
                        channel.default_exchange.publish(aio_pika.Message(body), routing_key=name)
                        for body in payloads[i : i + 500]
                    )
                )
    else:
        client = aioredis.Redis.from_url(REDIS_URL)
        for i in range(0, len(payloads), 1000):
            pipe = client.pipeline(transaction=False)
            for body in payloads[i : i + 1000]:
                pipe.xadd(name, {"data": body})
            await pipe.execute()
        await client.aclose()


async def remove(kind: str, name: str) -> None:
    if kind == "mqtt":
        async with mqtt_connect(name, clean=True, expiry=0):
            pass
    elif kind == "amqp":
        async with await aio_pika.connect(AMQP_URL) as connection:
            channel = await connection.channel()
            await channel.queue_delete(name)
    else:
        client = aioredis.Redis.from_url(REDIS_URL)
        await client.delete(name)
        await client.aclose()


# -- the floor ----------------------------------------------------------------------------


class Floor:
    """The bare client: take a batch, one transaction, acknowledge."""

    def __init__(self, kind: str, name: str, db: aiosqlite.Connection) -> None:
        self.kind, self.name, self.db = kind, name, db
        self.first: float | None = None
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def record(self, rows: list[tuple[str, str, float]]) -> None:
        await self.db.executemany("INSERT INTO events VALUES (?, ?, ?)", rows)
        await self.db.commit()

    async def take(self, limit: int) -> int:
        """Take, record and acknowledge ``limit`` messages; note when the first came."""
        count = 0
        while count < limit:
            count += await self.batch()
        return count

    async def batch(self) -> int:
        if self.kind == "redis_stream":
            answer = await self.redis.xreadgroup(
                "bench", "floor", {self.name: ">"}, count=BATCH, block=1000
            )
            if not answer:
                return 0
            entries = answer[0][1]
            self.first = self.first or time.perf_counter()
            now = time.time()
            await self.record([(e.decode(), f[b"data"].decode(), now) for e, f in entries])
            await self.redis.xack(self.name, "bench", *[e for e, _ in entries])
            return len(entries)
        batch = [await self.inbox.get()]
        while len(batch) < BATCH and not self.inbox.empty():
            batch.append(self.inbox.get_nowait())
        self.first = self.first or time.perf_counter()
        now = time.time()
        if self.kind == "amqp":
            await self.record([(str(m.delivery_tag), m.body.decode(), now) for m in batch])
            await batch[-1].ack(multiple=True)
        else:
            await self.record([(str(m.mid), bytes(m.payload).decode(), now) for m in batch])
            for m in batch:
                self.paho.ack(m.mid, m.qos)
        return len(batch)

    async def run(self, limit: int, after: Callable[[], Awaitable[Any]] | None = None) -> int:
        """Consume ``limit`` messages (then ``after``, while still consuming)."""
        if self.kind == "redis_stream":
            self.redis = aioredis.Redis.from_url(REDIS_URL)
            try:
                count = await self.take(limit)
                if after is not None:
                    await after()
                return count
            finally:
                await self.redis.aclose()
        if self.kind == "amqp":
            async with await aio_pika.connect(AMQP_URL) as connection:
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=BATCH)
                queue = await channel.declare_queue(self.name, durable=True)

                async def deliver(m: Any) -> None:
                    self.inbox.put_nowait(m)

                await queue.consume(deliver)
                count = await self.take(limit)
                if after is not None:
                    await after()
                return count
        client = mqtt_connect(self.name, clean=False)
        self.paho = client._client
        self.paho.manual_ack_set(True)
        self.paho.on_message = lambda _c, _u, m: self.inbox.put_nowait(m)
        async with client:
            await client.subscribe(f"{self.name}/#", qos=1)
            count = await self.take(limit)
            if after is not None:
                await after()
            return count


async def floor(args: argparse.Namespace) -> dict[str, Any]:
    kind, name, latency_name = args.kind, unique(), unique()
    with tempfile.TemporaryDirectory() as tmp:
        async with aiosqlite.connect(Path(tmp) / "floor.db") as db:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(f"PRAGMA synchronous = {args.synchronous.upper()}")
            await db.execute("CREATE TABLE events (event_id TEXT, data TEXT, received_at REAL)")
            await db.commit()
            await prepare(kind, name)
            await fill(kind, name, [message(i) for i in range(args.messages)])
            try:
                consumer = Floor(kind, name, db)
                count = await consumer.run(args.messages)
                assert consumer.first is not None
                elapsed = time.perf_counter() - consumer.first
            finally:
                await remove(kind, name)
            await prepare(kind, latency_name)
            one = Floor(kind, latency_name, db)
            latencies: list[float] = []

            async def latency() -> None:
                async def committed() -> float:
                    await one.take(1)
                    return time.perf_counter()

                latencies.extend(await one_at_a_time(args, latency_name, committed))

            try:
                await one.run(0, latency)
            finally:
                await remove(kind, latency_name)
    return {
        "name": f"floor: {FLOORS[kind]}",
        "messages": count,
        "seconds": round(elapsed, 3),
        "events_per_s": round(count / elapsed),
        **latency_figures(latencies),
        "peak_rss_mb": peak_rss_mb(),
    }


FLOORS = {
    "redis_stream": "XREADGROUP + one aiosqlite transaction per batch + XACK",
    "amqp": "aio-pika consume + one aiosqlite transaction per batch + basic.ack multiple",
    "mqtt": "aiomqtt/paho + one aiosqlite transaction per batch + PUBACKs",
}


async def one_at_a_time(
    args: argparse.Namespace, name: str, effect: Callable[[], Awaitable[float]]
) -> list[float]:
    """Send ``--latency-messages`` (and 10 to warm up) one at a time, each carrying the
    ``perf_counter()`` just before it is sent; wait for ``effect`` of each, which says when
    it happened; return milliseconds from sending to the effect."""
    latencies: list[float] = []
    async with publisher(args.kind, name) as send:
        with anyio.fail_after(300):
            for i in range(args.latency_messages + 10):
                sent = time.perf_counter()
                await send(json.dumps({"i": i, "sent": sent}).encode())
                done = await effect()
                if i >= 10:
                    latencies.append((done - sent) * 1000)
    return latencies


def latency_figures(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {}
    return {
        "latency_p50_ms": round(statistics.median(latencies), 2),
        "latency_p99_ms": round(percentile(latencies, 0.99), 2),
    }


# -- cued ---------------------------------------------------------------------------------


DAEMON = """
[daemon]
state = "state.db"
synchronous = "{synchronous}"
backlog_high_water = 10000000
backlog_low_water = 5000000
log_level = "warning"
[http]
listen = ""
"""


def source_toml(kind: str, name: str) -> str:
    head = f'[sources.bench]\nkind = "{kind}"\nmax_batch = {BATCH}\n'
    if kind == "mqtt":
        return head + (
            f'broker = "mqtt://{MQTT_HOST}:{MQTT_PORT}"\ntopics = ["{name}/#"]\n'
            f'client_id = "{name}"\nreceive_maximum = {BATCH}\n'
        )
    if kind == "amqp":
        return head + f'url = "{AMQP_URL}"\nqueue = "{name}"\nprefetch = {BATCH}\n'
    return head + f'url = "{REDIS_URL}"\nstream = "{name}"\ngroup = "bench"\nfield = "data"\n'


EVENTS_ONLY = """
[pipelines.noop]
max_active_runs = 10000000
[pipelines.noop.tasks.t]
kind = "sleep"
seconds = 0
"""
THROUGHPUT = (
    EVENTS_ONLY
    + """
[[triggers]]
source = "bench"
pipeline = "noop"
"""
)

LATENCY = """
[pipelines.first]
inputs = { sent = 0.0 }
[pipelines.first.tasks.stamp]
kind = "python"
function = "bench.brokers:stamp"
args = { sent = "{{ inputs.sent }}" }
[[triggers]]
source = "bench"
pipeline = "first"
inputs = { sent = "{{ event.data.sent }}" }
"""


async def cued(args: argparse.Namespace) -> dict[str, Any]:
    from bench.brokers import STAMPS as stamps  # the task imports this file as bench.brokers
    from cued.daemon.assembly import run_daemon
    from cued.daemon.config import parse_config
    from cued.daemon.logs import configure_logging

    configure_logging("warning", json=True)
    kind, name, latency_name = args.kind, unique(), unique()
    head = DAEMON.format(synchronous=args.synchronous)
    finished = 0
    all_finished = anyio.Event()

    def on_finished(row: Any) -> None:
        nonlocal finished
        finished += 1
        if finished == args.messages:
            all_finished.set()

    await prepare(kind, name)
    await fill(kind, name, [message(i) for i in range(args.messages)])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp) / "state.db"
            body = THROUGHPUT if args.half == "cued" else EVENTS_ONLY
            config = parse_config(
                head + source_toml(kind, name) + body, file="bench", base_dir=Path(tmp)
            )
            async with anyio.create_task_group() as tg:
                info = await tg.start(run_daemon, config)
                info.runner.on_run_finished(on_finished)
                with anyio.fail_after(900):
                    # polled: the source records inside the daemon, out of our sight
                    while await anyio.to_thread.run_sync(count_events, state) < args.messages:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                    recorded_at = time.time()
                    if args.half == "cued":
                        await all_finished.wait()
                    finished_at = time.time()
                tg.cancel_scope.cancel()
            with sqlite3.connect(state) as db:
                (first,) = db.execute("SELECT min(received_at) FROM events").fetchone()
    finally:
        await remove(kind, name)

    elapsed = recorded_at - first
    if args.half == "cued-events":
        return {
            "name": f"cued: {kind} source and intake only (no trigger: events recorded)",
            "messages": args.messages,
            "seconds": round(elapsed, 3),
            "events_per_s": round(args.messages / elapsed),
            "peak_rss_mb": peak_rss_mb(),
        }
    await prepare(kind, latency_name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = parse_config(
                head + source_toml(kind, latency_name) + LATENCY,
                file="bench",
                base_dir=Path(tmp),
            )
            async with anyio.create_task_group() as tg:
                await tg.start(run_daemon, config)

                seen = len(stamps)

                async def task_started() -> float:
                    # the k-th message sent starts the k-th task (the task may start before
                    # the broker's reply to the send is read: counted, not compared)
                    nonlocal seen
                    while len(stamps) <= seen:  # noqa: ASYNC110 - the task notes it in a list
                        await anyio.sleep(0.0002)
                    seen += 1
                    return stamps[seen - 1]

                latencies = await one_at_a_time(args, latency_name, task_started)
                tg.cancel_scope.cancel()
    finally:
        await remove(kind, latency_name)
    return {
        "name": f"cued: {kind} source, intake, one sleep-0 run per event",
        "messages": args.messages,
        "seconds": round(elapsed, 3),
        "events_per_s": round(args.messages / elapsed),
        "runs_per_s": round(args.messages / (finished_at - first)),
        **latency_figures(latencies),
        "peak_rss_mb": peak_rss_mb(),
    }


def count_events(state: Path) -> int:
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(state, timeout=10) as db:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:  # the daemon has not made its tables yet
        return 0


def unique() -> str:
    return f"cued-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# -- the run ------------------------------------------------------------------------------


def half(args: argparse.Namespace, kind: str, which: str) -> dict[str, Any]:
    messages = min(args.messages, MQTT_QUEUE_LIMIT) if kind == "mqtt" else args.messages
    command = [
        sys.executable,
        "-m",
        "bench.brokers",
        "--half",
        which,
        "--kind",
        kind,
        "--messages",
        str(messages),
        "--latency-messages",
        str(args.latency_messages),
        "--synchronous",
        args.synchronous,
    ]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{which} {kind} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["kind"] = kind
    sys.stderr.write(json.dumps(result) + "\n")
    return result


def table(results: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    lines = [
        (
            "| what | messages | events/s, first taken to last recorded | vs floor "
            "| runs finished/s | latency p50 / p99 | peak RSS |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        floor_rate = None
        for which in HALVES:
            rounds = results.get((kind, which))
            if not rounds:
                continue
            rate = statistics.median(r["events_per_s"] for r in rounds)
            floor_rate = rate if which == "floor" else floor_rate
            ratio = f"{rate / floor_rate:.3f}x" if floor_rate else "-"
            runs = rounds[0].get("runs_per_s")
            runs_text = (
                f"{statistics.median(r['runs_per_s'] for r in rounds):,.0f}" if runs else "-"
            )
            if "latency_p50_ms" in rounds[0]:
                p50 = statistics.median(r["latency_p50_ms"] for r in rounds)
                p99 = statistics.median(r["latency_p99_ms"] for r in rounds)
                latency = f"{p50:.2f} ms / {p99:.2f} ms"
            else:
                latency = "-"
            rss = max(r["peak_rss_mb"] for r in rounds)
            lines.append(
                f"| {rounds[0]['name']} | {rounds[0]['messages']:,} | {rate:,.0f} | {ratio} "
                f"| {runs_text} | {latency} | {rss} MB |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, action="append")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-messages", type=int, default=200)
    parser.add_argument("--synchronous", choices=("normal", "full"), default="normal")
    parser.add_argument("--half", choices=HALVES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.half:
        args.kind = args.kind[0]
        result = asyncio.run(floor(args) if args.half == "floor" else cued(args))
        print(json.dumps(result))  # noqa: T201 - the parent reads it
        return
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for kind in args.kind or KINDS:
            for which in HALVES:
                results.setdefault((kind, which), []).append(half(args, kind, which))
    print(  # noqa: T201 - the table is the output
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; synchronous={args.synchronous}; medians of "
        f"{args.rounds} rounds\n\n{table(results)}"
    )


if __name__ == "__main__":
    main()
