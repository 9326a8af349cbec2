"""Which waiting task an event wakes: pure functions, no I/O.

A ``wait_event`` task parks with its ``match``, an expression in the trigger ``when``
language (``event.data.order_id == inputs.order_id``), and the values it reads besides the
event (``inputs``, ``tasks``, ``run``, ``item``), taken when it parked. An event of its
source wakes it when ``match`` holds on both; a field the event lacks is false, as in a
trigger's ``when``; an expression that fails on an event does not match it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cued.daemon.core.templates import TemplateProblem, references, when_expression, when_holds

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "EVENT_FIELDS",
    "event_output",
    "first_match",
    "match_context",
    "matches",
    "wait_names",
]

EVENT_FIELDS = ("id", "source", "data", "meta", "received_at")
"""What ``event.*`` names in a ``match``."""

_KEPT = ("inputs", "tasks", "run", "item")
"""The names besides ``event`` a ``match`` may read: kept with the wait when it parks."""


def wait_names(match: str) -> frozenset[str]:
    """The names ``match`` reads.

    :raises TemplateProblem: if it does not parse
    """
    return frozenset(r.root for r in references(when_expression(match)))


def match_context(match: str | None, context: Mapping[str, Any]) -> dict[str, Any]:
    """What of ``context`` (a task's: ``inputs``, ``tasks``, ``run``, ``item``) the wait
    keeps for ``match``: only the names it reads, so a parked wait stays small."""
    if match is None:
        return {}
    try:
        names = wait_names(match)
    except TemplateProblem:
        return {}
    return {name: context[name] for name in _KEPT if name in names and name in context}


def matches(match: str | None, context: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """Whether ``event`` (its :func:`event_output` form) wakes a wait whose ``match`` is
    ``match`` (``None``: every event of its source) and whose kept values are ``context``."""
    if match is None:
        return True
    try:
        return when_holds(match, {**context, "event": event})
    except TemplateProblem:
        return False


def event_output(
    event_id: str, source: str, data: Any, meta: Any, received_at: float | None
) -> dict[str, Any]:
    """An event as a ``match`` reads it (``event.*``) and as the woken task's output gives
    it (``tasks.NAME.output.event``)."""
    return {
        "id": event_id,
        "source": source,
        "data": data,
        "meta": meta,
        "received_at": received_at,
    }


def first_match(
    match: str | None, context: Mapping[str, Any], events: Iterable[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The first of ``events`` that wakes the wait, if any."""
    return next((e for e in events if matches(match, context, e)), None)
