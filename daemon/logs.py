"""structlog set-up: JSON lines when not on a terminal, pretty on a terminal, and never a
secret the daemon resolved (see :mod:`cued.daemon.config.secrets`).

structlog is imported when the first line is logged, not with this module: with its
console renderer it brings rich (~0.1 s), and a CLI read that logs nothing does without.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, cast

from cued.daemon.config import secrets

if TYPE_CHECKING:
    import structlog

__all__ = ["configure_logging", "get_logger", "redact_secrets"]

#: Values a log line holds as they are; any other is checked as its ``repr``, which is
#: what the JSON renderer prints of it.
_PLAIN = (str, int, float, bool, type(None), list, tuple, dict)

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


#: The set-up asked for and not yet made (structlog not imported yet).
_pending: tuple[str, bool | None] | None = None


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Log to stderr, JSON lines unless stderr is a terminal (or ``json`` says otherwise).

    Made at once if structlog is loaded, else by the first line logged."""
    global _pending
    if "structlog" in sys.modules:
        _pending = None
        _configure(level, json)
    else:
        _pending = (level, json)


def _configure(level: str, json: bool | None) -> None:
    import structlog

    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,  # after the traceback became text: it may quote one too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def redact_secrets(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A structlog processor: every secret the daemon resolved, replaced in the line's
    values with ``[redacted]``."""
    if not secrets.known():
        return event_dict
    redacted = {}
    for key, value in event_dict.items():
        if isinstance(value, _PLAIN):
            redacted[key] = secrets.redact(value)
        else:
            # an exception, a path: printed as its repr, which may quote a secret
            text = repr(value)
            cleaned = secrets.redact_text(text)
            redacted[key] = value if cleaned is text else cleaned
    return redacted


def get_logger(**bound: Any) -> structlog.typing.FilteringBoundLogger:
    """The daemon's logger, with ``bound`` bound; structlog is loaded when it is first
    used (modules take theirs at import)."""
    return cast("structlog.typing.FilteringBoundLogger", _LazyLogger(bound))


def _structlog_logger(bound: dict[str, Any]) -> structlog.typing.FilteringBoundLogger:
    global _pending
    import structlog

    if _pending is not None:
        level, json = _pending
        _pending = None
        _configure(level, json)
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("cued")
    return logger.bind(**bound) if bound else logger


class _LazyLogger:
    """Stands for ``structlog.get_logger("cued").bind(**bound)`` until first used."""

    __slots__ = ("_bound", "_logger")

    def __init__(self, bound: dict[str, Any]) -> None:
        self._bound = bound
        self._logger: structlog.typing.FilteringBoundLogger | None = None

    def __getattr__(self, name: str) -> Any:
        if self._logger is None:
            self._logger = _structlog_logger(self._bound)
        return getattr(self._logger, name)
