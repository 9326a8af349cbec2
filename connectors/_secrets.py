"""A secret or a URL a source's config names (``env:NAME``, ``file:PATH``, or the value
itself): how its config checks a URL, and how the source reads it, failing as a source
fails."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cued.daemon.sdk import ConnectorError, CuedError, resolve_secret

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["source_secret", "url_or_secret"]


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


def url_or_secret(value: str, schemes: tuple[str, ...]) -> str:
    """``value``, a config's ``url``, if it starts with one of ``schemes`` or is
    ``env:NAME`` / ``file:PATH`` (read when the source starts).

    :raises ValueError: naming the schemes, for the config's error
    """
    if not value.startswith((*schemes, "env:", "file:")):
        listed = f"{', '.join(schemes[:-1])} or {schemes[-1]}" if len(schemes) > 1 else schemes[0]
        raise ValueError(
            f"url must start with {listed} (or be env:NAME or file:PATH), not {value[:20]!r}"
        )
    return value
