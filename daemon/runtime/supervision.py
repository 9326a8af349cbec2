"""What the daemon knows of its own life: when it started and what each source is doing,
for ``cued status``, ``/api/v1/status``, systemd's ``STATUS=`` line and the watchdog.

It also keeps the configuration version running and the last reload's outcome.

A source is ``starting`` until its ``run`` says it has started, then ``taking events``
(``held back`` while the backlog is saturated and sources pause), ``stopped`` once the
daemon stops it, ``failed`` if its ``run`` ended on its own: the watchdog counts a
source that ended, while the daemon does not stop, as no progress.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from cued.daemon.ops.status import Reload

__all__ = ["SourceState", "SourceStatus", "Supervision"]

SourceState = Literal["starting", "taking events", "held back", "stopped", "failed"]


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """One source as ``cued status`` shows it."""

    name: str
    kind: str
    state: SourceState


class Supervision:
    """The daemon's start time and its sources' states.

    :param saturated: whether the backlog is saturated now (sources are held back)
    """

    def __init__(self, saturated: Callable[[], bool]) -> None:
        self.started_at = time.time()
        self._started_monotonic = anyio.current_time()
        self._saturated = saturated
        self._kinds: dict[str, str] = {}
        self._states: dict[str, SourceState] = {}
        self._stopping = False
        self.config_version: int | None = None
        """The configuration version running now (set at start and at each reload)."""
        self.last_reload: Reload | None = None

    def uptime_s(self) -> float:
        return anyio.current_time() - self._started_monotonic

    def add(self, name: str, kind: str) -> None:
        """Name a source the daemon will start (``starting`` until it has)."""
        self._kinds[name] = kind
        self._states[name] = "starting"

    def forget(self, name: str) -> None:
        """A source the daemon is stopping for good or replacing (a reload): it is no
        longer shown, and its ending is not a failure."""
        self._kinds.pop(name, None)
        self._states.pop(name, None)

    def reloaded(self, reload: Reload, version: int | None) -> None:
        """A reload ended (applied or refused), with ``version`` running after it."""
        self.last_reload = reload
        self.config_version = version

    def stopping(self) -> None:
        """The daemon stops its sources: one that ends now ends as asked."""
        self._stopping = True

    async def run_source(
        self,
        name: str,
        run: Callable[..., Awaitable[None]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run a source's ``run`` (in the caller's task group, with ``tg.start``), noting
        its state as it goes."""

        class _Started:
            def started(self, value: None = None) -> None:
                states[name] = "taking events"
                task_status.started()

        states = self._states
        try:
            await run(task_status=_Started())
        finally:
            if name in states:  # else forgotten: stopped by a reload
                states[name] = "stopped" if self._stopping else "failed"

    def sources(self) -> list[SourceStatus]:
        """Every source and its state now, by name."""
        held = self._saturated()
        return [
            SourceStatus(
                name,
                self._kinds[name],
                "held back" if held and state == "taking events" else state,
            )
            for name, state in sorted(self._states.items())
        ]

    def ended_sources(self) -> list[str]:
        """Sources whose ``run`` ended while the daemon was not stopping them."""
        return sorted(n for n, s in self._states.items() if s == "failed")
