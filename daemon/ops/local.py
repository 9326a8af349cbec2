"""The state file as a face with no daemon of its own uses it under its configuration: the
CLI tries triggers on stored events and follows a run there (WAL lets it read while a
daemon writes), and prunes here when no daemon runs. The assembly opens it
(``cued.daemon.assembly.open_state``): only the assembly knows which store it opened. (The
reads that need no configuration, ``cued runs`` and ``cued show``, are a bare
:class:`~cued.daemon.ops.queries.Queries`: ``cued.daemon.assembly.open_reads``.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cued.daemon.ops.queries import Queries

if TYPE_CHECKING:
    from cued.daemon.config import Config
    from cued.daemon.store import Store

__all__ = ["Local"]


@dataclass(frozen=True)
class Local:
    """A store opened under ``config``, and its reads (a :class:`~.host.Recorded`, so
    :func:`cued.daemon.ops.commands.prune` takes it)."""

    store: Store
    config: Config
    queries: Queries = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "queries", Queries(self.store, self.config))
