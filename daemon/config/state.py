"""Where the state lives (``[daemon] state``): a SQLite file, or a PostgreSQL database;
and reading just that (with the rest of ``[daemon]`` a read needs) from a config file.

```toml
state = "cued.db"                                  # a SQLite file, beside the config
state = "postgresql://cued@db.internal/cued"       # a PostgreSQL database
state = "env:CUED_DATABASE_URL"                    # its URL from the environment (or file:PATH)
```

A URL may hold a password: it is a secret (``env:`` and ``file:`` resolve as every secret
does, and are redacted), and messages show it without one (:func:`shown_url`).

:func:`read_state_settings` reads the ``[daemon]`` table alone, for the CLI's reads
(``cued runs``, ``cued show``...), which need nothing else of the configuration and answer
in a fraction of the time the whole check takes (its models, every source's and task
kind's own, templates: ~0.5 s). Only a ``[daemon]`` table this reading is sure of is
taken: any doubt (the file cannot be read or is not TOML, a key it does not know, a value
of the wrong kind, a state in ``env:`` or ``file:`` or one that does not check) answers
``None``, and the caller loads the whole configuration, whose check says what is wrong,
with file and line, as before. A mistake elsewhere in the file does not stop a read.

No pydantic here: the models (:mod:`cued.daemon.config.models`) check ``state`` with
:func:`check_state`, and this module stays light for the CLI.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DAEMON_KEYS",
    "DATABASE_SCHEMES",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_STATE",
    "DEFAULT_SYNCHRONOUS",
    "LogLevel",
    "StateSettings",
    "Synchronous",
    "check_database_url",
    "check_state",
    "database_password",
    "is_database_url",
    "read_state_settings",
    "shown_url",
]

DATABASE_SCHEMES = ("postgresql://", "postgres://")
_SECRET = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$")


def is_database_url(location: str) -> bool:
    """Whether ``location`` names a PostgreSQL database (else it is a SQLite file)."""
    return location.startswith(DATABASE_SCHEMES)


def shown_url(url: str) -> str:
    """``url`` as messages and logs may show it: without its password."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a URL that does not parse>"
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host))


def database_password(url: str) -> str | None:
    """The password in ``url``, if it has one."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def check_database_url(url: str) -> str | None:
    """What is wrong with ``url`` as a database's URL, or ``None``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is no number raises
    except ValueError as exc:
        return f"is not a URL PostgreSQL can take: {exc} (got {shown_url(url)!r})"
    if not parts.path.strip("/"):
        return f"names no database: postgresql://USER@HOST[:PORT]/DATABASE (got {shown_url(url)!r})"
    if any(c.isspace() for c in url):
        return f"has a space in it (got {shown_url(url)!r})"
    return None


def check_state(value: str) -> str:
    """``value`` if it names a store cued can open (checked as ``[daemon] state``).

    :raises ValueError: saying what is wrong with it
    """
    if not value.strip():
        raise ValueError("must name a SQLite file or a postgresql:// URL")
    if value.startswith(("env:", "file:")):
        if not _SECRET.match(value):
            raise ValueError(f"env:NAME takes a variable's name (got {value!r})")
        return value
    if is_database_url(value):
        if (problem := check_database_url(value)) is not None:
            raise ValueError(problem)
        return value
    if "://" in value:
        scheme = value.partition("://")[0]
        raise ValueError(
            f"{scheme}:// is no store cued knows: a SQLite file's path, or a "
            f"postgresql:// URL (got {shown_url(value)!r})"
        )
    return value


LogLevel = Literal["debug", "info", "warning", "error"]
Synchronous = Literal["full", "normal"]

#: The defaults of :class:`cued.daemon.config.models.DaemonConfig`, spelt once here.
DEFAULT_STATE = "cued.db"
DEFAULT_SYNCHRONOUS: Synchronous = "full"
DEFAULT_LOG_LEVEL: LogLevel = "info"

#: Every key the ``[daemon]`` table may hold (``DaemonConfig``'s fields; a test holds them
#: equal): a key not among them is a typo this reading leaves to the whole check.
DAEMON_KEYS = frozenset(
    {
        "state",
        "max_running_tasks",
        "pools",
        "backlog_high_water",
        "backlog_low_water",
        "backlog_window",
        "shutdown_grace",
        "synchronous",
        "python_modules",
        "log_level",
        "task_env",
        "task_log_lines",
        "task_log_bytes",
        "task_log_flush",
        "control_group",
        "node",
        "lease",
    }
)

_SYNCHRONOUS = ("full", "normal")
_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class StateSettings:
    """What opening the state to read it takes."""

    location: str
    """The state file's path (``[daemon] state``, relative to the config file's folder),
    or the database's URL."""
    synchronous: Synchronous
    log_level: LogLevel


def read_state_settings(config_path: str | Path) -> StateSettings | None:
    """The state file's settings in the configuration at ``config_path``, or ``None`` if
    its ``[daemon]`` table is not plainly valid (the whole check then says why)."""
    path = Path(config_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    daemon: Any = raw.get("daemon", {})
    if not isinstance(daemon, dict) or not set(daemon) <= DAEMON_KEYS:
        return None
    state = daemon.get("state", DEFAULT_STATE)
    synchronous = daemon.get("synchronous", DEFAULT_SYNCHRONOUS)
    log_level = daemon.get("log_level", DEFAULT_LOG_LEVEL)
    if (
        not isinstance(state, str)
        or synchronous not in _SYNCHRONOUS
        or log_level not in _LOG_LEVELS
    ):
        return None
    try:
        check_state(state)
    except ValueError:
        return None
    if state.startswith(("env:", "file:")):  # resolving it is the whole check's
        return None
    return StateSettings(
        state if is_database_url(state) else str(path.resolve().parent / state),
        cast("Synchronous", synchronous),
        cast("LogLevel", log_level),
    )
