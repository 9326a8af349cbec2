"""Serving an ASGI app with uvicorn inside the daemon's task group.

uvicorn is made to own the process (its ``serve`` installs signal handlers); here the
daemon owns signals and the task group owns the server: it starts with ``tg.start`` once
it listens, and stops when its scope is cancelled, finishing open requests first.

Sockets are always bound by the caller and passed in: uvicorn's own ``uds=`` makes a Unix
socket world-writable (0666), which the control socket must never be.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Iterator
    from socket import socket

    from starlette.types import Scope

__all__ = ["PerConnection", "connection_memo", "serve_asgi"]

_MEMO_KEY = "cued.connection"


class PerConnection(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, giving every request of one connection the same dict
    (read with :func:`connection_memo`): for what costs too much to learn at each request
    and holds for the connection's life (who opened it).

    uvicorn makes one protocol instance per connection (the class given as ``http=``) and
    hands each request a shallow copy of ``app_state`` as ``scope["state"]``: a dict put
    there when the connection is made is that connection's, shared by its requests only.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app_state = {**self.app_state, _MEMO_KEY: {}}


def connection_memo(scope: Scope) -> dict[str, Any] | None:
    """The dict of the connection ``scope`` came on, if it is served by
    :class:`PerConnection`."""
    found = scope.get("state", {}).get(_MEMO_KEY)
    return found if isinstance(found, dict) else None


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the daemon handles SIGTERM and SIGINT itself


async def serve_asgi(
    app: Any,
    *,
    sockets: list[socket],
    http: type[asyncio.Protocol] | None = None,
    grace_s: float = 5.0,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on already bound, listening ``sockets`` until cancelled.

    :param http: uvicorn's HTTP protocol class to use instead of its default (one that
        reads the peer's credentials, say)
    :param grace_s: how long open requests may take to finish at shutdown
    """
    config = uvicorn.Config(
        app,
        http=http if http is not None else "auto",
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=max(1, int(grace_s)),
    )
    server = _Server(config)
    stopped = anyio.Event()

    async def run() -> None:
        # shielded: a cancelled scope would kill uvicorn mid-request and leave its socket
        # open; it stops through should_exit instead, below
        try:
            with anyio.CancelScope(shield=True):
                await server.serve(sockets=sockets)
        finally:
            stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            # uvicorn has no ready callback; `started` flips once it listens
            while not server.started:
                if stopped.is_set():
                    raise RuntimeError(f"the HTTP server did not start ({sockets})")
                await anyio.sleep(0.005)
            task_status.started()
            await anyio.sleep_forever()
        finally:
            server.should_exit = True
