"""The daemon's servers, the control socket and the HTTP front (:class:`_Faces`): on the
sockets systemd passed or one bound to ``[http] listen`` (:func:`_listening`)."""

from __future__ import annotations

import socket
from functools import partial
from typing import TYPE_CHECKING

import anyio

from cued.daemon.errors import CuedError
from cued.daemon.service.activation import loopback_only
from cued.daemon.web.body_limit import BodyLimit
from cued.daemon.web.control import (
    ControlAccess,
    ControlGuard,
    PeerCredentials,
    bind_control_socket,
)
from cued.daemon.web.control_path import control_socket_path
from cued.daemon.web.outage import Switch, outage_app
from cued.daemon.web.server import PerConnection, serve_asgi

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from cued.daemon.assembly._info import DaemonInfo
    from cued.daemon.assembly._systemd import _Systemd
    from cued.daemon.config import Config
    from cued.daemon.runtime.reconnect import DatabaseLink


class _Faces:
    """The control socket's and the HTTP front's servers: made once the daemon first
    starts, they outlive a loss of the database, and each serves a
    :class:`~cued.daemon.web.outage.Switch` (the daemon's apps while it has the database,
    an answer that it reconnects while it has not)."""

    def __init__(
        self,
        config: Config,
        systemd: _Systemd,
        link: DatabaseLink[DaemonInfo],
        tg: anyio.abc.TaskGroup,
    ) -> None:
        self._config = config
        self._systemd = systemd
        self._tg = tg
        self._outage = outage_app(link.outage_problem)
        self.control = Switch(self._outage)
        self.front = Switch(self._outage)
        self.address: tuple[str, int] | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()

    async def serve(self, control: ASGIApp, front: ASGIApp) -> None:
        """Serve ``control`` and ``front`` (the first time: bind and start the servers)."""
        self.control.app, self.front.app = control, front
        if self._scope is None:
            await self._tg.start(self._run)

    def outage(self) -> None:
        self.control.app = self.front.app = self._outage

    async def close(self) -> None:
        """Stop the servers (open requests get ``shutdown_grace``)."""
        if self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        config = self._config
        grace = config.daemon.shutdown_grace
        access = ControlAccess.of(config.daemon.control_group)
        guarded = ControlGuard(BodyLimit(self.control, config.http.max_body_bytes), access)
        try:
            with anyio.CancelScope() as self._scope:
                async with anyio.create_task_group() as tg:
                    # under the state's lock
                    control_sock = bind_control_socket(
                        control_socket_path(config.state_path), access
                    )
                    await tg.start(
                        partial(
                            serve_asgi,
                            guarded,
                            sockets=[control_sock],
                            http=PeerCredentials,
                            grace_s=grace,
                        )
                    )
                    if listening := _listening(config, self._systemd):
                        self.address = _address(listening[0])
                        # one memo per connection: the open API learns who opened it once
                        await tg.start(
                            partial(
                                serve_asgi,
                                self.front,
                                sockets=listening,
                                http=PerConnection,
                                grace_s=grace,
                            )
                        )
                    task_status.started()
        finally:
            self._stopped.set()


def _listening(config: Config, systemd: _Systemd) -> list[socket.socket]:
    """The HTTP front's sockets: those systemd passed, else one bound to [http] listen.

    :raises CuedError: if the API is open (no [auth.users]) and a passed socket listens
        beyond loopback, which ``cued validate`` refuses for ``listen`` too
    """
    if systemd.sockets:
        if not config.auth.users and not loopback_only(systemd.sockets):
            raise CuedError(
                "systemd passed a socket that listens beyond loopback, and with no "
                "[auth.users] the API and UI take no token: set ListenStream= to "
                "127.0.0.1:PORT or [::1]:PORT, or add [auth.users.NAME] with tokens"
            )
        return systemd.sockets
    return [_bind(config.http.listen)] if config.http.listen else []


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio sets TCP_NODELAY on accepted connections only when
    # the socket says it is TCP, and without it every keep-alive response waits ~40 ms for
    # a delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, int(port)))
    except (OSError, ValueError) as exc:
        sock.close()
        raise CuedError(f"cannot listen on {listen!r} ([http] listen): {exc}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _address(sock: socket.socket) -> tuple[str, int] | None:
    """Where a TCP socket listens (None for a Unix one)."""
    name = sock.getsockname()
    return (str(name[0]), int(name[1])) if isinstance(name, tuple) else None
