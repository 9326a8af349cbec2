"""Which triggers an event fires, and with what inputs: pure functions, no I/O.

A trigger's ``when`` is an expression in the same sandboxed language as templates
(``event.data.status == 'paid' and event.data.total > 100``): no ``eval``, no access to
Python internals. Its ``inputs`` and ``dedupe`` key are templates over the event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cued.daemon.core.priorities import DEFAULT_PRIORITY, priority_of
from cued.daemon.core.templates import TemplateProblem, render, render_value, when_holds
from cued.daemon.core.waits import event_output

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cued.daemon.config import TriggerConfig
    from cued.daemon.sdk.sources import Event

__all__ = ["MAX_KEY_LENGTH", "Match", "event_context", "match"]


@dataclass(frozen=True, slots=True)
class Match:
    """An event fired a trigger: start ``pipeline`` with ``inputs`` (unless ``error``)."""

    trigger: str
    pipeline: str
    inputs: dict[str, Any]
    dedupe_key: str | None
    dedupe_window_s: float
    error: str | None = None
    key: str | None = None
    """The flow-control key the run counts under (its trigger's ``key`` rendered; its
    trigger's name if it has a ``concurrency`` and no ``key``)."""
    key_limit: int | None = None
    """Runs of ``key`` (of the pipeline) active at once, if the trigger limits them."""
    priority: int = DEFAULT_PRIORITY

    def flow(self) -> dict[str, Any]:
        """What the run it starts records for flow control: ``replace(row, **m.flow())``."""
        return {"flow_key": self.key, "key_limit": self.key_limit, "priority": self.priority}


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
            flow_key = _flow_key(trigger, context)
            priority = priority_of(render_value(trigger.priority, context))
        except (TemplateProblem, ValueError) as exc:
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
        limit = trigger.concurrency.limit if trigger.concurrency is not None else None
        matches.append(
            Match(
                trigger.ref,
                trigger.pipeline,
                inputs,
                key,
                trigger.dedupe_window,
                key=flow_key,
                key_limit=limit,
                priority=priority,
            )
        )
    return matches, notes


#: A flow-control key's length at most: it comes from an event, and is kept with each run.
MAX_KEY_LENGTH = 512


def _flow_key(trigger: TriggerConfig, context: dict[str, Any]) -> str | None:
    """The trigger's ``key`` rendered on the event (or the trigger's name, if it limits
    concurrency without one).

    :raises ValueError: if the key is longer than :data:`MAX_KEY_LENGTH`
    """
    if trigger.key is None:
        return trigger.ref if trigger.concurrency is not None else None
    key = str(render(trigger.key, context))
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"key {key[:40]!r}... is longer than {MAX_KEY_LENGTH} characters")
    return key
