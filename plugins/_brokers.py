"""What the broker task kinds (``mqtt``, ``amqp``, ``redis_stream``) share."""

from __future__ import annotations

from pathlib import Path

from cued.daemon.sdk import CuedError, PermanentTaskError, resolve_secret

from .kafka import encode_value

__all__ = ["IDEMPOTENCY_KEY", "encode_value", "resolve_url"]

#: The header, user property or field that carries the task instance's idempotency key
#: (the same on every attempt and across restarts), as the ``kafka`` kind sends it.
IDEMPOTENCY_KEY = "cued-idempotency-key"


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
