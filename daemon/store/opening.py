"""Which store a location names: a ``postgresql://`` (or ``postgres://``) URL is a
PostgreSQL database, anything else a SQLite file. The assembly opens its store here, and
``cued store copy`` both of its ends."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cued.daemon.config.state import is_database_url
from cued.daemon.store.sqlite import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from cued.daemon.store.sqlite import SqliteStore

__all__ = ["open_store_at"]


@asynccontextmanager
async def open_store_at(
    location: str | Path,
    *,
    synchronous: Literal["full", "normal"] = "full",
    exclusive: bool = False,
    shared: bool = False,
) -> AsyncIterator[SqliteStore]:
    """Open the store at ``location`` (a SQLite file's path or a database's URL).

    :param synchronous: SQLite's (see :func:`cued.daemon.store.sqlite.open_store`);
        PostgreSQL's commits are durable as the server is configured
    :param exclusive: PostgreSQL only: hold the daemons' lock on the database alone (a
        SQLite file's daemon lock is a file beside it, taken by the assembly)
    :param shared: PostgreSQL only: hold it shared, as each of several daemons does
    :raises StoreError: if it cannot be opened
    """
    if isinstance(location, str) and is_database_url(location):
        # here, not at the top: asyncpg is for those who keep their state in PostgreSQL
        from cued.daemon.store.postgresql import open_pg_store

        async with open_pg_store(location, exclusive=exclusive, shared=shared) as pg:
            yield pg
    else:
        async with open_store(Path(location), synchronous=synchronous) as sqlite:
            yield sqlite
