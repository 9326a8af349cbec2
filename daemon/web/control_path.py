"""Where the control socket of a state file is, and the name its callers go by: all the
CLI needs of :mod:`cued.daemon.web.control` to find the daemon, without the server
(uvicorn, Starlette) that module brings, which a command through the socket would import
for nothing (half a second of each ``cued trigger``)."""

from __future__ import annotations

import os
import pwd
from typing import TYPE_CHECKING

from cued.daemon.errors import CuedError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["control_socket_path", "os_user_name"]

_MAX_SUN_PATH = 107  # sun_path is 108 bytes on Linux, with the path's terminating NUL


def control_socket_path(state: Path) -> Path:
    """The daemon's control socket for the state file ``state``: ``STATE.d/control.sock``.

    :raises CuedError: if the path is too long for a Unix socket
    """
    state = state.resolve()
    path = state.with_name(state.name + ".d") / "control.sock"
    size = len(os.fsencode(path))
    if size > _MAX_SUN_PATH:
        raise CuedError(
            f"the control socket {str(path)!r} would be {size} bytes long, and a Unix "
            f"socket's path may have at most {_MAX_SUN_PATH}: move the state file "
            f"([daemon] state) to a folder with a shorter path"
        )
    return path


def os_user_name(uid: int) -> str:
    """The login name of ``uid``, or ``uid:N`` if it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"
