"""Secrets in the configuration: ``env:NAME`` (from the environment), ``file:PATH``
(relative to the config's folder), or the value itself."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import CuedError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["resolve_secret"]


def resolve_secret(value: str, base_dir: Path, *, what: str = "a secret") -> str:
    """The secret behind ``value``.

    :param what: what it is for, named in errors (``"a webhook secret"``)
    :raises CuedError: if the variable is unset or the file unreadable
    """
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise CuedError(f"environment variable {name!r} (for {what}) is not set")
        return os.environ[name]
    if value.startswith("file:"):
        path = base_dir / value[5:]
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise CuedError(
                f"cannot read the file {str(path)!r} (for {what}): {exc.strerror}"
            ) from exc
    return value
