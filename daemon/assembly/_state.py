"""The state the daemon keeps: one daemon per state (its lock), and its store opened;
for the faces with no daemon of their own, the state opened to read (:func:`open_state`)
and copied between stores (``cued store copy``: :func:`copy_state_between`)."""

from __future__ import annotations

import fcntl
import os
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from cued.daemon.config.state import is_database_url
from cued.daemon.errors import CuedError
from cued.daemon.ops.local import Local
from cued.daemon.reading import make_state_folder
from cued.daemon.store.copying import copy_state
from cued.daemon.store.filemodes import private_file
from cued.daemon.store.opening import open_store_at

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from contextlib import AbstractAsyncContextManager

    from cued.daemon.config import Config
    from cued.daemon.store import Store


@contextmanager
def _exclusive(state: Path, shown: str) -> Iterator[None]:
    """One daemon per state file (with the state in a database, per config folder, for
    its control socket; the database has a lock of its own): a second one would run every
    run twice."""
    lock_path = state.resolve().with_name(state.name + ".lock")
    private_file(lock_path)  # made 0644 by older versions
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CuedError(f"another cued daemon is running on {shown!r}") from None
        yield
    finally:
        os.close(fd)


@asynccontextmanager
async def open_state(config: Config) -> AsyncIterator[Local]:
    """The config's state for a face with no daemon of its own: the CLI reads it (beside
    a running daemon: WAL lets it, as PostgreSQL does), and prunes through it when no
    daemon runs.

    :raises StoreError: if the file cannot be opened or has a newer schema
    """
    make_state_folder(config.state_path)
    async with _open_store(config) as store:
        yield Local(store, config)


async def copy_state_between(
    source: str, target: str, *, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """``cued store copy``: every row of the store at ``source`` into the empty one at
    ``target`` (each a SQLite file's path, a ``postgresql://`` URL, or ``env:NAME``
    holding either); the rows of each table.

    :raises CuedError: if a variable is unset, the source file is not there, a store
        cannot be opened, the target is not empty or the counts differ afterwards
    """
    source, target = _named_store(source), _named_store(target)
    if not is_database_url(source) and not os.path.isfile(source):  # noqa: ASYNC240 - one stat
        raise CuedError(f"no state file at {source!r} to copy from")
    # both ends under their daemon's lock: a daemon running on either is refused
    with _store_lock(source), _store_lock(target):
        async with (
            open_store_at(source, exclusive=True) as src,
            open_store_at(target, exclusive=True) as dst,
        ):
            return await copy_state(src, dst, progress=progress)


def _store_lock(location: str) -> AbstractContextManager[None]:
    """A SQLite file's daemon lock (a database's is taken when it is opened)."""
    if is_database_url(location):
        return nullcontext()
    return _exclusive(Path(location), location)


def _named_store(name: str) -> str:
    if not name.startswith("env:"):
        return name
    value = os.environ.get(name[4:])
    if value is None:
        raise CuedError(f"environment variable {name[4:]!r} (for a store) is not set")
    return value


def _open_store(config: Config, *, shared: bool = False) -> AbstractAsyncContextManager[Store]:
    """The config's store: its SQLite file, or its PostgreSQL database (taking the
    database's daemon lock, shared with the other daemons on it, if ``shared``).

    :raises CuedError: if a database URL from the environment or a file is not there
    """
    return open_store_at(
        config.state_location(), synchronous=config.daemon.synchronous, shared=shared
    )
