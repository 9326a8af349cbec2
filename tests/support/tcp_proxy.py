"""A TCP forwarder on loopback, cut and mended by the test: a real network cut between a
daemon and its database (every connection through it closed, new ones refused) without
touching the server that other tests share."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
from anyio.abc import SocketAttribute

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import SocketStream

__all__ = ["TcpProxy", "tcp_proxy"]


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target`` while open (see :func:`tcp_proxy`)."""

    def __init__(self, target: tuple[str, int], tg: anyio.abc.TaskGroup) -> None:
        self.target = target
        self.port = 0
        self._tg = tg
        self._scope: anyio.CancelScope | None = None

    async def mend(self) -> None:
        """Listen (again, on the same port) and forward what comes."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        self.port = listener.extra(SocketAttribute.local_port)
        self._scope = anyio.CancelScope()
        self._tg.start_soon(self._serve, listener, self._scope)

    def cut(self) -> None:
        """Close every connection through the proxy, and refuse new ones."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    async def _serve(self, listener: anyio.abc.SocketListener, scope: anyio.CancelScope) -> None:
        with scope:
            async with listener, anyio.create_task_group() as tg:
                await listener.serve(self._forward, task_group=tg)

    async def _forward(self, client: SocketStream) -> None:
        async with client:
            try:
                server = await anyio.connect_tcp(*self.target)
            except OSError:
                return
            async with server, anyio.create_task_group() as tg:

                async def pump(source: SocketStream, sink: SocketStream) -> None:
                    try:
                        async for chunk in source:
                            await sink.send(chunk)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass
                    tg.cancel_scope.cancel()  # one side closed: so is the other

                tg.start_soon(pump, client, server)
                tg.start_soon(pump, server, client)


@asynccontextmanager
async def tcp_proxy(host: str, port: int) -> AsyncIterator[TcpProxy]:
    """A :class:`TcpProxy` to ``host:port``, listening, for the block's time."""
    async with anyio.create_task_group() as tg:
        proxy = TcpProxy((host, port), tg)
        await proxy.mend()
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
