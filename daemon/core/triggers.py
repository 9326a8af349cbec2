"""Which triggers an event fires, and with what inputs: pure functions, no I/O.

A trigger's ``when`` is an expression in the same sandboxed language as templates
(``event.data.status == 'paid' and event.data.total > 100``): no ``eval``, no access to
Python internals. Its ``inputs``, ``dedupe`` and flow-control ``key`` are templates over
the event. The inputs of a run that flow control held back are rendered when it starts
(:func:`held_inputs`), over the event it kept, or all of them (``event.batch``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from cued.daemon.core.priorities import DEFAULT_PRIORITY, priority_of
from cued.daemon.core.records import record
from cued.daemon.core.templates import TemplateProblem, render, render_value, when_holds
from cued.daemon.core.waits import event_output

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cued.daemon.config import TriggerConfig
    from cued.daemon.sdk.sources import Event

__all__ = [
    "MAX_KEY_LENGTH",
    "EventLike",
    "Match",
    "event_context",
    "flow_of",
    "held_inputs",
    "match",
]


class EventLike(Protocol):
    """An event as a source makes it, or as the store kept it."""

    @property
    def event_id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def data(self) -> Any: ...
    @property
    def meta(self) -> Any: ...
    @property
    def received_at(self) -> float | None: ...


@record
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
        """What the run it starts records for flow control, beyond a run's defaults (no
        key, no limit, the default priority): ``replace(row, **m.flow())``; empty for
        most matches, which then need no copy of the row."""
        flow: dict[str, Any] = {}
        if self.key is not None:
            flow["flow_key"] = self.key
        if self.key_limit is not None:
            flow["key_limit"] = self.key_limit
        if self.priority != DEFAULT_PRIORITY:
            flow["priority"] = self.priority
        return flow


def _view(event: EventLike) -> dict[str, Any]:
    return event_output(event.event_id, event.source, event.data, event.meta, event.received_at)


def event_context(event: EventLike) -> dict[str, Any]:
    """The names a trigger's expressions and templates may use: ``event.*``."""
    return {"event": _view(event)}


def held_inputs(
    trigger: TriggerConfig, events: Sequence[EventLike], keep: str = "last"
) -> dict[str, Any]:
    """The inputs of a run that flow control held back, over the events of its window (in
    the order they came): ``event`` is the first of them (``keep = "first"``) or the last;
    with a batch, or ``keep = "all"``, ``event.batch`` lists them all (each as ``event``
    is: ``id``, ``source``, ``data``, ``meta``, ``received_at``).

    :raises TemplateProblem: if an input's template fails on them
    """
    chosen = events[0] if keep == "first" else events[-1]
    context = event_context(chosen)
    if trigger.sees_batch:
        context["event"]["batch"] = [_view(e) for e in events]
    rendered: dict[str, Any] = render_value(trigger.inputs, context)
    return rendered


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
            # inputs that read event.batch are rendered when the run starts, over its
            # window's events (a held run's others are then rendered again, over its kept one)
            inputs = {} if trigger.sees_batch else render_value(trigger.inputs, context)
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


def flow_of(trigger: TriggerConfig, event: EventLike) -> dict[str, Any]:
    """What a run ``trigger`` starts on ``event`` records for flow control (its key, the
    key's limit, its priority), as :meth:`Match.flow` gives it: for a run that debounce,
    throttle or batch held back, rendered on the event whose inputs it takes.

    :raises TemplateProblem: if the key's or the priority's template fails on it
    :raises ValueError: if the key is too long or the priority not one of 0 to 9
    """
    context = event_context(event)
    return {
        "flow_key": _flow_key(trigger, context),
        "key_limit": trigger.concurrency.limit if trigger.concurrency is not None else None,
        "priority": priority_of(render_value(trigger.priority, context)),
    }


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
