"""The one place where bytes from outside become data.

Everything a source or the API takes from outside (bodies, headers, Kafka values and keys,
file names, query strings, cursors) is hostile until it went through here. Each function
below *cannot fail*: what cannot be parsed comes back as escaped text with an error that
says why, so a source records it as an ``invalid`` event and acknowledges it, instead of
raising out of the daemon and meeting the same input again after every restart.

What comes out is safe to store and to show again:

* text is valid Unicode (no lone surrogates, which SQLite, pydantic and UTF-8 responses
  refuse): undecodable bytes and lone surrogates become backslash escapes (``\\xff``,
  ``\\ud800``);
* JSON nests at most :data:`MAX_DEPTH` deep (pydantic, Jinja and ``json`` itself recurse
  through nested values, and a body nested ten thousand deep would blow their stacks);
* numbers are ones Python can print again (no integer of more than 4,300 digits, no
  ``NaN`` or ``Infinity``, which JSON does not have);
* ids are of bounded length.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_ID_CHARS",
    "MAX_INVALID_TEXT_CHARS",
    "Parsed",
    "bounded_id",
    "clean",
    "header_text",
    "json_value",
    "os_name",
    "text",
]

MAX_DEPTH = 64
"""How deep JSON values may nest (``[[1]]`` is 2 deep). Real payloads nest a handful of
levels; pydantic refuses to serialise past ~255, Python's recursion limit is ~1,000."""

MAX_ID_CHARS = 200
"""Longer ids (a delivery header, a file name) are shortened to a prefix and a hash."""

MAX_INVALID_TEXT_CHARS = 10_000
"""How much of an unparseable payload is kept, as text, in its ``invalid`` event."""

# Lone surrogates can only come out of JSON as ``\\uD800``-``\\uDFFF`` escapes: the text
# itself was decoded strictly as UTF-8, which has none.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_OPENERS = (b"[", b"{")


@dataclass(frozen=True, slots=True)
class Parsed:
    """Data from outside: ``data`` if it parsed, else escaped text with an ``error``."""

    data: Any
    error: str | None = None


class _Refused(ValueError):
    """A value that parsed but may not be kept as it is."""


def text(raw: bytes, *, limit: int | None = None) -> str:
    """``raw`` as text: UTF-8, with every byte that is not escaped as ``\\xNN``.

    :param limit: keep at most this many characters
    """
    out = raw.decode("utf-8", "backslashreplace")
    return out if limit is None else out[:limit]


def _repair(value: str) -> str:
    """``value`` with lone surrogates escaped as ``\\udNNN``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def os_name(name: str) -> tuple[str, bool]:
    """A file name as the OS gave it to Python (undecodable bytes as lone surrogates, by
    ``surrogateescape``) as safe text, and whether it was valid UTF-8 as it is."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace"), False
    return name, True


def header_text(value: str) -> str:
    """An HTTP header value as Starlette gives it (decoded as Latin-1, so every byte is one
    character) as the text its sender most likely meant: UTF-8, escaped where it is not."""
    if value.isascii():
        return value
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        return _repair(value)
    return text(raw)


def bounded_id(value: str, *, limit: int = MAX_ID_CHARS) -> str:
    """``value`` repaired and, if longer than ``limit``, cut with a hash of the whole: the
    same input gives the same id (redeliveries are recognised), and ids stay short."""
    value = _repair(value)
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:32]
    return f"{value[: limit - 33]}#{digest}"


def clean(value: Any, *, max_depth: int = MAX_DEPTH) -> Any:
    """``value`` (made of JSON's types) with lone surrogates escaped in strings and keys.

    :raises ValueError: if it nests deeper than ``max_depth``
    """
    return _walk(value, 0, max_depth)


def _walk(value: Any, depth: int, max_depth: int) -> Any:
    if isinstance(value, str):
        return _repair(value)
    if isinstance(value, list | tuple):
        if depth >= max_depth:
            raise _Refused(f"it nests deeper than {max_depth} levels")
        return [_walk(v, depth + 1, max_depth) for v in value]
    if isinstance(value, dict):
        if depth >= max_depth:
            raise _Refused(f"it nests deeper than {max_depth} levels")
        return {_repair(str(k)): _walk(v, depth + 1, max_depth) for k, v in value.items()}
    return value


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON value")


def json_value(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Parsed:
    """``raw`` parsed as a JSON document (UTF-8, a BOM allowed); never raises.

    An empty body is ``null``. On failure, ``data`` is the body as escaped text, cut to
    :data:`MAX_INVALID_TEXT_CHARS`, and ``error`` says what is wrong with it.
    """
    try:
        doc = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _invalid(raw, f"body is not UTF-8 (byte {exc.start})")
    if not doc.strip():
        return Parsed(None)
    try:
        data = json.loads(doc, parse_constant=_no_constant)
    except _Refused as exc:
        return _invalid(raw, f"body is not valid JSON: {exc}")
    except RecursionError:
        return _invalid(raw, f"body is not valid JSON: it nests deeper than {max_depth} levels")
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        return _invalid(raw, f"body is not valid JSON: {_short(exc)}")
    # Walking the value costs time; it is needed only when the body could nest too deep
    # or hold an escaped lone surrogate, which C-speed scans of the bytes rule out.
    if sum(raw.count(o) for o in _OPENERS) >= max_depth or _SURROGATE_ESCAPE.search(raw):
        try:
            data = clean(data, max_depth=max_depth)
        except (_Refused, RecursionError) as exc:
            return _invalid(raw, f"body is not valid JSON for cued: {exc}")
    return Parsed(data)


def _invalid(raw: bytes, error: str) -> Parsed:
    return Parsed(text(raw[: MAX_INVALID_TEXT_CHARS * 4], limit=MAX_INVALID_TEXT_CHARS), error)


def _short(exc: ValueError) -> str:
    message = str(exc)
    if "integer string conversion" in message:
        return "a number has more digits than Python reads (4300)"
    return message[:200]
