"""Task kinds and event sources found through entry points, so other packages add their own."""

from __future__ import annotations

import functools
from collections.abc import Iterator, MutableMapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from cued.daemon.errors import CuedError

if TYPE_CHECKING:
    from cued.daemon.config.models import Config

__all__ = [
    "SOURCES_GROUP",
    "TASK_KINDS_GROUP",
    "load_group",
    "source_kinds",
    "task_kinds",
    "task_kinds_used",
]

TASK_KINDS_GROUP = "cued.task_kinds"
SOURCES_GROUP = "cued.sources"


class _Group(MutableMapping[str, Any]):
    """The entry points of a group by name, each imported when first looked up: a
    configuration that uses two task kinds imports those two, not every source and task
    kind installed (Kafka's, MQTT's, AMQP's, Redis', NATS', SQL's clients: most of a
    second of each daemon's and each command's start). Names are listed, and checked
    with ``in``, without importing anything."""

    def __init__(self, group: str) -> None:
        self._group = group
        self._points = {ep.name: ep for ep in entry_points(group=group)}
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            point = self._points[name]  # KeyError: no such entry point
            try:
                self._loaded[name] = point.load()
            except Exception as exc:
                raise CuedError(
                    f"cannot load {self._group} entry point {name!r} ({point.value}): {exc}"
                ) from exc
        return self._loaded[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._loaded[name] = value  # a test's own kind

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._loaded.pop(name, None)
        self._points.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._points or name in self._loaded

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._points, *self._loaded]))

    def __len__(self) -> int:
        return len(set(self._points) | set(self._loaded))


@functools.cache
def load_group(group: str) -> MutableMapping[str, Any]:
    """The entry points of ``group``, by name, each imported when first looked up.

    :raises CuedError: on looking up one that cannot be imported (named, with the reason)
    """
    return _Group(group)


def task_kinds() -> MutableMapping[str, Any]:
    """The task-kind classes by name (``http``, ``shell``, ...)."""
    return load_group(TASK_KINDS_GROUP)


def source_kinds() -> MutableMapping[str, Any]:
    """The event-source classes by kind (``webhook``, ``kafka``, ...)."""
    return load_group(SOURCES_GROUP)


def task_kinds_used(config: Config) -> dict[str, Any]:
    """The task-kind classes by name that ``config``'s tasks use, imported now, and only
    those (a kind no task uses is not imported: see :class:`_Group`)."""
    kinds = task_kinds()
    used = {t.kind for p in config.pipelines.values() for t in p.tasks.values()}
    return {name: kinds[name] for name in sorted(used) if name in kinds}
