"""The MQTT, AMQP and Redis Streams brokers this machine runs (Mosquitto, RabbitMQ, Redis),
as the tests of the ``mqtt``, ``amqp`` and ``redis_stream`` sources and kinds use them.

One :class:`Broker` per kind: the source's config text, publishing with the bare client,
reading what a sink sent, and removing what a test made (its topic's session, its queue,
its stream and keys). A broker that does not answer fails the test: never a skip.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING, Any

import aio_pika
import aiomqtt
import anyio
import redis.asyncio as aioredis
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"
KINDS = ("mqtt", "amqp", "redis_stream")

_counter = count()


def unique_name(prefix: str) -> str:
    """A topic, queue or stream name no other test (or earlier session) uses."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


def to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


@dataclass
class Broker:
    """One test's place at one broker: ``name`` is its topic, queue or stream."""

    kind: str
    name: str = field(default_factory=lambda: unique_name("cued-test"))

    def source_toml(self, source: str = "src", extra: str = "") -> str:
        head = f'[sources.{source}]\nkind = "{self.kind}"\n'
        if self.kind == "mqtt":
            body = (
                f'broker = "mqtt://{MQTT_HOST}:{MQTT_PORT}"\ntopics = ["{self.name}/#"]\n'
                f'client_id = "{self.name}"\n'
            )
        elif self.kind == "amqp":
            body = f'url = "{AMQP_URL}"\nqueue = "{self.name}"\n'
        else:
            body = f'url = "{REDIS_URL}"\nstream = "{self.name}"\ngroup = "cued"\nfield = "data"\n'
        return head + body + extra + "\n"

    async def prepare(self) -> None:
        """Make what must exist before messages are sent: the MQTT session and its
        subscription (the daemon's client id, so messages wait for it), the queue."""
        if self.kind == "mqtt":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
            async with aiomqtt.Client(
                MQTT_HOST,
                MQTT_PORT,
                identifier=self.name,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=True,
                properties=properties,
            ) as client:
                await client.subscribe(f"{self.name}/#", qos=1)
        elif self.kind == "amqp":
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                await channel.declare_queue(self.name, durable=True)

    async def publish(self, values: list[Any]) -> None:
        """Send ``values`` (bytes as they are, text as UTF-8, anything else as JSON), in
        order, each confirmed by the broker."""
        payloads = [to_bytes(v) for v in values]
        if self.kind == "mqtt":
            async with aiomqtt.Client(
                MQTT_HOST,
                MQTT_PORT,
                identifier=unique_name("pub"),
                max_inflight_messages=100,
            ) as client:
                for n, body in enumerate(payloads):
                    await client.publish(f"{self.name}/m{n % 7}", body, qos=1)
        elif self.kind == "amqp":
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel(publisher_confirms=True)
                for body in payloads:
                    await channel.default_exchange.publish(
                        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=self.name,
                    )
        else:
            client = aioredis.Redis.from_url(REDIS_URL)
            try:
                pipe = client.pipeline(transaction=False)
                for body in payloads:
                    pipe.xadd(self.name, {"data": body})
                await pipe.execute()
            finally:
                await client.aclose()

    async def waiting(self) -> int:
        """How many messages the broker holds for the source, not yet acknowledged:
        ready and unacknowledged in the queue; pending or unread in the group. (MQTT tells
        no one this: only for amqp and redis_stream.)"""
        if self.kind == "amqp":
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(self.name, passive=True)
                ready = queue.declaration_result.message_count or 0
            return ready
        assert self.kind == "redis_stream", "MQTT brokers do not tell"
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            groups = await client.xinfo_groups(self.name)
            (group,) = [g for g in groups if g["name"] in (b"cued", "cued")]
            return int(group["pending"]) + int(group.get("lag") or 0)
        finally:
            await client.aclose()

    async def remove(self) -> None:
        """Remove what the test made at the broker."""
        if self.kind == "mqtt":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 0
            async with aiomqtt.Client(
                MQTT_HOST,
                MQTT_PORT,
                identifier=self.name,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=True,
                properties=properties,
            ):
                pass  # a clean start with no expiry: the session ends with this connection
        elif self.kind == "amqp":
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(self.name)
        else:
            client = aioredis.Redis.from_url(REDIS_URL)
            try:
                keys = [k async for k in client.scan_iter(match=f"{self.name}*")]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 30) -> Any:
    """Poll ``check`` until it returns something true, and return that: for effects at a
    broker or in the store, which signal nothing."""
    with anyio.fail_after(timeout_s):
        while not (result := await check()):  # noqa: ASYNC110 - nothing to wait on
            await anyio.sleep(0.02)
        return result
