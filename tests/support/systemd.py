"""What systemd is to the daemon, played by a test: the socket ``NOTIFY_SOCKET`` names
(a real ``AF_UNIX`` datagram socket, read as systemd reads it) and a daemon process
started the way systemd starts one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["NotifySocket", "spawn_daemon"]

# generous, only so that a broken daemon fails the test instead of hanging it
_WAIT_S = 60.0


class NotifySocket:
    """The receiving end of sd_notify: every datagram, as the ``KEY=VALUE`` lines it held.

    :param abstract: bind in the abstract namespace (``@name``) instead of a path
    """

    def __init__(self, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._folder: str | None = None
        if abstract:
            name = f"cued-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            # short: a socket's path must fit in 108 bytes, a pytest tmp_path may not
            self._folder = tempfile.mkdtemp(prefix="sd-", dir="/tmp")
            self.address = str(Path(self._folder) / "notify")
            self.sock.bind(self.address)
        self.received: list[dict[str, str]] = []

    def close(self) -> None:
        self.sock.close()
        if self._folder is not None:
            Path(self.address).unlink(missing_ok=True)
            os.rmdir(self._folder)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def receive(self, timeout_s: float = _WAIT_S) -> dict[str, str]:
        """The next message (its assignments), waiting at most ``timeout_s``.

        :raises TimeoutError: if none came
        """
        self.sock.settimeout(timeout_s)
        data = self.sock.recv(65536)
        message = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.received.append(message)
        return message

    def until(
        self, wanted: Callable[[dict[str, str]], bool], *, alive: subprocess.Popen[bytes]
    ) -> list[dict[str, str]]:
        """Messages up to and including the first ``wanted`` one.

        :raises AssertionError: if the daemon exits first, or none comes in time
        """
        seen = []
        deadline = time.monotonic() + _WAIT_S
        while time.monotonic() < deadline:
            try:
                message = self.receive(timeout_s=0.5)
            except TimeoutError:
                if alive.poll() is not None:
                    raise AssertionError(f"the daemon exited ({alive.returncode})") from None
                continue
            seen.append(message)
            if wanted(message):
                return seen
        raise AssertionError(f"no such message; came: {seen}")


def spawn_daemon(
    config: Path,
    *,
    env: Mapping[str, str],
    stderr: Path,
    pass_fds: tuple[int, ...] = (),
    listen_pid: bool = False,
) -> subprocess.Popen[bytes]:
    """``cued run`` as systemd starts it: with ``env`` added to the environment.

    :param pass_fds: descriptors to pass, as 3, 4, ... (socket activation)
    :param listen_pid: set ``LISTEN_PID`` to the daemon's own pid, as systemd does: a
        small wrapper moves the descriptors to 3, 4, ..., sets it, and execs the daemon
    """
    command = [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "run"]
    if listen_pid:
        command = [sys.executable, "-c", _ACTIVATE, *map(str, pass_fds), "--", *command]
    with stderr.open("ab") as log:
        return subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=log,
            stderr=log,
            pass_fds=pass_fds,
        )


# the wrapper systemd is, for socket activation: LISTEN_PID must be the pid of the process
# that reads it, which only exists once exec'd
_ACTIVATE = """
import fcntl, os, sys
split = sys.argv.index("--")
fds, command = [int(a) for a in sys.argv[1:split]], sys.argv[split + 1 :]
# first out of the way of 3, 4, ...: copies above them
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(fds)) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(moved):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(command[0], command)
"""
