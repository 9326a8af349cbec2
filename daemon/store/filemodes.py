"""The daemon's own files are its user's alone (0600): the state file holds event payloads,
headers and task outputs, and its WAL and shared-memory files hold the same pages.

Modes are set per file rather than with ``os.umask``: the umask is the whole process's,
and the store's threads (and task kinds) create files at the same time. SQLite creates a
database's ``-wal`` and ``-shm`` files with the database file's own mode, so creating that
one 0600 before SQLite opens it is enough for the others; files an older version left
readable by others are tightened when they are opened, and the log says so.

Files are changed by path only, never opened: closing a descriptor of a SQLite file drops
every POSIX lock this process holds on it, another connection's included.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from cued.daemon.logs import get_logger

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["private_file", "private_state_files"]


def private_file(path: Path, *, create: bool = False) -> None:
    """Make ``path`` readable and writable by its owner only.

    :param create: create it (empty, 0600) if it does not exist; otherwise a missing file
        is left missing
    """
    if create:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return
        except FileExistsError:
            pass
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    log = get_logger(path=str(path), was=f"{mode:04o}", now=f"{mode & 0o700:04o}")
    try:
        os.chmod(path, mode & 0o700)
    except OSError as exc:  # someone else's file, which we may only read
        log.warning("file_mode_not_tightened", error=str(exc))
        return
    log.warning("file_mode_tightened", note="others could read it")


def private_state_files(state: Path) -> None:
    """Create the state file 0600 if it is new; tighten it, its ``-wal`` and ``-shm``."""
    private_file(state, create=True)
    for suffix in ("-wal", "-shm", "-journal"):
        private_file(state.with_name(state.name + suffix))
