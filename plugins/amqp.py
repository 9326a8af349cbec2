"""The ``amqp`` task kind: publish one message to a RabbitMQ exchange, and wait for the
broker's publisher confirm.

The message's ``message_id`` is the task instance's idempotency key (the same on every
attempt and across restarts; a ``message_id`` given in the parameters replaces it), and so
is its ``cued-idempotency-key`` header: a retry after a confirm that got lost publishes
the message again, and a consumer that deduplicates on it sees it once. RabbitMQ itself
does not deduplicate.

Messages are persistent (``delivery_mode`` 2) and ``mandatory``: one that no queue takes
fails the task rather than vanishing. One connection and channel per URL serves every task
of the daemon; :meth:`AmqpPublishTask.aclose` closes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import aio_pika
import anyio
from aio_pika.exceptions import AMQPError, DeliveryError
from pydantic import BaseModel, ConfigDict, Field

from cued.daemon.sdk import TaskError, describe_error

from ._brokers import IDEMPOTENCY_KEY, encode_value, resolve_url
from ._shared import Shared

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractRobustConnection

    from cued.daemon.sdk import TaskContext

__all__ = ["AmqpPublishParams", "AmqpPublishTask"]

_CLOSE_TIMEOUT_S = 10.0


class AmqpPublishParams(BaseModel):
    """Parameters of an ``amqp`` task.

    :param url: ``amqp://user:password@host:port/vhost``, or ``env:NAME`` / ``file:PATH``
    :param exchange: the exchange; ``""`` (the default exchange) routes by queue name
    :param routing_key: the routing key (with the default exchange: the queue's name)
    :param value: the body: a string as UTF-8, anything else as JSON
    :param headers: message headers
    :param message_id: replaces the idempotency key as ``message_id``
    :param content_type: ``application/json`` for a value sent as JSON, by default
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(min_length=1)
    exchange: str = ""
    routing_key: str = Field(min_length=1)
    value: Any
    headers: dict[str, str] = Field(default_factory=dict)
    message_id: str | None = None
    content_type: str | None = None


class AmqpPublishTask:
    """Publish; succeed with ``{"exchange", "routing_key", "message_id"}``."""

    name: ClassVar[str] = "amqp"
    Params: ClassVar[type[BaseModel]] = AmqpPublishParams

    def __init__(self) -> None:
        self._channels: Shared[str, tuple[AbstractRobustConnection, AbstractChannel]] = Shared(
            "amqp"
        )

    async def execute(self, params: AmqpPublishParams, ctx: TaskContext) -> Any:
        """:raises TaskError: if the broker cannot be reached or refuses the message"""
        body = encode_value(params.value)
        message_id = params.message_id or ctx.idempotency_key
        content_type = params.content_type or (
            "text/plain" if isinstance(params.value, str) else "application/json"
        )
        message = aio_pika.Message(
            body,
            message_id=message_id,
            headers={IDEMPOTENCY_KEY: ctx.idempotency_key, **params.headers},
            content_type=content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        channel = await self._channel(params.url)
        where = f"exchange {params.exchange!r} with routing key {params.routing_key!r}"
        try:
            exchange = (
                channel.default_exchange
                if params.exchange == ""
                else await channel.get_exchange(params.exchange, ensure=True)
            )
            await exchange.publish(message, routing_key=params.routing_key, mandatory=True)
        except DeliveryError as exc:
            raise TaskError(f"no queue took the message sent to {where}: {exc}") from exc
        except (AMQPError, OSError) as exc:
            raise TaskError(f"publishing to {where} failed: {describe_error(exc)}") from exc
        return {
            "exchange": params.exchange,
            "routing_key": params.routing_key,
            "message_id": message_id,
        }

    async def _channel(self, url: str) -> AbstractChannel:

        async def connect() -> tuple[AbstractRobustConnection, AbstractChannel]:
            try:
                with anyio.fail_after(30):
                    connection = await aio_pika.connect_robust(resolve_url(url, "an AMQP URL"))
                    channel = await connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
            except (AMQPError, OSError, TimeoutError) as exc:
                raise TaskError(
                    f"cannot connect to the AMQP broker: {describe_error(exc)}"
                ) from exc
            return connection, channel

        return (await self._channels.get(url, connect))[1]

    async def aclose(self) -> None:
        for connection, _ in self._channels.close():
            with anyio.move_on_after(_CLOSE_TIMEOUT_S, shield=True):
                await connection.close()
