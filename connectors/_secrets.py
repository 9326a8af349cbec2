"""How a source reads a secret its config names (``env:NAME``, ``file:PATH``, or the value
itself), failing as a source fails."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cued.daemon.sdk import ConnectorError, CuedError, resolve_secret

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["source_secret"]


def source_secret(value: str, base_dir: Path, what: str, *, literal_is_secret: bool = True) -> str:
    """The secret behind ``value`` (``file:`` relative to ``base_dir``), remembered for
    redaction; a URL given as itself (``literal_is_secret=False``) is not.

    :param what: what it is for, named in the error (``"an AMQP URL"``)
    :raises ConnectorError: if the variable is unset or the file unreadable
    """
    try:
        return resolve_secret(value, base_dir, what=what, literal_is_secret=literal_is_secret)
    except CuedError as exc:
        raise ConnectorError(str(exc)) from exc
