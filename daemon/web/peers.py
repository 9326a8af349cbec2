"""Who is at the other end of a loopback TCP connection: the tables of ``/proc/net``, read
when a connection opens, parsed by :mod:`cued.daemon.core.loopback`."""

from __future__ import annotations

from pathlib import Path

from cued.daemon.core.loopback import parse_tcp_table, tcp_owner

__all__ = ["tcp_client_uid"]

_PROC_NET = Path("/proc/net")


def tcp_client_uid(
    client: tuple[str, int], server: tuple[str, int], *, proc_net: Path = _PROC_NET
) -> int | None:
    """The uid of the OS user at the client end of a TCP connection on this machine, read
    from ``proc_net/tcp`` and ``proc_net/tcp6`` now; None if it cannot be told (no such
    files, not Linux, the client in another network namespace or gone).

    :param client: the peer address of the server's socket (host, port)
    :param server: the server's own address on the connection (host, port)
    """
    for name in ("tcp", "tcp6"):
        try:
            text = (proc_net / name).read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        uid = tcp_owner(parse_tcp_table(text), client, server)
        if uid is not None:
            return uid
    return None
