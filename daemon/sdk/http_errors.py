"""The one shape of every HTTP refusal the daemon gives (API, UI, webhooks, the front and
the control socket): ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status."""

from __future__ import annotations

from starlette.responses import JSONResponse

__all__ = ["error_response"]


def error_response(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    """A refusal with ``status``, a machine-readable ``code`` and a message that says what
    is wrong and where; ``headers`` such as ``Retry-After``."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status, headers=headers or None
    )
