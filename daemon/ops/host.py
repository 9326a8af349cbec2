"""What ops needs of the daemon: narrow ports that the runtime's ``Runner`` satisfies, so
the faces (web, the CLI) and ops never import the runner itself.

Every call ops makes into the running daemon goes through :class:`Daemon`; what needs only
the recorded state (pruning) takes a :class:`Recorded`, which a face with no daemon of its
own opens too (:class:`cued.daemon.ops.local.Local`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    import structlog

    from cued.daemon.config import Config
    from cued.daemon.core.plan import PipelinePlan
    from cued.daemon.runtime.backlog import Backlog
    from cued.daemon.runtime.flow import FlowControl
    from cued.daemon.runtime.gates import Gates
    from cued.daemon.runtime.reload import ReloadOutcome
    from cued.daemon.runtime.signals import Signals
    from cued.daemon.runtime.slots import Slots
    from cued.daemon.store import PauseRow, RunRow, Store

__all__ = ["Daemon", "Recorded", "Reloading"]


class Recorded(Protocol):
    """A store and the configuration it is kept under."""

    @property
    def store(self) -> Store: ...
    @property
    def config(self) -> Config: ...


class Daemon(Recorded, Protocol):
    """The running daemon as ops sees it (the runtime's runner): its configuration and
    store, its gates and slots, and the few calls that start, cancel, resume and wait for
    runs, and pause and unpause pipelines."""

    @property
    def plans(self) -> Mapping[str, PipelinePlan]: ...
    @property
    def backlog(self) -> Backlog[Any]: ...
    @property
    def slots(self) -> Slots: ...
    @property
    def gates(self) -> Gates: ...
    @property
    def log(self) -> structlog.typing.FilteringBoundLogger: ...
    @property
    def paused(self) -> Mapping[str, PauseRow]: ...
    @property
    def flow(self) -> FlowControl | None:
        """The daemon's flow control (debounce, throttle, batch), if intake runs."""

    async def pause(self, pipeline: str, *, by: str | None = None) -> PauseRow: ...
    async def unpause(self, pipeline: str, *, by: str | None = None) -> int: ...
    async def start_run(
        self,
        pipeline: str,
        inputs: dict[str, Any] | None = None,
        *,
        traceparent: str | None = None,
    ) -> RunRow: ...
    def new_run(
        self,
        pipeline: str,
        inputs: dict[str, Any] | None = None,
        *,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> RunRow:
        """A queued run to record, then :meth:`enqueue` (replay records its own)."""

    def enqueue(self, row: RunRow) -> None: ...
    def wake_waits(self, run_ids: Collection[str] = ()) -> None: ...
    async def cancel(self, run_id: str) -> RunRow: ...
    async def cancel_stored(self, run_id: str) -> RunRow:
        """Cancel a run that is not in memory (parked, or held for its paused pipeline),
        and its unfinished child runs.

        :raises NotFound: if there is no such run
        :raises Conflict: if it has finished already
        """

    async def wait(self, run_id: str) -> RunRow: ...
    async def resume_recorded(self, run_id: str) -> None: ...
    @property
    def signals(self) -> Signals: ...
    def is_active(self, run_id: str) -> bool: ...


class Reloading(Protocol):
    """The running daemon's reload (the runtime's reloader): read its configuration file
    again and apply it, or refuse it and keep the running one."""

    @property
    def version(self) -> int | None: ...
    @property
    def last(self) -> ReloadOutcome | None: ...
    async def reload(self) -> ReloadOutcome: ...
