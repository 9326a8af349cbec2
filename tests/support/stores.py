"""Both stores for the store's contract tests: a SQLite file under tmp_path, or a database
of its own on the real PostgreSQL at 127.0.0.1:5432 (created for the test, dropped after;
a server that is not there fails the test, it is never skipped).

A test that does not test migrations takes its database migrated already: a copy of a
template migrated once per run of the suite (``CREATE DATABASE ... TEMPLATE``, ~20 times
faster than migrating each database), named after the migrations it holds and dropped by
:func:`drop_template` when the run ends."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from cued.daemon.store.opening import open_store_at
from cued.daemon.store.pg_migrations import PG_MIGRATIONS, migrate

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from cued.daemon.config import Config

#: The server the tests use (trust auth): its ``postgres`` database is only for
#: creating and dropping the tests' own.
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
KINDS = ("sqlite", "postgresql")


#: The migrated template of this run of the suite (its workers share it: the run's id is
#: set in the environment by the process that starts them, tests/conftest.py), of this
#: cued's schema. Another run beside it, on the same server, has its own.
TEMPLATE = "cued_template_{}_{}".format(
    hashlib.sha256("\0".join(PG_MIGRATIONS).encode()).hexdigest()[:12],
    os.environ.setdefault("CUED_TEST_RUN", secrets.token_hex(4)),
)
#: Taken while a template is looked for and made: the suite's workers make it once.
_TEMPLATE_LOCK = 0x637565645F746D70  # "cued_tmp"


@asynccontextmanager
async def fresh_database(
    prefix: str = "cued_test", *, migrated: bool = False
) -> AsyncIterator[str]:
    """The URL of a new database, empty or (``migrated``) at the current schema, dropped
    (with whoever is still connected to it) when the block ends."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=10)
    try:
        if migrated:
            await _make_template(admin)
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
        else:
            await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{PG_SERVER}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _make_template(admin: asyncpg.Connection) -> None:
    """Make :data:`TEMPLATE` unless it is there: migrated under another name, then renamed,
    so that a template by that name is always whole."""
    if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", TEMPLATE):
        return
    await admin.execute("SELECT pg_advisory_lock($1)", _TEMPLATE_LOCK)
    try:
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", TEMPLATE):
            return  # another worker made it meanwhile
        building = f"{TEMPLATE}_{secrets.token_hex(4)}"
        await admin.execute(f'CREATE DATABASE "{building}"')
        db = await asyncpg.connect(f"{PG_SERVER}/{building}", timeout=10)
        try:
            await migrate(db, building)
        finally:
            await db.close()
        # no session, autovacuum's included, may be in it when a copy is made of it
        await admin.execute(
            f'ALTER DATABASE "{building}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false'
        )
        await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{TEMPLATE}"')
    finally:
        await admin.execute("SELECT pg_advisory_unlock($1)", _TEMPLATE_LOCK)


async def drop_template() -> None:
    """Drop this run's template (and what a worker left half made of it)."""
    admin = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=10)
    try:
        names = await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname = $1 OR datname LIKE $2",
            TEMPLATE,
            TEMPLATE.replace("_", "\\_") + "\\_%",
        )
        for (name,) in names:
            await admin.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false')
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
    async with fresh_database(migrated=True) as url:
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
