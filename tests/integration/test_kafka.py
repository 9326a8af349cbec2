"""The ``kafka`` source and task kind against a real Kafka-protocol broker (Tansu, in memory).

Most tests run the whole daemon in process; every test has topics and groups of its own on
the session's one broker. Sources use a 2 s session timeout: the broker holds a group's
first join for half of it (5 s with the default 10 s).
"""

from __future__ import annotations

import base64
import contextlib
import json
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import structlog
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    ConsumerRecord,
    TopicPartition,
)
from pydantic import ValidationError

from cued.connectors.kafka import KafkaConfig, KafkaSource, message_event
from cued.daemon.assembly import open_runner
from cued.daemon.errors import ConnectorError, StoreError
from cued.daemon.sdk.sources import Receipt, SourceContext
from cued.plugins.kafka import IDEMPOTENCY_HEADER, KafkaProduceTask
from tests.support import probes
from tests.support.fakes import AcceptingIntake, NoRoutes
from tests.support.http_server import serve_app
from tests.support.kafka_broker import (
    committed_offsets,
    create_topics,
    reset_group_offsets,
    unique_name,
)
from tests.support.kafka_source import (
    WAIT_S,
    daemon_toml,
    eventually,
    produce,
    record,
    source_toml,
)
from tests.support.logs import info_logs
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.running import daemon_running

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, MutableMapping
    from pathlib import Path

    from cued.daemon.assembly import DaemonInfo
    from cued.daemon.sdk.sources import Event
    from cued.daemon.store import EventRow, RunRow
    from tests.support.kafka_broker import Broker


# -- helpers ------------------------------------------------------------------------------


PROBE_PIPELINE = """
[pipelines.orders]
inputs = { order_id = "" }
[pipelines.orders.tasks.handle]
kind = "python"
function = "tests.support.probes:record"
args = { name = "{{ inputs.order_id }}" }
"""


async def events_of(info: DaemonInfo, source: str) -> list[EventRow]:
    return await info.runner.store.list_events(limit=100_000, source=source)


async def finished_runs(info: DaemonInfo, pipeline: str, count: int) -> list[RunRow]:
    """Wait for ``count`` finished runs of ``pipeline`` (and no more than that) and return them."""

    async def check() -> list[RunRow]:
        runs = await info.runner.store.list_runs(limit=100_000, pipeline=pipeline)
        done = [r for r in runs if r.state in ("succeeded", "failed", "cancelled")]
        assert len(runs) <= count, f"{len(runs)} runs of {pipeline!r}, expected {count}"
        return done if len(done) == count else []

    return list(await eventually(check))


# -- the source: events, triggers, offsets ------------------------------------------------


async def test_messages_start_runs_with_inputs_from_the_event(kafka, make_config):
    probe = probes.reset()
    topic, group = unique_name("orders"), unique_name("cued")
    await create_topics(kafka.bootstrap, topic)
    config = make_config(
        daemon_toml(
            PROBE_PIPELINE,
            source_toml("shop", kafka.bootstrap, [topic], group),
            '[[triggers]]\nsource = "shop"\npipeline = "orders"\n'
            "when = \"event.data.status == 'paid'\"\n"
            'inputs = { order_id = "{{ event.data.id }}" }\n',
        )
    )
    async with daemon_running(config) as info:
        await produce(
            kafka.bootstrap,
            topic,
            [{"id": "o1", "status": "paid"}, {"id": "o2", "status": "open"}],
            key=b"customer-7",
            headers=[("trace", b"t-1")],
        )
        await produce(kafka.bootstrap, topic, [{"id": "o3", "status": "paid"}, "plain text"])
        runs = await finished_runs(info, "orders", 2)
        events = {e.event_id: e for e in await eventually(lambda: events_of(info, "shop"))}
        offsets = await committed_offsets(kafka.bootstrap, group, [(topic, 0)])

    assert {r.state for r in runs} == {"succeeded"}
    assert sorted(r.inputs["order_id"] for r in runs) == ["o1", "o3"]
    assert sorted(probe.calls) == ["o1", "o3"]
    assert sorted(events) == [f"shop:{topic}:0:{offset}" for offset in range(4)]
    first = events[f"shop:{topic}:0:0"]
    assert first.status == "matched"
    assert first.data == {"id": "o1", "status": "paid"}
    assert first.meta["key"] == "customer-7"
    assert first.meta["headers"] == {"trace": "t-1"}
    assert (first.meta["topic"], first.meta["partition"], first.meta["offset"]) == (topic, 0, 0)
    assert first.meta["encoding"] == "json"
    assert events[f"shop:{topic}:0:1"].status == "unmatched"
    text = events[f"shop:{topic}:0:3"]
    assert (text.status, text.data, text.meta["encoding"]) == ("unmatched", "plain text", "text")
    assert offsets == {(topic, 0): 4}


async def test_a_dedupe_key_starts_one_run_per_business_key(kafka, make_config):
    probes.reset()
    topic, group = unique_name("orders"), unique_name("cued")
    await create_topics(kafka.bootstrap, topic)
    config = make_config(
        daemon_toml(
            PROBE_PIPELINE,
            source_toml("shop", kafka.bootstrap, [topic], group),
            '[[triggers]]\nsource = "shop"\npipeline = "orders"\n'
            'inputs = { order_id = "{{ event.data.id }}" }\ndedupe = "{{ event.data.id }}"\n',
        )
    )
    async with daemon_running(config) as info:
        await produce(kafka.bootstrap, topic, [{"id": i} for i in ["a", "b", "a", "c", "b"]])
        events = await eventually(lambda: _at_least(events_of(info, "shop"), 5), timeout_s=WAIT_S)
        runs = await finished_runs(info, "orders", 3)
    assert sorted(r.inputs["order_id"] for r in runs) == ["a", "b", "c"]
    assert sorted(e.status for e in events) == ["matched"] * 3 + ["unmatched"] * 2


async def _at_least(rows: Awaitable[list[Any]], n: int) -> list[Any]:
    found = await rows
    return found if len(found) >= n else []


async def test_one_source_reads_several_topics_and_partitions(kafka, make_config):
    probes.reset()
    a, b, group = unique_name("a"), unique_name("b"), unique_name("cued")
    await create_topics(kafka.bootstrap, a, b, partitions=2)
    config = make_config(
        daemon_toml(
            PROBE_PIPELINE,
            source_toml("many", kafka.bootstrap, [a, b], group),
            '[[triggers]]\nsource = "many"\npipeline = "orders"\n'
            'inputs = { order_id = "{{ event.meta.topic }}/{{ event.data.n }}" }\n',
        )
    )
    async with daemon_running(config) as info:
        for topic in (a, b):
            for partition in (0, 1):
                await produce(
                    kafka.bootstrap,
                    topic,
                    [{"n": f"{partition}.{i}"} for i in range(3)],
                    partition=partition,
                )
        runs = await finished_runs(info, "orders", 12)
        offsets = await committed_offsets(
            kafka.bootstrap, group, [(t, p) for t in (a, b) for p in (0, 1)]
        )
    assert sorted(r.inputs["order_id"] for r in runs) == sorted(
        f"{t}/{p}.{i}" for t in (a, b) for p in (0, 1) for i in range(3)
    )
    assert offsets == {(t, p): 3 for t in (a, b) for p in (0, 1)}


async def test_a_redelivery_starts_nothing_twice(kafka, make_config):
    probe = probes.reset()
    topic, group = unique_name("orders"), unique_name("cued")
    await create_topics(kafka.bootstrap, topic, partitions=2)
    config = make_config(
        daemon_toml(
            PROBE_PIPELINE,
            source_toml("shop", kafka.bootstrap, [topic], group),
            '[[triggers]]\nsource = "shop"\npipeline = "orders"\n'
            'inputs = { order_id = "{{ event.data.id }}" }\n',
        )
    )
    partitions = [(topic, 0), (topic, 1)]
    await produce(kafka.bootstrap, topic, [{"id": f"p0-{i}"} for i in range(4)], partition=0)
    await produce(kafka.bootstrap, topic, [{"id": f"p1-{i}"} for i in range(3)], partition=1)
    async with daemon_running(config) as info:
        await finished_runs(info, "orders", 7)
        await eventually(
            lambda: _equals(
                committed_offsets(kafka.bootstrap, group, partitions),
                {
                    (topic, 0): 4,
                    (topic, 1): 3,
                },
            )
        )

    # what a crash between recording and committing leaves: the broker delivers again
    await reset_group_offsets(kafka.bootstrap, group, {(topic, 0): 0, (topic, 1): 1})
    async with daemon_running(config) as info:
        await eventually(
            lambda: _equals(
                committed_offsets(kafka.bootstrap, group, partitions),
                {
                    (topic, 0): 4,
                    (topic, 1): 3,
                },
            )
        )
        runs = await info.runner.store.list_runs(limit=100, pipeline="orders")
        events = await events_of(info, "shop")
    assert len(runs) == 7
    assert len(events) == 7
    assert sorted(probe.calls) == sorted(
        [f"p0-{i}" for i in range(4)] + [f"p1-{i}" for i in range(3)]
    )


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


# -- offsets are committed after recording, with a fake intake ---------------------------


class GatedIntake(AcceptingIntake):
    """Records nothing: holds each batch until released, then succeeds or fails."""

    def __init__(self) -> None:
        self.batches: list[list[Event]] = []
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.fail = False

    async def record(
        self,
        events: list[Event],
        *,
        cursor: str | None = None,
        acknowledge: Callable[[list[Receipt]], None] | None = None,
    ) -> list[Receipt]:
        self.batches.append(events)
        self.entered.set()
        await self.release.wait()
        if self.fail:
            raise StoreError("the store could not commit: disk full")
        receipts = [Receipt(e.event_id, "unmatched") for e in events]
        if acknowledge is not None:
            acknowledge(receipts)
        return receipts


def bare_source(broker: Broker, intake: GatedIntake, tmp_path: Path, **config: Any) -> KafkaSource:
    ctx = SourceContext(
        source="raw",
        intake=intake,
        log=structlog.get_logger(),
        routes=NoRoutes(),
        base_dir=tmp_path,
    )
    return KafkaSource(
        KafkaConfig.model_validate(
            {"bootstrap": broker.bootstrap, "session_timeout": "2s", **config}
        ),
        ctx,
    )


async def raw_topic(broker: Broker, count: int, partitions: int = 1) -> tuple[str, str]:
    """A new topic with messages ``{"n": 0}`` to ``count - 1`` in each partition, and a new
    group's name."""
    topic, group = unique_name("raw"), unique_name("cued")
    await create_topics(broker.bootstrap, topic, partitions=partitions)
    for partition in range(partitions):
        values = [{"n": i} for i in range(count)]
        await produce(broker.bootstrap, topic, values, partition=partition)
    return topic, group


async def committed_up_to(broker: Broker, group: str, topic: str, offset: int) -> None:
    """Wait until ``group`` has committed ``offset`` in partition 0 of ``topic``."""
    await eventually(
        lambda: _equals(
            committed_offsets(broker.bootstrap, group, [(topic, 0)]), {(topic, 0): offset}
        )
    )


async def read_again(
    broker: Broker, tmp_path: Path, topic: str, group: str, offset: int
) -> GatedIntake:
    """Start ``group``'s source again, recording all, until it committed ``offset``: what it
    was handed."""
    again = GatedIntake()
    again.release.set()
    async with anyio.create_task_group() as tg:
        await tg.start(bare_source(broker, again, tmp_path, topics=[topic], group=group).run)
        await committed_up_to(broker, group, topic, offset)
        tg.cancel_scope.cancel()
    return again


async def test_offsets_are_committed_only_once_the_batch_is_recorded(kafka, tmp_path):
    topic, group = await raw_topic(kafka, 3)
    intake = GatedIntake()
    source = bare_source(kafka, intake, tmp_path, topics=[topic], group=group)
    async with anyio.create_task_group() as tg:
        await tg.start(source.run)
        with anyio.fail_after(WAIT_S):
            await intake.entered.wait()
        # recording is under way: nothing may be committed yet
        assert await committed_offsets(kafka.bootstrap, group, [(topic, 0)]) == {}
        intake.release.set()
        await committed_up_to(kafka, group, topic, 3)
        tg.cancel_scope.cancel()
    assert [e.event_id for e in intake.batches[0]] == [f"raw:{topic}:0:{i}" for i in range(3)]


async def test_a_batch_that_cannot_be_recorded_is_not_committed_and_comes_again(kafka, tmp_path):
    topic, group = await raw_topic(kafka, 3)
    failing = GatedIntake()
    failing.fail = True
    failing.release.set()
    with pytest.raises(ExceptionGroup) as caught:
        async with anyio.create_task_group() as tg:
            await tg.start(bare_source(kafka, failing, tmp_path, topics=[topic], group=group).run)
    assert caught.group_contains(StoreError)
    assert await committed_offsets(kafka.bootstrap, group, [(topic, 0)]) == {}

    again = await read_again(kafka, tmp_path, topic, group, 3)
    ids = [e.event_id for e in failing.batches[0]]
    assert [e.event_id for batch in again.batches for e in batch] == ids


class HeldIntake(AcceptingIntake):
    """Records nothing: holds each batch until the test releases that one (``release(i)``),
    then succeeds, or fails if ``fail(i)`` was asked."""

    def __init__(self) -> None:
        self.batches: list[list[Event]] = []
        self.gates: list[anyio.Event] = []
        self.returned: list[anyio.Event] = []
        self.failing: set[int] = set()
        self._changed = anyio.Event()
        self._opened = False

    async def record(
        self,
        events: list[Event],
        *,
        cursor: str | None = None,
        acknowledge: Callable[[list[Receipt]], None] | None = None,
    ) -> list[Receipt]:
        index = len(self.batches)
        self.batches.append(events)
        self._gate(index)
        self._changed.set()
        try:
            await self.gates[index].wait()
            if index in self.failing:
                raise StoreError("the store could not commit: disk full")
            return [Receipt(e.event_id, "unmatched") for e in events]
        finally:
            self.returned[index].set()

    def _gate(self, index: int) -> None:
        while len(self.gates) <= index:
            self.gates.append(anyio.Event())
            self.returned.append(anyio.Event())
            if self._opened:
                self.gates[-1].set()

    async def entered(self, count: int) -> None:
        """Wait until ``count`` batches are being recorded (or were)."""
        with anyio.fail_after(WAIT_S):
            while len(self.batches) < count:
                self._changed = anyio.Event()
                await self._changed.wait()

    async def release(self, index: int, *, fail: bool = False) -> None:
        """Let batch ``index`` finish (or fail), and wait until its ``record`` returned."""
        self._gate(index)
        if fail:
            self.failing.add(index)
        self.gates[index].set()
        with anyio.fail_after(WAIT_S):
            await self.returned[index].wait()

    def open(self) -> None:
        """Let every batch held, and every one to come, through."""
        self._opened = True
        for gate in self.gates:
            gate.set()

    def offsets(self, *indexes: int) -> set[tuple[int, int]]:
        return {(e.meta["partition"], e.meta["offset"]) for i in indexes for e in self.batches[i]}


async def test_two_batches_are_in_flight_and_offsets_are_committed_in_their_order(kafka, tmp_path):
    """The second batch is handed in while the first is being recorded; recorded first,
    it commits nothing until the first is recorded too."""
    topic, group = await raw_topic(kafka, 6)
    intake = HeldIntake()
    source = bare_source(kafka, intake, tmp_path, topics=[topic], group=group, max_batch=3)
    async with anyio.create_task_group() as tg:
        await tg.start(source.run)
        await intake.entered(2)  # both in flight, neither recorded
        assert intake.offsets(0) == {(0, i) for i in range(3)}
        assert intake.offsets(1) == {(0, i) for i in range(3, 6)}
        assert await committed_offsets(kafka.bootstrap, group, [(topic, 0)]) == {}
        await intake.release(1)  # the second is recorded: its offsets wait for the first
        await anyio.wait_all_tasks_blocked()  # the source has seen it
        assert [flight.recorded for flight in source._in_flight] == [False, True]
        assert source._uncommitted == {}
        assert await committed_offsets(kafka.bootstrap, group, [(topic, 0)]) == {}
        await intake.release(0)
        await committed_up_to(kafka, group, topic, 6)
        tg.cancel_scope.cancel()


async def test_a_batch_recorded_after_one_that_failed_is_not_committed(kafka, tmp_path):
    """The first of two batches in flight fails after the second was recorded: the source
    stops with nothing committed, and both batches come again."""
    topic, group = await raw_topic(kafka, 6)
    failing = HeldIntake()

    async def second_recorded_then_first_fails() -> None:
        async with anyio.create_task_group() as tg:
            source = bare_source(kafka, failing, tmp_path, topics=[topic], group=group, max_batch=3)
            await tg.start(source.run)
            await failing.entered(2)
            await failing.release(1)
            await failing.release(0, fail=True)

    with pytest.raises(ExceptionGroup) as caught:
        await second_recorded_then_first_fails()
    assert caught.group_contains(StoreError)
    assert await committed_offsets(kafka.bootstrap, group, [(topic, 0)]) == {}

    again = await read_again(kafka, tmp_path, topic, group, 6)
    assert [e.event_id for b in again.batches for e in b] == [
        f"raw:{topic}:0:{i}" for i in range(6)
    ]


async def test_an_unreachable_broker_fails_the_start_naming_it(tmp_path):
    async def start(source: KafkaSource) -> None:
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(WAIT_S):
                await tg.start(source.run)

    with socket_closed() as bootstrap, pytest.raises(ExceptionGroup) as caught:
        await start(bare_source_at(bootstrap, tmp_path))
    assert caught.group_contains(
        ConnectorError, match=rf"cannot connect to '{bootstrap}' within 0\.3s"
    )


@contextlib.contextmanager
def socket_closed() -> Iterator[str]:
    """A loopback address where nothing listens (the port is bound, never listened on)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def bare_source_at(bootstrap: str, tmp_path: Path) -> KafkaSource:
    ctx = SourceContext(
        source="raw",
        intake=GatedIntake(),
        log=structlog.get_logger(),
        routes=NoRoutes(),
        base_dir=tmp_path,
    )
    config = KafkaConfig(bootstrap=bootstrap, topics=["t"], group="g", connect_timeout=0.3)
    return KafkaSource(config, ctx)


def joining_member(broker: Broker, group: str, **config: Any) -> AIOKafkaConsumer:
    """Another member of ``group``, quick to join and to be seen gone."""
    return AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=600,
        **config,
    )


async def assigned_within(member: AIOKafkaConsumer, seconds: float, since: float) -> float | None:
    """How long after ``since`` ``member`` had partitions, polling for ``seconds`` at most;
    None if it had none by then."""
    with anyio.move_on_after(seconds):
        while not member.assignment():
            await member.getmany(timeout_ms=100)
        return anyio.current_time() - since
    return None


async def read_what_comes_next(
    broker: Broker, topic: str, member: AIOKafkaConsumer
) -> set[tuple[int, int]]:
    """Produce offsets 10 to 14 in both partitions of ``topic``; what ``member`` reads,
    ``(partition, offset)``, until it read offset 14 of each partition it holds."""
    for partition in (0, 1):
        values = [{"n": i} for i in range(10, 15)]
        await produce(broker.bootstrap, topic, values, partition=partition)
    theirs: set[tuple[int, int]] = set()
    with anyio.fail_after(WAIT_S):
        while not member.assignment() or any(
            (tp.partition, 14) not in theirs for tp in member.assignment()
        ):
            for tp, records in (await member.getmany(timeout_ms=100)).items():
                theirs.update((tp.partition, r.offset) for r in records)
    return theirs


async def test_a_rebalance_waits_for_the_batch_in_flight(kafka, tmp_path):
    """A member joining while a batch is being recorded gets partitions only once that
    batch is committed, and starts after it: no message is taken by both."""
    topic, group = await raw_topic(kafka, 10, partitions=2)
    intake = GatedIntake()
    source = bare_source(kafka, intake, tmp_path, topics=[topic], group=group)
    other = joining_member(kafka, group)
    async with anyio.create_task_group() as tg:
        await tg.start(source.run)
        with anyio.fail_after(WAIT_S):
            await intake.entered.wait()
        held = {(e.meta["partition"], e.meta["offset"]) for e in intake.batches[0]}
        await other.start()
        try:
            other.subscribe([topic])
            # An unhindered rebalance takes about 2 s here (heartbeat, then the broker's
            # join delay): hold the batch twice as long.
            joined = anyio.current_time()
            assigned_while_held = await assigned_within(other, 4, joined)
            intake.release.set()
            theirs = await read_what_comes_next(kafka, topic, other)
        finally:
            intake.release.set()
            await other.stop()
        tg.cancel_scope.cancel()
    assert assigned_while_held is None, f"got partitions {assigned_while_held:.1f}s in"
    assert held
    assert held & theirs == set()
    assert {o for _, o in theirs} <= set(range(10, 15))


async def test_a_rebalance_waits_for_both_batches_in_flight(kafka, tmp_path):
    """Two batches are being recorded when a member joins: it gets partitions only once
    both are, the second recorded first, and it reads none of their messages again."""
    topic, group = await raw_topic(kafka, 10, partitions=2)
    intake = HeldIntake()
    source = bare_source(kafka, intake, tmp_path, topics=[topic], group=group, max_batch=4)
    # a partition the source committed nothing of (both batches may be of the other) is
    # read from its start: what it took is still none of what the source recorded
    other = joining_member(kafka, group, auto_offset_reset="earliest")
    async with anyio.create_task_group() as tg:
        await tg.start(source.run)
        await intake.entered(2)
        held = intake.offsets(0, 1)
        await other.start()
        try:
            other.subscribe([topic])
            # as above: an unhindered rebalance takes about 2 s; hold both twice as long
            joined = anyio.current_time()
            assigned_while_held = await assigned_within(other, 4, joined)
            await intake.release(1)
            # still held by the first: no partitions yet
            assigned_while_held = await assigned_within(other, 1, joined)
            await intake.release(0)
            intake.open()
            theirs = await read_what_comes_next(kafka, topic, other)
        finally:
            intake.open()
            await other.stop()
        tg.cancel_scope.cancel()
    assert assigned_while_held is None, f"got partitions {assigned_while_held:.1f}s in"
    assert len(held) == 8
    assert theirs
    assert theirs & intake.offsets(*range(len(intake.batches))) == set()


# -- backpressure --------------------------------------------------------------------------

GATE: anyio.Event | None = None
HELD: list[str] = []


async def held(order_id: str) -> None:
    """A task that waits for the test to open the gate."""
    HELD.append(order_id)
    assert GATE is not None
    await GATE.wait()


async def test_a_saturated_backlog_pauses_the_partitions_until_it_drains(kafka, make_config):
    global GATE
    GATE = anyio.Event()
    HELD.clear()
    topic, group = unique_name("orders"), unique_name("cued")
    await create_topics(kafka.bootstrap, topic)
    config = make_config(
        daemon_toml(
            """
[pipelines.slow]
max_active_runs = 1
inputs = { order_id = "" }
[pipelines.slow.tasks.hold]
kind = "python"
function = "tests.integration.test_kafka:held"
args = { order_id = "{{ inputs.order_id }}" }
""",
            source_toml("shop", kafka.bootstrap, [topic], group, "max_batch = 10"),
            '[[triggers]]\nsource = "shop"\npipeline = "slow"\n'
            'inputs = { order_id = "{{ event.data.id }}" }\n',
            daemon="backlog_high_water = 5\nbacklog_low_water = 2",
        )
    )
    await produce(kafka.bootstrap, topic, [{"id": f"o{i}"} for i in range(100)])
    with info_logs() as logs:
        async with daemon_running(config) as info:
            await _paused_and_settled(info, logs, kafka.bootstrap, group, topic)
            committed = await committed_offsets(kafka.bootstrap, group, [(topic, 0)])
            backlog = info.runner.backlog
            # saturated: the consumer takes no more, however long the backlog stays full
            for _ in range(3):
                await anyio.sleep(0.5)
                assert await committed_offsets(kafka.bootstrap, group, [(topic, 0)]) == committed
                assert len(await events_of(info, "shop")) == committed[topic, 0]
            assert backlog.saturated
            # two batches past the mark at most: the second was taken while the first was
            # being recorded, before its runs filled the backlog
            assert committed[topic, 0] <= backlog.high_water + 2 * 10
            GATE.set()
            runs = await finished_runs(info, "slow", 100)
            await committed_up_to(kafka, group, topic, 100)
    assert {r.state for r in runs} == {"succeeded"}
    assert sorted(HELD) == sorted(f"o{i}" for i in range(100))


async def _paused_and_settled(
    info: DaemonInfo, logs: list[MutableMapping[str, Any]], bootstrap: str, group: str, topic: str
) -> None:
    """Wait until the source has paused its partitions and what it took before is recorded
    and committed: from then on nothing moves while the backlog stays saturated.

    The source pauses when it goes to fetch a batch and the backlog is saturated; the batch
    it took before that one (two are in flight) may still be being recorded then, and its
    offset committed later: a snapshot of the offsets taken before it settles is not the
    one the source stays at (it was 10, then 20)."""

    async def settled() -> bool:
        if not any(r["event"] == "kafka_paused" for r in logs):
            return False
        if info.intake.stalled_s() > 0:  # a batch handed in is not recorded yet
            return False
        committed = await committed_offsets(bootstrap, group, [(topic, 0)])
        recorded = len(await events_of(info, "shop"))
        return bool(committed) and committed[topic, 0] == recorded

    await eventually(settled)


# -- the kafka task kind --------------------------------------------------------------------


async def read_all(bootstrap: str, topic: str, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    """``count`` messages of partition 0 of ``topic``, from its start (no group: no join)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        found: list[ConsumerRecord[bytes, bytes]] = []
        with anyio.fail_after(WAIT_S):
            while len(found) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    found.extend(records)
        return found
    finally:
        await consumer.stop()


async def test_the_kafka_task_sends_a_message_with_its_idempotency_key(kafka, make_config):
    topic = unique_name("out")
    await create_topics(kafka.bootstrap, topic)
    config = make_config(
        f"""
[pipelines.notify]
inputs = {{ id = "" }}
[pipelines.notify.tasks.send]
kind = "kafka"
bootstrap = "{kafka.bootstrap}"
topic = "{topic}"
key = "{{{{ inputs.id }}}}"
value = {{ id = "{{{{ inputs.id }}}}", items = [1, 2] }}
headers = {{ origin = "cued" }}
[pipelines.notify.tasks.text]
kind = "kafka"
bootstrap = "{kafka.bootstrap}"
topic = "{topic}"
value = "done {{{{ inputs.id }}}}"
acks = 1
needs = ["send"]
"""
    )
    async with open_runner(config) as runner:
        kind = runner.kinds["kafka"]
        assert isinstance(kind, KafkaProduceTask)
        try:
            with anyio.fail_after(WAIT_S):
                run_id = (await runner.start_run("notify", {"id": "x1"})).run_id
                row = await runner.wait(run_id)
            attempts = {a.key: a for a in await runner.store.get_attempts(run_id)}
        finally:
            await kind.aclose()
    assert row.state == "succeeded", row.error
    first, second = await read_all(kafka.bootstrap, topic, 2)
    assert json.loads(first.value) == {"id": "x1", "items": [1, 2]}
    assert first.key == b"x1"
    assert dict(first.headers) == {
        IDEMPOTENCY_HEADER: f"{run_id}/send".encode(),
        "origin": b"cued",
    }
    assert attempts["send"].output == {"topic": topic, "partition": 0, "offset": 0}
    assert second.value == b"done x1"
    assert dict(second.headers)[IDEMPOTENCY_HEADER] == f"{run_id}/text".encode()


async def test_the_kafka_task_fails_retryably_when_the_broker_is_unreachable(make_config):
    with socket_closed() as bootstrap:
        config = make_config(
            f"""
[pipelines.notify]
[pipelines.notify.tasks.send]
kind = "kafka"
bootstrap = "{bootstrap}"
topic = "t"
value = {{ n = 1 }}
retries = 1
retry_backoff = "10ms"
"""
        )
        async with open_runner(config) as runner:
            try:
                with anyio.fail_after(WAIT_S):
                    row = await runner.wait((await runner.start_run("notify")).run_id)
                attempts = await runner.store.get_attempts(row.run_id)
            finally:
                kind = runner.kinds["kafka"]
                assert isinstance(kind, KafkaProduceTask)
                await kind.aclose()
    assert row.state == "failed"
    assert [a.state for a in attempts] == ["failed", "failed"]
    assert f"cannot connect to the Kafka broker at {bootstrap!r}" in (attempts[-1].error or "")


async def test_a_task_produces_to_a_topic_that_another_trigger_consumes(kafka, make_config):
    probes.reset()
    first, second = unique_name("in"), unique_name("chained")
    await create_topics(kafka.bootstrap, first, second)
    config = make_config(
        daemon_toml(
            f"""
[pipelines.forward]
inputs = {{ id = "" }}
[pipelines.forward.tasks.send]
kind = "kafka"
bootstrap = "{kafka.bootstrap}"
topic = "{second}"
value = {{ id = "{{{{ inputs.id }}}}", via = "forward" }}

[pipelines.sink]
inputs = {{ id = "", key = "" }}
[pipelines.sink.tasks.handle]
kind = "python"
function = "tests.support.probes:record"
args = {{ name = "{{{{ inputs.id }}}}" }}
""",
            source_toml("incoming", kafka.bootstrap, [first], unique_name("cued")),
            source_toml("chained", kafka.bootstrap, [second], unique_name("cued")),
            '[[triggers]]\nsource = "incoming"\npipeline = "forward"\n'
            'inputs = { id = "{{ event.data.id }}" }\n'
            '[[triggers]]\nsource = "chained"\npipeline = "sink"\n'
            "when = \"event.data.via == 'forward'\"\n"
            'inputs = { id = "{{ event.data.id }}", '
            "key = \"{{ event.meta.headers['cued-idempotency-key'] }}\" }\n",
        )
    )
    async with daemon_running(config) as info:
        await produce(kafka.bootstrap, first, [{"id": "c1"}, {"id": "c2"}])
        forwarded = await finished_runs(info, "forward", 2)
        sunk = await finished_runs(info, "sink", 2)
    by_id = {r.inputs["id"]: r for r in forwarded}
    assert {r.state for r in [*forwarded, *sunk]} == {"succeeded"}
    assert {r.inputs["id"]: r.inputs["key"] for r in sunk} == {
        i: f"{by_id[i].run_id}/send" for i in ("c1", "c2")
    }


async def test_a_messages_trace_goes_on_through_a_produce_into_the_run_it_starts(
    kafka, make_config
):
    otlp = OtlpReceiver()
    caller_trace, caller_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    first, second = unique_name("in"), unique_name("chained")
    await create_topics(kafka.bootstrap, first, second)
    async with serve_app(otlp.app()) as endpoint:
        config = make_config(
            daemon_toml(
                f"""
[telemetry]
otlp_endpoint = "{endpoint}"

[pipelines.forward]
[pipelines.forward.tasks.send]
kind = "kafka"
bootstrap = "{kafka.bootstrap}"
topic = "{second}"
value = {{ via = "forward" }}

[pipelines.sink]
[pipelines.sink.tasks.handle]
kind = "sleep"
seconds = 0
""",
                source_toml("incoming", kafka.bootstrap, [first], unique_name("cued")),
                source_toml("chained", kafka.bootstrap, [second], unique_name("cued")),
                '[[triggers]]\nsource = "incoming"\npipeline = "forward"\n'
                '[[triggers]]\nsource = "chained"\npipeline = "sink"\n',
            )
        )
        async with daemon_running(config) as info:
            traceparent = f"00-{caller_trace}-{caller_span}-01".encode()
            await produce(
                kafka.bootstrap, first, [{"n": 1}], headers=[("traceparent", traceparent)]
            )
            (sunk,) = await finished_runs(info, "sink", 1)
            (chained,) = await events_of(info, "chained")
        with anyio.fail_after(WAIT_S):
            await otlp.until(lambda: len(otlp.named("run ")) >= 2)
    assert sunk.state == "succeeded"
    spans = {s.name: s for s in otlp.spans}
    produced = spans[f"kafka produce {second}"]
    # one trace from the first producer to the last run; the message produced carries it
    assert {s.trace_id for s in otlp.spans} == {caller_trace}
    assert spans["event incoming"].parent_span_id == caller_span
    assert produced.kind == "producer"
    assert produced.parent_span_id == spans["task send"].span_id
    assert chained.meta["traceparent"] == f"00-{caller_trace}-{produced.span_id}-01"
    assert spans["event chained"].parent_span_id == produced.span_id
    assert spans["run sink"].parent_span_id == spans["event chained"].span_id


def test_a_traceparent_header_that_is_not_one_is_left_out_of_meta():
    event = message_event("src", record(b"{}", headers=[("traceparent", b"\xff-not-a")]), 0.0)
    assert "traceparent" not in event.meta
    assert event.meta["headers"]["traceparent"] == base64.b64encode(b"\xff-not-a").decode()


# -- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "data", "encoding"),
    [
        pytest.param(b'{"a": [1, 2]}', {"a": [1, 2]}, "json", id="json"),
        pytest.param(b"caf\xc3\xa9 ok", "café ok", "text", id="text"),
        pytest.param(
            b"\xff\xfe\x00", base64.b64encode(b"\xff\xfe\x00").decode(), "base64", id="binary"
        ),
        pytest.param(None, None, "none", id="tombstone"),
    ],
)
def test_a_message_value_becomes_event_data(value, data, encoding):
    event = message_event("src", record(value), 12.5)
    assert event.event_id == "src:t:2:41"
    assert (event.data, event.meta["encoding"]) == (data, encoding)
    assert event.received_at == 12.5
    assert event.meta["timestamp_ms"] == 1_700_000_000_000
    assert "base64" not in event.meta


def test_binary_keys_and_headers_are_base64_and_say_so():
    event = message_event(
        "src", record(b"1", key=b"\x80", headers=[("ok", b"v"), ("raw", b"\x81")]), 0.0
    )
    assert event.meta["key"] == base64.b64encode(b"\x80").decode()
    assert event.meta["headers"] == {"ok": "v", "raw": base64.b64encode(b"\x81").decode()}
    assert event.meta["base64"] == ["key", "headers.raw"]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"security_protocol": "SASL_SSL"}, id="sasl-without-credentials"),
        pytest.param({"sasl_username": "u", "sasl_password": "p"}, id="credentials-without-sasl"),
        pytest.param({"ssl_cafile": "ca.pem"}, id="cafile-without-ssl"),
        pytest.param({"topics": []}, id="no-topics"),
        pytest.param({"max_batch": 0}, id="empty-batches"),
        pytest.param({"offset": 3}, id="unknown-key"),
    ],
)
def test_the_config_refuses_what_cannot_work(extra):
    with pytest.raises(ValidationError):
        KafkaConfig.model_validate({"bootstrap": "b:9092", "topics": ["t"], "group": "g", **extra})


def test_a_sasl_password_comes_from_the_environment(monkeypatch, tmp_path):
    from cued.connectors.kafka import client_options

    monkeypatch.setenv("KAFKA_PW", "s3cret")
    config = KafkaConfig(
        bootstrap="b:9092",
        topics=["t"],
        group="g",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="cued",
        sasl_password="env:KAFKA_PW",
    )
    options = client_options(config, tmp_path)
    assert options["sasl_plain_password"] == "s3cret"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    monkeypatch.delenv("KAFKA_PW")
    with pytest.raises(ConnectorError, match="'KAFKA_PW'"):
        client_options(config, tmp_path)


# -- waiting for a message ------------------------------------------------------------------


async def test_a_run_waits_for_the_message_of_its_order(kafka, make_config):
    topic, group = unique_name("payments"), unique_name("cued")
    await create_topics(kafka.bootstrap, topic)
    config = make_config(
        daemon_toml(
            """
[pipelines.checkout]
inputs = { order_id = "" }
[pipelines.checkout.tasks.pay]
kind = "wait_event"
source = "payments"
match = "event.data.order_id == inputs.order_id"
""",
            source_toml("payments", kafka.bootstrap, [topic], group),
        )
    )
    async with daemon_running(config) as info:
        with anyio.fail_after(WAIT_S):
            run_id = (await info.runner.start_run("checkout", {"order_id": "o2"})).run_id
            assert (await info.runner.wait(run_id)).state == "waiting"
            await produce(kafka.bootstrap, topic, [{"order_id": "o1"}, {"order_id": "o2"}])
            while (row := await info.runner.wait(run_id)).state in ("waiting", "queued"):  # noqa: ASYNC110 - parked: polled in the store
                await anyio.sleep(0.02)
            (attempt,) = await info.runner.store.get_attempts(run_id)
    assert row.state == "succeeded"
    assert attempt.output["event"]["id"] == f"payments:{topic}:0:1"
    assert attempt.output["event"]["data"] == {"order_id": "o2"}
