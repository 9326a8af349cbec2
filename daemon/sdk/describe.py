"""How a source or a task kind names a library's exception in its own errors and logs."""

from __future__ import annotations

__all__ = ["describe_error"]


def describe_error(exc: BaseException) -> str:
    """The exception's message, or its class's name when it has none (many a driver's
    timeout or connection error has an empty message)."""
    return str(exc) or type(exc).__name__
