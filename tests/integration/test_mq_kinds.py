"""The ``mqtt``, ``amqp`` and ``redis_stream`` task kinds (sinks) against the real brokers:
the message arrives, carrying the task instance's idempotency key where the broker has a
place for it; Redis adds an entry once however often the task is retried."""

from __future__ import annotations

import json

import aio_pika
import aiomqtt
import anyio
import pytest
import redis.asyncio as aioredis

from cued.daemon.sdk import PermanentTaskError, TaskError
from cued.plugins.amqp import AmqpPublishParams, AmqpPublishTask
from cued.plugins.mqtt import MqttPublishParams, MqttPublishTask
from cued.plugins.redis_stream import RedisStreamAddParams, RedisStreamAddTask
from tests.support.kinds import task_context
from tests.support.mq_brokers import AMQP_URL, MQTT_HOST, MQTT_PORT, REDIS_URL, Broker

WAIT_S = 20


async def test_mqtt_publishes_with_the_idempotency_key_as_a_user_property(ctx):
    topic = Broker("mqtt").name
    got: list[aiomqtt.Message] = []
    async with aiomqtt.Client(
        MQTT_HOST, MQTT_PORT, protocol=aiomqtt.ProtocolVersion.V5
    ) as subscriber:
        await subscriber.subscribe(topic, qos=1)
        output = await MqttPublishTask().execute(
            MqttPublishParams(
                broker=f"mqtt://{MQTT_HOST}:{MQTT_PORT}",
                topic=topic,
                value={"id": 7},
                user_properties={"site": "a"},
            ),
            ctx,
        )
        with anyio.fail_after(WAIT_S):
            async for message in subscriber.messages:
                got.append(message)
                break

    assert output == {"topic": topic, "qos": 1}
    (message,) = got
    assert json.loads(bytes(message.payload)) == {"id": 7}
    assert message.properties is not None
    assert dict(message.properties.UserProperty) == {
        "cued-idempotency-key": ctx.idempotency_key,
        "site": "a",
    }


async def test_mqtt_fails_the_task_when_the_broker_cannot_be_reached(ctx):
    with pytest.raises(TaskError, match="publishing to topic 't'"):
        await MqttPublishTask().execute(
            MqttPublishParams(broker="mqtt://127.0.0.1:1", topic="t", value=1, timeout=5), ctx
        )


@pytest.fixture
async def queue():
    broker = Broker("amqp")
    await broker.prepare()
    try:
        yield broker.name
    finally:
        await broker.remove()


async def test_amqp_publishes_with_the_idempotency_key_as_message_id(ctx, queue):
    kind = AmqpPublishTask()
    try:
        output = await kind.execute(
            AmqpPublishParams(url=AMQP_URL, routing_key=queue, value="hello", headers={"h": "v"}),
            ctx,
        )
    finally:
        await kind.aclose()
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        q = await channel.declare_queue(queue, passive=True)
        message = await q.get(timeout=WAIT_S)
        await message.ack()

    assert output == {"exchange": "", "routing_key": queue, "message_id": ctx.idempotency_key}
    assert message.body == b"hello"
    assert message.message_id == ctx.idempotency_key
    assert message.headers == {"cued-idempotency-key": ctx.idempotency_key, "h": "v"}
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_amqp_fails_the_task_when_no_queue_takes_the_message(ctx):
    kind = AmqpPublishTask()
    try:
        with pytest.raises(TaskError, match="no queue took the message"):
            await kind.execute(
                AmqpPublishParams(url=AMQP_URL, routing_key=Broker("amqp").name, value=1), ctx
            )
    finally:
        await kind.aclose()


@pytest.fixture
async def stream():
    broker = Broker("redis_stream")
    try:
        yield broker.name
    finally:
        await broker.remove()


async def test_redis_adds_an_entry_once_however_often_the_task_runs(http_client, stream):
    kind = RedisStreamAddTask()
    params = RedisStreamAddParams(url=REDIS_URL, stream=stream, value={"id": 1}, fields={"k": "v"})
    try:
        first = await kind.execute(params, task_context(http_client, attempt=1))
        retry = await kind.execute(params, task_context(http_client, attempt=2))
        other = await kind.execute(
            params, task_context(http_client, idempotency_key="run-2:notify")
        )
    finally:
        await kind.aclose()
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        entries = await client.xrange(stream)
    finally:
        await client.aclose()

    assert first["added"]
    assert not retry["added"]
    assert other["added"]
    assert retry["id"] == first["id"] != other["id"]
    assert [e[0].decode() for e in entries] == [first["id"], other["id"]]
    assert entries[0][1] == {
        b"k": b"v",
        b"data": b'{"id":1}',
        b"cued-idempotency-key": b"run-1:notify",
    }


async def test_redis_refusing_the_entry_fails_the_task_for_good(ctx, stream):
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.set(stream, "not a stream")
    finally:
        await client.aclose()
    kind = RedisStreamAddTask()
    try:
        with pytest.raises(PermanentTaskError, match="Redis refuses the entry"):
            await kind.execute(RedisStreamAddParams(url=REDIS_URL, stream=stream, value=1), ctx)
    finally:
        await kind.aclose()
