"""The configured sources, made for a session (:class:`_Sources`), each with its way to
the web front (:class:`_SourceRoutes`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cued.daemon.config.registry import source_kinds
from cued.daemon.logs import get_logger
from cued.daemon.sdk.sources import SourceContext

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from cued.daemon.config import Config, SourceConfig
    from cued.daemon.runtime.intake import DaemonIntake
    from cued.daemon.sdk.sources import Source
    from cued.daemon.web.front import WebFront


class _SourceRoutes:
    """One source's way to the web front: the paths it reserves are remembered, to be
    released when it stops for good (removed or replaced at a reload)."""

    def __init__(self, front: WebFront) -> None:
        self._front = front
        self.paths: list[str] = []

    def reserve(self, path: str, *, max_body_bytes: int) -> None:
        self._front.reserve(path, max_body_bytes=max_body_bytes)
        self.paths.append(path)

    def mount(self, path: str, app: ASGIApp) -> None:
        self._front.mount(path, app)

    def unmount(self, path: str) -> None:
        self._front.unmount(path)

    def release(self, path: str) -> None:
        self._front.release(path)


class _Sources:
    """Makes the configured sources (:class:`~cued.daemon.runtime.sources.BuildSource`)."""

    def __init__(self, config: Config, intake: DaemonIntake) -> None:
        self._base_dir = config.base_dir
        self._intake = intake
        self.front: WebFront | None = None
        """Where webhooks mount: set before any source is made."""
        self._routes: dict[str, _SourceRoutes] = {}

    def __call__(self, name: str, config: SourceConfig) -> Source:
        assert self.front is not None, "the web front is not made yet"
        routes = self._routes[name] = _SourceRoutes(self.front)
        ctx = SourceContext(
            source=name,
            intake=self._intake,
            log=get_logger(source=name),
            routes=routes,
            base_dir=self._base_dir,
        )
        cls = source_kinds()[config.kind]
        built: Source = cls(cls.Config.model_validate(config.params), ctx)
        return built

    def release(self, name: str) -> None:
        routes = self._routes.pop(name, None)
        if routes is not None:
            for path in routes.paths:
                routes.release(path)

    def hold(self, name: str) -> None:
        if (routes := self._routes.get(name)) is not None and self.front is not None:
            for path in routes.paths:
                self.front.hand_over(path)

    def settle(self) -> None:
        if self.front is not None:
            self.front.settle()
