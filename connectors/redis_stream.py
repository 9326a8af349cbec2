"""``redis_stream`` source: entries of a Redis stream become events, read in a consumer group.

The loop, per batch of up to ``max_batch`` entries::

    XREADGROUP  ->  one Event per entry  ->  await intake.record(events)  ->  XACK

Entries are acknowledged only after intake has committed their events (and the runs they
start) to the store. Until then they stay in the group's pending entries list (PEL): a
crash in between leaves them there, and they are read again, either by this consumer when
it starts (it reads its own pending entries first, ``XREADGROUP ... 0``) or by another
consumer of the group that claims them once they have been idle for ``claim_idle``
(``XAUTOCLAIM``, every ``claim_idle``). Every event's id is ``SOURCE:STREAM:ENTRY_ID``,
the same on every delivery, so intake recognises a redelivery as a duplicate and starts
nothing twice.

Backpressure: while the daemon's backlog is saturated no ``XREADGROUP`` is sent; entries
wait in the stream.

What an event holds (every byte goes through :mod:`cued.daemon.core.untrusted`):

* with ``field = "NAME"``: ``data`` is that field's value read as a Kafka message's value
  is (JSON; else text; else base64), and an entry without the field, or whose value opens
  ``{`` or ``[`` but is not JSON cued can keep, is an ``invalid`` event;
* without: ``data`` is an object of every field as text (base64 for bytes that are not
  UTF-8, named in ``meta.base64``).
* ``meta``: ``stream``, ``id`` (the entry id), ``encoding``, ``fields`` (with ``field``:
  the other fields, as text) and ``traceparent`` from a valid ``traceparent`` field.

Entries deleted from the stream while pending (``XDEL``, trimming) come back with no
fields: they are acknowledged and recorded as nothing (there is nothing left to record).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
import anyio.abc
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
from ._payload import log_redelivered, text_map
from ._secrets import source_secret, url_or_secret

if TYPE_CHECKING:
    from cued.daemon.sdk import SourceContext

__all__ = ["RedisStreamConfig", "RedisStreamSource", "entry_event"]

#: Retry delays while Redis cannot be reached.
_RETRY_S = (0.1, 2.0)


class RedisStreamConfig(BaseModel):
    """Keys of a ``[sources.NAME]`` table with ``kind = "redis_stream"``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(min_length=1)
    """``redis://[user:password@]host:port/db`` (``rediss://`` for TLS); a password in it
    may be ``env:NAME`` or ``file:PATH`` as the whole URL: ``url = "env:REDIS_URL"``."""
    stream: str = Field(min_length=1)
    group: str = Field(min_length=1)
    """The consumer group: daemons sharing it share the entries."""
    consumer: str = Field("cued", min_length=1)
    """This daemon's name in the group: keep it across restarts (its pending entries are
    read again when it starts); give each daemon sharing the group its own."""
    start: Literal["earliest", "latest"] = "earliest"
    """Where a group created by cued starts: at the stream's first entry or after its last."""
    field: str | None = None
    """The field that holds the payload; without it ``data`` is every field."""
    max_batch: int = Field(500, ge=1)
    """The most entries read, recorded (in one transaction) and acknowledged at once."""
    block: Duration = Field(1.0, gt=0)
    """How long one XREADGROUP waits for new entries."""
    claim_idle: Duration = Field(60.0, gt=0)
    """Pending entries of any consumer idle this long are claimed (their consumer
    crashed); also how often the group's pending entries are looked at."""
    connect_timeout: Duration = Field(10.0, ge=0)
    """At start, how long to keep trying to reach Redis before the daemon fails."""

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return url_or_secret(value, ("redis://", "rediss://", "unix://"))


def entry_event(
    source: str,
    stream: str,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    field: str | None,
    received_at: float,
) -> Event:
    """The event for one stream entry (its fields still bytes); never raises."""
    rid = entry_id.decode("ascii", "replace")
    texts, binary = text_map(fields.items(), "fields")
    meta: dict[str, Any] = {"stream": stream, "id": rid}
    error: str | None = None
    if field is None:
        data: Any = texts
        meta["encoding"] = "fields"
    else:
        raw = fields.get(field.encode())
        if raw is None:
            data, meta["encoding"] = None, "none"
            error = f"the entry has no field {field!r} (fields: {sorted(texts)[:20]})"
        else:
            data, meta["encoding"], error = message_value(raw)
        meta["fields"] = {k: v for k, v in texts.items() if k != field}
        binary = [b for b in binary if b != f"fields.{field}"]
    if binary:
        meta["base64"] = binary
    raw_trace = fields.get(b"traceparent")
    if raw_trace is not None and (traceparent := parse_traceparent(raw_trace)) is not None:
        meta["traceparent"] = traceparent
    return Event(
        source=source,
        event_id=f"{source}:{stream}:{rid}",
        data=data,
        meta=meta,
        received_at=received_at,
        error=error,
    )


class RedisStreamSource:
    """Reads a Redis stream in a consumer group; see the module's documentation."""

    kind: ClassVar[str] = "redis_stream"
    Config: ClassVar[type[BaseModel]] = RedisStreamConfig

    def __init__(self, config: RedisStreamConfig, ctx: SourceContext) -> None:
        """:raises ConnectorError: if the URL's variable is unset or its file unreadable"""
        self.config = config
        self.ctx = ctx
        url = source_secret(config.url, ctx.base_dir, "a Redis URL", literal_is_secret=False)
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=config.block + 10, socket_connect_timeout=10
        )
        self._stream = config.stream.encode()
        self._group = config.group.encode()
        self._consumer = config.consumer.encode()
        self._backpressure = Backpressure(ctx, "redis_stream")

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read until cancelled; ready once the group exists.

        :raises ConnectorError: if Redis cannot be reached within ``connect_timeout``, or
            refuses the group (the key holds something other than a stream, say)
        """
        try:
            await self._create_group()
            self.ctx.log.info(
                "redis_stream_subscribed", stream=self.config.stream, group=self.config.group
            )
            task_status.started()
            await self._consume()
        finally:
            with anyio.move_on_after(5, shield=True):
                await self._redis.aclose()

    async def _create_group(self) -> None:
        config = self.config
        deadline = anyio.current_time() + config.connect_timeout
        delay, max_delay = _RETRY_S
        while True:
            try:
                await self._redis.xgroup_create(
                    self._stream,
                    self._group,
                    id="0" if config.start == "earliest" else "$",
                    mkstream=True,
                )
                return
            except ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    return  # it exists: go on from where the group is
                raise ConnectorError(
                    f"redis_stream source {self.ctx.source!r}: Redis refuses the group "
                    f"{config.group!r} on {config.stream!r}: {exc}"
                ) from exc
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if anyio.current_time() + delay >= deadline:
                    raise ConnectorError(
                        f"redis_stream source {self.ctx.source!r}: cannot reach Redis within "
                        f"{config.connect_timeout:g}s (connect_timeout): {exc}"
                    ) from exc
                self.ctx.log.warning("redis_unreachable", error=str(exc), retry_in_s=delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, max_delay)

    async def _consume(self) -> None:
        log = self.ctx.log
        own_pending = True  # first what this consumer took before a crash
        next_claim = anyio.current_time() + self.config.claim_idle
        delay = _RETRY_S[0]
        while True:
            if not await self._backpressure.ready():
                continue
            try:
                if own_pending:
                    entries = await self._read("0")
                    own_pending = bool(entries)
                elif anyio.current_time() >= next_claim:
                    entries = await self._claim()
                    if len(entries) < self.config.max_batch:
                        next_claim = anyio.current_time() + self.config.claim_idle
                else:
                    entries = await self._read(">")
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("redis_stream_read_failed", error=str(exc), retry_in_s=delay)
                own_pending = True  # what a read that failed half-way took: read it again
                await anyio.sleep(delay)
                delay = min(delay * 2, _RETRY_S[1])
                continue
            except RedisError as exc:
                raise ConnectorError(
                    f"redis_stream source {self.ctx.source!r} ({self.config.stream!r}): {exc}"
                ) from exc
            delay = _RETRY_S[0]
            if entries:
                await self._record(entries)

    async def _read(self, start: str) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        """Entries new to the group (``>``), or this consumer's pending ones (``0``)."""
        answer: Any = await self._redis.xreadgroup(
            self.config.group,
            self.config.consumer,
            {self._stream: start},
            count=self.config.max_batch,
            block=round(self.config.block * 1000) if start == ">" else None,
        )
        if not answer:
            return []
        return list(answer[0][1])

    async def _claim(self) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        """Pending entries of consumers that have held them for ``claim_idle``."""
        answer: Any = await self._redis.xautoclaim(
            self._stream,
            self._group,
            self._consumer,
            min_idle_time=round(self.config.claim_idle * 1000),
            start_id="0-0",
            count=self.config.max_batch,
        )
        claimed = list(answer[1])
        deleted = list(answer[2]) if len(answer) > 2 else []
        if deleted:  # gone from the stream: nothing to record, nothing to hold on to
            await self._redis.xack(self._stream, self._group, *deleted)
        if claimed:
            self.ctx.log.info("redis_stream_claimed", entries=len(claimed))
        return claimed

    async def _record(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> None:
        received_at = now()
        source, stream, field = self.ctx.source, self.config.stream, self.config.field
        events = [
            entry_event(source, stream, entry_id, fields, field, received_at)
            for entry_id, fields in entries
            if fields  # deleted while pending: acknowledged below, nothing to record
        ]
        # A batch taken is recorded even when the daemon stops meanwhile, and then
        # acknowledged: what is not acknowledged is read again, and recognised
        with anyio.CancelScope(shield=True):
            if events:
                receipts = await self.ctx.intake.record(events)
                log_redelivered(self.ctx, "redis_stream", receipts)
            try:
                with anyio.fail_after(10):
                    await self._redis.xack(
                        self._stream, self._group, *[entry_id for entry_id, _ in entries]
                    )
            except (RedisError, OSError, TimeoutError) as exc:
                self.ctx.log.warning(
                    "redis_stream_ack_failed",
                    error=describe_error(exc),
                    note="the entries stay pending; read again, intake recognises them",
                )
