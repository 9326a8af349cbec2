"""The ``kafka`` task kind: send one message to a Kafka topic, and wait for the broker's ack.

One producer per bootstrap (and ``acks`` setting, a producer-wide setting in Kafka) serves
every task of the daemon: it is created when the first task needs it and kept, so a task
costs one round trip, not a connection. :meth:`KafkaProduceTask.aclose` stops them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError, MessageSizeTooLargeError  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field

from cued.daemon.sdk import (
    PermanentTaskError,
    TaskError,
    describe_error,
)

from ._brokers import IDEMPOTENCY_KEY, encode_value, producer_span
from ._shared import Closing, Shared

if TYPE_CHECKING:
    from cued.daemon.sdk import TaskContext

__all__ = ["IDEMPOTENCY_HEADER", "KafkaProduceParams", "KafkaProduceTask", "encode_value"]

#: The header that carries the task instance's idempotency key (the same on every attempt
#: and across restarts), so consumers can drop a message sent twice by a retry.
IDEMPOTENCY_HEADER = IDEMPOTENCY_KEY
#: When the daemon stops, how long sending what is buffered and closing may take.
_CLOSE_TIMEOUT_S = 10.0


class KafkaProduceParams(BaseModel):
    """Parameters of a ``kafka`` task.

    :param bootstrap: ``host:port`` of one or more brokers, comma-separated
    :param topic: the topic to send to
    :param value: the message: a string is sent as UTF-8, anything else as JSON
    :param key: the message key (messages with the same key go to the same partition)
    :param headers: message headers; a ``cued-idempotency-key`` given here replaces the
        daemon's own
    :param acks: how many replicas must have the message before it counts as sent:
        ``"all"`` (the in-sync ones), ``1`` (the leader) or ``0`` (none: no ack awaited)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: str = Field(min_length=1)
    topic: str = Field(min_length=1)
    value: Any
    key: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    acks: Literal["all", 0, 1] = "all"


class KafkaProduceTask(Closing):
    """Send ``value`` to ``topic``; succeed with ``{"topic", "partition", "offset"}``.

    Every message carries the attempt's idempotency key in the ``cued-idempotency-key``
    header: a retry after an ack that got lost sends the message again, and a consumer
    that deduplicates on the header sees it once.
    """

    name: ClassVar[str] = "kafka"
    Params: ClassVar[type[BaseModel]] = KafkaProduceParams

    def __init__(self) -> None:
        self._producers: Shared[tuple[str, str | int], AIOKafkaProducer] = Shared("kafka")

    async def execute(self, params: KafkaProduceParams, ctx: TaskContext) -> Any:
        """Send the message and wait for the broker's ack.

        :param params: the validated parameters
        :param ctx: the attempt's context
        :return: ``{"topic": ..., "partition": <int>, "offset": <int>}`` (offset ``-1``
            with ``acks = 0``, when the broker tells nothing)
        :raises PermanentTaskError: if the value is not JSON-serialisable or is larger
            than the broker takes
        :raises TaskError: if the broker cannot be reached or refuses the message
        """
        value = encode_value(params.value)
        headers = {IDEMPOTENCY_HEADER: ctx.idempotency_key, **params.headers}
        producer = await self._producer(params.bootstrap, params.acks)
        try:
            with producer_span("kafka", "produce", params.topic, headers) as span:
                sent = await producer.send_and_wait(
                    params.topic,
                    value,
                    key=params.key.encode() if params.key is not None else None,
                    headers=[(name, text.encode()) for name, text in headers.items()],
                )
                span.set(
                    **{
                        "messaging.destination.partition.id": str(sent.partition),
                        "messaging.kafka.offset": sent.offset,
                    }
                )
        except MessageSizeTooLargeError as exc:
            raise PermanentTaskError(
                f"the message for topic {params.topic!r} is too large ({len(value)} bytes): {exc}"
            ) from exc
        except KafkaError as exc:
            raise TaskError(
                f"sending to topic {params.topic!r} at {params.bootstrap!r} failed: "
                f"{describe_error(exc)}"
            ) from exc
        return {"topic": sent.topic, "partition": sent.partition, "offset": sent.offset}

    async def _producer(self, bootstrap: str, acks: str | int) -> AIOKafkaProducer:
        """The shared producer for ``bootstrap`` and ``acks``, started on first use.

        :raises TaskError: if it cannot be started (the next attempt tries again)
        """

        async def start() -> AIOKafkaProducer:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=acks, client_id="cued")
            try:
                await producer.start()
            except KafkaError as exc:
                await _stop(producer)
                raise TaskError(
                    f"cannot connect to the Kafka broker at {bootstrap!r}: {describe_error(exc)}"
                ) from exc
            except BaseException:
                await _stop(producer)
                raise
            return producer

        return await self._producers.get((bootstrap, acks), start)

    async def aclose(self) -> None:
        """Send what is buffered and stop every producer (bounded, also when cancelled).

        The daemon calls this when it stops, after the last task has ended.
        """
        for producer in self._producers.close():
            await _stop(producer)


async def _stop(producer: AIOKafkaProducer) -> None:
    with anyio.move_on_after(_CLOSE_TIMEOUT_S, shield=True):
        await producer.stop()
