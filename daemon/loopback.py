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
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["is_loopback_host", "is_loopback_listen"]

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
