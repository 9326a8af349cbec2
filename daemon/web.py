"""The daemon's one HTTP front: the control API, and the paths sources mount (webhooks).

Sources mount their handlers at run time (``ctx.routes.mount``); a request whose path is
mounted goes to that source, any other to the API app. Later issues add the UI and metrics
to the same API app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["WebFront"]


class WebFront:
    """An ASGI app: mounted source paths first, then ``fallback``."""

    def __init__(self, fallback: ASGIApp) -> None:
        self._fallback = fallback
        self._mounted: dict[str, ASGIApp] = {}

    def mount(self, path: str, app: ASGIApp) -> None:
        path = "/" + path.strip("/")
        if path in self._mounted:
            raise ValueError(f"two sources serve the path {path!r}")
        if (
            path == "/"
            or path.startswith(("/api/", "/ui/"))
            or path in ("/metrics", "/healthz", "/readyz")
        ):
            raise ValueError(f"path {path!r} is the daemon's own (API, UI, metrics)")
        self._mounted[path] = app

    def unmount(self, path: str) -> None:
        self._mounted.pop("/" + path.strip("/"), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            app = self._mounted.get(scope["path"].rstrip("/") or "/")
            if app is not None:
                await app(scope, receive, send)
                return
        await self._fallback(scope, receive, send)
