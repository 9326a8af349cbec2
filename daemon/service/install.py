"""``cued service install``: the daemon's OS user, the folders it writes, and its unit.

Run as root. Idempotent: an existing user is kept, existing folders are given to the
user, the unit file is written anew. systemd is told (``systemctl daemon-reload``) when it
runs; enabling and starting is left to the operator (``systemctl enable --now cued``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cued.daemon.errors import CuedError
from cued.daemon.service.unit import STATE_DIRECTORY, UnitSettings, render_unit

if TYPE_CHECKING:
    from cued.daemon.config import Config

__all__ = ["Installed", "install", "unit_settings", "writable_folders"]

_STATE_ROOT = Path("/var/lib") / STATE_DIRECTORY
_CONFIG_ROOT = Path("/etc") / STATE_DIRECTORY  # ConfigurationDirectory=
_HOMES = (Path("/home"), Path("/root"), Path("/run/user"))  # what ProtectHome= hides


@dataclass(frozen=True)
class Installed:
    """What ``install`` did, for the CLI to tell."""

    unit_path: Path
    user_created: bool
    folders: tuple[Path, ...]
    warnings: tuple[str, ...]
    reloaded: bool


#: What ``PrivateTmp=yes`` replaces with folders of the service's own.
_TMPS = (Path("/tmp"), Path("/var/tmp"))


def writable_folders(config: Config) -> list[Path]:
    """The folders the daemon writes to under ``config``: the state file's, and each
    ``files`` source's (it moves files into processed/ and failed/ there)."""
    folders = [config.state_path.resolve().parent]
    folders.extend(
        (config.base_dir / path).resolve()
        for source in config.sources.values()
        if source.kind == "files" and isinstance(path := source.params.get("path"), str)
    )
    return list(dict.fromkeys(folders))


def unit_settings(config: Config, config_path: Path, *, user: str) -> UnitSettings:
    """The unit for ``config``: folders the state directory does not hold are made
    writable with ``ReadWritePaths=``."""
    outside = [f for f in writable_folders(config) if not f.is_relative_to(_STATE_ROOT)]
    command = _cued_command()
    read = [
        Path(command[0]).resolve(),
        Path(sys.executable).resolve(),
        Path(sys.prefix).resolve(),
        Path(sys.base_prefix).resolve(),
        config_path.resolve(),
        *outside,
    ]
    return UnitSettings(
        command=command,
        in_home=any(p.is_relative_to(home) for p in read for home in _HOMES),
        in_tmp=any(p.is_relative_to(tmp) for p in read for tmp in _TMPS),
        config=config_path.resolve(),
        user=user,
        writable=tuple(outside),
        shutdown_grace_s=config.daemon.shutdown_grace,
    )


def _cued_command() -> tuple[str, ...]:
    """How systemd is to start this very ``cued``: the script beside the running Python
    (a virtualenv's bin/), else the one on PATH, else the module through this Python."""
    beside = Path(sys.executable).parent / "cued"
    if os.access(beside, os.X_OK):
        return (str(beside),)
    if found := shutil.which("cued"):
        return (str(Path(found).resolve()),)
    return (sys.executable, "-m", "cued.daemon.cli")


def _ensure_user(user: str) -> bool:
    """Create the system user and its group unless they exist; whether it was created."""
    try:
        pwd.getpwnam(user)
        return False
    except KeyError:
        pass
    command = [
        "useradd",
        "--system",
        "--user-group",
        "--home-dir",
        str(_STATE_ROOT),
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        user,
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise CuedError("useradd is not installed: create the user by hand") from None
    except subprocess.CalledProcessError as exc:
        raise CuedError(f"useradd {user!r} failed: {exc.stderr.strip()}") from None
    return True


def _give(folder: Path, uid: int, gid: int) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(folder, uid, gid)
    os.chmod(folder, 0o700)


def install(config: Config, config_path: Path, *, user: str = "cued", unit_dir: Path) -> Installed:
    """Create ``user``, give it the folders it writes, let its group read the config,
    and write ``cued.service`` into ``unit_dir``.

    :raises CuedError: if not run as root, or the user cannot be created
    """
    if os.geteuid() != 0:
        raise CuedError("`cued service install` creates a user and writes a unit: run it as root")
    created = _ensure_user(user)
    entry = pwd.getpwnam(user)
    uid, gid = entry.pw_uid, entry.pw_gid
    warnings = []
    # systemd makes /var/lib/cued itself (StateDirectory=); these are what it does not
    folders = writable_folders(config)
    for folder in folders:
        _give(folder, uid, gid)
    config_file = config_path.resolve()
    if config.state_path.resolve().parent == config_file.parent:
        warnings.append(
            f"the state file is in the config's folder {str(config_file.parent)!r}, which "
            f'the daemon may then write: set [daemon] state = "{_STATE_ROOT}/cued.db"'
        )
    # the daemon reads the config (it may hold secrets): its group may, others may not
    os.chown(config_file, -1, gid)
    os.chmod(config_file, (config_file.stat().st_mode & 0o750) | 0o040)
    if config_file.parent == _CONFIG_ROOT:
        os.chown(_CONFIG_ROOT, -1, gid)
        os.chmod(_CONFIG_ROOT, 0o750)
    else:
        warnings.append(
            f"the config is outside {str(_CONFIG_ROOT)!r}: user {user!r} must be able to "
            f"reach {str(config_file.parent)!r}"
        )
    unit_dir.mkdir(parents=True, exist_ok=True)
    unit_path = unit_dir / "cued.service"
    unit_path.write_text(render_unit(unit_settings(config, config_path, user=user)))
    unit_path.chmod(0o644)
    reloaded = False
    if Path("/run/systemd/system").is_dir():  # systemd runs (sd_booted(3))
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        reloaded = True
    return Installed(unit_path, created, tuple(dict.fromkeys(folders)), tuple(warnings), reloaded)
