"""The systemd unit ``cued service unit`` prints and ``cued service install`` writes.

Hardened to an exposure of 2.0 or lower in ``systemd-analyze security`` (the README's
"Running as a systemd service" explains each setting a user may need to loosen). What the
configuration names that the daemon must write (the state file's folder, the folders of
``files`` sources) is made writable with ``ReadWritePaths=``; everything else of the file
system is read-only (``ProtectSystem=strict``) and home folders are hidden.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["STATE_DIRECTORY", "UnitSettings", "render_unit", "stop_timeout_s"]

#: ``StateDirectory=``: /var/lib/cued, the daemon's own and private (0700)
STATE_DIRECTORY = "cued"
_WATCHDOG_S = 30


def stop_timeout_s(shutdown_grace_s: float) -> int:
    """``TimeoutStopSec=`` for a daemon given ``shutdown_grace`` to stop: the running
    tasks' grace, then the HTTP servers' own grace for open requests, then closing the
    store, with room to spare, so systemd's SIGKILL never cuts a clean stop short."""
    return math.ceil(2 * shutdown_grace_s) + 15


@dataclass(frozen=True)
class UnitSettings:
    """What a unit is made from.

    :param command: the ``cued`` program (absolute), with the arguments before ours
    :param config: the configuration file (absolute)
    :param user: the OS user the daemon runs as
    :param writable: folders outside ``/var/lib/cued`` the daemon writes to
    :param shutdown_grace_s: the configuration's ``shutdown_grace``
    :param in_home: something the daemon reads (Python, cued, the config) lies in a home
        folder: ``ProtectHome=read-only`` instead of hiding them
    :param in_tmp: something the daemon reads or writes lies in /tmp or /var/tmp, which
        ``PrivateTmp=yes`` would hide from it: ``PrivateTmp=no``
    """

    command: tuple[str, ...]
    config: Path
    user: str = "cued"
    writable: tuple[Path, ...] = field(default_factory=tuple)
    shutdown_grace_s: float = 30.0
    in_home: bool = False
    in_tmp: bool = False


def _quote(arg: str | Path, *, command: bool = False) -> str:
    # systemd splits on spaces and takes quotes as shells do; `%` would be a specifier,
    # and `$` a variable in a command line: doubled, they are taken as they are
    text = str(arg).replace("%", "%%")
    if command:
        text = text.replace("$", "$$")
    return shlex.quote(text) if set(text) & set(" \"'\\;") else text


def _protect_home(in_home: bool) -> str:
    if not in_home:
        return "ProtectHome=yes"
    return (
        "# read-only, not hidden: Python, cued or the config is in a home folder (pyenv,\n"
        "# a virtualenv in ~); install them elsewhere to hide homes (ProtectHome=yes)\n"
        "ProtectHome=read-only"
    )


def _private_tmp(in_tmp: bool) -> str:
    if not in_tmp:
        return "PrivateTmp=yes"
    return (
        "# no: Python, cued, the config or a folder it writes is in /tmp or /var/tmp, which\n"
        "# a private /tmp would hide; install them elsewhere to get one (PrivateTmp=yes)\n"
        "PrivateTmp=no"
    )


def render_unit(settings: UnitSettings) -> str:
    """The text of ``cued.service``."""
    writable = "".join(f"ReadWritePaths={_quote(p)}\n" for p in settings.writable)
    return f"""\
# cued.service, written by `cued service install` (`cued service unit` prints it).
# The README's "Running as a systemd service" says what each setting does and which
# to loosen for what (shell tasks that write elsewhere, more file descriptors, ...).
[Unit]
Description=cued event-driven orchestration daemon
Wants=network-online.target
After=network-online.target

[Service]
# READY=1 once the store is open, unfinished runs resumed, every source takes events and
# the HTTP listener is up; STATUS= says runs, backlog and held-back sources
Type=notify
NotifyAccess=main
ExecStart={" ".join(_quote(a, command=True) for a in settings.command)} \
--config {_quote(settings.config, command=True)} run
# `systemctl reload cued`: the daemon checks the file first and keeps its running config
# if it is invalid; this command waits for the outcome, so a refused reload shows as a
# failed one in `systemctl reload` and the journal (Type=notify-reload needs systemd 253)
ExecReload={" ".join(_quote(a, command=True) for a in settings.command)} \
--config {_quote(settings.config, command=True)} reload
# pings come only while the event loop, the store writer and the sources make progress
WatchdogSec={_WATCHDOG_S}s
Restart=on-failure
RestartSec=2s
# SIGTERM to the daemon only: it stops its sources, gives running tasks shutdown_grace
# ({settings.shutdown_grace_s:g} s), and ends what is left; the rest of the cgroup gets
# SIGKILL if anything is still there at the timeout
KillMode=mixed
TimeoutStopSec={stop_timeout_s(settings.shutdown_grace_s)}s
User={settings.user}
Group={settings.user}
StateDirectory={STATE_DIRECTORY}
StateDirectoryMode=0700
ConfigurationDirectory={STATE_DIRECTORY}
ConfigurationDirectoryMode=0750
WorkingDirectory=/var/lib/{STATE_DIRECTORY}
{writable}UMask=0077
LimitNOFILE=65536

# hardening: `systemd-analyze security cued.service` rates it 2.0 or lower
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
{_protect_home(settings.in_home)}
{_private_tmp(settings.in_tmp)}
PrivateDevices=yes
PrivateMounts=yes
ProtectHostname=yes
ProtectClock=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
DevicePolicy=closed
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""
