"""systemd itself, as PID 1 of fresh namespaces, for a test to install and run a unit in.

This machine boots no systemd, but may start one: root, with ``unshare`` (pid, mount, uts,
ipc and cgroup namespaces) and systemd's cgroup hierarchies mounted. It boots into an
empty target (no ``sysinit.target``: nothing of the machine's own is started, no
``tmpfiles`` cleans /tmp) with, in its mount namespace only:

- a tmpfs on ``/run`` (its own ``/run/systemd``: units go to ``/run/systemd/system``);
- overlays on ``/etc`` and ``/var/lib`` whose changes stay in that tmpfs, so the
  ``ConfigurationDirectory=`` and ``StateDirectory=`` it creates never reach the machine;
- its own tmpfs on ``/sys/fs/cgroup`` (systemd makes it read-only, and adds links to
  it), with the machine's cgroup hierarchies mounted again inside its cgroup namespace:
  they show only its own folder of each, where everything it creates goes, removed at
  the end.

The network is the machine's: a test reaches the daemon's HTTP port on loopback.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["SystemdPid1", "booted"]

_WAIT_S = 60.0
_CGROUPS = Path("/sys/fs/cgroup")

_BOOT = """\
set -e
mount --make-rprivate /
mount -t proc proc /proc
mount -t tmpfs tmpfs /run
mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
{cgroups}for d in etc var/lib; do
    mkdir -p /run/e2e/$d/upper /run/e2e/$d/work
    mount -t overlay overlay -o lowerdir=/$d,upperdir=/run/e2e/$d/upper,workdir=/run/e2e/$d/work /$d
done
mkdir -p /run/systemd/system
printf '[Unit]\\nDefaultDependencies=no\\n' > /run/systemd/system/e2e.target
# its console is a terminal the test reads (no journald runs): SystemdPid1.log
mount --bind "$1" /dev/console
exec env container=cued-e2e /lib/systemd/systemd --system --unit=e2e.target --log-target=console
"""


class SystemdPid1:
    """A running systemd; :meth:`systemctl` talks to it."""

    def __init__(self, process: subprocess.Popen[bytes], pid1: int, console: list[bytes]) -> None:
        self.process = process
        self.pid1 = pid1
        self._console = console

    def run(self, *command: str, timeout_s: float = _WAIT_S) -> subprocess.CompletedProcess[str]:
        """``command`` inside its namespaces (as ``nsenter`` runs it)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", *command],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def log(self) -> str:
        """What systemd logged to its console so far (it runs no journald)."""
        return b"".join(self._console).decode(errors="replace")

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        shown = self.systemctl("show", unit, *(f"--property={p}" for p in properties))
        assert shown.returncode == 0, shown.stderr
        return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)

    def add_unit(self, name: str, text: str) -> None:
        path = f"/run/systemd/system/{name}"
        put = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "tee", path],
            input=text,
            capture_output=True,
            text=True,
            timeout=_WAIT_S,
            check=False,
        )
        assert put.returncode == 0, put.stderr
        reloaded = self.systemctl("daemon-reload")
        assert reloaded.returncode == 0, reloaded.stderr


def _read_all(fd: int, into: list[bytes]) -> None:
    try:
        while chunk := os.read(fd, 65536):
            into.append(chunk)
    except OSError:  # EIO: the last holder of the other end closed it
        pass
    finally:
        os.close(fd)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _hierarchies() -> list[Path]:
    # not cpuset: a new cpuset cgroup has no CPUs until given some (joining it fails), and
    # systemd does not need it
    return [h for h in _CGROUPS.iterdir() if (h / "cgroup.procs").exists() and h.name != "cpuset"]


def _mount_cgroups() -> str:
    """Shell lines that mount each of the machine's cgroup hierarchies again, as they are
    mounted (in a cgroup namespace: its own part of each)."""
    lines = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        rest = fields[fields.index("-") + 1 :]
        point, fstype, options = fields[4], rest[0], rest[2]
        if not point.startswith(f"{_CGROUPS}/") or fstype not in ("cgroup", "cgroup2"):
            continue
        kept = [o for o in options.split(",") if o not in ("rw", "ro")]
        if any(o.startswith("name=") for o in kept):
            kept.insert(0, "none")
        option = f" -o {','.join(kept)}" if kept else ""
        lines.append(f"mkdir -p {point} && mount -t {fstype}{option} {fstype} {point}\n")
    return "".join(lines)


def _remove_cgroups(name: str) -> None:
    for hierarchy in _hierarchies():
        top = hierarchy / name
        if not top.is_dir():
            continue
        deadline = time.monotonic() + _WAIT_S
        while top.exists() and time.monotonic() < deadline:
            # depth first: a cgroup goes once its children and processes are gone
            for folder in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if folder.is_dir():
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
            if top.exists():
                time.sleep(0.05)


@contextlib.contextmanager
def booted() -> Iterator[SystemdPid1]:
    """systemd booted as PID 1 (see the module); ended, and its cgroups removed, after.

    :raises AssertionError: if it cannot start here, saying why
    """
    assert os.geteuid() == 0, "systemd as PID 1 needs root"
    assert Path("/lib/systemd/systemd").exists(), "apt-get install systemd"
    name = f"cued-e2e-{secrets.token_hex(4)}"
    hierarchies = _hierarchies()
    for hierarchy in hierarchies:
        (hierarchy / name).mkdir()
    # the shell moves itself into those cgroups, then becomes unshare: the cgroup
    # namespace's root is there, so everything systemd creates is under it
    enter = "".join(f"echo $$ > {h / name / 'cgroup.procs'}\n" for h in hierarchies)
    command = (
        'exec unshare --pid --fork --kill-child --mount --uts --ipc --cgroup bash -c "$0" boot "$1"'
    )
    # systemd logs to /dev/console only if it is a terminal: a pseudo-terminal's
    master, slave = os.openpty()
    console: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, console), daemon=True)
    reader.start()
    boot = _BOOT.replace("{cgroups}", _mount_cgroups())
    process = subprocess.Popen(
        ["bash", "-c", enter + command, boot, os.ttyname(slave)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + _WAIT_S
        systemd: SystemdPid1 | None = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                assert process.stderr is not None
                raise AssertionError(
                    f"systemd did not start as PID 1 here: {process.stderr.read().decode()}"
                )
            if children := _children(process.pid):
                candidate = SystemdPid1(process, children[0], console)
                if candidate.systemctl("show", "--property=Version").returncode == 0:
                    systemd = candidate
                    break
            time.sleep(0.05)
        assert systemd is not None, "systemd did not answer systemctl in time"
        yield systemd
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # unshare, and with it all it started
        process.wait()
        if process.stderr is not None:
            process.stderr.close()
        os.close(slave)
        reader.join(_WAIT_S)  # it ends once no one holds the terminal open
        _remove_cgroups(name)
