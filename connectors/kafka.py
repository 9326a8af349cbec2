"""``kafka`` source: messages of Kafka topics become events, read in a consumer group.

The loop, per batch of up to ``max_batch`` messages::

    getmany  ->  one Event per message  ->  intake.record(events)  ->  commit offsets

Two batches are in flight at once: while intake records one (its transaction commits on
the store's thread), the next is fetched, parsed and handed in. Offsets are committed
only after intake has committed the events (and the runs they start) to the store, and in
the order the batches were taken: a batch's offsets wait for the batches before it, so a
crash in between redelivers what was not committed. The commit goes on in the background
(commits that pile up meanwhile go as one). Every event's id is
``SOURCE:TOPIC:PARTITION:OFFSET``, the same on every delivery of a message, so intake
recognises a redelivery as a duplicate and starts nothing twice: at-least-once delivery,
exactly-once runs. (A topic deleted and created again under the same name starts its
offsets from 0 again: its messages would be taken for the old ones. Name the new topic
differently, or give the source a new name.)

Backpressure: while the daemon's backlog is saturated the consumer pauses every assigned
partition and keeps polling (which returns nothing for paused partitions but keeps the
member in its group), and resumes once the backlog has drained.

Rebalances: the batches in flight are recorded, and every recorded offset committed, before
the consumer gives its partitions up, so the member that takes them over starts after
them; a batch fetched before the rebalance and not yet handed in is dropped (every
partition, kept or not, is read again from its committed offset after a rebalance).

What an event holds (everything from the message goes through
:mod:`cued.daemon.core.untrusted`: no message, of any bytes, stops the source):

* ``data``: the value parsed as JSON (``meta.encoding = "json"``); else its text
  (``"text"``); else, when it is not UTF-8, base64 (``"base64"``). A tombstone (no value)
  is ``null`` with ``"none"``.
* A value that opens an object or an array (``{`` or ``[`` after whitespace) but is not
  JSON cued can keep (it does not parse, or nests deeper than 64 levels) is recorded as
  an ``invalid`` event: ``data`` is its text (the first 10,000 characters,
  ``"text"``), the event's error says what is wrong, and it starts nothing. Any other
  value that does not parse as JSON (``hello``, ``NaN``, a number of 5,000 digits) is
  text, as it always was.
* ``meta``: ``topic``, ``partition``, ``offset``, ``key`` (text, or ``null``),
  ``headers`` (name to text), ``timestamp_ms`` (the message's Kafka timestamp),
  ``encoding``, and ``base64`` listing the key or headers given as base64 when they are
  not UTF-8 (``["key", "headers.trace"]``), only when there are such; and
  ``traceparent``, the producer's W3C trace context from a valid ``traceparent``
  header (the event's span and its runs' continue that trace).

Either way the offset is committed: a message that cannot be used is recorded once, and
not met again after a restart.

A message aiokafka cannot read at all (it decodes header *names* as UTF-8, strictly, and
fails the whole fetch on one that is not) is recorded as an ``invalid`` event of its
offset, with ``data = null`` and ``meta.encoding = "unreadable"``; so are the messages
after it in the same producer batch, which aiokafka cannot get past. (In a compacted
topic, offsets removed just before it may be recorded as well.) The source then reads on.

``cued backfill`` (:meth:`KafkaSource.backfill`) reads the messages of a span of
timestamps again with a consumer in no group, and hands them to intake with their live ids:
what the group took already is a duplicate there, and the group's offsets do not move.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
import anyio.abc
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    CommitFailedError,
    IllegalStateError,
    KafkaError,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cued.daemon.sdk import (
    ConnectorError,
    Duration,
    Event,
    describe_error,
    message_value,
    now,
    parse_traceparent,
    text_or_base64,
)

from ._secrets import source_secret

if TYPE_CHECKING:
    from pathlib import Path

    from aiokafka import ConsumerRecord

    from cued.daemon.sdk import SourceContext

__all__ = ["KafkaConfig", "KafkaSource", "message_event"]

#: How long one poll waits for messages when there are none.
_POLL_MS = 1000
#: While paused, how often the consumer polls (keeping its place in the group) and checks
#: the backlog; resuming happens at once when the backlog drains, without waiting for it.
_PAUSED_POLL_S = 1.0
#: Batches handed to intake at once: the next is fetched and parsed while one commits.
_IN_FLIGHT = 2
#: How long a commit may take before it is given up (the next batch's commit covers it).
_COMMIT_TIMEOUT_S = 10.0
#: How long a rebalance waits for this member to rejoin: it first records and commits its
#: batch in flight, which must fit in here or the group goes on without it.
_REBALANCE_TIMEOUT_S = 60.0
#: At shutdown, how long leaving the group and closing connections may take.
_STOP_TIMEOUT_S = 10.0
#: Retry delays while the broker cannot be reached at start.
_CONNECT_RETRY_S = (0.1, 2.0)


class KafkaConfig(BaseModel):
    """Keys of a ``[sources.NAME]`` table with ``kind = "kafka"``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: str = Field(min_length=1)
    """``host:port`` of one or more brokers, comma-separated."""
    topics: list[str] = Field(min_length=1)
    group: str = Field(min_length=1)
    """The consumer group: daemons sharing it share the partitions."""
    max_batch: int = Field(500, ge=1)
    """The most messages taken, recorded (in one transaction) and committed at once."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a group without a committed offset starts: at the oldest message or after
    the newest."""
    client_id: str = "cued"
    fetch_max_wait: Duration = Field(0.5, ge=0)
    """How long the broker may hold a fetch while it has no new messages. Kafka answers as
    soon as one arrives; brokers that do not (Tansu waits about half of it) add up to this
    to every event's latency."""
    session_timeout: Duration = Field(10.0, gt=0)
    """How long the broker waits for a member's heartbeat before giving its partitions to
    others (heartbeats go every third of it)."""
    connect_timeout: Duration = Field(10.0, ge=0)
    """At start, how long to keep trying to reach the brokers before the daemon fails."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: str | None = None
    """CA certificates to check the brokers' with (``SSL``, ``SASL_SSL``), relative to the
    config file; the system's by default."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = None
    """``env:NAME`` (from the environment), ``file:PATH``, or the value itself."""

    @model_validator(mode="after")
    def _security(self) -> KafkaConfig:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"security_protocol {self.security_protocol!r} needs sasl_username and "
                f"sasl_password"
            )
        if not sasl and (self.sasl_username or self.sasl_password):
            raise ValueError(
                f"sasl_username and sasl_password need security_protocol 'SASL_PLAINTEXT' "
                f"or 'SASL_SSL', not {self.security_protocol!r}"
            )
        if self.ssl_cafile and not self.security_protocol.endswith("SSL"):
            raise ValueError(
                f"ssl_cafile needs security_protocol 'SSL' or 'SASL_SSL', "
                f"not {self.security_protocol!r}"
            )
        return self


def client_options(config: KafkaConfig, base_dir: Path) -> dict[str, Any]:
    """The aiokafka client arguments for ``config``'s connection and security settings.

    :raises ConnectorError: if the password's variable is unset or its file unreadable
    """
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap,
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
    }
    if config.security_protocol.endswith("SSL"):
        from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

        cafile = str(base_dir / config.ssl_cafile) if config.ssl_cafile else None
        options["ssl_context"] = create_ssl_context(cafile=cafile)
    if config.sasl_username is not None and config.sasl_password is not None:
        options["sasl_mechanism"] = config.sasl_mechanism
        options["sasl_plain_username"] = config.sasl_username
        options["sasl_plain_password"] = source_secret(
            config.sasl_password, base_dir, "a Kafka password"
        )
    return options


def message_event(source: str, record: ConsumerRecord[Any, Any], received_at: float) -> Event:
    """The event for one consumed message (its value and key still bytes); never raises."""
    data, encoding, error = message_value(record.value)
    binary: list[str] = []
    key: str | None = None
    if record.key is not None:
        key, is_b64 = text_or_base64(record.key)
        if is_b64:
            binary.append("key")
    headers: dict[str, str] = {}
    for name, raw in record.headers or ():
        headers[name], is_b64 = text_or_base64(raw or b"")
        if is_b64:
            binary.append(f"headers.{name}")
    meta: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": key,
        "headers": headers,
        "timestamp_ms": record.timestamp,
        "encoding": encoding,
    }
    if binary:
        meta["base64"] = binary
    # the producer's trace, which the event's span and its runs' continue
    if (traceparent := _traceparent(record.headers)) is not None:
        meta["traceparent"] = traceparent
    return Event(
        source=source,
        event_id=f"{source}:{record.topic}:{record.partition}:{record.offset}",
        data=data,
        meta=meta,
        received_at=received_at,
        error=error,
    )


def _traceparent(headers: Any) -> str | None:
    for name, raw in headers or ():
        if name.lower() == "traceparent":
            return parse_traceparent(raw)
    return None


def _unreadable_event(
    source: str, tp: TopicPartition, offset: int, received_at: float, reason: BaseException
) -> Event:
    """The event for a message aiokafka could not read (see the module's documentation)."""
    return Event(
        source=source,
        event_id=f"{source}:{tp.topic}:{tp.partition}:{offset}",
        data=None,
        meta={
            "topic": tp.topic,
            "partition": tp.partition,
            "offset": offset,
            "key": None,
            "headers": {},
            "timestamp_ms": None,
            "encoding": "unreadable",
        },
        received_at=received_at,
        error=f"aiokafka could not read the message ({reason}): a header name in it, or "
        "in a message before it in its batch, is not UTF-8",
    )


@dataclass(eq=False)
class _InFlight:
    """A batch handed to intake: its offsets are due once it and every batch handed in
    before it are recorded."""

    offsets: dict[TopicPartition, int]
    recorded: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    """Set once it is recorded, or failed to be."""


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands partitions over only between batches, and keeps new ones paused while the
    source is."""

    def __init__(self, source: KafkaSource, consumer: AIOKafkaConsumer) -> None:
        self._source = source
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Holding the lock, no batch is handed in (and one fetched before this is dropped);
        # once the batches in flight are recorded, commit what is not yet: the member that
        # gets these partitions next starts after them.
        source = self._source
        async with source._batch_lock:
            source._rebalances += 1
            await source._settled()
            await source._commit(self._consumer)
        for tp in revoked:  # its next owner starts from the committed offset
            self._source._next.pop(tp, None)
        if revoked:
            self._source.ctx.log.info("kafka_partitions_revoked", partitions=_names(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._source._paused and assigned:
            self._consumer.pause(*assigned)
        self._source.ctx.log.info("kafka_partitions_assigned", partitions=_names(assigned))


def _names(partitions: set[TopicPartition]) -> list[str]:
    return sorted(_name(tp) for tp in partitions)


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


def _failed_partition(error: BaseException) -> TopicPartition | None:
    """The partition whose message aiokafka failed to read, from ``error``'s traceback:
    its fetcher holds the partition it reads in a local ``tp`` (the innermost one is the
    partition of the message)."""
    found = None
    tb = error.__traceback__
    while tb is not None:
        tp = tb.tb_frame.f_locals.get("tp")
        if isinstance(tp, TopicPartition):
            found = tp
        tb = tb.tb_next
    return found


class KafkaSource:
    """Consumes topics in a consumer group; see the module's documentation."""

    kind: ClassVar[str] = "kafka"
    Config: ClassVar[type[BaseModel]] = KafkaConfig

    def __init__(self, config: KafkaConfig, ctx: SourceContext) -> None:
        """:raises ConnectorError: if a SASL password cannot be read"""
        self.config = config
        self.ctx = ctx
        self._options = client_options(config, ctx.base_dir)
        self._batch_lock = anyio.Lock()
        """Held to hand a batch in, and by a rebalance while it hands partitions over."""
        self._rebalances = 0
        """Rebalances begun: a batch fetched before one is not handed in."""
        self._slots = anyio.Semaphore(_IN_FLIGHT)
        self._in_flight: deque[_InFlight] = deque()
        """Batches handed to intake, in the order taken, until their offsets are due."""
        self._paused = False
        self._uncommitted: dict[TopicPartition, int] = {}
        """Offsets to commit: of messages recorded, not yet acknowledged to the broker."""
        self._next: dict[TopicPartition, int] = {}
        """Where the last message recorded from each assigned partition leaves it."""
        self._commit_lock = anyio.Lock()
        self._commit_wanted = anyio.Event()

    @classmethod
    async def backfill(
        cls,
        config: KafkaConfig,
        source: str,
        start: datetime,
        end: datetime,
        *,
        at: datetime,
        limit: int,
        base_dir: Path,
    ) -> list[tuple[datetime, Event]]:
        """The messages of every partition of the topics whose timestamp is in
        ``[start, end)``, oldest first, as events with the ids the live source gives them
        (``cued backfill``). Read by a consumer of its own, in no group: the group's
        offsets are neither read nor moved.

        :raises ConnectorError: if the brokers cannot be read within ``connect_timeout``,
            or the span holds more than ``limit`` messages
        """
        consumer = AIOKafkaConsumer(
            **client_options(config, base_dir),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=round(config.fetch_max_wait * 1000),
        )
        try:
            with anyio.fail_after(max(config.connect_timeout, 0.001)):
                await consumer.start()
            found = await _read_span(consumer, config, start, end, limit)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise ConnectorError(
                f"kafka source {source!r}: cannot read {config.bootstrap!r} for a backfill: "
                f"{describe_error(exc)}"
            ) from exc
        finally:
            await _stop(consumer)
        found.sort(key=lambda r: (r.timestamp, r.topic, r.partition, r.offset))
        received = at.timestamp()
        return [
            (datetime.fromtimestamp(r.timestamp / 1000, UTC), message_event(source, r, received))
            for r in found
        ]

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume until cancelled. Ready once subscribed: joining the group (some seconds)
        goes on in the background.

        :raises ConnectorError: if no broker answers within ``connect_timeout``, or the
            brokers refuse the consumer for good (authorisation, say)
        """
        consumer = await self._start()
        try:
            consumer.subscribe(self.config.topics, listener=_Rebalance(self, consumer))
            self.ctx.log.info(
                "kafka_subscribed",
                bootstrap=self.config.bootstrap,
                topics=self.config.topics,
                group=self.config.group,
            )
            task_status.started()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._commit_loop, consumer)
                await self._consume(consumer, tg)
        finally:
            with anyio.CancelScope(shield=True):
                await self._commit(consumer)  # what was recorded is acknowledged
            await _stop(consumer)

    async def _start(self) -> AIOKafkaConsumer:
        """A started consumer, after retrying for up to ``connect_timeout``."""
        config = self.config
        deadline = anyio.current_time() + config.connect_timeout
        delay, max_delay = _CONNECT_RETRY_S
        while True:
            consumer = AIOKafkaConsumer(
                **self._options,
                group_id=config.group,
                enable_auto_commit=False,
                auto_offset_reset=config.auto_offset_reset,
                max_poll_records=config.max_batch,
                fetch_max_wait_ms=round(config.fetch_max_wait * 1000),
                session_timeout_ms=round(config.session_timeout * 1000),
                heartbeat_interval_ms=max(1, round(config.session_timeout * 1000 / 3)),
                rebalance_timeout_ms=round(_REBALANCE_TIMEOUT_S * 1000),
            )
            try:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0.001)):
                    await consumer.start()
                return consumer
            except (KafkaError, OSError, TimeoutError) as exc:
                await _stop(consumer)
                retriable = not isinstance(exc, KafkaError) or exc.retriable
                if not retriable or anyio.current_time() + delay >= deadline:
                    raise ConnectorError(
                        f"kafka source {self.ctx.source!r}: cannot connect to {config.bootstrap!r}"
                        f" within {config.connect_timeout:g}s (connect_timeout): "
                        f"{describe_error(exc)}"
                    ) from exc
                self.ctx.log.warning(
                    "kafka_unreachable",
                    bootstrap=config.bootstrap,
                    error=describe_error(exc),
                    retry_in_s=delay,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, max_delay)
            except BaseException:
                await _stop(consumer)
                raise

    async def _consume(self, consumer: AIOKafkaConsumer, tg: anyio.abc.TaskGroup) -> None:
        """Fetch batch after batch and hand each to intake, at most ``_IN_FLIGHT`` of them
        being recorded at once: a batch holds a slot from before its fetch until it is
        recorded."""
        while True:
            await self._slots.acquire()
            handed = False
            try:
                handed = await self._fetch(consumer, tg)
            finally:
                if not handed:
                    self._slots.release()

    async def _fetch(self, consumer: AIOKafkaConsumer, tg: anyio.abc.TaskGroup) -> bool:
        """Take a batch and hand it in; whether one was (its recording frees the slot)."""
        intake = self.ctx.intake
        log = self.ctx.log
        if intake.accepting():
            if self._paused:
                self._paused = False
                consumer.resume(*consumer.assignment())
                log.info("kafka_resumed")
            timeout_ms = _POLL_MS
        else:
            if not self._paused:
                self._paused = True
                log.info("kafka_paused", partitions=_names(consumer.assignment()))
            consumer.pause(*consumer.assignment())
            with anyio.move_on_after(_PAUSED_POLL_S):
                await intake.wait_accepting()
            # polling keeps the member in its group (max.poll.interval); paused
            # partitions return nothing (and drop what was prefetched for them)
            timeout_ms = 0
        try:
            batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=self.config.max_batch)
        except UnicodeDecodeError as exc:
            await self._read_past_unreadable(consumer, exc)
            return False
        except KafkaError as exc:
            if not exc.retriable:
                raise ConnectorError(
                    f"kafka source {self.ctx.source!r} ({self.config.bootstrap!r}): "
                    f"{describe_error(exc)}"
                ) from exc
            log.warning("kafka_poll_failed", error=describe_error(exc))
            await anyio.sleep(_CONNECT_RETRY_S[0])
            return False
        # taken under the assignment of now: a rebalance from here on drops it
        return bool(batch) and await self._hand_in(consumer, tg, batch, self._rebalances)

    async def _hand_in(
        self,
        consumer: AIOKafkaConsumer,
        tg: anyio.abc.TaskGroup,
        batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]],
        rebalances: int,
    ) -> bool:
        """Start recording a batch fetched when ``rebalances`` had begun; whether it was
        (not when a rebalance began since: it is read again from the committed offsets)."""
        received_at = now()
        source = self.ctx.source
        # parsed before taking the lock: this is what overlaps the batch being recorded
        parsed = [
            (tp, [message_event(source, r, received_at) for r in records], records[-1].offset)
            for tp, records in batch.items()
        ]
        async with self._batch_lock:
            if self._rebalances != rebalances:
                return False
            assigned = consumer.assignment()
            events: list[Event] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, taken, last in parsed:
                if tp in assigned:  # else taken away: its new owner reads it from the commit
                    events += taken
                    offsets[tp] = last + 1
            if not events:
                return False
            flight = _InFlight(offsets)
            self._in_flight.append(flight)
            tg.start_soon(self._record, flight, events)
        return True

    async def _record(self, flight: _InFlight, events: list[Event]) -> None:
        """Record a batch handed in; then the offsets of the batches recorded, up to the
        first one that is not (yet), are due."""
        try:
            # A batch taken is recorded even when the daemon stops meanwhile (intake returns
            # once the store has committed, which it does at shutdown too)
            with anyio.CancelScope(shield=True):
                await self.ctx.intake.record(events)
            flight.recorded = True
            while self._in_flight and self._in_flight[0].recorded:
                self._due(self._in_flight.popleft().offsets)
        finally:  # a batch that failed stays first: no later offset is ever due
            flight.done.set()
            self._slots.release()

    async def _settled(self) -> None:
        """Return once every batch handed in so far is recorded (or failed)."""
        for flight in list(self._in_flight):
            await flight.done.wait()

    def _due(self, offsets: dict[TopicPartition, int]) -> None:
        """``offsets`` were recorded: commit them (in the background)."""
        self._next.update(offsets)
        self._uncommitted.update(offsets)
        self._commit_wanted.set()

    async def _read_past_unreadable(
        self, consumer: AIOKafkaConsumer, error: UnicodeDecodeError
    ) -> None:
        """aiokafka failed a fetch on a message it cannot read: record the messages of
        that partition up to it, then it (and what of its batch cannot be read either) as
        ``invalid``, and read on after it.

        aiokafka's error does not say which partition; the traceback does (see
        :func:`_failed_partition`). The failed fetch may have taken messages of other
        partitions (and of this one) before it failed, moving their positions on, and
        they are lost with it: every partition goes back to where the last message
        recorded from it left it.

        :raises ConnectorError: if the partition cannot be told, or the partitions cannot
            be put back (the broker is gone): better stopped than messages skipped
        """
        tp = _failed_partition(error)
        if tp is None:
            raise ConnectorError(
                f"kafka source {self.ctx.source!r}: a message could not be read: {error}"
            ) from error
        await self._settled()  # the positions go back to what they recorded
        try:
            for assigned in consumer.assignment():
                with contextlib.suppress(IllegalStateError):  # taken away meanwhile: its
                    await self._rewind(consumer, assigned)  # next owner starts at the commit
        except KafkaError as exc:  # a position not put back could skip messages: stop
            raise ConnectorError(
                f"kafka source {self.ctx.source!r}: cannot go back to the last recorded "
                f"offsets after a message that could not be read: {describe_error(exc)}"
            ) from exc
        taken, next_offset = await self._read_one_by_one(consumer, tp)
        async with self._batch_lock:
            if taken and tp in consumer.assignment():
                with anyio.CancelScope(shield=True):  # as :meth:`_record`
                    await self.ctx.intake.record(taken)
                self._due({tp: next_offset})

    async def _read_one_by_one(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition
    ) -> tuple[list[Event], int]:
        """Read ``tp`` a message at a time up to and past the messages that cannot be read:
        a read that fails takes nothing, and the partition's position is then the offset
        of the message that cannot be read. Stops at the first message read after those
        (reading goes on as ever from there), or when nothing comes.

        :returns: the events, and the offset after the last of them
        """
        source = self.ctx.source
        taken: list[Event] = []
        next_offset, unreadable = 0, False
        try:
            while len(taken) < self.config.max_batch:
                try:
                    got = await consumer.getmany(tp, timeout_ms=_POLL_MS, max_records=1)
                except UnicodeDecodeError as exc:
                    offset = await consumer.position(tp)
                    self.ctx.log.warning(
                        "kafka_message_unreadable", partition=_name(tp), offset=offset
                    )
                    taken.append(_unreadable_event(source, tp, offset, now(), exc))
                    next_offset, unreadable = offset + 1, True
                    consumer.seek(tp, next_offset)
                    continue
                records = got.get(tp, [])
                if not records:
                    break
                taken += [message_event(source, r, now()) for r in records]
                next_offset = records[-1].offset + 1
                if unreadable:
                    break
        except KafkaError as exc:  # what was read is recorded; the rest comes again
            self.ctx.log.warning("kafka_poll_failed", error=describe_error(exc))
        return taken, next_offset

    async def _rewind(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Put ``tp`` back where the last message recorded from it left it."""
        offset = self._next.get(tp)
        if offset is None:  # nothing recorded since it was assigned: where that started
            offset = await consumer.committed(tp)
        if offset is not None:
            consumer.seek(tp, offset)
        elif self.config.auto_offset_reset == "earliest":
            await consumer.seek_to_beginning(tp)
        # else it started at the end: where that was is not known any more

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        """Commit recorded offsets in the background: the next batch is fetched and recorded
        meanwhile, rather than after a round trip to the broker (much longer than one while
        the event loop is busy with runs). Commits that pile up meanwhile go as one."""
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted = anyio.Event()
            await self._commit(consumer)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        """Commit the offsets of what has been recorded, unless the broker is gone: then it
        comes again, and intake recognises it."""
        async with self._commit_lock:
            offsets, self._uncommitted = self._uncommitted, {}
            if not offsets:
                return
            retry = False
            with anyio.move_on_after(_COMMIT_TIMEOUT_S, shield=True) as scope:
                try:
                    await consumer.commit(offsets)
                except (CommitFailedError, IllegalStateError) as exc:
                    self.ctx.log.warning(
                        "kafka_commit_failed",
                        error=describe_error(exc),
                        note="a rebalance took the partitions; their new owner reads the "
                        "batch again and intake recognises it",
                    )
                except KafkaError as exc:
                    self.ctx.log.error("kafka_commit_failed", error=describe_error(exc))
                    retry = True
            if scope.cancelled_caught:
                self.ctx.log.warning("kafka_commit_timed_out", timeout_s=_COMMIT_TIMEOUT_S)
                retry = True
            if retry:  # with the next commit, unless that has newer offsets
                for tp, offset in offsets.items():
                    self._uncommitted.setdefault(tp, offset)


async def _stop(consumer: AIOKafkaConsumer) -> None:
    """Leave the group and close the connections, also when cancelled (bounded)."""
    with anyio.move_on_after(_STOP_TIMEOUT_S, shield=True):
        await consumer.stop()


async def _read_span(
    consumer: AIOKafkaConsumer, config: KafkaConfig, start: datetime, end: datetime, limit: int
) -> list[ConsumerRecord[Any, Any]]:
    """The records of ``config``'s topics with a timestamp in ``[start, end)``: each
    partition read from the first offset at ``start`` to its end when the read began
    (timestamps set by producers need not grow with offsets, so each is checked)."""
    lo, hi = round(start.timestamp() * 1000), round(end.timestamp() * 1000)
    await consumer.topics()  # the cluster's metadata: which partitions there are
    partitions = [
        TopicPartition(topic, p)
        for topic in config.topics
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    if not partitions:
        return []
    consumer.assign(partitions)
    firsts = await consumer.offsets_for_times(dict.fromkeys(partitions, lo))
    ends = await consumer.end_offsets(partitions)
    left: dict[TopicPartition, int] = {}
    for tp in partitions:
        first = firsts.get(tp)
        if first is None or first.offset >= ends[tp]:
            continue  # nothing at or after start
        consumer.seek(tp, first.offset)
        left[tp] = ends[tp]
    found: list[ConsumerRecord[Any, Any]] = []
    while left:
        batches = await consumer.getmany(*left, timeout_ms=1000)
        for tp, records in batches.items():
            for record in records:
                if record.offset >= left.get(tp, -1):
                    continue
                if lo <= record.timestamp < hi:
                    if len(found) == limit:
                        raise ConnectorError(
                            f"more than {limit} messages in the span: backfill a shorter one"
                        )
                    found.append(record)
        for tp in list(left):
            if await consumer.position(tp) >= left[tp]:
                del left[tp]
    return found
