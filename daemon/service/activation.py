"""Socket activation (``sd_listen_fds(3)``): the listening sockets systemd passes as file
descriptors 3, 4, ... when ``LISTEN_PID`` is this process and ``LISTEN_FDS`` says how many.

With them the daemon serves HTTP on what systemd holds open, so a restart refuses no
connection: they wait in the socket's queue until the new process accepts them.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from cued.daemon.core.loopback import is_loopback_host
from cued.daemon.core.untrusted import decimal
from cued.daemon.errors import CuedError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["SD_LISTEN_FDS_START", "inherited_sockets", "loopback_only"]

SD_LISTEN_FDS_START = 3
_MAX_FDS = 64  # more than any unit passes; a larger count is not believed


def inherited_sockets(environ: Mapping[str, str], pid: int) -> list[socket.socket]:
    """The listening stream sockets passed to process ``pid``, none if it was not
    socket-activated (``LISTEN_PID`` absent or another process's).

    :raises CuedError: if a passed descriptor is not a listening TCP or Unix stream socket
    """
    if decimal(environ.get("LISTEN_PID", "")) != pid:
        return []
    count = decimal(environ.get("LISTEN_FDS", ""))
    if not count:
        return []
    if count > _MAX_FDS:
        raise CuedError(f"LISTEN_FDS={count} is more descriptors than cued takes ({_MAX_FDS})")
    found = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise CuedError(f"descriptor {fd} of LISTEN_FDS is no socket: {exc}") from exc
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            sock.detach()
            raise CuedError(
                f"descriptor {fd} of LISTEN_FDS is not a listening stream socket: use "
                "ListenStream= in the .socket unit"
            )
        os.set_inheritable(fd, False)  # no task's process keeps the port open
        sock.setblocking(False)
        found.append(sock)
    return found


def loopback_only(sockets: list[socket.socket]) -> bool:
    """Whether every socket listens on loopback only (or on a Unix path): what the open
    API (no ``[auth.users]``) needs, as ``[http] listen`` does."""
    for sock in sockets:
        if sock.family == socket.AF_UNIX:
            continue
        host = str(sock.getsockname()[0])
        if not is_loopback_host(f"[{host}]" if ":" in host else host):
            return False
    return True
