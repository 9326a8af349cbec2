"""What systemd gave the daemon (:class:`_Systemd`), taken from the environment once,
when the process starts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cued.daemon.service.activation import inherited_sockets
from cued.daemon.service.notify import (
    Notifier,
    discard_service_environment,
    watchdog_interval_s,
)

if TYPE_CHECKING:
    import socket


@dataclass(frozen=True)
class _Systemd:
    """What systemd gave the daemon: a notification socket, a watchdog interval and
    listening sockets (each absent when the daemon runs without systemd)."""

    notifier: Notifier
    watchdog_s: float | None
    sockets: list[socket.socket]

    @classmethod
    def from_environment(cls) -> _Systemd:
        pid = os.getpid()
        found = cls(
            Notifier.from_environment(os.environ),
            watchdog_interval_s(os.environ, pid),
            inherited_sockets(os.environ, pid),
        )
        discard_service_environment(os.environ)  # no task's process acts on them
        return found
