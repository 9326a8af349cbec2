"""What counts as "this machine only": the Host header an open API answers to, and the
``[http] listen`` address it may serve on.

With no ``[auth.users]`` the API and the UI need no token, so they must be reachable from
this machine only, and answer only requests addressed to it: a page whose own host name
an attacker points at 127.0.0.1 (DNS rebinding) sends that name in ``Host``, and is
refused. Loopback is decided by parsing, never by prefix: ``127.0.0.1.evil.com`` is a
host name that merely starts with digits.

```
localhost, LOCALHOST        loopback (ASCII letters, any case; "localhost." is not)
127.0.0.1, 127.4.5.6        loopback (any address ipaddress calls is_loopback)
[::1], [::1]:8080           loopback
127.0.0.1:8080, localhost:  the port (digits, possibly none) is stripped first
anything else               not: other names, other addresses, bare IPv6 in Host,
                            non-ASCII, spaces, a malformed port
```

A loopback connection also says who made it, on Linux: ``/proc/net/tcp`` (IPv4) and
``/proc/net/tcp6`` (IPv6) list every TCP socket of this network namespace with the uid of
its owner, so the row whose local address is the client's and whose remote address is the
server's names the OS user at the other end (:func:`tcp_owner`; the API reads the
tables in :mod:`cued.daemon.web.peers`).

```
  sl  local_address rem_address   st ... uid  timeout inode ...
   0: 0100007F:D431 0100007F:1F90 01 ... 1000       0 45678 ...
      ^ 127.0.0.1:54321 -> 127.0.0.1:8080, owned by uid 1000
```

An IPv4 address is its 4 bytes (network order) read as a host-order 32-bit integer,
``%08X``; an IPv6 address is 4 such words; the port is ``%04X``. An IPv4 client of a
dual-stack socket shows as ``::ffff:a.b.c.d``, so addresses are compared with IPv4-mapped
ones taken as IPv4.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from typing import NamedTuple

from cued.daemon.core.untrusted import decimal

__all__ = [
    "TcpSocket",
    "is_loopback_host",
    "is_loopback_listen",
    "parse_tcp_table",
    "tcp_owner",
]

_HEX = re.compile(r"[0-9A-Fa-f]+")
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_PORT = re.compile(r"[0-9]{0,5}")


def is_loopback_host(host: str) -> bool:
    """Whether the value of a ``Host`` header names this machine's loopback interface.

    :param host: the header as sent: ``name``, ``name:port``, ``[v6]`` or ``[v6]:port``
    """
    if not host.isascii():
        return False
    if host.startswith("["):
        address, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]))):
            return False
        return _is_loopback_address(address, version=6)
    name, colon, port = host.partition(":")
    if colon and not _PORT.fullmatch(port):
        return False  # a second colon (bare IPv6 is not a valid Host) or a bad port
    return _is_loopback_name(name)


def is_loopback_listen(listen: str) -> bool:
    """Whether an ``[http] listen`` address (``host:port``, ``[v6]:port``) binds to
    loopback only; an empty host binds 127.0.0.1."""
    host = listen.rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host == "" or _is_loopback_name(host)


def _is_loopback_name(name: str) -> bool:
    return (name.isascii() and name.lower() == "localhost") or _is_loopback_address(name)


def _is_loopback_address(text: str, *, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return (version is None or address.version == version) and address.is_loopback


# -- who is at the other end of a loopback connection -------------------------------------


class TcpSocket(NamedTuple):
    """One row of ``/proc/net/tcp`` or ``/proc/net/tcp6``."""

    local: tuple[_Address, int]
    remote: tuple[_Address, int]
    uid: int
    inode: int
    """0 for a socket no process holds any more (closed, or in TIME_WAIT, where the
    kernel shows uid 0 whoever owned it)"""


def parse_tcp_table(text: str) -> list[TcpSocket]:
    """The sockets of a ``/proc/net/tcp`` or ``/proc/net/tcp6`` text; a line that is not
    such a row (the header, anything malformed) is left out.

    :param text: the file's text, as read
    """
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        local, remote = _endpoint(fields[1]), _endpoint(fields[2])
        uid, inode = decimal(fields[7], max_digits=20), decimal(fields[9], max_digits=20)
        if local is None or remote is None or uid is None or inode is None:
            continue
        rows.append(TcpSocket(local, remote, uid, inode))
    return rows


def tcp_owner(
    sockets: list[TcpSocket], client: tuple[str, int], server: tuple[str, int]
) -> int | None:
    """The uid of the process that holds the client's end of the connection from
    ``client`` to ``server``, or None if no held socket is that end.

    :param client: the peer address of the server's socket (host, port)
    :param server: the server's own address on the connection (host, port)
    """
    wanted_local, wanted_remote = _normal(client), _normal(server)
    if wanted_local is None or wanted_remote is None:
        return None
    for row in sockets:
        # a socket nobody holds (inode 0) shows uid 0 in TIME_WAIT: never take it for root
        if row.inode == 0:
            continue
        if _normal(row.local) == wanted_local and _normal(row.remote) == wanted_remote:
            return row.uid
    return None


def _endpoint(text: str) -> tuple[_Address, int] | None:
    address, colon, port = text.partition(":")
    if not (colon and len(port) == 4 and _HEX.fullmatch(port) and _HEX.fullmatch(address)):
        return None
    if len(address) not in (8, 32):
        return None
    # each 32-bit word is printed as a host-order integer of the network-order bytes
    packed = b"".join(
        int(address[i : i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(address), 8)
    )
    return ipaddress.ip_address(packed), int(port, 16)


def _normal(endpoint: tuple[_Address | str, int]) -> tuple[_Address, int] | None:
    """``endpoint`` with its address parsed, an IPv4-mapped IPv6 address as IPv4."""
    host, port = endpoint
    if isinstance(host, str):
        try:
            host = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return None
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    return host, port
