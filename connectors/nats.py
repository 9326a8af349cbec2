"""``nats`` source: messages of a NATS JetStream stream become events, read through a
durable pull consumer.

The loop, per batch of up to ``max_batch`` messages::

    fetch  ->  one Event per message  ->  await intake.record(events)  ->  ack each message

A message is acknowledged only after intake has committed its event (and the runs it
starts) to the store; a crash in between leaves it unacknowledged, and JetStream
delivers it again once ``ack_wait`` has passed (or at once to the consumer after a
restart, for what the server had not handed out). Every event's id is
``SOURCE:STREAM:SEQUENCE``, the message's sequence number in its stream, the same on
every delivery, so intake recognises a redelivery and starts nothing twice. (A stream
deleted and created again under the same name numbers its messages from 1 again: they
would be taken for the old ones. Name the new stream differently, or the source.)

The consumer is durable (``durable``): the server keeps its place while the daemon is
down, and daemons sharing it share the messages. It is created when missing, with
explicit acks, ``ack_wait`` and the subject filter; an existing one is used as it is, if
it filters the subjects configured (else the source refuses to start, naming both; so
does a server before 2.10 given several subjects, which it would ignore).

Backpressure: while the daemon's backlog is saturated the source fetches nothing; what
the server has not handed out waits in the stream.

What an event holds (the body goes through :func:`cued.daemon.sdk.message_value`, as a
Kafka message's does: no message, of any bytes, stops the source):

* ``data``: the body parsed as JSON, else its text, else base64 (``meta.encoding``);
  a body that opens ``{`` or ``[`` but is no JSON cued can keep is an ``invalid`` event,
  recorded and acknowledged like any other (it is never met again).
* ``meta``: ``subject``, ``stream``, ``sequence`` (in the stream), ``delivered`` (how
  many times the server has handed it out), ``headers`` (name to text, without the
  status headers of the protocol), ``timestamp`` (when the server stored it, ISO 8601),
  ``encoding``, and ``traceparent`` from a valid ``traceparent`` header.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
import anyio.abc
import nats
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cued.daemon.sdk import (
    ConnectorError,
    Duration,
    Event,
    bounded_id,
    describe_error,
    message_value,
    now,
    parse_traceparent,
)

from ._flow import Backpressure
from ._secrets import source_secret

if TYPE_CHECKING:
    from pathlib import Path

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from cued.daemon.sdk import SourceContext

__all__ = ["NatsConfig", "NatsSource", "connect", "message_event"]

#: How long closing the connection may take at shutdown.
_STOP_TIMEOUT_S = 10.0
#: A header value is cut past this many characters (headers are metadata, not payload).
_MAX_HEADER_CHARS = 10_000


class NatsConfig(BaseModel):
    """Keys of a ``[sources.NAME]`` table with ``kind = "nats"``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    servers: list[str] = Field(min_length=1)
    """``nats://host:port`` URLs of one or more servers of the cluster."""
    stream: str = Field(min_length=1, pattern=r"^[^.*>\s]+$")
    """The JetStream stream to read (it must exist)."""
    subjects: list[str] = Field(default_factory=list)
    """Only messages of these subjects (wildcards ``*`` and ``>``); all of the stream's
    when empty. Several subjects need NATS server 2.10 or later."""
    durable: str = Field(min_length=1, pattern=r"^[^.*>\s]+$")
    """The durable consumer's name: the server keeps its place; daemons sharing it share
    the messages."""
    deliver: Literal["all", "new"] = "all"
    """Where a new consumer starts: at the stream's first message (``all``) or after its
    last (``new``)."""
    max_batch: int = Field(256, ge=1, le=10_000)
    """The most messages fetched, recorded (in one transaction) and acknowledged at once."""
    fetch_wait: Duration = Field(1.0, gt=0)
    """How long one fetch waits for messages when there are none."""
    ack_wait: Duration = Field(30.0, gt=0)
    """How long the server waits for an acknowledgement before it delivers the message
    again (for a consumer the source creates)."""
    connect_timeout: Duration = Field(10.0, ge=0)
    """At start, how long to keep trying to reach a server before the daemon fails."""
    user: str | None = None
    password: str | None = None
    """``env:NAME``, ``file:PATH``, or the value itself."""
    token: str | None = None
    """``env:NAME``, ``file:PATH``, or the value itself."""

    @model_validator(mode="after")
    def _credentials(self) -> NatsConfig:
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        if self.token is not None and self.user is not None:
            raise ValueError("give either token or user and password, not both")
        return self


def connect_options(config: NatsConfig, base_dir: Path) -> dict[str, Any]:
    """nats-py's connection arguments for ``config``'s servers and credentials.

    :raises ConnectorError: if a credential's variable is unset or its file unreadable
    """
    options: dict[str, Any] = {"servers": config.servers, "name": "cued"}
    if config.user is not None and config.password is not None:
        options["user"] = config.user
        options["password"] = source_secret(config.password, base_dir, "a NATS password")
    if config.token is not None:
        options["token"] = source_secret(config.token, base_dir, "a NATS token")
    return options


async def connect(options: dict[str, Any], timeout_s: float, what: str) -> Client:
    """A connection to one of ``options["servers"]``, trying for up to ``timeout_s``.

    :raises ConnectorError: if none answers in time
    """
    try:
        with anyio.fail_after(max(timeout_s, 0.001)):
            return await nats.connect(
                **options,
                connect_timeout=max(min(timeout_s, 2.0), 0.1),
                max_reconnect_attempts=-1,  # once connected, keep trying for ever
                allow_reconnect=True,
                # the first connect retries until the deadline above
                reconnect_time_wait=0.2,
            )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise ConnectorError(
            f"{what}: cannot connect to {options['servers']!r} within {timeout_s:g}s "
            f"(connect_timeout): {describe_error(exc)}"
        ) from exc


def message_event(source: str, msg: Msg, received_at: float) -> Event:
    """The event for one JetStream message; never raises."""
    data, encoding, error = message_value(msg.data)
    metadata = msg.metadata
    headers = {
        bounded_id(name, limit=200): bounded_id(value, limit=_MAX_HEADER_CHARS)
        for name, value in (msg.headers or {}).items()
        if not name.startswith("Nats-Last-")  # status headers of the protocol
    }
    meta: dict[str, Any] = {
        "subject": bounded_id(msg.subject),
        "stream": metadata.stream,
        "sequence": metadata.sequence.stream,
        "delivered": metadata.num_delivered,
        "headers": headers,
        "timestamp": metadata.timestamp.isoformat(),
        "encoding": encoding,
    }
    for name, value in headers.items():
        if name.lower() == "traceparent" and (parsed := parse_traceparent(value.encode())):
            meta["traceparent"] = parsed
    return Event(
        source=source,
        event_id=f"{source}:{metadata.stream}:{metadata.sequence.stream}",
        data=data,
        meta=meta,
        received_at=received_at,
        error=error,
    )


class NatsSource:
    """Reads a JetStream stream through a durable pull consumer; see the module's
    documentation."""

    kind: ClassVar[str] = "nats"
    Config: ClassVar[type[BaseModel]] = NatsConfig

    def __init__(self, config: NatsConfig, ctx: SourceContext) -> None:
        """:raises ConnectorError: if a credential cannot be read"""
        self.config = config
        self.ctx = ctx
        self._options = connect_options(config, ctx.base_dir)
        self._what = f"nats source {ctx.source!r}"

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume until cancelled; ready once the consumer is bound.

        :raises ConnectorError: if no server answers within ``connect_timeout``, the
            stream does not exist, or the server refuses the consumer
        """
        client = await connect(self._options, self.config.connect_timeout, self._what)
        try:
            subscription = await self._subscribe(client.jetstream())
            self.ctx.log.info(
                "nats_subscribed",
                servers=self.config.servers,
                stream=self.config.stream,
                durable=self.config.durable,
            )
            task_status.started()
            await self._consume(subscription)
        finally:
            with anyio.move_on_after(_STOP_TIMEOUT_S, shield=True):
                await client.close()

    async def _subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        config = self.config
        subjects = config.subjects
        consumer = ConsumerConfig(
            durable_name=config.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=config.ack_wait,
            deliver_policy=DeliverPolicy.ALL if config.deliver == "all" else DeliverPolicy.NEW,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
        )
        try:
            await js.stream_info(config.stream)
            try:
                info = await js.consumer_info(config.stream, config.durable)
            except nats.js.errors.NotFoundError:
                info = await js.add_consumer(config.stream, consumer)
            self._check_filter(sorted(subjects), _filters(info.config))
            return await js.pull_subscribe_bind(durable=config.durable, stream=config.stream)
        except nats.js.errors.NotFoundError as exc:
            raise ConnectorError(
                f"{self._what}: the stream {config.stream!r} does not exist: {describe_error(exc)}"
            ) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise ConnectorError(
                f"{self._what}: cannot bind the consumer {config.durable!r} of stream "
                f"{config.stream!r}: {describe_error(exc)}"
            ) from exc

    def _check_filter(self, wanted: list[str], found: list[str]) -> None:
        """The consumer must take the subjects asked for, no more: a server before 2.10
        ignores several filter subjects (the consumer would take the whole stream), and a
        consumer made earlier may filter otherwise.

        :raises ConnectorError: if the consumer's filter is not the one configured
        """
        if wanted == found:
            return
        if len(wanted) > 1 and not found:
            raise ConnectorError(
                f"{self._what}: the server ignored subjects {wanted!r} (several filter "
                f"subjects need NATS server 2.10 or later); the consumer "
                f"{self.config.durable!r} would take every subject of the stream. Delete it "
                f"(nats consumer rm {self.config.stream} {self.config.durable}) and give one "
                "subject, or upgrade the server"
            )
        raise ConnectorError(
            f"{self._what}: the consumer {self.config.durable!r} filters {found or 'nothing'!r}"
            f", not subjects {wanted or 'none'!r}: delete it to have it made again, or name "
            "another durable"
        )

    async def _consume(self, subscription: JetStreamContext.PullSubscription) -> None:
        log = self.ctx.log
        backpressure = Backpressure(self.ctx, "nats")
        while True:
            if not await backpressure.ready():
                continue
            try:
                messages = await subscription.fetch(
                    self.config.max_batch, timeout=self.config.fetch_wait
                )
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # nothing came
            except nats.errors.Error as exc:  # the connection reconnects by itself
                log.warning("nats_fetch_failed", error=describe_error(exc))
                await anyio.sleep(0.2)
                continue
            await self._record(messages)

    async def _record(self, messages: list[Msg]) -> None:
        """Record a batch, then acknowledge every message of it."""
        messages = [m for m in messages if m.reply]  # status messages carry no reply
        if not messages:
            return
        received_at = now()
        events = [message_event(self.ctx.source, m, received_at) for m in messages]
        # A batch taken is recorded and acknowledged even when the daemon stops meanwhile
        with anyio.CancelScope(shield=True):
            await self.ctx.intake.record(events)
            try:
                for msg in messages:
                    await msg.ack()
            except nats.errors.Error as exc:  # redelivered after ack_wait; intake knows it
                self.ctx.log.warning("nats_ack_failed", error=describe_error(exc))


def _filters(consumer: ConsumerConfig) -> list[str]:
    """The subjects a consumer takes, sorted (none: every subject of its stream)."""
    if consumer.filter_subjects:
        return sorted(consumer.filter_subjects)
    return [consumer.filter_subject] if consumer.filter_subject else []
