"""Both stores for the store's contract tests: a SQLite file under tmp_path, or a database
of its own on the real PostgreSQL at 127.0.0.1:5432 (created for the test, dropped after;
a server that is not there fails the test, it is never skipped)."""

from __future__ import annotations

import re
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from cued.daemon.store.opening import open_store_at

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from cued.daemon.config import Config

#: The server the tests use (trust auth): its ``postgres`` database is only for
#: creating and dropping the tests' own.
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
KINDS = ("sqlite", "postgresql")


@asynccontextmanager
async def fresh_database(prefix: str = "cued_test") -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped (with whoever is still connected to it)
    when the block ends."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{PG_SERVER}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@dataclass(frozen=True)
class StoreAt:
    """One place a store lives, to open (and open again) in a test."""

    kind: str
    location: str

    def open(self, **options: Any):  # -> AbstractAsyncContextManager[SqliteStore]
        return open_store_at(self.location, **options)

    async def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the state directly (SQLite's SQL, ``?`` placeholders), as a second
        program would."""
        import aiosqlite

        from cued.daemon.store.postgresql import pg_sql

        if self.kind == "sqlite":
            async with aiosqlite.connect(self.location) as db:
                return [tuple(r) for r in await db.execute_fetchall(sql, args)]
        db = await asyncpg.connect(self.location, timeout=10)
        try:
            return [tuple(r) for r in await db.fetch(pg_sql(sql), *args)]
        finally:
            await db.close()


@asynccontextmanager
async def store_at(kind: str, tmp_path: Path) -> AsyncIterator[StoreAt]:
    if kind == "sqlite":
        yield StoreAt(kind, str(tmp_path / "state.db"))
        return
    async with fresh_database() as url:
        yield StoreAt(kind, url)


def with_state(text: str, at: StoreAt) -> str:
    """Config ``text`` keeping its state in ``at``: its ``state = "..."`` line names it
    instead, or one is added to its ``[daemon]`` table (made at the top if it has none)."""
    line = f'state = "{at.location}"'
    if re.search(r'(?m)^state = ".*"$', text):
        return re.sub(r'(?m)^state = ".*"$', line, text)
    if re.search(r"(?m)^\[daemon\]$", text):
        return re.sub(r"(?m)^\[daemon\]$", f"[daemon]\n{line}", text, count=1)
    assert not re.match(r"\s*[A-Za-z_\"]", text), "bare keys at the top would join [daemon]"
    return f"[daemon]\n{line}\n{text}"


def keeping_state_in(make: Callable[[str], Config], at: StoreAt) -> Callable[[str], Config]:
    """``make_config`` whose configs keep their state in ``at`` (see :func:`with_state`)."""
    return lambda text: make(with_state(text, at))
