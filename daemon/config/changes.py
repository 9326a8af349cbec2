"""What a reload changes: two checked configurations compared, part by part (pure).

A reload applies pipelines, triggers, sources, pools (and ``max_running_tasks``), alerts and
users in place. Any other setting (the state file, ``[http]``, ``[telemetry]``,
``[retention]``, the rest of ``[daemon]``) is read once at start: a change to one is named in
:attr:`ConfigChanges.needs_restart`, and the daemon goes on with the old value until it
restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cued.daemon.core.loopback import is_loopback_listen

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cued.daemon.config.models import Config

__all__ = ["ConfigChanges", "Named", "changes", "reload_problems", "running_config"]

#: ``[daemon]`` keys a reload applies; every other one needs a restart.
_DAEMON_APPLIED = frozenset({"max_running_tasks", "pools", "python_modules"})


@dataclass(frozen=True)
class Named:
    """The names of one part (``[sources]``, ``[pipelines]``, ...) added, changed,
    removed or kept as they were."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()

    @classmethod
    def of(cls, old: Mapping[str, Any], new: Mapping[str, Any]) -> Named:
        return cls(
            added=tuple(sorted(set(new) - set(old))),
            changed=tuple(sorted(n for n in set(new) & set(old) if new[n] != old[n])),
            removed=tuple(sorted(set(old) - set(new))),
            kept=tuple(sorted(n for n in set(new) & set(old) if new[n] == old[n])),
        )

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def summary(self) -> dict[str, list[str]]:
        """The added, changed and removed names (for logs and answers)."""
        return {
            k: list(v)
            for k, v in (
                ("added", self.added),
                ("changed", self.changed),
                ("removed", self.removed),
            )
            if v
        }


@dataclass(frozen=True)
class ConfigChanges:
    """What differs between the running configuration and the one to load."""

    pipelines: Named
    sources: Named
    alerts: Named
    users: Named
    triggers: bool
    """Whether ``[[triggers]]`` differ (they are replaced as a whole)."""
    pools: bool
    """Whether ``[daemon] pools`` or ``max_running_tasks`` differ."""
    needs_restart: tuple[str, ...]
    """Settings that differ but apply only at a restart (``http.listen``, ...)."""

    @property
    def any(self) -> bool:
        return (
            self.pipelines.any
            or self.sources.any
            or self.alerts.any
            or self.users.any
            or self.triggers
            or self.pools
            or bool(self.needs_restart)
        )

    def summary(self) -> dict[str, Any]:
        """What changed, for logs and answers (only the parts that did)."""
        found: dict[str, Any] = {
            part: named.summary()
            for part, named in (
                ("pipelines", self.pipelines),
                ("sources", self.sources),
                ("alerts", self.alerts),
                ("users", self.users),
            )
            if named.any
        }
        if self.triggers:
            found["triggers"] = "replaced"
        if self.pools:
            found["pools"] = "changed"
        if self.needs_restart:
            found["needs_restart"] = list(self.needs_restart)
        return found


def changes(old: Config, new: Config) -> ConfigChanges:
    """Compare the running configuration ``old`` with ``new``, part by part."""
    restart = [
        f"daemon.{key}"
        for key in type(old.daemon).model_fields
        if key not in _DAEMON_APPLIED and getattr(old.daemon, key) != getattr(new.daemon, key)
    ]
    restart += [
        part
        for part in ("http", "retention", "telemetry")
        if getattr(old, part) != getattr(new, part)
    ]
    if old.base_dir != new.base_dir:
        restart.append("the config file's folder")
    return ConfigChanges(
        pipelines=Named.of(old.pipelines, new.pipelines),
        sources=Named.of(old.sources, new.sources),
        alerts=Named.of(old.alerts, new.alerts),
        users=Named.of(old.auth.users, new.auth.users),
        triggers=old.triggers != new.triggers,
        pools=(old.daemon.pools, old.daemon.max_running_tasks)
        != (new.daemon.pools, new.daemon.max_running_tasks),
        needs_restart=tuple(restart),
    )


def reload_problems(old: Config, new: Config) -> list[str]:
    """Why ``new``, valid on its own, cannot be applied to a daemon running ``old``: the
    daemon keeps what it read at start (its listen address) until it restarts.
    """
    listen = old.http.listen
    if listen and not is_loopback_listen(listen) and not new.auth.users:
        return [
            (
                f"the daemon listens on {listen!r} (not a loopback address) until it restarts: "
                "a reload cannot remove the last of [auth.users], the API would take no token; "
                "restart it instead"
            )
        ]
    return []


def running_config(old: Config, new: Config) -> Config:
    """What runs after ``new`` is applied to a daemon running ``old``: ``new``, but with
    the settings read only at start (see :attr:`ConfigChanges.needs_restart`) as they
    were, so that what the daemon shows is what it does, and the next reload names them
    again until a restart."""
    daemon = new.daemon.model_copy(
        update={
            key: getattr(old.daemon, key)
            for key in type(old.daemon).model_fields
            if key not in _DAEMON_APPLIED
        }
    )
    running = new.model_copy(
        update={
            "daemon": daemon,
            "http": old.http,
            "retention": old.retention,
            "telemetry": old.telemetry,
        }
    )
    running._base_dir = old.base_dir
    return running
