"""systemd's notification protocol (``sd_notify(3)``): newline-separated ``KEY=VALUE``
lines in one datagram to the ``AF_UNIX`` socket that ``NOTIFY_SOCKET`` names.

Written here rather than taken from PyPI: ``sdnotify`` (last release 2017) and
``systemd-watchdog`` block on a full socket, swallow every error with a bare ``except``
(or read ``WATCHDOG_USEC`` with ``str.isdigit``, which takes ``"¹"``), and time the
watchdog by the wall clock; ``systemd-python`` and ``cysystemd`` need libsystemd's headers
and a compiler. The protocol is one ``sendto``.

The datagram is sent without blocking: systemd reads its socket at once, and a status or
a ping lost to a full queue is told in the log rather than holding up the event loop.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

from cued.daemon.core.untrusted import decimal
from cued.daemon.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping

__all__ = ["Notifier", "discard_service_environment", "watchdog_interval_s"]

_log = get_logger()


def _address(value: str | None) -> str | None:
    """The socket ``NOTIFY_SOCKET`` names: a path, or ``@name`` in the abstract
    namespace; None for anything else (``vsock:`` addresses are not spoken here)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    _log.warning("notify_socket_unsupported", address=value)
    return None


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """``WATCHDOG_USEC`` in seconds when it is meant for process ``pid``
    (``WATCHDOG_PID`` absent or equal), else None (``sd_watchdog_enabled(3)``)."""
    usec = decimal(environ.get("WATCHDOG_USEC", ""))
    if not usec:
        return None
    if "WATCHDOG_PID" in environ and decimal(environ["WATCHDOG_PID"]) != pid:
        return None
    return usec / 1_000_000


def _one_line(text: str) -> str:
    # a newline would start another assignment of the message
    return " ".join(text.split())


class Notifier:
    """Tells systemd how the service is (a no-op without ``NOTIFY_SOCKET``).

    :param address: the socket (``@name`` for the abstract namespace), or None
    """

    def __init__(self, address: str | None) -> None:
        self._address = _address(address)
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str]) -> Notifier:
        """The notifier ``NOTIFY_SOCKET`` asks for; the variable is taken out of
        ``environ``, so no task's process inherits it and speaks for the daemon."""
        return cls(environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; whether it went."""
        if self._sock is None or self._address is None:
            return False
        message = "\n".join(assignments).encode("utf-8", "backslashreplace")
        try:
            self._sock.sendto(message, self._address)
        except OSError as exc:  # a full queue, systemd gone: the service runs on
            _log.warning("notify_failed", message=assignments[0], error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Started: ``systemctl start`` returns, units ordered after this one start."""
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        """The line ``systemctl status`` shows."""
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """The service is making progress (``WatchdogSec=``)."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """The service is stopping (sent at SIGTERM, before the drain)."""
        return self.send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def reloading(self) -> bool:
        """A reload begins (``Type=notify-reload``): follow with :meth:`ready` once the
        new configuration is applied, or refused. For the reload to call."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def discard_service_environment(environ: MutableMapping[str, str]) -> None:
    """Take what systemd set for the daemon alone out of ``environ`` (once read), as
    ``sd_notify``'s ``unset_environment`` does: a task's process must not act on it."""
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        environ.pop(name, None)
