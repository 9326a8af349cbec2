"""Which triggers an event fires, and with what inputs: pure functions, no I/O.

A trigger's ``when`` is an expression in the same sandboxed language as templates
(``event.data.status == 'paid' and event.data.total > 100``): no ``eval``, no access to
Python internals. Its ``inputs`` and ``dedupe`` key are templates over the event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cued.daemon.core.templates import TemplateProblem, render, render_value, when_holds
from cued.daemon.core.waits import event_output

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cued.daemon.config import TriggerConfig
    from cued.daemon.sdk.sources import Event

__all__ = ["Match", "event_context", "match"]


@dataclass(frozen=True, slots=True)
class Match:
    """An event fired a trigger: start ``pipeline`` with ``inputs`` (unless ``error``)."""

    trigger: str
    pipeline: str
    inputs: dict[str, Any]
    dedupe_key: str | None
    dedupe_window_s: float
    error: str | None = None


def event_context(event: Event) -> dict[str, Any]:
    """The names a trigger's expressions and templates may use: ``event.*``."""
    return {
        "event": event_output(
            event.event_id, event.source, event.data, event.meta, event.received_at
        )
    }


def match(triggers: Sequence[TriggerConfig], event: Event) -> tuple[list[Match], list[str]]:
    """The triggers (of the event's source) that ``event`` fires, and notes on those whose
    ``when`` could not be evaluated on it (they do not fire). A field the event lacks
    makes no note: ``when`` reads it as false."""
    context = event_context(event)
    matches: list[Match] = []
    notes: list[str] = []
    for trigger in triggers:
        if trigger.when is not None:
            try:
                fired = when_holds(trigger.when, context)
            except TemplateProblem as exc:
                notes.append(f"trigger {trigger.ref!r}: when: {exc}")
                continue
            if not fired:
                continue
        try:
            inputs = render_value(trigger.inputs, context)
            key = None if trigger.dedupe is None else str(render(trigger.dedupe, context))
        except TemplateProblem as exc:
            matches.append(
                Match(
                    trigger.ref,
                    trigger.pipeline,
                    {},
                    None,
                    trigger.dedupe_window,
                    error=f"trigger {trigger.ref!r}: {exc}",
                )
            )
            continue
        matches.append(Match(trigger.ref, trigger.pipeline, inputs, key, trigger.dedupe_window))
    return matches, notes
