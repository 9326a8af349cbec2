"""The machine's own NATS (JetStream), PostgreSQL and MariaDB, for the tests of the
``nats`` and ``postgres`` sources and the ``nats`` and ``sql`` task kinds.

Each test gets a stream, a database of its own (a fresh name), removed after. A server
that is not there fails the test, loudly: these tests are never skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from typing import TYPE_CHECKING

import aiomysql  # type: ignore[import-untyped]
import asyncpg  # type: ignore[import-untyped]
import nats
import nats.js.errors

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client

__all__ = [
    "MARIADB",
    "NATS_URL",
    "POSTGRES",
    "create_mariadb_database",
    "create_postgres_database",
    "drop_database",
    "mariadb_database",
    "nats_stream",
    "postgres_database",
    "unique",
]

NATS_URL = "nats://127.0.0.1:4222"
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
MARIADB = "mysql://root@127.0.0.1:3306"


def unique(prefix: str) -> str:
    """A name no other test (nor an earlier run) uses: letters, digits and ``_``."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def nats_stream(subjects: list[str]) -> AsyncIterator[tuple[Client, str]]:
    """A connection and a new JetStream stream capturing ``subjects``; deleted after.

    The stream is named after the test's process: one that a killed run left behind (its
    process gone) is deleted first, since its subjects would overlap this one's. The
    subjects of the tests of one run must not overlap each other's (they run at once)."""
    client = await nats.connect(NATS_URL, connect_timeout=5, max_reconnect_attempts=0)
    js = client.jetstream()
    for info in await js.streams_info():
        name = info.config.name or ""
        left = re.fullmatch(r"CUED_P(\d+)_[0-9A-F]+", name)
        if left is not None and not _alive(int(left[1])):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    stream = f"CUED_P{os.getpid()}_{uuid.uuid4().hex[:12].upper()}"
    await js.add_stream(name=stream, subjects=subjects)
    try:
        yield client, stream
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(stream)
        await client.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


async def create_postgres_database() -> str:
    """A new, empty PostgreSQL database; its DSN (drop it with :func:`drop_database`)."""
    name = unique("cued_test")
    admin = await asyncpg.connect(f"{POSTGRES}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{POSTGRES}/{name}"


async def create_mariadb_database() -> str:
    """A new, empty MariaDB database; its DSN (drop it with :func:`drop_database`)."""
    name = unique("cued_test")
    conn = await aiomysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    return f"{MARIADB}/{name}"


async def drop_database(dsn: str) -> None:
    """Drop a database :func:`create_postgres_database` or :func:`create_mariadb_database`
    made, with the connections still open to it."""
    server, _, name = dsn.rpartition("/")
    if server == POSTGRES:
        admin = await asyncpg.connect(f"{POSTGRES}/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        return
    conn = await aiomysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for the block; its DSN. Dropped after."""
    dsn = await create_postgres_database()
    try:
        yield dsn
    finally:
        await drop_database(dsn)


@contextlib.asynccontextmanager
async def mariadb_database() -> AsyncIterator[str]:
    """A new, empty MariaDB database for the block; its DSN. Dropped after."""
    dsn = await create_mariadb_database()
    try:
        yield dsn
    finally:
        await drop_database(dsn)
