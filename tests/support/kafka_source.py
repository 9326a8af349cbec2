"""The ``kafka`` source's test kit, shared by the tests against the broker: config text,
messages to produce or to convert, and polling for what nothing signals."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
from aiokafka import ConsumerRecord  # type: ignore[import-untyped]

from tests.support.kafka_broker import started_producer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["WAIT_S", "daemon_toml", "eventually", "produce", "record", "source_toml", "to_bytes"]

#: How long a test waits for the broker and the store to show an effect.
WAIT_S = 20


def source_toml(name: str, bootstrap: str, topics: list[str], group: str, extra: str = "") -> str:
    return (
        f'[sources.{name}]\nkind = "kafka"\nbootstrap = "{bootstrap}"\n'
        f'topics = {json.dumps(topics)}\ngroup = "{group}"\nsession_timeout = "2s"\n{extra}\n'
    )


def daemon_toml(*parts: str, daemon: str = "") -> str:
    return (
        f'[daemon]\nlog_level = "warning"\n{daemon}\n[http]\nlisten = "127.0.0.1:0"\n'
        + "\n".join(parts)
    )


def to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


async def produce(
    bootstrap: str,
    topic: str,
    values: list[Any],
    *,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    partition: int | None = None,
) -> None:
    async with started_producer(bootstrap) as producer:
        for value in values:
            await producer.send_and_wait(
                topic, to_bytes(value), key=key, headers=headers, partition=partition
            )


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something true, and return that."""
    with anyio.fail_after(timeout_s):
        while not (result := await check()):  # noqa: ASYNC110 - broker and store: nothing to wait on
            await anyio.sleep(0.02)
        return result


def record(value: bytes | None, key: bytes | None = None, headers=()) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic="t",
        partition=2,
        offset=41,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=list(headers),
    )
