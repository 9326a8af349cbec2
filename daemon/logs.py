"""structlog set-up: JSON lines when not on a terminal, pretty on a terminal, journald's
format under systemd, and never a secret the daemon resolved (see
:mod:`cued.daemon.config.secrets`).

Under systemd (``JOURNAL_STREAM`` names the device and inode of stderr), each record is
one line ``<N>event key=value ...``: ``N`` is the syslog priority journald files it under
(``journalctl -p warning``), and there is no timestamp, journald stamps each line itself.
A stderr redirected to a file or a pipe keeps JSON lines even under systemd: the variable
is inherited, the inode is not the same.

structlog is imported when the first line is logged, not with this module: with its
console renderer it brings rich (~0.1 s), and a CLI read that logs nothing does without.
"""

from __future__ import annotations

import json as _json
import logging
import os
import re
import sys
from typing import TYPE_CHECKING, Any, cast

from cued.daemon.config import secrets
from cued.daemon.core.untrusted import decimal

if TYPE_CHECKING:
    from collections.abc import Mapping

    import structlog

__all__ = [
    "configure_logging",
    "get_logger",
    "journal_line",
    "redact_secrets",
    "stderr_is_journal",
]

#: Values a log line holds as they are; any other is checked as its ``repr``, which is
#: what the JSON renderer prints of it.
_PLAIN = (str, int, float, bool, type(None), list, tuple, dict)

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


#: syslog priorities (``sd-daemon(3)``'s ``SD_WARNING`` and so on) of structlog's levels
_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
# printable ASCII but space, '"', '=' and '\\': any other value is quoted as JSON, which
# escapes control characters (a record stays one line, no terminal escape gets through)
_BARE = re.compile(r"[!#-<>-\[\]-~]+")


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """Whether stderr is the stream systemd connected to the journal: ``JOURNAL_STREAM``
    is ``DEVICE:INODE`` of it (``systemd.exec(5)``)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    expected = (decimal(device, max_digits=20), decimal(inode, max_digits=20))
    if None in expected:
        return False
    try:
        found = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):  # stderr closed, or not a real file
        return False
    return (found.st_dev, found.st_ino) == expected


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else _json.dumps(value, default=repr)
    # JSON escapes every control character: the record stays one line
    return text if _BARE.fullmatch(text) else _json.dumps(text)


def journal_line(logger: Any, method_name: str, event_dict: structlog.typing.EventDict) -> str:
    """A structlog renderer: ``<N>event key=value ...``, one line, no timestamp."""
    priority = _PRIORITIES.get(str(event_dict.pop("level", method_name)), 6)
    event = str(event_dict.pop("event", ""))
    fields = " ".join(f"{_value(str(key))}={_value(value)}" for key, value in event_dict.items())
    head = _value(event)
    return f"<{priority}>{head}{' ' + fields if fields else ''}"


#: The set-up asked for and not yet made (structlog not imported yet).
_pending: tuple[str, bool | None] | None = None


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Log to stderr: journald's format when stderr is the journal, else JSON lines
    unless stderr is a terminal (or ``json`` says otherwise).

    Made at once if structlog is loaded, else by the first line logged."""
    global _pending
    if "structlog" in sys.modules:
        _pending = None
        _configure(level, json)
    else:
        _pending = (level, json)


def _configure(level: str, json: bool | None) -> None:
    import structlog

    journal = json is None and stderr_is_journal()
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        journal_line
        if journal
        else structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer()
    )
    stamp: list[Any] = [] if journal else [structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *stamp,
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
    # bound even with nothing to bind: the logger itself, not structlog's lazy proxy
    return logger.bind(**bound)


class _LazyLogger:
    """Stands for ``structlog.get_logger("cued").bind(**bound)`` until first used.

    Once used, each method looked up is kept on the instance, so the next call finds it
    directly: a lookup through this class and structlog's own lazy proxy cost a few µs per
    line, also for the lines the level filters out (two per run). Loggers are cached on
    first use (``cache_logger_on_first_use``) anyway: what a method is does not change.
    """

    def __init__(self, bound: dict[str, Any]) -> None:
        self._bound = bound
        self._logger: structlog.typing.FilteringBoundLogger | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # copy and pickle look for these: not a logger's
        if self._logger is None:
            self._logger = _structlog_logger(self._bound)
        value = getattr(self._logger, name)
        self.__dict__[name] = value
        return value
