"""The event-source interface: what a connector implements and what it is given.

A source turns something outside (a Kafka partition, an HTTP request, a file, a clock
tick) into :class:`Event` values and hands them to intake with ``await ctx.intake.record``.
That call returns only once the events, and the runs they start, are committed in one
transaction; *then* the source acknowledges them to the outside (commits the offset,
answers 202, moves the file). A crash between the two leaves an event recorded but not
acknowledged: the outside sends it again, with the same ``event_id`` where the source can
make one (topic/partition/offset, file name and mtime, tick time), and intake recognises
it as a duplicate, starting nothing twice.

Backpressure: before taking more, a pull source awaits ``ctx.intake.wait_accepting()``
(Kafka pauses its partitions meanwhile); a push source checks ``ctx.intake.accepting()``
and refuses (a webhook answers 429).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from cued.daemon.core.records import record

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime
    from pathlib import Path

    import anyio.abc
    import structlog
    from pydantic import BaseModel
    from starlette.types import ASGIApp

__all__ = ["Backfills", "Event", "Intake", "Receipt", "Source", "SourceContext", "WebRoutes"]


@record
class Event:
    """Something that happened at a source.

    :param source: the source's name in the config
    :param event_id: unique; the same for a redelivery of the same thing where the source
        can tell (so intake can recognise it)
    :param data: the payload, JSON-serialisable (``event.data`` in triggers)
    :param meta: where it came from: headers, topic/partition/offset, path, tick time
    :param error: set when the payload could not be parsed; the event is recorded as
        ``invalid`` and starts nothing
    """

    source: str
    event_id: str
    data: Any
    meta: dict[str, Any] = field(default_factory=dict)
    received_at: float = 0.0
    error: str | None = None


@record
class Receipt:
    """What intake did with one event."""

    event_id: str
    status: str  # matched, unmatched, invalid, duplicate
    run_ids: tuple[str, ...] = ()
    error: str | None = None


class Intake(Protocol):
    async def record(
        self,
        events: list[Event],
        *,
        cursor: str | None = None,
        acknowledge: Callable[[list[Receipt]], None] | None = None,
    ) -> list[Receipt]:
        """Record ``events`` and start the runs they trigger, all in one transaction;
        return once it is committed.

        :param cursor: the source's position after these events (a schedule's last tick),
            committed in the same transaction; read back with :meth:`cursor`
        :param acknowledge: called with the receipts once committed and before any run
            they started begins: for an acknowledgement the runs depend on (the files
            source moves each file to where its event says it is)
        """

    async def cursor(self, source: str) -> str | None:
        """The last cursor recorded for ``source``."""

    async def known(self, event_ids: list[str]) -> set[str]:
        """Which of these events are recorded (or being recorded) already: for a source
        to finish acknowledging, at start, what a crash left recorded but unacknowledged."""

    def accepting(self) -> bool:
        """Whether the daemon takes events now (False while the backlog is saturated)."""

    async def wait_accepting(self) -> None:
        """Return once the daemon takes events."""


class WebRoutes(Protocol):
    def reserve(self, path: str, *, max_body_bytes: int) -> None:
        """Declare, when the source is created (before the server listens), that it will
        serve ``path``: until it mounts, and after it unmounts, requests to the path are
        answered ``503`` with ``Retry-After`` rather than ``404``.

        :param max_body_bytes: the largest body the source takes (the server's cap on
            bodies sent to ``path`` is at least this)
        :raises ValueError: if another source reserved that path, or the daemon serves it
        """

    def mount(self, path: str, app: ASGIApp) -> None:
        """Serve ``app`` for requests to ``path`` on the daemon's HTTP server.

        :raises ValueError: if another source serves that path already
        """

    def unmount(self, path: str) -> None:
        """Stop serving ``path``."""


@dataclass(frozen=True)
class SourceContext:
    """What a source is given: its name, intake, a logger, the daemon's web routes and the
    config file's folder (relative paths in the config are relative to it)."""

    source: str
    intake: Intake
    log: structlog.typing.FilteringBoundLogger
    routes: WebRoutes
    base_dir: Path


@runtime_checkable
class Source(Protocol):
    """A kind of event source (``kafka``, ``webhook``, ``files``, ``schedule``), registered
    under the ``cued.sources`` entry point group.

    ``Config`` is a pydantic model (``extra="forbid"``) of the keys of its
    ``[sources.NAME]`` table besides ``kind``: ``cued validate`` checks them with it. The
    daemon creates one instance per configured source and runs it in its task group.
    """

    kind: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: Any, ctx: SourceContext) -> None: ...

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Take events until cancelled; call ``task_status.started()`` once listening."""


@runtime_checkable
class Backfills(Protocol):
    """A source kind that can make its events of a past span again (``cued backfill``):
    the schedule, its ticks. Optional; the daemon records what it makes as it records
    live events, so the ids must be those the live source gives the same thing (a
    second backfill, or the live source, then starts nothing twice).
    """

    @classmethod
    async def backfill(
        cls,
        config: Any,
        source: str,
        start: datetime,
        end: datetime,
        *,
        at: datetime,
        limit: int,
        base_dir: Path,
    ) -> list[tuple[datetime, Event]]:
        """The events of ``[start, end)`` (zone-aware), oldest first, as made at ``at``,
        each with the moment in the span it stands for (a backfill in parts splits there).

        :param config: the source's ``Config``, validated
        :param base_dir: the config file's folder (relative paths, secrets in files)
        :raises ConnectorError: if there are more than ``limit``, or the outside cannot
            be read (a broker down)
        """
