"""The ``redis_stream`` task kind: add one entry to a Redis stream (``XADD``), once.

The entry is added by a Lua script that, in one atomic step, looks up the task's
idempotency key (``STREAM:cued-idempotency:KEY``), adds the entry only if the key is not
there, and keeps the key with the new entry's id for ``dedupe_window``: a retry after a
reply that got lost finds the key and returns the entry added the first time, so the
stream holds the message once. The key also goes in the entry, as the field
``cued-idempotency-key``.

One connection pool per URL serves every task of the daemon; :meth:`aclose` closes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError, ResponseError

from cued.daemon.sdk import Duration, PermanentTaskError, TaskError

from ._brokers import IDEMPOTENCY_KEY, encode_value, resolve_url

if TYPE_CHECKING:
    from cued.daemon.sdk import TaskContext

__all__ = ["IDEMPOTENCY_FIELD", "RedisStreamAddParams", "RedisStreamAddTask"]

IDEMPOTENCY_FIELD = IDEMPOTENCY_KEY

#: KEYS[1] the stream, KEYS[2] the idempotency key; ARGV[1] its lifetime in seconds,
#: ARGV[2] MAXLEN (0: none), then field, value, ... Returns {added (0 or 1), entry id}.
_ADD_ONCE = """
local id = redis.call('GET', KEYS[2])
if id then return {0, id} end
local args = {KEYS[1]}
local maxlen = tonumber(ARGV[2])
if maxlen > 0 then
  table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, maxlen)
end
table.insert(args, '*')
for i = 3, #ARGV do table.insert(args, ARGV[i]) end
id = redis.call('XADD', unpack(args))
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return {1, id}
"""


class RedisStreamAddParams(BaseModel):
    """Parameters of a ``redis_stream`` task.

    :param url: ``redis://host:port/db``, or ``env:NAME`` / ``file:PATH`` holding it
    :param stream: the stream's key
    :param value: the payload: a string as UTF-8, anything else as JSON
    :param field: the field the payload goes in
    :param fields: more fields (text)
    :param maxlen: trim the stream to about this many entries (``MAXLEN ~``)
    :param dedupe_window: how long the idempotency key is kept
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(min_length=1)
    stream: str = Field(min_length=1)
    value: Any
    field: str = Field("data", min_length=1)
    fields: dict[str, str] = Field(default_factory=dict)
    maxlen: int | None = Field(None, ge=1)
    dedupe_window: Duration = Field(86400.0, ge=1)


class RedisStreamAddTask:
    """Add the entry once; succeed with ``{"stream", "id", "added"}`` (``added`` false when
    an earlier attempt had added it)."""

    name: ClassVar[str] = "redis_stream"
    Params: ClassVar[type[BaseModel]] = RedisStreamAddParams

    def __init__(self) -> None:
        self._clients: dict[str, aioredis.Redis] = {}

    async def execute(self, params: RedisStreamAddParams, ctx: TaskContext) -> Any:
        """:raises TaskError: if Redis cannot be reached or refuses the entry"""
        value = encode_value(params.value)
        client = self._client(params.url)
        pairs: dict[str, str | bytes] = {**params.fields, params.field: value}
        pairs[IDEMPOTENCY_FIELD] = ctx.idempotency_key
        fields = [part for pair in pairs.items() for part in pair]
        try:
            added, entry_id = await client.eval(
                _ADD_ONCE,
                2,
                params.stream,
                f"{params.stream}:cued-idempotency:{ctx.idempotency_key}",
                round(params.dedupe_window),
                params.maxlen or 0,
                *fields,
            )
        except ResponseError as exc:
            raise PermanentTaskError(
                f"Redis refuses the entry for stream {params.stream!r}: {exc}"
            ) from exc
        except (RedisError, OSError) as exc:
            raise TaskError(f"adding to stream {params.stream!r} failed: {exc}") from exc
        return {
            "stream": params.stream,
            "id": entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id),
            "added": bool(added),
        }

    def _client(self, url: str) -> aioredis.Redis:
        if (client := self._clients.get(url)) is None:
            resolved = resolve_url(url, "a Redis URL")
            client = aioredis.Redis.from_url(resolved, socket_timeout=30, socket_connect_timeout=10)
            self._clients[url] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with anyio.move_on_after(5, shield=True):
                await client.aclose()
