"""Traces: spans of events, runs, task attempts and outgoing calls, in W3C trace context.

OpenTelemetry is optional (``pip install cued[otel]``, and a ``[telemetry]`` table in the
config): without it a :class:`Tracing` is off, every span is :data:`NO_SPAN`, and nothing
here imports ``opentelemetry``. With it, the daemon hands one :class:`Tracing` (its own
tracer, never OpenTelemetry's process-wide one, so two daemons in one process stay apart)
to intake and the runner, which make the spans; a task attempt runs with its span current,
so a plugin reaches it through :func:`current_traceparent`, :func:`current_span` and
:func:`outgoing_span` without holding anything.

Links that must survive a restart are explicit: a run's row keeps the ``traceparent`` its
spans hang from (its event's span), and each attempt's span names the run's span as its
parent; only inside one attempt is the current span implicit (a context variable).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal

from cued.daemon.core.tracecontext import parse_traceparent, traceparent_header

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = [
    "NO_SPAN",
    "Span",
    "SpanKind",
    "Tracing",
    "current_span",
    "current_traceparent",
    "outgoing_span",
]

SpanKind = Literal["internal", "server", "client", "producer", "consumer"]

# (the Tracing, the span) an attempt runs in: set by the runtime around each attempt,
# inherited by whatever the attempt starts
_current: ContextVar[tuple[Tracing, Span] | None] = ContextVar("cued_span", default=None)


class Span:
    """One span, or nothing at all (:data:`NO_SPAN`, when tracing is off): every method
    of a span that is nothing does nothing."""

    __slots__ = ("_span",)

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def __bool__(self) -> bool:
        return self._span is not None

    @property
    def traceparent(self) -> str | None:
        """The span's W3C ``traceparent``, to send on or to keep; ``None`` for no span."""
        if self._span is None:
            return None
        ctx = self._span.get_span_context()
        if not ctx.is_valid:
            return None
        return traceparent_header(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))

    def set(self, **attributes: Any) -> None:
        """Set attributes (``None`` values are left out; keys may hold dots, passed as
        ``**{"gen_ai.usage.input_tokens": 12}``)."""
        if self._span is None:
            return
        for key, value in attributes.items():
            if value is not None:
                self._span.set_attribute(key, _attribute(value))

    def fail(self, error: str) -> None:
        """Mark the span as failed, with ``error`` as its status description."""
        if self._span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, error))

    def end(self) -> None:
        """End the span (it is exported from then on)."""
        if self._span is not None:
            self._span.end()


NO_SPAN = Span()
"""The span of no tracing: does nothing."""


class Tracing:
    """Makes spans with one tracer, or none.

    :param tracer: an OpenTelemetry ``Tracer``; ``None`` (the default) for tracing off
    """

    def __init__(self, tracer: Any = None) -> None:
        self._tracer = tracer

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def start(
        self,
        name: str,
        *,
        parent: Span | str | None = None,
        kind: SpanKind = "internal",
        attributes: Mapping[str, Any] | None = None,
    ) -> Span:
        """Start a span; :meth:`Span.end` it.

        :param parent: the parent span, or a ``traceparent`` (a caller's, or one kept in
            the store); ``None`` (or one that is not valid) starts a trace of its own
        """
        if self._tracer is None:
            return NO_SPAN
        from opentelemetry import trace
        from opentelemetry.context import Context

        context = Context()  # explicit: nothing ambient becomes the parent by chance
        if isinstance(parent, Span) and parent:
            context = trace.set_span_in_context(parent._span, context)
        elif isinstance(parent, str) and (remote := _remote(parent)) is not None:
            context = trace.set_span_in_context(remote, context)
        span = self._tracer.start_span(
            name,
            context=context,
            kind=getattr(trace.SpanKind, kind.upper()),
            attributes={k: _attribute(v) for k, v in (attributes or {}).items() if v is not None},
        )
        return Span(span)

    @contextmanager
    def span(
        self,
        name: str,
        *,
        parent: Span | str | None = None,
        kind: SpanKind = "internal",
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[Span]:
        """A span for the block: failed if the block raises an ``Exception``, ended when
        it leaves (also when it is cancelled)."""
        span = self.start(name, parent=parent, kind=kind, attributes=attributes)
        try:
            yield span
        except Exception as exc:
            span.fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            span.end()

    @contextmanager
    def current(self, span: Span) -> Iterator[None]:
        """Make ``span`` the current one for the block (a task attempt): what the block
        runs, and what it starts, reaches it through :func:`current_span`."""
        if not span:
            yield
            return
        from opentelemetry import context, trace

        token = _current.set((self, span))
        otel_token = context.attach(trace.set_span_in_context(span._span))
        try:
            yield
        finally:
            context.detach(otel_token)
            _current.reset(token)


def current_span() -> Span:
    """The span of the task attempt this runs in (:data:`NO_SPAN` if tracing is off):
    for a task kind to set attributes on (an AI step's tokens, say)."""
    found = _current.get()
    return found[1] if found is not None else NO_SPAN


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span, to pass on to a service this task calls
    (a header of a request, of a Kafka message); ``None`` if tracing is off."""
    return current_span().traceparent


@contextmanager
def outgoing_span(
    name: str, *, kind: SpanKind = "client", attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A span for one call a task makes (a request, a message produced), a child of the
    attempt's span and current for the block, so :func:`current_traceparent` inside it
    names this call: send that on. With tracing off, :data:`NO_SPAN` and no cost.

    :param name: what is called, e.g. ``"kafka produce orders"``
    :param attributes: the span's attributes
    """
    found = _current.get()
    if found is None:
        yield NO_SPAN
        return
    tracing, parent = found
    with (
        tracing.span(name, parent=parent, kind=kind, attributes=attributes) as span,
        tracing.current(span),
    ):
        yield span


def _remote(traceparent: str) -> Any:
    """A caller's span, from its ``traceparent``, as a parent; ``None`` if not valid."""
    value = parse_traceparent(traceparent)
    if value is None:
        return None
    from opentelemetry import trace

    _, trace_id, span_id, flags = value.split("-")
    return trace.NonRecordingSpan(
        trace.SpanContext(
            int(trace_id, 16), int(span_id, 16), True, trace.TraceFlags(int(flags, 16))
        )
    )


def _attribute(value: Any) -> Any:
    # OpenTelemetry takes str, bool, int, float and sequences of one of them; anything
    # else goes as JSON text rather than dropped with a warning
    if isinstance(value, str | bool | int | float):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)
