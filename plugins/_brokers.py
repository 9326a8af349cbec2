"""What the broker task kinds (``kafka``, ``nats``, ``mqtt``, ``amqp``, ``redis_stream``)
share."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cued.daemon.sdk import (
    CuedError,
    PermanentTaskError,
    current_traceparent,
    outgoing_span,
    resolve_secret,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cued.daemon.sdk import Span

__all__ = ["IDEMPOTENCY_KEY", "encode_value", "producer_span", "resolve_url"]

#: The header, user property or field that carries the task instance's idempotency key
#: (the same on every attempt and across restarts), as the ``kafka`` kind sends it.
IDEMPOTENCY_KEY = "cued-idempotency-key"


def encode_value(value: Any) -> bytes:
    """A message value as bytes: a string as UTF-8, anything else as compact JSON.

    :raises PermanentTaskError: if the value is not JSON-serialisable
    """
    if isinstance(value, str):
        return value.encode()
    try:
        return json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
    except (TypeError, ValueError) as exc:
        raise PermanentTaskError(f"the message value cannot be sent as JSON: {exc}") from exc


def resolve_url(url: str, what: str) -> str:
    """A broker URL given as itself, or as ``env:NAME`` / ``file:PATH`` (relative to the
    daemon's working folder) holding it; remembered for redaction when it was hidden.

    :raises PermanentTaskError: if the variable is unset or the file unreadable
    """
    if not url.startswith(("env:", "file:")):
        return url
    try:
        return resolve_secret(url, Path.cwd(), what=what)
    except CuedError as exc:
        raise PermanentTaskError(str(exc)) from exc


@contextmanager
def producer_span(
    system: str, operation: str, destination: str, headers: dict[str, str]
) -> Iterator[Span]:
    """The span of sending one message to ``destination`` (``"kafka produce orders"``);
    ``headers`` get its ``traceparent`` unless they hold one, for the consumer to continue
    the trace (a cued source does)."""
    with outgoing_span(
        f"{system} {operation} {destination}",
        kind="producer",
        attributes={"messaging.system": system, "messaging.destination.name": destination},
    ) as span:
        if (traceparent := current_traceparent()) is not None:
            headers.setdefault("traceparent", traceparent)
        yield span
