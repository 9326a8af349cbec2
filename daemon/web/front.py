"""The daemon's one HTTP front: the control API, and the paths sources mount (webhooks).

A source reserves its path when it is created, before the server listens, and mounts its
handler once it runs (``ctx.routes.reserve``, ``ctx.routes.mount``); a request whose path
is mounted goes to that source, any other to the API app (with the UI and metrics).

Between reserving and mounting (the daemon is starting) and after unmounting (it is
stopping), a request to a reserved path is answered ``503`` with ``Retry-After``, never
``404``: a sender that gives up on a ``404`` would lose the event. While a reload replaces
the source of a path (its settings changed), the path is *handed over*: a request that
comes between the old source's unmount and the new one's mount waits for the mount (at most
``HANDOVER_WAIT_S``) instead of being refused.

Every request body is capped before routing and before any token is checked
(:mod:`cued.daemon.web.body_limit`): at ``[http] max_body_bytes``, or at the source's own
``max_body_bytes`` on a reserved path, if that is larger (the source checks its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from cued.daemon.sdk.http_errors import error_response
from cued.daemon.web.body_limit import limit_body

if TYPE_CHECKING:
    from starlette.responses import JSONResponse
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HANDOVER_WAIT_S", "RETRY_AFTER_S", "WebFront"]

RETRY_AFTER_S = 2
"""What ``Retry-After`` says while a reserved path is not served: starting up takes a
moment, stopping ends in a restart."""

HANDOVER_WAIT_S = 10.0
"""How long a request to a path being handed over waits for the new source (a Kafka
source starting beside it may hold the reload this long); then ``503``."""


class WebFront:
    """An ASGI app: mounted source paths first, then ``fallback``.

    :param max_body_bytes: the cap on request bodies (for a reserved path, the larger of
        this and the source's own)
    """

    def __init__(self, fallback: ASGIApp, *, max_body_bytes: int) -> None:
        self._fallback = fallback
        self._max_body_bytes = max_body_bytes
        self._mounted: dict[str, ASGIApp] = {}
        self._reserved: dict[str, int] = {}
        self._handovers: dict[str, anyio.Event] = {}

    def reserve(self, path: str, *, max_body_bytes: int) -> None:
        """Declare that a source serves ``path`` once it runs.

        :param max_body_bytes: the largest body the source takes
        :raises ValueError: if another source reserved it, or the daemon serves it
        """
        path = _own(path)
        if path in self._reserved:
            raise ValueError(f"two sources serve the path {path!r}")
        self._reserved[path] = max_body_bytes

    def mount(self, path: str, app: ASGIApp) -> None:
        """Serve ``app`` at ``path`` (reserved before, or not).

        :raises ValueError: if another source serves it, or the daemon does
        """
        path = _own(path)
        if path in self._mounted:
            raise ValueError(f"two sources serve the path {path!r}")
        self._mounted[path] = app
        if (handover := self._handovers.pop(path, None)) is not None:
            handover.set()

    def hand_over(self, path: str) -> None:
        """Its source is being replaced (a reload): until it is mounted again, or
        :meth:`settle`, requests to ``path`` wait instead of being answered ``503``."""
        self._handovers.setdefault(_normal(path), anyio.Event())

    def settle(self) -> None:
        """End every handover (the reload is done): what still waits is answered as the
        path is served now."""
        handovers, self._handovers = self._handovers, {}
        for handover in handovers.values():
            handover.set()

    def unmount(self, path: str) -> None:
        self._mounted.pop(_normal(path), None)

    def release(self, path: str) -> None:
        """Give up a reserved path (its source was removed, or is replaced at a reload):
        requests to it go to the API (``404``) unless another source reserves it."""
        path = _normal(path)
        self._mounted.pop(path, None)
        self._reserved.pop(path, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._fallback(scope, receive, send)
            return
        path = _normal(scope["path"])
        app = self._mounted.get(path)
        reserved = self._reserved.get(path)
        if app is None and (handover := self._handovers.get(path)) is not None:
            with anyio.move_on_after(HANDOVER_WAIT_S):
                await handover.wait()
            app, reserved = self._mounted.get(path), self._reserved.get(path)
        if app is None and reserved is not None:
            await _unavailable(path)(scope, receive, send)
            return
        limit = max(self._max_body_bytes, reserved or 0)
        await limit_body(app or self._fallback, limit, scope, receive, send)


def _normal(path: str) -> str:
    return "/" + path.strip("/")


def _own(path: str) -> str:
    """``path`` normalised, if it is not the daemon's own."""
    path = _normal(path)
    if (
        path == "/"
        or path.startswith(("/api/", "/ui/"))
        or path in ("/api", "/ui", "/metrics", "/healthz", "/readyz")
    ):
        raise ValueError(f"path {path!r} is the daemon's own (API, UI, metrics)")
    return path


def _unavailable(path: str) -> JSONResponse:
    message = (
        f"{path} is not served at the moment (the daemon is starting or stopping); "
        f"retry in {RETRY_AFTER_S}s"
    )
    return error_response(503, "unavailable", message, **{"Retry-After": str(RETRY_AFTER_S)})
