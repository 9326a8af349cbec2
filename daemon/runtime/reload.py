"""Reload: read the configuration file again and apply it in place, losing no event.

```
reload()                        one at a time (SIGHUP, `cued reload`, the API)
  began                         listeners: reload_began()   (systemd: RELOADING=1)
  read and check the file       invalid: refused, each problem logged (file:line), the
                                running configuration goes on untouched
  prepare                       what can fail (task kinds, user tokens): refused if it does
  record the version            the text, its hash and the time, in the store
  apply, with no await between  pipelines, triggers, pools, alerts, users: an event is
                                matched, and a run started, wholly under the old or the new
  sources                       changed and removed ones stop once what they took is
                                recorded and acknowledged; changed and added ones start;
                                the others run on untouched
  ended                         listeners: reload_ended(outcome)   (systemd: READY=1)
```

Runs already started (or waiting for a slot) finish on the pipeline definition they started
with; new runs record the version they start under.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from cued.daemon.config import load_config
from cued.daemon.config.changes import changes, reload_problems, running_config
from cued.daemon.config.registry import task_kinds_used
from cued.daemon.core.ids import now
from cued.daemon.errors import ConfigError, CuedError, StoreError
from cued.daemon.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.config import Config
    from cued.daemon.runtime.alerts import Alerts
    from cued.daemon.runtime.intake import DaemonIntake
    from cued.daemon.runtime.runner import Runner
    from cued.daemon.runtime.sources import SourceSet
    from cued.daemon.sdk.kinds import TaskKind
    from cued.daemon.store import Store

__all__ = ["ReloadListener", "ReloadOutcome", "Reloader"]


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did."""

    applied: bool
    """False if the new configuration was refused (the old one runs on)."""
    version: int | None
    """The configuration version running after it."""
    problems: tuple[str, ...] = ()
    """Why it was refused (``file:line: key: message``), or what of it failed to start."""
    changes: dict[str, Any] = field(default_factory=dict)
    """What it changed, by part (``{"sources": {"changed": ["orders"]}, ...}``)."""
    started_at: float = 0.0
    ended_at: float = 0.0


class ReloadListener(Protocol):
    """Told when a reload begins and ends: where systemd's ``RELOADING=1`` (with
    ``MONOTONIC_USEC``) and ``READY=1`` are sent from."""

    def reload_began(self) -> None: ...

    def reload_ended(self, outcome: ReloadOutcome) -> None: ...


class Reloader:
    """Reloads the running daemon's configuration from its file.

    :param config: the configuration running now (read from a file, or reloads are refused)
    :param version: its configuration version
    :param prepare: the parts the runtime does not know (the web front's users): each is
        given the new configuration, checks it and returns how to apply it (called with
        no await before it), or raises :class:`~cued.daemon.errors.CuedError` to refuse
        the reload
    """

    def __init__(
        self,
        config: Config,
        version: int | None,
        *,
        store: Store,
        runner: Runner,
        intake: DaemonIntake,
        sources: SourceSet,
        alerts: Alerts | None,
        prepare: list[Callable[[Config], Callable[[], None]]] | None = None,
    ) -> None:
        self.config = config
        self.version = version
        self._store = store
        self._runner = runner
        self._intake = intake
        self._sources = sources
        self._alerts = alerts
        self._prepare = prepare or []
        self._listeners: list[ReloadListener] = []
        self._lock = anyio.Lock()
        self.last: ReloadOutcome | None = None
        """The latest reload's outcome (``None`` before the first)."""
        self._log = get_logger()

    def on_reload(self, listener: ReloadListener) -> None:
        """Tell ``listener`` when each reload begins and ends."""
        self._listeners.append(listener)

    async def reload(self) -> ReloadOutcome:
        """Read the configuration file again and apply it; refused, with the old one
        running on, if it is invalid. One reload at a time: a second waits for the first."""
        async with self._lock:
            started = now()
            for listener in self._listeners:
                listener.reload_began()
            self._log.info("config_reloading", file=str(self.config.file))
            outcome = ReloadOutcome(False, self.version, ("the reload did not finish",))
            try:
                outcome = await self._reload(started)
            finally:
                self.last = outcome
                for listener in self._listeners:
                    listener.reload_ended(outcome)
            return outcome

    async def _reload(self, started: float) -> ReloadOutcome:
        file = self.config.file
        if file is None:
            return self._refused(started, ["the configuration was not read from a file"])
        try:
            # in a worker thread: checking a large file (templates parsed, every trigger's
            # `when` compiled) takes a CPU-bound while, and events keep flowing meanwhile
            new = await anyio.to_thread.run_sync(load_config, file)
            applies = [prepare(new) for prepare in self._prepare]
        except ConfigError as exc:
            return self._refused(started, [str(p) for p in exc.problems])
        except CuedError as exc:
            return self._refused(started, [str(exc)])
        if problems := reload_problems(self.config, new):
            return self._refused(started, problems)
        assert new.text is not None
        found = changes(self.config, new)
        text, new = new.text, running_config(self.config, new)
        try:
            row = await self._store.add_config_version(text, str(file), now())
        except StoreError as exc:
            return self._refused(started, [f"the new version could not be recorded: {exc}"])
        # no await from here to the sources: each event is matched, and each run
        # started, wholly under the old configuration or wholly under the new one
        self._runner.reconfigure(new, row.version, self._new_kinds(new))
        self._intake.reconfigure(new)
        if self._alerts is not None:
            self._alerts.configure(new.alerts, new.base_dir)
        for apply in applies:
            apply()
        self.config, self.version = new, row.version
        restart = set(found.sources.changed)
        failed = await self._sources.apply(
            new.sources,
            stop=(*found.sources.changed, *found.sources.removed),
            start=tuple(n for n in new.sources if n in restart or n in found.sources.added),
        )
        for warning in new.warnings:
            self._log.warning("config_warning", problem=str(warning))
        if found.needs_restart:
            self._log.warning(
                "config_reload_needs_restart",
                settings=list(found.needs_restart),
                note="these apply when the daemon restarts; the old values are in use",
            )
        outcome = ReloadOutcome(True, row.version, tuple(failed), found.summary(), started, now())
        self._log.info(
            "config_reloaded",
            version=row.version,
            changes=outcome.changes,
            seconds=round(outcome.ended_at - started, 3),
            **({"problems": list(failed)} if failed else {}),
        )
        return outcome

    def _new_kinds(self, config: Config) -> dict[str, TaskKind]:
        return {
            name: cls()
            for name, cls in task_kinds_used(config).items()
            if name not in self._runner.kinds
        }

    def _refused(self, started: float, problems: list[str]) -> ReloadOutcome:
        for problem in problems:
            self._log.error("config_problem", problem=problem)
        self._log.error(
            "config_reload_refused",
            file=str(self.config.file),
            problems=len(problems),
            note="the running configuration is kept",
        )
        return ReloadOutcome(False, self.version, tuple(problems), {}, started, now())
