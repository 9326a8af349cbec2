"""The ``nats`` and ``postgres`` sources against their bare clients' floor, side by side in
one run: ``.venv/bin/python -m bench.streams``.

Against the machine's NATS server (JetStream, 127.0.0.1:4222) and PostgreSQL
(127.0.0.1:5432): one stream and one outbox table (in a database of its own) filled with
``--messages`` ~60-byte JSON messages / rows before anything is timed, then, in
``--rounds`` rounds, each half in a process of its own reading all of it from the start
(a fresh durable consumer; a fresh cursor):

* **floor**: the bare client takes a batch (nats-py ``fetch`` of 256; asyncpg ``select ...
  where id > $1 order by id limit 500``), writes it to SQLite in one aiosqlite transaction
  (one row per message, with the cursor for PostgreSQL; WAL, ``synchronous`` FULL), then
  acknowledges it (``ack`` of each message): the least a consumer that records before it
  acknowledges must do.
* **cued**: the daemon in process (``run_daemon``): the source, intake, a trigger every
  event fires, a pipeline of one ``sleep 0`` task, every run started at once.

Throughput: messages / seconds from the first message taken (floor: the first batch with
data; cued: the earliest ``received_at`` recorded) to the last one acknowledged (floor:
after its last ack; cued: when the consumer's ack floor / the recorded cursor, polled every
20 ms, reaches the end).

Latency (event to task start): on an idle consumer, ``--latency-messages`` messages sent
one at a time, each carrying ``perf_counter()`` taken just before it is published (or its
row inserted and NOTIFY sent); cued: the run's task body notes ``perf_counter()`` as it
starts (same process, same clock); floor: its SQLite commit of that message. The
``postgres`` halves LISTEN (``channel``), so they are woken, not polled.

Prints JSON lines on stderr and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
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

import aiosqlite
import anyio
import asyncpg  # type: ignore[import-untyped]
import nats
from nats.js.api import AckPolicy, ConsumerConfig

ROOT = Path(__file__).resolve().parents[1]
NATS_URL = "nats://127.0.0.1:4222"
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
SUBJECT = "bench.orders"

#: When each latency run's task body started, and the message's send time.
STAMPS: list[float] = []


async def stamp(sent: float) -> None:
    """The latency pipeline's task: how long after sending its body starts."""
    STAMPS.append(time.perf_counter() - sent)


def body(i: int, sent: float = 0.0) -> bytes:
    return json.dumps({"id": i, "kind": "order", "total": i % 997, "sent": sent}).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- filling ------------------------------------------------------------------------------


async def fill(args: argparse.Namespace) -> None:
    if args.source == "nats":
        client = await nats.connect(NATS_URL)
        js = client.jetstream()
        for name in (args.stream, args.stream + "_LAT"):
            try:
                await js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                pass
        await js.add_stream(name=args.stream, subjects=[f"{args.stream.lower()}.>"])
        await js.add_stream(name=args.stream + "_LAT", subjects=[f"{args.stream.lower()}_lat.>"])
        futures = [
            await js.publish_async(f"{args.stream.lower()}.x", body(i))
            for i in range(args.messages)
        ]
        await asyncio.gather(*futures)
        await client.close()
    else:
        conn = await asyncpg.connect(f"{POSTGRES}/{args.database}")
        for table in ("outbox", "outbox_lat"):
            await conn.execute(
                f"create table {table} (id bigint generated always as identity primary key, "
                "body jsonb not null)"
            )
        await conn.copy_records_to_table(
            "outbox", records=[(body(i).decode(),) for i in range(args.messages)], columns=["body"]
        )
        await conn.close()


# -- floor --------------------------------------------------------------------------------


async def open_sqlite(tmp: str) -> aiosqlite.Connection:
    db = await aiosqlite.connect(Path(tmp) / "floor.db")
    await db.execute("pragma journal_mode = wal")
    await db.execute("pragma synchronous = full")
    await db.execute("create table events (id text primary key, data text)")
    await db.execute("create table cursors (source text primary key, cursor text)")
    await db.commit()
    return db


async def floor_nats(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    db = await open_sqlite(tmp)

    async def consume(stream: str, durable: str, count: int, on_commit: Any) -> tuple[float, float]:
        await js.add_consumer(
            stream, ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT)
        )
        sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
        taken, first = 0, 0.0
        while taken < count:
            try:
                msgs = await sub.fetch(256, timeout=1)
            except nats.errors.TimeoutError:
                continue
            first = first or time.perf_counter()
            await db.executemany(
                "insert into events values (?, ?)",
                [(f"{stream}:{m.metadata.sequence.stream}", m.data.decode()) for m in msgs],
            )
            await db.commit()
            on_commit(msgs)
            for m in msgs:
                await m.ack()
            taken += len(msgs)
        await client.flush()
        return first, time.perf_counter()

    first, last = await consume(args.stream, f"floor{os.getpid()}", args.messages, lambda _: None)
    latencies: list[float] = []

    async def latency() -> None:
        async with anyio.create_task_group() as tg:

            def committed(msgs: list[Any]) -> None:
                now = time.perf_counter()
                latencies.extend(now - json.loads(m.data)["sent"] for m in msgs)

            tg.start_soon(
                consume,
                args.stream + "_LAT",
                f"floorlat{os.getpid()}",
                args.latency_messages,
                committed,
            )
            await anyio.sleep(0.5)
            for i in range(args.latency_messages):
                await js.publish(f"{args.stream.lower()}_lat.x", body(i, time.perf_counter()))
                while len(latencies) <= i:  # noqa: ASYNC110 - filled by another task, polled
                    await anyio.sleep(0.001)

    await latency()
    await db.close()
    await client.close()
    return {"events_per_s": args.messages / (last - first), **figures(latencies)}


async def floor_postgres(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    conn = await asyncpg.connect(f"{POSTGRES}/{args.database}")
    db = await open_sqlite(tmp)

    async def consume(
        table: str, count: int, wake: anyio.Event | None, on_commit: Any
    ) -> tuple[float, float]:
        cursor, taken, first = 0, 0, 0.0
        query = f"select id, body::text from {table} where id > $1 order by id limit 500"
        while taken < count:
            rows = await conn.fetch(query, cursor)
            if not rows:
                if wake is not None:
                    await wake.wait()
                continue
            first = first or time.perf_counter()
            cursor = rows[-1][0]
            await db.executemany(
                "insert into events values (?, ?)", [(f"{table}:{r[0]}", r[1]) for r in rows]
            )
            await db.execute("insert or replace into cursors values (?, ?)", (table, str(cursor)))
            await db.commit()
            on_commit(rows)
            taken += len(rows)
        return first, time.perf_counter()

    first, last = await consume("outbox", args.messages, None, lambda _: None)
    latencies: list[float] = []
    listener = await asyncpg.connect(f"{POSTGRES}/{args.database}")
    writer = await asyncpg.connect(f"{POSTGRES}/{args.database}")
    wake = anyio.Event()

    def notified(*_: Any) -> None:
        nonlocal wake
        wake.set()

    await listener.add_listener("outbox_lat", notified)

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            nonlocal wake
            cursor = 0
            while len(latencies) < args.latency_messages:
                await wake.wait()
                wake = anyio.Event()  # a NOTIFY from now on wakes the next read
                rows = await conn.fetch(
                    "select id, body::text from outbox_lat where id > $1 order by id limit 500",
                    cursor,
                )
                if rows:
                    cursor = rows[-1][0]
                    await db.executemany(
                        "insert into events values (?, ?)", [(f"lat:{r[0]}", r[1]) for r in rows]
                    )
                    await db.commit()
                    now = time.perf_counter()
                    latencies.extend(now - json.loads(r[1])["sent"] for r in rows)

        tg.start_soon(run)
        for i in range(args.latency_messages):
            await writer.execute(
                "insert into outbox_lat (body) values ($1::jsonb); ",
                body(i, time.perf_counter()).decode(),
            )
            await writer.execute("notify outbox_lat")
            while len(latencies) <= i:  # noqa: ASYNC110 - filled by another task, polled
                await anyio.sleep(0.001)
    for c in (conn, listener, writer):
        await c.close()
    await db.close()
    return {"events_per_s": args.messages / (last - first), **figures(latencies)}


# -- cued ---------------------------------------------------------------------------------

DAEMON = """
[daemon]
state = "state.db"
backlog_high_water = 10000000
backlog_low_water = 5000000
log_level = "warning"
max_running_tasks = 1000
[http]
listen = ""
[pipelines.noop]
max_active_runs = 10000000
[pipelines.noop.tasks.t]
kind = "sleep"
seconds = 0
[pipelines.first]
inputs = {{ sent = 0.0 }}
[pipelines.first.tasks.stamp]
kind = "python"
function = "bench.streams:stamp"
args = {{ sent = "{{{{ inputs.sent }}}}" }}
{bench_trigger}
[[triggers]]
source = "latency"
pipeline = "first"
inputs = {{ sent = "{{{{ event.data.sent if event.data.sent is defined else event.data.body.sent }}}}" }}
"""

NATS_SOURCES = """
[sources.bench]
kind = "nats"
servers = ["{url}"]
stream = "{stream}"
durable = "cued{pid}"
[sources.latency]
kind = "nats"
servers = ["{url}"]
stream = "{stream}_LAT"
durable = "cuedlat{pid}"
fetch_wait = "1s"
"""

POSTGRES_SOURCES = """
[sources.bench]
kind = "postgres"
dsn = "{dsn}"
table = "outbox"
poll_interval = "20ms"
[sources.latency]
kind = "postgres"
dsn = "{dsn}"
table = "outbox_lat"
channel = "outbox_lat"
poll_interval = "10s"
"""


async def cued(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    # the task appends to the module the daemon imports (this one runs as __main__)
    from bench.streams import STAMPS as stamps
    from cued.daemon.assembly import run_daemon
    from cued.daemon.config import parse_config
    from cued.daemon.logs import configure_logging

    configure_logging("warning", json=True)
    if args.source == "nats":
        sources = NATS_SOURCES.format(url=NATS_URL, stream=args.stream, pid=os.getpid())
    else:
        sources = POSTGRES_SOURCES.format(dsn=f"{POSTGRES}/{args.database}")
    trigger = '[[triggers]]\nsource = "bench"\npipeline = "noop"' if args.half == "cued" else ""
    config = parse_config(
        DAEMON.format(bench_trigger=trigger) + sources, file="bench", base_dir=Path(tmp)
    )
    client = await nats.connect(NATS_URL) if args.source == "nats" else None
    writer = (
        await asyncpg.connect(f"{POSTGRES}/{args.database}") if args.source == "postgres" else None
    )
    async with anyio.create_task_group() as tg:
        info = await tg.start(run_daemon, config)
        store = info.runner.store

        async def all_acknowledged() -> bool:
            if client is not None:
                consumer = await client.jetstream().consumer_info(args.stream, f"cued{os.getpid()}")
                return bool(consumer.ack_floor.stream_seq >= args.messages)
            return await store.get_cursor("bench") == str(args.messages)

        while not await all_acknowledged():  # noqa: ASYNC110 - the server and the store: polled
            await anyio.sleep(0.02)
        last = time.time()
        events = await store.list_events(limit=args.messages, source="bench")
        first = min(e.received_at for e in events)
        stamps.clear()
        for i in range(args.latency_messages if args.half == "cued" else 0):
            if client is not None:
                await client.jetstream().publish(
                    f"{args.stream.lower()}_lat.x", body(i, time.perf_counter())
                )
            else:
                assert writer is not None
                await writer.execute(
                    "insert into outbox_lat (body) values ($1::jsonb)",
                    body(i, time.perf_counter()).decode(),
                )
                await writer.execute("notify outbox_lat")
            while len(stamps) <= i:  # noqa: ASYNC110 - filled by a task, polled
                await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    if client is not None:
        await client.close()
    if writer is not None:
        await writer.close()
    rss = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return {"events_per_s": args.messages / (last - first), "peak_rss_mb": rss, **figures(stamps)}


def figures(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {}
    return {
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 3),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


# -- the whole run ------------------------------------------------------------------------


def half(args: argparse.Namespace, name: str) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.streams", "--half", name, "--source", args.source,
        "--messages", str(args.messages), "--latency-messages", str(args.latency_messages),
        "--stream", args.stream, "--database", args.database,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{name} half failed ({done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    sys.stderr.write(json.dumps({"source": args.source, "half": name, **result}) + "\n")
    return result


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{POSTGRES}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


#: The halves, and what the table calls them.
HALVES = {
    "floor": "floor: fetch + one aiosqlite transaction per batch + ack",
    "cued": "cued: source, intake, one sleep-0 run per event started at once",
    "events": "cued: source and intake only (no trigger: events recorded)",
}


def orchestrate(args: argparse.Namespace) -> None:
    rows = []
    for source in args.sources:
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in HALVES}
        for _ in range(args.rounds):
            for name in HALVES:  # interleaved, each in a process of its own
                stamp_ = f"{os.getpid()}{time.monotonic_ns() % 10**9}"
                args.source, args.stream, args.database = (
                    source,
                    f"BENCH{stamp_}",
                    f"bench_{stamp_}",
                )
                if source == "postgres":
                    anyio.run(admin, f'create database "{args.database}"')
                try:
                    anyio.run(fill, args)
                    results[name].append(half(args, name))
                finally:
                    if source == "postgres":
                        anyio.run(admin, f'drop database "{args.database}" with (force)')
                    else:
                        anyio.run(drop_streams, args.stream)
        floor = statistics.median(r["events_per_s"] for r in results["floor"])
        for name, what in HALVES.items():
            runs = results[name]
            rate = statistics.median(r["events_per_s"] for r in runs)
            p50 = statistics.median(r.get("latency_p50_ms", 0.0) for r in runs)
            p99 = statistics.median(r.get("latency_p99_ms", 0.0) for r in runs)
            rss = statistics.median(r["peak_rss_mb"] for r in runs)
            latency = f"{p50:.2f} ms / {p99:.2f} ms" if name != "events" else "-"
            rows.append(
                f"| {source} | {what} | {rate:,.0f} | {rate / floor:.3f}x | {latency} | {rss:.0f} MB |"
            )
    with open("/proc/meminfo") as f:
        total_kb = int(f.readline().split()[1])
    print(  # noqa: T201 - the table is the output
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {total_kb / 1024 / 1024:.0f} GiB RAM, "
        f"Python {platform.python_version()}; medians of {args.rounds} rounds, {args.messages:,} messages, "
        f"latency over {args.latency_messages}.\n\n"
        "| source | what | events/s, first taken to last acknowledged | vs floor | event to task start (floor: to commit) p50 / p99 | peak RSS |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows)
    )


async def drop_streams(stream: str) -> None:
    client = await nats.connect(NATS_URL)
    for name in (stream, stream + "_LAT"):
        try:
            await client.jetstream().delete_stream(name)
        except nats.js.errors.NotFoundError:
            pass
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sources", nargs="+", default=["nats", "postgres"])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--latency-messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--half", choices=list(HALVES))
    parser.add_argument("--source", default="nats")
    parser.add_argument("--stream", default="")
    parser.add_argument("--database", default="")
    args = parser.parse_args()
    if args.half is None:
        orchestrate(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.half == "floor":
            run = floor_nats if args.source == "nats" else floor_postgres
        else:
            run = cued
        result = anyio.run(run, args, tmp)
    print(json.dumps(result))  # noqa: T201 - read by the orchestrating process


if __name__ == "__main__":
    main()
