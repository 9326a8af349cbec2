"""The running event sources, each stoppable on its own: what a reload starts and stops.

Every source runs in the set's task group in a cancel scope of its own. Stopping one
cancels that scope and waits for the source to end: a source's own clean-up records and
acknowledges what it took (the Kafka source records its batch in flight and commits its
offsets before it leaves the group; a webhook's requests in flight are answered once
recorded, new ones get ``503`` while the path is not served). Sources whose settings did
not change are never touched: a Kafka consumer keeps its partitions, the webhook listener
its connections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import anyio

from cued.daemon.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cued.daemon.config import SourceConfig
    from cued.daemon.runtime.supervision import Supervision
    from cued.daemon.sdk.sources import Source

__all__ = ["BuildSource", "RunningSource", "SourceSet"]


class BuildSource(Protocol):
    """Makes the source instance for a ``[sources.NAME]`` table (the assembly's)."""

    def __call__(self, name: str, config: SourceConfig) -> Source: ...

    def release(self, name: str) -> None:
        """Give up what the source named ``name`` held outside itself (its reserved web
        paths), once it has stopped: a new source may take them."""

    def hold(self, name: str) -> None:
        """The source named ``name`` is about to be replaced: what comes for it meanwhile
        (a request to its web path) waits for the new one rather than being refused."""

    def settle(self) -> None:
        """The replacing is done: nothing waits any more."""


@dataclass(eq=False)
class RunningSource:
    """A source the set runs, with its settings and how to stop it."""

    name: str
    config: SourceConfig
    source: Source
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ended: anyio.Event = field(default_factory=anyio.Event)


class SourceSet:
    """The daemon's sources; serve them with :meth:`serve` in the daemon's task group.

    :param build: makes a source instance from its settings
    :param supervision: told of each source's state (``cued status``, the watchdog)
    """

    def __init__(self, build: BuildSource, supervision: Supervision | None = None) -> None:
        self._build = build
        self._supervision = supervision
        self._running: dict[str, RunningSource] = {}
        self._pending: list[tuple[str, SourceConfig, Source]] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._log = get_logger()

    @property
    def running(self) -> Mapping[str, Source]:
        """The source instances running now, by name."""
        return {name: r.source for name, r in self._running.items()}

    def build(self, sources: Mapping[str, SourceConfig]) -> None:
        """Make the instances of ``sources``, to start with :meth:`serve`: before the HTTP
        server listens, so that a webhook's path answers ``503``, not ``404``, until its
        source has started."""
        self._pending = [
            (name, config, self._build(name, config)) for name, config in sources.items()
        ]

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the sources built (each is taking events once this has started), then
        run them until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            pending, self._pending = self._pending, []
            for name, config, source in pending:
                await self._start(name, config, source)
            task_status.started()
            await anyio.sleep_forever()

    async def apply(
        self,
        sources: Mapping[str, SourceConfig],
        *,
        stop: tuple[str, ...],
        start: tuple[str, ...],
    ) -> list[str]:
        """Stop the sources named in ``stop`` (each once what it took is recorded and
        acknowledged), then start those named in ``start`` with their settings in
        ``sources``; the others go on untouched. Returns what failed to start, one line
        each (the others are started all the same).
        """
        for name in set(stop) & set(start):
            self._build.hold(name)
        try:
            return await self._replace(sources, stop, start)
        finally:
            self._build.settle()

    async def _replace(
        self, sources: Mapping[str, SourceConfig], stop: tuple[str, ...], start: tuple[str, ...]
    ) -> list[str]:
        await self._stop(stop)
        # all made at once, right after the old ones released their paths (no await in
        # between): a path a changed webhook keeps is never unreserved (503, not 404)
        failed, built = [], []
        for name in start:
            try:
                built.append((name, self._build(name, sources[name])))
            except Exception as exc:  # noqa: BLE001 - one source's failure, the rest go on
                failed.append(self._failed(name, exc))

        async def start_one(name: str, source: Source) -> None:
            try:
                await self._start(name, sources[name], source)
            except Exception as exc:  # noqa: BLE001 - one source's failure, the rest go on
                failed.append(self._failed(name, exc))

        # side by side: a webhook waiting to be handed over does not wait for a Kafka
        # consumer to join its group
        async with anyio.create_task_group() as tg:
            for name, source in built:
                tg.start_soon(start_one, name, source)
        return failed

    def _failed(self, name: str, exc: Exception) -> str:
        self._build.release(name)
        self._log.error("source_start_failed", source=name, error=str(exc))
        return f"source {name!r} did not start: {exc}"

    async def _stop(self, names: tuple[str, ...]) -> None:
        """Stop these sources, all at once, and return once each has ended (and given up
        its paths)."""
        stopping = [self._running.pop(n) for n in names if n in self._running]
        for running in stopping:
            if self._supervision is not None:
                self._supervision.forget(running.name)
            running.scope.cancel()
        for running in stopping:
            await running.ended.wait()
        for running in stopping:
            self._build.release(running.name)
            self._log.info("source_stopped", source=running.name)

    async def _start(self, name: str, config: SourceConfig, source: Source) -> None:
        assert self._tg is not None, "the sources are not served"
        running = RunningSource(name, config, source)
        if self._supervision is not None:
            self._supervision.add(name, config.kind)
        await self._tg.start(self._run, running)
        self._running[name] = running

    async def _run(
        self, running: RunningSource, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        try:
            with running.scope:
                if self._supervision is None:
                    await running.source.run(task_status=task_status)
                else:
                    await self._supervision.run_source(
                        running.name, running.source.run, task_status=task_status
                    )
        finally:
            running.ended.set()
