"""``cued validate --strict``: what the configuration needs of the machine it runs on.

Plain ``cued validate`` checks the file alone, so CI can run it without the daemon's
secrets or packages. ``--strict`` checks, here and now, what ``cued run`` would meet:
every ``env:`` secret set and every ``file:`` secret readable, every ``python`` task's
function importable (with the ``args`` it is given), every program a task or an alert
names by path present and executable, every watched folder present. Each problem names
the file, line and key, as plain validation does.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cued.daemon.config.registry import task_kinds
from cued.daemon.config.secrets import resolve_secret
from cued.daemon.config.tomlpos import KeyLines
from cued.daemon.core.templates import has_template
from cued.daemon.errors import ConfigProblem, CuedError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cued.daemon.config.models import Config

__all__ = ["config_folder_first", "environment_problems"]

_At = tuple[str | int, ...]


def config_folder_first(folder: Path) -> None:
    """Put the config file's folder first on the import path, so that a ``python`` task's
    ``function = "steps:summarize"`` finds ``steps.py`` beside the config (as ``python
    script.py`` finds the modules beside the script)."""
    entry = str(folder.resolve())
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)


def environment_problems(config: Config, file: str | Path) -> list[ConfigProblem]:
    """What keeps a valid ``config`` (read from ``file``) from running on this machine.

    :raises OSError: if ``file`` cannot be read again
    """
    with open(file, "rb") as f:
        raw_bytes = f.read()
    text = raw_bytes.decode("utf-8")
    raw = tomllib.loads(text)
    lines = KeyLines(text)
    base_dir = config.base_dir
    config_folder_first(base_dir)
    return [
        ConfigProblem(str(file), lines.line_of(at), ".".join(map(str, at)), message)
        for at, message in [
            *_secret_problems(raw, base_dir),
            *_state_problems(config),
            *_task_problems(raw, base_dir),
            *_file_problems(raw, base_dir),
        ]
    ]


def _secrets(raw: dict[str, Any]) -> Iterator[tuple[_At, str, bool]]:
    """Every secret the config names: where, its value as written, and whether a value
    written out is a secret too (a header's is not)."""
    for name, source in _tables(raw.get("sources")):
        for key in ("secret", "sasl_password", "password", "token", "dsn"):
            if isinstance(source.get(key), str):
                yield ("sources", name, key), source[key], True
    auth = raw.get("auth")
    users = auth.get("users") if isinstance(auth, dict) else None
    for name, user in _tables(users):
        if isinstance(user.get("token"), str):
            yield ("auth", "users", name, "token"), user["token"], True
    for name, alert in _tables(raw.get("alerts")):
        for key in ("url", "password"):
            if isinstance(alert.get(key), str):
                yield ("alerts", name, key), alert[key], key == "password"
        for header, value in _items(alert.get("headers")):
            if isinstance(value, str):
                yield ("alerts", name, "headers", header), value, False
    for at, task in _tasks(raw):
        for key in ("api_key", "dsn", "token"):  # llm; sql; nats
            if isinstance(task.get(key), str):
                yield (*at, key), task[key], True


def _secret_problems(raw: dict[str, Any], base_dir: Path) -> Iterator[tuple[_At, str]]:
    for at, value, literal_is_secret in _secrets(raw):
        if not value.startswith(("env:", "file:")):
            continue
        try:
            resolve_secret(value, base_dir, literal_is_secret=literal_is_secret)
        except CuedError as exc:
            yield at, str(exc).replace(" (for a secret)", "")


def _state_problems(config: Config) -> Iterator[tuple[_At, str]]:
    """A database URL from the environment or a file: there, and a URL."""
    if config.daemon.state.startswith(("env:", "file:")):
        try:
            config.state_location()
        except CuedError as exc:
            yield ("daemon", "state"), str(exc).replace(" (for [daemon] state)", "")


def _task_problems(raw: dict[str, Any], base_dir: Path) -> Iterator[tuple[_At, str]]:
    """What each task kind's ``Params.environment_problems`` finds (a python function
    that does not import)."""
    kinds = task_kinds()
    for at, task in _tasks(raw):
        kind = kinds.get(task.get("kind"))  # type: ignore[arg-type]
        hook = getattr(kind.Params, "environment_problems", None) if kind else None
        if hook is not None:
            for problem in hook(task, base_dir):
                yield (*at, *problem.key), problem.message


def _file_problems(raw: dict[str, Any], base_dir: Path) -> Iterator[tuple[_At, str]]:
    for at, task in _tasks(raw):
        argv = task.get("argv")
        if task.get("kind") == "shell" and isinstance(argv, list) and argv:
            cwd = task.get("cwd")
            # a shell task runs in the daemon's working directory: this one, for --strict
            fixed = isinstance(cwd, str) and not has_template(cwd)
            folder = Path.cwd() / str(cwd) if fixed else Path.cwd()
            yield from _program_problem((*at, "argv", 0), argv[0], folder)
    for name, alert in _tables(raw.get("alerts")):
        argv = alert.get("argv")
        if alert.get("kind") == "command" and isinstance(argv, list) and argv:
            yield from _program_problem(("alerts", name, "argv", 0), argv[0], base_dir)
    for name, source in _tables(raw.get("sources")):
        path = source.get("path")
        if source.get("kind") == "files" and isinstance(path, str):
            folder = base_dir / path
            if not folder.is_dir():
                yield ("sources", name, "path"), f"folder {str(folder)!r} does not exist"


def _program_problem(at: _At, program: Any, folder: Path) -> Iterator[tuple[_At, str]]:
    """A program named by a path (``./load.sh``) that is not there or not executable;
    one named alone is looked up on ``PATH`` when it runs."""
    if not isinstance(program, str) or "/" not in program or has_template(program):
        return
    path = folder / program
    if not path.is_file():
        yield at, f"program {str(path)!r} does not exist"
    elif not os.access(path, os.X_OK):
        yield at, f"program {str(path)!r} is not executable"


def _tables(value: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, table in _items(value):
        if isinstance(table, dict):
            yield name, table


def _items(value: Any) -> list[tuple[str, Any]]:
    return list(value.items()) if isinstance(value, dict) else []


def _tasks(raw: dict[str, Any]) -> Iterator[tuple[_At, dict[str, Any]]]:
    for pipeline, table in _tables(raw.get("pipelines")):
        for task, task_table in _tables(table.get("tasks")):
            yield ("pipelines", pipeline, "tasks", task), task_table
