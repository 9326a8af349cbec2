"""Backfill (``cued backfill``, ``POST /api/v1/sources/{source}/backfill``): a source's
events of a past span made again (a schedule's ticks, by the source kind's
:class:`~cued.daemon.sdk.sources.Backfills`) and recorded through intake; see
:mod:`cued.daemon.runtime.backfill`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cued.daemon.config.moments import parse_moment
from cued.daemon.config.registry import source_kinds
from cued.daemon.core.ids import now
from cued.daemon.errors import ConnectorError, InvalidRequest, NotFound
from cued.daemon.runtime.backfill import BackfillReport, record_backfill
from cued.daemon.sdk.sources import Backfills

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.config import Config
    from cued.daemon.ops.host import Daemon
    from cued.daemon.sdk.sources import Event, Intake

__all__ = ["MAX_CONCURRENCY", "MAX_EVENTS", "backfill", "backfill_events"]

MAX_EVENTS = 100_000
"""The most events one backfill makes (backfill a longer span in parts)."""
MAX_CONCURRENCY = 1_000


async def backfill_events(
    config: Config, source: str, start: str, end: str, *, at: float | None = None
) -> list[tuple[datetime, Event]]:
    """The events of source ``source`` in ``[start, end)`` (times as
    :func:`cued.daemon.config.moments.parse_moment` reads them), oldest first, each with
    the moment it stands for (its tick).

    :raises NotFound: if there is no such source
    :raises InvalidRequest: if its kind cannot backfill, a time is unreadable, the span is
        empty or reaches past now, or it holds more than :data:`MAX_EVENTS` events
    """
    stamp = now() if at is None else at
    settings = config.sources.get(source)
    if settings is None:
        known = ", ".join(sorted(config.sources)) or "none"
        raise NotFound(f"no source {source!r} (known: {known})")
    kind = source_kinds().get(settings.kind)
    options = getattr(kind, "Config", None)
    if options is None or not isinstance(kind, Backfills):
        raise InvalidRequest(
            f"source {source!r} is of kind {settings.kind!r}, which cannot backfill "
            "(schedule and kafka sources can)"
        )
    try:
        lo = parse_moment(start, stamp, name="--from")
        hi = parse_moment(end, stamp, name="--to")
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if lo >= hi:
        raise InvalidRequest(f"--from {start!r} is not before --to {end!r}: the span is empty")
    if hi > stamp:
        raise InvalidRequest(
            f"--to {end!r} is in the future: backfill fills the past (the source fires the rest)"
        )
    try:
        return await kind.backfill(
            options.model_validate(settings.params),
            source,
            datetime.fromtimestamp(lo, UTC),
            datetime.fromtimestamp(hi, UTC),
            at=datetime.fromtimestamp(stamp, UTC),
            limit=MAX_EVENTS,
            base_dir=config.base_dir,
        )
    except ConnectorError as exc:  # too many events, a broker down
        raise InvalidRequest(str(exc)) from None


async def backfill(
    daemon: Daemon,
    intake: Intake,
    source: str,
    start: str,
    end: str,
    *,
    concurrency: int = 1,
    progress: Callable[[BackfillReport], None] | None = None,
) -> BackfillReport:
    """Record the events of ``source`` in ``[start, end)``, ``concurrency`` at a time
    (each group once the runs of the one before have ended).

    :raises NotFound: if there is no such source
    :raises InvalidRequest: as :func:`backfill_events` says, or if ``concurrency`` is out
        of ``1..MAX_CONCURRENCY``
    """
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidRequest(
            f"--concurrency {concurrency!r} is not between 1 and {MAX_CONCURRENCY}"
        )
    events = [e for _, e in await backfill_events(daemon.config, source, start, end)]
    return await record_backfill(
        intake, daemon.wait, events, concurrency=concurrency, progress=progress
    )
