"""How the running daemon is: what ``cued status``, ``/api/v1/status`` and systemd's
``STATUS=`` line show. One read, three faces.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cued.daemon.ops.host import Daemon
    from cued.daemon.runtime.supervision import SourceStatus

__all__ = ["DaemonStatus", "Reload", "Supervised", "cued_version", "daemon_status"]


class Supervised(Protocol):
    """What ops reads of the daemon's own life (the runtime's ``Supervision``)."""

    started_at: float
    config_version: int | None
    last_reload: Reload | None

    def uptime_s(self) -> float: ...
    def sources(self) -> list[SourceStatus]: ...


@dataclass(frozen=True, slots=True)
class Reload:
    """The last reload: when, and whether the new configuration was taken."""

    at: float
    outcome: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    version: str
    started_at: float
    uptime_s: float
    sources: list[SourceStatus]
    backlog: int
    saturated: bool
    active_runs: int
    config_version: int | None = None
    last_reload: Reload | None = None

    @property
    def held_back(self) -> list[str]:
        """Sources paused by backpressure now."""
        return [s.name for s in self.sources if s.state == "held back"]


def cued_version() -> str:
    try:
        return version("cued")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def daemon_status(daemon: Daemon, supervised: Supervised) -> DaemonStatus:
    """The daemon's status now (no I/O: what the daemon holds in memory)."""
    return DaemonStatus(
        version=cued_version(),
        started_at=supervised.started_at,
        uptime_s=supervised.uptime_s(),
        sources=supervised.sources(),
        backlog=daemon.backlog.depth,
        saturated=daemon.backlog.saturated,
        active_runs=daemon.slots.active_runs,
        config_version=supervised.config_version,
        last_reload=supervised.last_reload,
    )
