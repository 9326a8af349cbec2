"""Where the state lives (``[daemon] state``): a SQLite file, or a PostgreSQL database.

```toml
state = "cued.db"                                  # a SQLite file, beside the config
state = "postgresql://cued@db.internal/cued"       # a PostgreSQL database
state = "env:CUED_DATABASE_URL"                    # its URL from the environment (or file:PATH)
```

A URL may hold a password: it is a secret (``env:`` and ``file:`` resolve as every secret
does, and are redacted), and messages show it without one (:func:`shown_url`).
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator

__all__ = [
    "DATABASE_SCHEMES",
    "StateSetting",
    "check_database_url",
    "database_password",
    "is_database_url",
    "shown_url",
]

DATABASE_SCHEMES = ("postgresql://", "postgres://")
_SECRET = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$")


def is_database_url(location: str) -> bool:
    """Whether ``location`` names a PostgreSQL database (else it is a SQLite file)."""
    return location.startswith(DATABASE_SCHEMES)


def shown_url(url: str) -> str:
    """``url`` as messages and logs may show it: without its password."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a URL that does not parse>"
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host))


def database_password(url: str) -> str | None:
    """The password in ``url``, if it has one."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def check_database_url(url: str) -> str | None:
    """What is wrong with ``url`` as a database's URL, or ``None``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is no number raises
    except ValueError as exc:
        return f"is not a URL PostgreSQL can take: {exc} (got {shown_url(url)!r})"
    if not parts.path.strip("/"):
        return f"names no database: postgresql://USER@HOST[:PORT]/DATABASE (got {shown_url(url)!r})"
    if any(c.isspace() for c in url):
        return f"has a space in it (got {shown_url(url)!r})"
    return None


def _check_state(value: str) -> str:
    if not value.strip():
        raise ValueError("must name a SQLite file or a postgresql:// URL")
    if value.startswith(("env:", "file:")):
        if not _SECRET.match(value):
            raise ValueError(f"env:NAME takes a variable's name (got {value!r})")
        return value
    if is_database_url(value):
        if (problem := check_database_url(value)) is not None:
            raise ValueError(problem)
        return value
    if "://" in value:
        scheme = value.partition("://")[0]
        raise ValueError(
            f"{scheme}:// is no store cued knows: a SQLite file's path, or a "
            f"postgresql:// URL (got {shown_url(value)!r})"
        )
    return value


#: ``[daemon] state``: a SQLite file's path, a ``postgresql://`` URL, or ``env:NAME`` /
#: ``file:PATH`` holding such a URL.
StateSetting = Annotated[str, AfterValidator(_check_state)]
