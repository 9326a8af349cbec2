"""Where the state file is, read from the ``[daemon]`` table alone: for the CLI's reads
(``cued runs``, ``cued show``...), which need nothing else of the configuration and answer
in a fraction of the time the whole check takes (its models, every source's and task
kind's own, templates: ~0.5 s).

Only a ``[daemon]`` table this reading is sure of is taken: any doubt (the file cannot be
read or is not TOML, a key it does not know, a value of the wrong kind) answers ``None``,
and the caller loads the whole configuration, whose check says what is wrong, with file
and line, as before. A mistake elsewhere in the file does not stop a read.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

__all__ = [
    "DAEMON_KEYS",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_STATE",
    "DEFAULT_SYNCHRONOUS",
    "LogLevel",
    "StateSettings",
    "Synchronous",
    "read_state_settings",
]

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
        "shutdown_grace",
        "synchronous",
        "python_modules",
        "log_level",
        "task_env",
        "task_log_lines",
        "task_log_bytes",
        "task_log_flush",
        "control_group",
    }
)

_SYNCHRONOUS = ("full", "normal")
_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class StateSettings:
    """What opening the state file to read it takes."""

    path: Path
    """The state file (``[daemon] state``, relative to the config file's folder)."""
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
    return StateSettings(
        path.resolve().parent / state,
        cast("Synchronous", synchronous),
        cast("LogLevel", log_level),
    )
