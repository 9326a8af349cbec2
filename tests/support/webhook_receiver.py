"""A webhook target for tests of what the daemon sends out (alerts, deadlines): it answers
each path as told and records every request. Serve it with
:func:`tests.support.http_server.serve_app`."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["Hit", "Receiver"]


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: Any
    status: int


@dataclass
class Receiver:
    """A webhook target: answers each path with its status (``"hang"``: no answer until
    :attr:`release`), records every request, and wakes :meth:`until` after each one."""

    status: dict[str, int | str] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    hanging: int = 0
    release: anyio.Event = field(default_factory=anyio.Event)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    async def endpoint(self, request: Request) -> JSONResponse:
        path = request.url.path
        status = self.status.get(path, 200)
        if status == "hang":
            self.hanging += 1
            self._notify()
            await self.release.wait()
            status = 200
        assert isinstance(status, int)
        self.hits.append(Hit(path, dict(request.headers), json.loads(await request.body()), status))
        self._notify()
        return JSONResponse({}, status)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, predicate) -> None:
        while not predicate():
            await self._changed.wait()

    def delivered(self, path: str) -> Counter[str]:
        """Answered 2xx, by ``Idempotency-Key`` (how a receiver that dedupes counts)."""
        return Counter(
            h.headers["idempotency-key"] for h in self.hits if h.path == path and h.status < 300
        )

    def tries(self, path: str) -> Counter[str]:
        return Counter(h.headers["idempotency-key"] for h in self.hits if h.path == path)

    def bodies(self, path: str) -> list[Any]:
        return [h.body for h in self.hits if h.path == path and h.status < 300]

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.endpoint, methods=["POST"])])
