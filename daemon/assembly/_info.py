"""What a started daemon tells whoever started it: :class:`DaemonInfo`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cued.daemon.runtime.intake import DaemonIntake
    from cued.daemon.runtime.metrics import Metrics
    from cued.daemon.runtime.reconnect import DatabaseLink
    from cued.daemon.runtime.reload import Reloader
    from cued.daemon.runtime.runner import Runner
    from cued.daemon.runtime.sources import SourceSet
    from cued.daemon.runtime.supervision import Supervision
    from cued.daemon.web.live import Live


@dataclass(frozen=True)
class DaemonInfo:
    """What a started daemon tells whoever started it (tests, embedding programs)."""

    runner: Runner
    intake: DaemonIntake
    http_address: tuple[str, int] | None
    live: Live | None = None
    metrics: Metrics | None = None
    reloader: Reloader | None = None
    sources: SourceSet | None = None
    supervision: Supervision | None = None
    link: DatabaseLink[DaemonInfo] | None = None
    """The daemon's hold on its database: after a reconnection, ``link.current`` is the
    daemon's parts anew (these are those it first started with)."""
