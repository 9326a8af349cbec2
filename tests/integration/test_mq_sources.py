"""The ``mqtt``, ``amqp`` and ``redis_stream`` sources against the real brokers of this
machine (Mosquitto, RabbitMQ, Redis): what a crash between recording and acknowledging
leaves, invalid payloads, and backpressure. Every test has its own topic, queue or stream,
removed after."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import structlog

from cued.connectors.amqp import AmqpConfig, AmqpSource
from cued.connectors.mqtt import MqttConfig, MqttSource
from cued.connectors.redis_stream import RedisStreamConfig, RedisStreamSource
from cued.daemon.sdk.sources import Receipt, SourceContext
from tests.support.fakes import NoRoutes
from tests.support.mq_brokers import KINDS, Broker, eventually
from tests.support.running import daemon_running

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.sdk.sources import Event

WAIT_S = 30


class Crash(Exception):
    """The daemon dying after the store committed, before the broker was acknowledged."""


class StoreIntake:
    """Intake as the daemon's is, to the source: events kept by id (a known id is a
    duplicate), the cursor kept with them; it may "crash" right after a commit."""

    def __init__(self) -> None:
        self.events: dict[str, Event] = {}
        self.duplicates: list[str] = []
        self.cursor_value: str | None = None
        self.crash_after: int | None = None
        self.changed = anyio.Event()

    async def record(
        self,
        events: list[Event],
        *,
        cursor: str | None = None,
        acknowledge: Callable[[list[Receipt]], None] | None = None,
    ) -> list[Receipt]:
        receipts = []
        for event in events:
            if event.event_id in self.events:
                self.duplicates.append(event.event_id)
                receipts.append(Receipt(event.event_id, "duplicate"))
            else:
                self.events[event.event_id] = event
                receipts.append(Receipt(event.event_id, "invalid" if event.error else "matched"))
        if cursor is not None:
            self.cursor_value = cursor
        self.changed.set()
        self.changed = anyio.Event()
        if self.crash_after is not None and len(self.events) >= self.crash_after:
            self.crash_after = None
            raise Crash("after the commit, before the acknowledgement")
        return receipts

    async def cursor(self, source: str) -> str | None:
        return self.cursor_value

    async def known(self, event_ids: list[str]) -> set[str]:
        return set(event_ids) & set(self.events)

    def accepting(self) -> bool:
        return True

    async def wait_accepting(self) -> None:
        return None

    async def until(self, count: int) -> None:
        with anyio.fail_after(WAIT_S):
            while len(self.events) < count:
                await self.changed.wait()


def make_source(broker: Broker, intake: StoreIntake, tmp_path) -> Any:
    extra: dict[str, Any]
    if broker.kind == "mqtt":
        extra = {"broker": "mqtt://127.0.0.1:1883", "topics": [f"{broker.name}/#"]}
        config: Any = MqttConfig(**extra, client_id=broker.name, max_batch=7)
        cls: Any = MqttSource
    elif broker.kind == "amqp":
        config = AmqpConfig(
            url="amqp://guest:guest@127.0.0.1:5672/", queue=broker.name, max_batch=7
        )
        cls = AmqpSource
    else:
        config = RedisStreamConfig(
            url="redis://127.0.0.1:6379/0",
            stream=broker.name,
            group="cued",
            field="data",
            max_batch=7,
            claim_idle=0.5,
        )
        cls = RedisStreamSource
    ctx = SourceContext(
        source="src",
        intake=intake,
        log=structlog.get_logger(),
        routes=NoRoutes(),
        base_dir=tmp_path,
    )
    return cls(config, ctx)


@pytest.fixture(params=KINDS)
async def broker(request):
    found = Broker(request.param)
    await found.prepare()
    try:
        yield found
    finally:
        await found.remove()


async def test_a_crash_after_recording_redelivers_under_the_same_ids(broker, tmp_path):
    intake = StoreIntake()
    intake.crash_after = 10  # the first batches are recorded, the last of them not acked
    await broker.publish([{"n": n} for n in range(40)])

    first = make_source(broker, intake, tmp_path)
    with pytest.raises(BaseExceptionGroup) as crashed, anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            await tg.start(first.run)
    assert crashed.group_contains(Crash)
    recorded_before = dict(intake.events)
    assert 10 <= len(recorded_before) < 40

    second = make_source(broker, intake, tmp_path)
    async with anyio.create_task_group() as tg:
        await tg.start(second.run)
        await intake.until(40)
        if broker.kind != "mqtt":
            await eventually(lambda: _nothing_waiting(broker))
        tg.cancel_scope.cancel()

    # the batch recorded but not acknowledged came again, under the ids it had
    assert intake.duplicates
    assert set(intake.duplicates) <= set(recorded_before)
    assert sorted(e.data["n"] for e in intake.events.values()) == list(range(40))


async def test_invalid_payloads_are_recorded_as_invalid_and_acknowledged(broker, tmp_path):
    intake = StoreIntake()
    await broker.publish(['{"n": 1}', "{oops", "[1, 2", b"\xff\xfe{", "plain", "", '{"n": 2}'])
    source = make_source(broker, intake, tmp_path)
    async with anyio.create_task_group() as tg:
        await tg.start(source.run)
        await intake.until(7)
        if broker.kind != "mqtt":
            await eventually(lambda: _nothing_waiting(broker))
        tg.cancel_scope.cancel()

    by_data = {json.dumps(e.data): e for e in intake.events.values()}
    assert {k for k, e in by_data.items() if e.error} == {'"{oops"', '"[1, 2"'}
    assert by_data['{"n": 1}'].meta["encoding"] == "json"
    assert by_data['"plain"'].meta["encoding"] == "text"
    assert by_data['"//57"'].meta["encoding"] == "base64"  # not UTF-8: kept as base64
    assert by_data['""'].meta["encoding"] == "text"
    assert not intake.duplicates


# -- backpressure, in the whole daemon -----------------------------------------------------

GATE: anyio.Event | None = None


async def held(n: str) -> None:
    """A task that waits for the test to open the gate."""
    assert GATE is not None
    await GATE.wait()


async def test_a_saturated_backlog_stops_intake_until_it_drains(broker, make_config):
    global GATE
    GATE = anyio.Event()
    extra = {"mqtt": "receive_maximum = 10\nmax_batch = 5", "amqp": "prefetch = 10\nmax_batch = 5"}
    config = make_config(
        '[daemon]\nlog_level = "warning"\nbacklog_high_water = 5\nbacklog_low_water = 2\n'
        '[http]\nlisten = "127.0.0.1:0"\n'
        + broker.source_toml(extra=extra.get(broker.kind, "max_batch = 5"))
        + """
[pipelines.slow]
max_active_runs = 1
inputs = { n = "" }
[pipelines.slow.tasks.hold]
kind = "python"
function = "tests.integration.test_mq_sources:held"
args = { n = "{{ inputs.n }}" }
[[triggers]]
source = "src"
pipeline = "slow"
inputs = { n = "{{ event.data.n }}" }
"""
    )
    await broker.publish([{"n": n} for n in range(100)])
    async with daemon_running(config) as info:
        store = info.runner.store
        backlog = info.runner.backlog

        async def recorded() -> int:
            return len(await store.list_events(limit=1000, source="src"))

        await eventually(lambda: _true(backlog.saturated))
        # saturated: the source takes no more, however long the backlog stays full
        await anyio.sleep(0.5)
        taken = await recorded()
        for _ in range(3):
            await anyio.sleep(0.5)
            assert await recorded() == taken
            assert backlog.saturated
        assert taken < 100
        if broker.kind != "mqtt":
            assert await broker.waiting() > 0  # the rest waits at the broker
        GATE.set()

        async def all_done() -> bool:
            runs = await store.list_runs(limit=1000, pipeline="slow")
            return await recorded() == 100 and sum(r.state == "succeeded" for r in runs) == 100

        await eventually(all_done, timeout_s=60)


async def _nothing_waiting(broker: Broker) -> bool:
    return await broker.waiting() == 0


async def _true(value: bool) -> bool:
    return value


# -- what the overview page and the metrics show, as for every source ---------------------


async def test_the_overview_and_the_metrics_show_the_source(broker, make_config):
    import httpx

    config = make_config(
        '[daemon]\nlog_level = "warning"\n[http]\nlisten = "127.0.0.1:0"\n'
        + broker.source_toml()
        + '[pipelines.p]\ninputs = { n = "" }\n[pipelines.p.tasks.t]\nkind = "sleep"\n'
        '[[triggers]]\nsource = "src"\npipeline = "p"\ninputs = { n = "{{ event.data.n }}" }\n'
    )
    async with daemon_running(config) as info:
        await broker.publish([{"n": 1}, {"n": 2}, "{bad"])
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:

            async def shown() -> tuple[str, str] | None:
                metrics = (await client.get("/metrics")).text
                if 'cued_events_total{source="src",status="invalid"} 1.0' not in metrics:
                    return None
                # read after the metrics count all three: the page must show them too
                return (await client.get("/ui/")).text, metrics

            page, metrics = await eventually(shown)

    row = page.split('<tr data-source="src">', 1)[1].split("</tr>", 1)[0]
    assert f"<td>{broker.kind}</td>" in row
    assert '<td class="num">3</td>' in row  # received since start
    assert 'cued_events_total{source="src",status="matched"} 2.0' in metrics


async def test_redis_entries_a_dead_consumer_held_are_claimed_and_recorded(tmp_path):
    import redis.asyncio as aioredis

    broker = Broker("redis_stream")
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        await client.xgroup_create(broker.name, "cued", id="0", mkstream=True)
        await broker.publish([{"n": n} for n in range(5)])
        # another daemon of the group took them, and died before acknowledging them
        taken = await client.xreadgroup("cued", "dead", {broker.name: ">"}, count=5)
        assert len(taken[0][1]) == 5
        intake = StoreIntake()
        source = make_source(broker, intake, tmp_path)  # consumer "cued", claim_idle 0.5 s
        async with anyio.create_task_group() as tg:
            await tg.start(source.run)
            await intake.until(5)
            await eventually(lambda: _nothing_waiting(broker))
            tg.cancel_scope.cancel()
        consumers = {
            c["name"]: c["pending"] for c in await client.xinfo_consumers(broker.name, "cued")
        }
    finally:
        await client.aclose()
        await broker.remove()

    assert sorted(e.data["n"] for e in intake.events.values()) == list(range(5))
    assert consumers[b"dead"] == 0  # claimed, recorded and acknowledged


async def test_mqtt_qos_0_messages_get_ids_of_their_own_outside_the_sequence(tmp_path):
    import aiomqtt

    broker = Broker("mqtt")
    intake = StoreIntake()
    source = MqttSource(
        MqttConfig(broker="mqtt://127.0.0.1:1883", topics=[f"{broker.name}/#"], qos=0),
        SourceContext("src", intake, structlog.get_logger(), NoRoutes(), tmp_path),
    )
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(source.run)
            async with aiomqtt.Client("127.0.0.1", 1883) as publisher:
                for n in range(3):
                    await publisher.publish(f"{broker.name}/a", json.dumps({"n": n}), qos=0)
            await intake.until(3)
            tg.cancel_scope.cancel()
    finally:
        await broker.remove()

    assert sorted(e.data["n"] for e in intake.events.values()) == [0, 1, 2]
    assert all(i.startswith("src:q0:") for i in intake.events)
    assert intake.cursor_value in (None, "0")  # no numbers taken
