"""What the broker task kinds (``kafka``, ``nats``, ``mqtt``, ``amqp``, ``redis_stream``)
share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cued.daemon.sdk import CuedError, PermanentTaskError, resolve_secret

__all__ = ["IDEMPOTENCY_KEY", "encode_value", "resolve_url"]

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
