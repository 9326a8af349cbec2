"""A trigger tried on stored events, starting nothing: ``cued triggers test``.

Each event is given to the same pure matching the daemon's intake uses
(:func:`cued.daemon.core.triggers.match`), so what would match here is what matches there;
nothing is recorded and no run starts. Fields of ``event.data`` that the trigger's
``when`` reads and that none of the events tried has are named (a typo, most often).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cued.daemon.core.event_fields import has_path, when_data_paths
from cued.daemon.core.ids import now
from cued.daemon.core.templates import TemplateProblem
from cued.daemon.core.triggers import match
from cued.daemon.core.untrusted import decimal
from cued.daemon.errors import InvalidRequest, NotFound
from cued.daemon.sdk.sources import Event

if TYPE_CHECKING:
    from cued.daemon.config import TriggerConfig
    from cued.daemon.ops.queries import Queries
    from cued.daemon.store import EventRow

__all__ = ["Trial", "TriggerTrial", "find_trigger", "try_trigger"]


@dataclass(frozen=True, slots=True)
class Trial:
    """What the trigger does with one event."""

    event: EventRow
    outcome: str
    """``matches``, ``no match`` (its ``when`` is false), ``error`` (its ``when``, inputs
    or dedupe key cannot be rendered on it) or ``invalid`` (the event was recorded
    invalid: it starts nothing)."""
    inputs: dict[str, Any] | None = None
    dedupe_key: str | None = None
    error: str | None = None
    key_seen_at: float | None = None
    """When its dedupe key last started a run, if that is within the trigger's window: an
    event like this one arriving now would be dropped as a duplicate."""


@dataclass(frozen=True, slots=True)
class TriggerTrial:
    """A trigger tried on events of its source, newest first."""

    trigger: TriggerConfig
    number: int
    """Its place among ``[[triggers]]`` in the config, from 1."""
    trials: list[Trial]
    missing_fields: list[str]
    """Paths its ``when`` reads (``event.data.x.y``) that no event tried has."""


def find_trigger(triggers: list[TriggerConfig], ref: str) -> tuple[int, TriggerConfig]:
    """The trigger ``ref`` names: its ``name``, its key ``SOURCE->PIPELINE`` (unnamed
    triggers), or its place among ``[[triggers]]`` from 1; with that place.

    :raises NotFound: if none is so named, or the key is that of several triggers
    """
    if (number := decimal(ref)) is not None and 1 <= number <= len(triggers):
        return number, triggers[number - 1]
    found = [(n, t) for n, t in enumerate(triggers, 1) if t.ref == ref]
    if len(found) == 1:
        return found[0]
    if found:
        places = ", ".join(str(n) for n, _ in found)
        raise NotFound(f"{len(found)} triggers are {ref!r} (numbers {places}): give the number")
    known = ", ".join(f"{n}: {t.ref}" for n, t in enumerate(triggers, 1)) or "none"
    raise NotFound(f"no trigger {ref!r} (known: {known})")


async def try_trigger(
    queries: Queries, ref: str, *, last: int = 10, event_id: str | None = None
) -> TriggerTrial:
    """Try the trigger ``ref`` (see :func:`find_trigger`) on the ``last`` events of its
    source, or on the event ``event_id``.

    :raises NotFound: if there is no such trigger or event
    :raises InvalidRequest: if ``last`` is not positive, or ``event_id`` is an event of
        another source
    """
    number, trigger = find_trigger(list(queries.config.triggers), ref)
    if event_id is not None:
        event = await queries.event(event_id)
        if event.source != trigger.source:
            raise InvalidRequest(
                f"event {event_id!r} is of source {event.source!r}, trigger {trigger.ref!r} "
                f"takes events of {trigger.source!r}"
            )
        events = [event]
    else:
        if last < 1:
            raise InvalidRequest(f"--last {last!r} is not a positive number")
        events = (await queries.events_page(limit=last, source=trigger.source)).items
    trials = await _with_keys_seen(queries, trigger, [_try(trigger, row) for row in events])
    return TriggerTrial(trigger, number, trials, _missing(trigger, events))


async def _with_keys_seen(
    queries: Queries, trigger: TriggerConfig, trials: list[Trial]
) -> list[Trial]:
    """Mark the matches whose dedupe key started a run within the trigger's window (as
    intake would find it, were the event to come now)."""
    keyed = {(trigger.ref, t.dedupe_key) for t in trials if t.dedupe_key is not None}
    seen = await queries.dedupe_seen(sorted(keyed))
    at = now()
    return [
        replace(t, key_seen_at=last)
        if t.dedupe_key is not None
        and (last := seen.get((trigger.ref, t.dedupe_key))) is not None
        and at - last < trigger.dedupe_window
        else t
        for t in trials
    ]


def _try(trigger: TriggerConfig, row: EventRow) -> Trial:
    if row.status == "invalid":
        return Trial(row, "invalid", error=row.error)
    event = Event(row.source, row.event_id, row.data, row.meta, row.received_at)
    matches, notes = match([trigger], event)
    if notes:
        return Trial(row, "error", error=notes[0])
    if not matches:
        return Trial(row, "no match")
    found = matches[0]
    if found.error is not None:
        return Trial(row, "error", error=found.error)
    return Trial(row, "matches", found.inputs, found.dedupe_key)


def _missing(trigger: TriggerConfig, events: list[EventRow]) -> list[str]:
    if trigger.when is None or not events:
        return []
    try:
        paths = when_data_paths(trigger.when)
    except TemplateProblem:  # config checks refused it already; nothing to hint at
        return []
    valid = [e.data for e in events if e.status != "invalid"]
    if not valid:
        return []
    return [
        "event.data." + ".".join(path)
        for path in paths
        if not any(has_path(data, path) for data in valid)
    ]
