"""A daemon's node name (``[daemon] node``): how it is known among the daemons that share
a PostgreSQL state (``cued nodes``), and what owns its runs."""

from __future__ import annotations

import re
import secrets
import socket
from typing import Annotated

from pydantic import Field

__all__ = ["NODE_NAME", "NodeName", "default_node_name"]

#: A node's name: letters, digits, ``.``, ``_`` and ``-``, 1 to 63 of them, not starting
#: with a punctuation mark (a host name fits).
NODE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"

NodeName = Annotated[str, Field(pattern=rf"^{NODE_NAME}$")]

_UNFIT = re.compile(r"[^A-Za-z0-9._-]+")


def default_node_name(host: str | None = None) -> str:
    """The host's name and a short random suffix (new at each start): ``db-1-3f9a2c``.
    What of the host's name does not fit a node's name is left out."""
    base = _UNFIT.sub("-", host if host is not None else socket.gethostname()).strip(".-_")
    return f"{base[:55] or 'node'}-{secrets.token_hex(3)}"
