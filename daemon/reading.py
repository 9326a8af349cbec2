"""Opening the state to read it, and nothing else: what the CLI's reads (``cued runs``,
``cued show``, ...) go through.

Apart from the assembly on purpose: the assembly builds the daemon and imports every part
of it (the runtime, the web stack and its servers, httpx, the sources and task kinds with
Kafka among them: ~0.6 s), which a read of the state needs none of. This module imports the
store and the read model only (a test holds the reads so: tests/e2e/
test_cli_reads_load_little.py).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cued.daemon.config.state import is_database_url
from cued.daemon.errors import CuedError
from cued.daemon.ops.queries import Queries
from cued.daemon.store.opening import open_store_at

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from cued.daemon.config.state import StateSettings

__all__ = ["make_state_folder", "open_reads"]


def make_state_folder(state: Path) -> None:
    """Create the folder the state file is to be in (``state = "var/cued.db"`` on a
    fresh clone): private, as the file is.

    :raises CuedError: if it cannot be created, naming it and why
    """
    folder = state.parent
    if folder.is_dir():
        return
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CuedError(
            f"cannot create the folder {str(folder)!r} of the state file: {exc.strerror}"
        ) from None


@asynccontextmanager
async def open_reads(state: StateSettings) -> AsyncIterator[Queries]:
    """The reads of the state that need no configuration beyond where it is: opened as
    the assembly's ``open_state`` opens it, with none of the configuration's checks and
    models loaded.

    :raises StoreError: if it cannot be opened or has a newer schema
    """
    if not is_database_url(state.location):
        make_state_folder(Path(state.location))
    async with open_store_at(state.location, synchronous=state.synchronous) as store:
        yield Queries(store)
