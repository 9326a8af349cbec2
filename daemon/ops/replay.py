"""Replay (``cued events replay``, ``POST /api/v1/events/replay``): stored events, chosen
by id or by source, time span and status, matched again against today's triggers (or one
of them); see :mod:`cued.daemon.runtime.replay` for what starts and what counts as done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cued.daemon.config.moments import parse_span
from cued.daemon.core.ids import now
from cued.daemon.errors import InvalidRequest, NotFound
from cued.daemon.ops.trials import find_trigger
from cued.daemon.runtime.replay import ReplayReport, replay_events

if TYPE_CHECKING:
    from cued.daemon.ops.host import Daemon
    from cued.daemon.store import EventRow, Store

__all__ = ["MAX_EVENTS", "ReplayRequest", "replay"]

MAX_EVENTS = 10_000
"""The most events one replay takes: more is a mistake more often than not (narrow it)."""
_PAGE = 500
STATUSES = ("matched", "unmatched", "invalid", "held", "dropped")


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """Which events to replay: one by id, or those of a source (or of ``trigger``'s
    source) received in ``[since, until)`` with a status; times as
    :func:`cued.daemon.config.moments.parse_moment` reads them."""

    event_id: str | None = None
    source: str | None = None
    since: str | None = None
    until: str | None = None
    status: str | None = None
    trigger: str | None = None
    """Only this trigger (name, ``SOURCE->PIPELINE`` or number), else every trigger."""
    force: bool = False
    """Start runs again even where they ran for the event already (dedupe ignored)."""


async def replay(daemon: Daemon, request: ReplayRequest) -> ReplayReport:
    """Replay the events ``request`` chooses, oldest first.

    :raises InvalidRequest: if the request is contradictory, a time unreadable, a status
        unknown, or more than :data:`MAX_EVENTS` events are chosen
    :raises NotFound: if the event or the trigger does not exist
    """
    triggers = list(daemon.config.triggers)
    source = request.source
    if request.trigger is not None:
        _, trigger = find_trigger(triggers, request.trigger)
        triggers = [trigger]
        if source is not None and source != trigger.source:
            raise InvalidRequest(
                f"trigger {trigger.ref!r} takes events of {trigger.source!r}, not of {source!r}"
            )
        source = trigger.source
    events = await _chosen(daemon.store, request, source)
    return await replay_events(
        daemon.store, triggers, daemon, events, force=request.force, flow=daemon.flow
    )


async def _chosen(store: Store, request: ReplayRequest, source: str | None) -> list[EventRow]:
    if request.status is not None and request.status not in STATUSES:
        raise InvalidRequest(f"status {request.status!r} is not one of {', '.join(STATUSES)}")
    if request.event_id is not None:
        if request.since or request.until or request.status or request.source:
            raise InvalidRequest(
                "give an event id or --source/--since/--until/--status to choose events, not both"
            )
        found = await store.get_events([request.event_id])
        if not found:
            raise NotFound(f"no event {request.event_id!r}")
        if source is not None and found[0].source != source:
            raise InvalidRequest(
                f"event {request.event_id!r} is of source {found[0].source!r}, "
                f"the trigger takes events of {source!r}"
            )
        return found
    try:
        since, until = parse_span(request.since, request.until, now())
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if source is None and since is None:
        raise InvalidRequest(
            "choose the events to replay: an event id, --source, --trigger or --since"
        )
    chosen: list[EventRow] = []
    before = None if until is None else (until, "")
    while True:
        page = await store.list_events(
            limit=_PAGE, source=source, status=request.status, before=before
        )
        for row in page:
            if since is not None and row.received_at < since:
                return chosen[::-1]
            chosen.append(row)
            if len(chosen) > MAX_EVENTS:
                raise InvalidRequest(
                    f"more than {MAX_EVENTS} events are chosen: narrow them with "
                    "--since/--until/--status"
                )
        if len(page) < _PAGE:
            return chosen[::-1]
        before = (page[-1].received_at, page[-1].event_id)
