"""The control socket: the CLI's way into the running daemon, who may use it (where it is:
:mod:`cued.daemon.web.control_path`).

```
STATE.d/                a folder beside the state file (cued.db -> cued.db.d/), owned by
                        the daemon's user: 0700, or 0750 and group G with control_group = G
  control.sock          0600, or 0660 and group G
```

Two locks, one behind the other. The modes keep other users from connecting at all; and
each connection's peer credentials (``SO_PEERCRED``, Linux) are checked again before any
request is served: the daemon's own user, root, and members of ``[daemon] control_group``
may call (with every role: they could read the state file or signal the daemon anyway);
anyone else gets 403. A caller is named by its OS user, and a decision on an approval gate
made through the socket is recorded under that name, so one person has one name.

The folder is never in a shared temporary folder: a predictable name there can be taken
first by anyone. A socket path longer than a Unix socket allows is an error that says so.
"""

from __future__ import annotations

import grp
import os
import socket
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uvicorn.protocols.http.h11_impl import H11Protocol

from cued.daemon.errors import CuedError
from cued.daemon.sdk.http_errors import error_response
from cued.daemon.web.control_path import os_user_name

if TYPE_CHECKING:
    import asyncio
    from pathlib import Path

    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "ControlAccess",
    "ControlGuard",
    "Peer",
    "PeerCredentials",
    "bind_control_socket",
    "peer_of",
]

_PEER_KEY = "cued.peer"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a connection to the control socket."""

    pid: int
    uid: int
    gid: int
    name: str
    """The OS user's login name."""


@dataclass(frozen=True)
class ControlAccess:
    """Who may use the control socket: the daemon's own user, root, and the members of
    ``group`` (by their primary group, or as listed members)."""

    uid: int
    group: str | None = None
    gid: int | None = None

    @classmethod
    def of(cls, group: str | None) -> ControlAccess:
        """The access of this process's daemon, with ``[daemon] control_group``.

        :raises CuedError: if there is no such group
        """
        if group is None:
            return cls(os.geteuid())
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise CuedError(f"no group {group!r} on this system ([daemon] control_group)") from None
        return cls(os.geteuid(), group, gid)

    def allows(self, peer: Peer) -> bool:
        if peer.uid in (self.uid, 0):
            return True
        if self.gid is None:
            return False
        # looked up at each connection: taking someone out of the group takes effect
        try:
            members = grp.getgrgid(self.gid).gr_mem
        except KeyError:
            return False
        return peer.gid == self.gid or peer.name in members

    def refusal(self, peer: Peer | None) -> str:
        """Why ``peer`` is refused, for the error it gets."""
        who = "the caller" if peer is None else f"OS user {peer.name!r} (uid {peer.uid})"
        owner = f"the daemon's own user {os_user_name(self.uid)!r}"
        if self.group is None:
            allowed = f"{owner} and root may (a [daemon] control_group can let a group in)"
        else:
            allowed = f"{owner}, root and members of group {self.group!r} may"
        return f"{who} may not use this daemon's control socket; only {allowed}"


def bind_control_socket(path: Path, access: ControlAccess) -> socket.socket:
    """Create the private folder and bind the control socket in it, listening.

    Call only while holding the state file's lock: a socket left at ``path`` by a daemon
    that died is removed.

    :raises CuedError: if the folder belongs to someone else, or the socket cannot be made
    """
    if not hasattr(socket, "SO_PEERCRED"):
        raise CuedError("the control socket needs SO_PEERCRED (Linux) to know who connects")
    try:
        _private_folder(path.parent, access)
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(found.st_mode):
                raise CuedError(f"{str(path)!r} is in the control socket's place: remove it")
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        raise CuedError(f"cannot create the control socket {str(path)!r}: {exc}") from exc
    try:
        # bound with whatever mode the umask gives, inside a folder nobody else may enter
        # yet; then set to what it must be, so there is no moment it is open to others
        sock.bind(str(path))
        if access.gid is not None:
            os.chown(path, -1, access.gid)
        os.chmod(path, 0o600 if access.gid is None else 0o660)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CuedError(f"cannot create the control socket {str(path)!r}: {exc}") from exc
    sock.setblocking(False)
    return sock


def _private_folder(folder: Path, access: ControlAccess) -> None:
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    # through a descriptor opened without following links: what is checked is what is
    # changed, even if someone swaps the path meanwhile
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise CuedError(
            f"{str(folder)!r} is not a folder (the control socket's): remove it ({exc.strerror})"
        ) from exc
    try:
        found = os.fstat(fd)
        if found.st_uid != access.uid:
            raise CuedError(
                f"the control socket's folder {str(folder)!r} belongs to uid {found.st_uid}, "
                f"not to the daemon's user {os_user_name(access.uid)!r}: remove it"
            )
        if access.gid is not None:
            try:
                os.fchown(fd, -1, access.gid)
            except PermissionError:
                raise CuedError(
                    f"the daemon's user {os_user_name(access.uid)!r} cannot give "
                    f"{str(folder)!r} to group {access.group!r} ([daemon] control_group): "
                    "it must be a member of that group"
                ) from None
        # the group may enter and list, never write: with g+w, a member could put a
        # socket of their own in the daemon's place
        os.fchmod(fd, 0o700 if access.gid is None else 0o750)
    finally:
        os.close(fd)


def peer_of(scope: Scope) -> Peer | None:
    """The peer of the connection a request came on, as :class:`PeerCredentials` read it
    (``None`` on any other server)."""
    found = scope.get("state", {}).get(_PEER_KEY)
    return found if isinstance(found, Peer) else None


def _read_peer(transport: asyncio.BaseTransport) -> Peer | None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        pid, uid, gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except OSError:
        return None
    return Peer(pid, uid, gid, os_user_name(uid))


class PeerCredentials(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, which also puts the peer's credentials in every request's
    scope (``scope["state"]``, read with :func:`peer_of`).

    Why this way: uvicorn puts neither the transport nor peer credentials in the ASGI
    scope (``client`` is ``None`` on a Unix socket), and connections are accepted inside
    asyncio's server, so neither a middleware nor a socket we bind ourselves sees who
    connected. The protocol instance does: uvicorn makes one per connection, through the
    class given as ``http=`` in its ``Config`` (public API), and ``connection_made`` is
    plain ``asyncio.Protocol``. What it reads is handed on in ``app_state``, which uvicorn
    copies into each request's ``scope["state"]`` (the ASGI lifespan-state extension); a
    copy per connection keeps one connection's peer from another's. Should uvicorn stop
    doing that, :func:`peer_of` finds nothing and :class:`ControlGuard` refuses everyone:
    it fails closed, and the tests say so.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app_state = {**self.app_state, _PEER_KEY: _read_peer(transport)}


class ControlGuard:
    """An ASGI app that serves ``app`` to the peers ``access`` allows, and answers anyone
    else (or a request with no known peer) 403 with an error body."""

    def __init__(self, app: ASGIApp, access: ControlAccess) -> None:
        self._app = app
        self._access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            peer = peer_of(scope)
            if peer is None or not self._access.allows(peer):
                refused = error_response(403, "local_user", self._access.refusal(peer))
                await refused(scope, receive, send)
                return
        await self._app(scope, receive, send)
