"""``amqp`` source: messages of a RabbitMQ (AMQP 0-9-1) queue become events.

The loop, per batch of up to ``max_batch`` messages::

    deliveries  ->  one Event per message  ->  await intake.record(events)  ->  basic.ack

Messages are acknowledged (one ``ack`` with ``multiple``, for the batch) only after intake
has committed their events and the runs they start; a crash or a lost connection before
that leaves them unacknowledged, and RabbitMQ delivers them again, flagged
``redelivered``.

Ids: AMQP gives a message no id that a redelivery repeats (the delivery tag is per
channel; ``message_id`` is whatever the publisher set, if anything). Each message is
numbered by a sequence committed with the events, and a redelivered one is matched to the
event it was recorded as, if it was, among the last ``prefetch`` numbers by a digest of
its content (body, routing key, exchange, properties, headers): see
:class:`connectors._payload.RedeliveryIds`. Intake recognises it as a duplicate and starts
nothing twice. Two messages equal in all of that within ``prefetch`` of each other, the
second lost in a crash before it was recorded, are taken for one: publishers that set
``message_id`` (or a header) to something unique are never confused.

Backpressure: ``prefetch`` is the most messages RabbitMQ hands over unacknowledged. While
the daemon's backlog is saturated the source takes none of those it holds, so it
acknowledges none, and RabbitMQ sends no more: the queue grows at the broker.

What an event holds: ``data`` is the body read as a Kafka message's value is (JSON; else
text; else base64; a body that opens ``{`` or ``[`` but is not JSON is an ``invalid``
event, acknowledged like any other). ``meta``: ``queue``, ``exchange``, ``routing_key``,
``message_id``, ``correlation_id``, ``content_type``, ``timestamp`` (seconds, or
``null``), ``headers`` (name to text), ``redelivered``, ``encoding``, and ``traceparent``
from a valid ``traceparent`` header.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, ClassVar

import aio_pika
import anyio
import anyio.abc
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cued.daemon.sdk import (
    ConnectorError,
    Duration,
    Event,
    describe_error,
    message_value,
    now,
    parse_traceparent,
)

from ._flow import Backpressure
from ._payload import RedeliveryIds, digest, log_redelivered, text_map
from ._secrets import source_secret, url_or_secret

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
    from anyio.streams.memory import MemoryObjectReceiveStream

    from cued.daemon.sdk import SourceContext

__all__ = ["AmqpConfig", "AmqpSource", "message_event"]

_RETRY_S = (0.1, 2.0)


class AmqpConfig(BaseModel):
    """Keys of a ``[sources.NAME]`` table with ``kind = "amqp"``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(min_length=1)
    """``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS), or ``env:NAME`` /
    ``file:PATH`` holding it."""
    queue: str = Field(min_length=1)
    declare: bool = True
    """Declare the queue (durable) if it does not exist; ``false``: it must exist."""
    prefetch: int = Field(100, ge=1, le=65535)
    """The most messages held unacknowledged at once: the backpressure."""
    max_batch: int = Field(100, ge=1)
    """The most messages recorded in one transaction."""
    connect_timeout: Duration = Field(10.0, ge=0)
    """At start, how long to keep trying to reach the broker before the daemon fails."""

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return url_or_secret(value, ("amqp://", "amqps://"))


def message_event(
    source: str, queue: str, event_id: str, message: AbstractIncomingMessage, received_at: float
) -> Event:
    """The event for one delivered message; never raises."""
    data, encoding, error = message_value(message.body)
    headers, binary = text_map((message.headers or {}).items(), "headers")
    meta: dict[str, Any] = {
        "queue": queue,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "message_id": message.message_id,
        "correlation_id": message.correlation_id,
        "content_type": message.content_type,
        "timestamp": message.timestamp.timestamp() if message.timestamp else None,
        "headers": headers,
        "redelivered": bool(message.redelivered),
        "encoding": encoding,
    }
    if binary:
        meta["base64"] = binary
    raw = (message.headers or {}).get("traceparent")
    traceparent = parse_traceparent(raw) if isinstance(raw, str | bytes) else None
    if traceparent is not None:
        meta["traceparent"] = traceparent
    return Event(
        source=source,
        event_id=event_id,
        data=data,
        meta=meta,
        received_at=received_at,
        error=error,
    )


def content_digest(message: AbstractIncomingMessage) -> str:
    """What tells a message from another when it has no id (see the module)."""
    return digest(
        message.body,
        message.exchange,
        message.routing_key,
        message.message_id,
        message.correlation_id,
        message.timestamp.timestamp() if message.timestamp else None,
        repr(sorted((str(k), repr(v)) for k, v in (message.headers or {}).items())),
    )


class AmqpSource:
    """Consumes a queue with manual acks; see the module's documentation."""

    kind: ClassVar[str] = "amqp"
    Config: ClassVar[type[BaseModel]] = AmqpConfig

    def __init__(self, config: AmqpConfig, ctx: SourceContext) -> None:
        """:raises ConnectorError: if the URL's variable is unset or its file unreadable"""
        self.config = config
        self.ctx = ctx
        self._url = source_secret(config.url, ctx.base_dir, "an AMQP URL", literal_is_secret=False)
        self._ids = RedeliveryIds(ctx.source, ctx.intake, window=config.prefetch)
        self._backpressure = Backpressure(ctx, "amqp", prefetch=config.prefetch)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume until cancelled; ready once consuming.

        :raises ConnectorError: if the broker cannot be reached within
            ``connect_timeout``, or refuses the queue
        """
        await self._ids.load()
        connection = await self._connect()
        try:
            send, receive = anyio.create_memory_object_stream[Any](math.inf)

            async def deliver(message: AbstractIncomingMessage) -> None:
                # at most `prefetch` unacknowledged: bounded; after the source stopped,
                # dropped (unacknowledged, so the broker delivers it again)
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    send.send_nowait(message)

            try:
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=self.config.prefetch)
                queue = await channel.declare_queue(
                    self.config.queue, durable=True, passive=not self.config.declare
                )
                await queue.consume(deliver, no_ack=False)
            except AMQPError as exc:
                raise ConnectorError(
                    f"amqp source {self.ctx.source!r}: the broker refuses queue "
                    f"{self.config.queue!r}: {describe_error(exc)}"
                ) from exc
            self.ctx.log.info("amqp_consuming", queue=self.config.queue)
            task_status.started()
            async with send, receive:
                await self._consume(receive)
        finally:
            with anyio.move_on_after(10, shield=True):
                await connection.close()

    async def _connect(self) -> AbstractRobustConnection:
        deadline = anyio.current_time() + self.config.connect_timeout
        delay, max_delay = _RETRY_S
        while True:
            try:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0.001)):
                    return await aio_pika.connect_robust(self._url)
            except (AMQPError, OSError, TimeoutError) as exc:
                if anyio.current_time() + delay >= deadline:
                    raise ConnectorError(
                        f"amqp source {self.ctx.source!r}: cannot connect within "
                        f"{self.config.connect_timeout:g}s (connect_timeout): {describe_error(exc)}"
                    ) from exc
                self.ctx.log.warning(
                    "amqp_unreachable", error=describe_error(exc), retry_in_s=delay
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, max_delay)

    async def _consume(self, receive: MemoryObjectReceiveStream[Any]) -> None:
        while True:
            if not await self._backpressure.ready():
                continue
            # what came while the last batch was recorded goes in one transaction; an idle
            # source records a message as soon as it comes
            batch: list[AbstractIncomingMessage] = [await receive.receive()]
            with contextlib.suppress(anyio.WouldBlock):
                while len(batch) < self.config.max_batch:
                    batch.append(receive.receive_nowait())
            await self._record(batch)

    async def _record(self, batch: list[AbstractIncomingMessage]) -> None:
        # A batch taken is recorded even when the daemon stops meanwhile, then acknowledged
        with anyio.CancelScope(shield=True):
            ids = await self._ids.assign([(content_digest(m), bool(m.redelivered)) for m in batch])
            received_at = now()
            events = [
                message_event(self.ctx.source, self.config.queue, i, m, received_at)
                for i, m in zip(ids, batch, strict=True)
            ]
            receipts = await self.ctx.intake.record(events, cursor=self._ids.cursor)
            log_redelivered(self.ctx, "amqp", receipts)
            try:
                with anyio.fail_after(10):
                    await batch[-1].ack(multiple=True)
            except (AMQPError, ChannelInvalidStateError, OSError, TimeoutError) as exc:
                self.ctx.log.warning(
                    "amqp_ack_failed",
                    error=describe_error(exc),
                    note="the broker delivers the batch again, and intake recognises it",
                )
