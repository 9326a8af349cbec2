"""Task kinds and event sources found through entry points, so other packages add their own."""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from typing import Any

from cued.daemon.errors import CuedError

__all__ = ["SOURCES_GROUP", "TASK_KINDS_GROUP", "load_group", "source_kinds", "task_kinds"]

TASK_KINDS_GROUP = "cued.task_kinds"
SOURCES_GROUP = "cued.sources"


@functools.cache
def load_group(group: str) -> dict[str, Any]:
    """Load every entry point of ``group``, by name.

    :raises CuedError: if an entry point cannot be imported (named, with the reason)
    """
    found: dict[str, Any] = {}
    for ep in entry_points(group=group):
        try:
            found[ep.name] = ep.load()
        except Exception as exc:
            raise CuedError(
                f"cannot load {group} entry point {ep.name!r} ({ep.value}): {exc}"
            ) from exc
    return found


def task_kinds() -> dict[str, Any]:
    """The task-kind classes by name (``http``, ``shell``, ...)."""
    return load_group(TASK_KINDS_GROUP)


def source_kinds() -> dict[str, Any]:
    """The event-source classes by kind (``webhook``, ``kafka``, ...)."""
    return load_group(SOURCES_GROUP)
