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

The store reads what it kept through :func:`stored`, which repairs what an older daemon
let in (before this module existed) the same way.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import itertools
import json
import math
import os
import re
from typing import Any
from urllib.parse import parse_qsl

import orjson

from cued.daemon.core.records import record

__all__ = [
    "MAX_CURSOR_CHARS",
    "MAX_DEPTH",
    "MAX_FORM_FIELDS",
    "MAX_ID_CHARS",
    "MAX_INVALID_TEXT_CHARS",
    "Parsed",
    "bounded_id",
    "clean",
    "decimal",
    "form",
    "header_text",
    "json_value",
    "looks_like_json",
    "os_name",
    "page_cursor",
    "page_position",
    "stored",
    "text",
    "text_or_base64",
]

MAX_DEPTH = 64
"""How deep JSON values may nest (``[[1]]`` is 2 deep). Real payloads nest a handful of
levels; pydantic refuses to serialise past ~255, Python's recursion limit is ~1,000."""

MAX_ID_CHARS = 200
"""Longer ids (a delivery header, a file name) are shortened to a prefix and a hash."""

MAX_INVALID_TEXT_CHARS = 10_000
"""How much of an unparseable payload is kept, as text, in its ``invalid`` event."""

MAX_FORM_FIELDS = 1000
"""A form body with more fields than this is refused (as Django and Werkzeug do)."""

MAX_CURSOR_CHARS = 2000
"""A page cursor this API gives is far shorter; a longer one is not one of them."""

_CUT_CHARS = 200
"""How much of a subtree that nests too deep :func:`stored` keeps, as JSON text."""
_CUT_LEVELS = 20
"""How deep that text goes (the subtree itself may nest deeper than the stack allows)."""

# Lone surrogates can only come out of JSON as ``\\uD800``-``\\uDFFF`` escapes: the text
# itself was decoded strictly as UTF-8, which has none.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_TEXT_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_TEXT_SUSPECT = re.compile(r"[0-9]{19}|\\u[dD][89a-fA-F]")
_OPENERS = (b"[", b"{")


@record
class Parsed:
    """Data from outside: ``data`` if it parsed, else escaped text with an ``error``."""

    data: Any
    error: str | None = None


class _Refused(ValueError):
    """A value that parsed but may not be kept as it is."""


def decimal(text: str, *, max_digits: int = 18) -> int | None:
    """``text`` as a whole number if it is ASCII digits only, at most ``max_digits`` of
    them; else None. ``str.isdigit`` alone is not enough: it takes ``"¹"`` (which ``int``
    refuses) and ``"٣"`` (which ``int`` reads as 3), and ``int`` of thousands of digits
    costs time or raises."""
    if text.isascii() and text.isdigit() and len(text) <= max_digits:
        return int(text)
    return None


def text(raw: bytes, *, limit: int | None = None) -> str:
    """``raw`` as text: UTF-8, with every byte that is not escaped as ``\\xNN``.

    :param limit: keep at most this many characters
    """
    out = raw.decode("utf-8", "backslashreplace")
    return out if limit is None else out[:limit]


def text_or_base64(raw: bytes) -> tuple[str, bool]:
    """``raw`` as text if it is UTF-8, else as base64; and whether it is base64.

    For what is kept as it came (a Kafka key or header), so the bytes can be had again.
    """
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), True


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


def clean(value: Any, *, max_depth: int = MAX_DEPTH, cut: bool = False) -> Any:
    """``value`` (made of JSON's types) with lone surrogates escaped in strings and keys.

    :param cut: replace what nests deeper than ``max_depth`` by its JSON text, shortened
        and with a note, instead of refusing the whole
    :raises ValueError: if it nests deeper than ``max_depth`` (and ``cut`` is false)
    """
    return _walk(value, 0, max_depth, cut)


def _walk(value: Any, depth: int, max_depth: int, cut: bool) -> Any:
    if isinstance(value, str):
        return _repair(value)
    if isinstance(value, list | tuple | dict) and depth >= max_depth:
        if cut:
            return _cut(value, max_depth)
        raise _Refused(f"it nests deeper than {max_depth} levels")
    if isinstance(value, list | tuple):
        return [_walk(v, depth + 1, max_depth, cut) for v in value]
    if isinstance(value, dict):
        return {_repair(str(k)): _walk(v, depth + 1, max_depth, cut) for k, v in value.items()}
    return value


def _cut(value: Any, max_depth: int) -> str:
    try:
        shown = json.dumps(_shallow(value, _CUT_LEVELS))[:_CUT_CHARS]
    except ValueError:  # an integer past Python's digit limit
        shown = "[" if isinstance(value, list | tuple) else "{"
    return f"{_repair(shown)}\u2026 (cut: nests deeper than {max_depth} levels)"


def _shallow(value: Any, levels: int) -> Any:
    """``value`` with what nests deeper than ``levels`` as "…": short enough to show."""
    if isinstance(value, list | tuple | dict) and levels <= 0:
        return "\u2026"
    if isinstance(value, list | tuple):
        return [_shallow(v, levels - 1) for v in itertools.islice(value, _CUT_CHARS)]
    if isinstance(value, dict):
        return {k: _shallow(v, levels - 1) for k, v in itertools.islice(value.items(), _CUT_CHARS)}
    return value


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON value")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if math.isinf(number):  # ``1e999``: a number JSON has, but no float holds
        raise _Refused(f"the number {literal[:40]} is too large for a float")
    return number


# one decoder for every call: ``json.loads`` with any keyword builds a new one each time,
# which costs more than decoding a small body
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


# 19 digits in a row: perhaps an integer past 64 bits, which orjson reads as a float
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def json_value(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Parsed:
    """``raw`` parsed as a JSON document (UTF-8, a BOM allowed); never raises.

    An empty body is ``null``. On failure, ``data`` is the body as escaped text, cut to
    :data:`MAX_INVALID_TEXT_CHARS`, and ``error`` says what is wrong with it.
    """
    # orjson first, 3-4x faster: it reads what it takes as ``_DECODER`` does (it refuses
    # NaN, infinities and lone surrogates as well), but integers past 64 bits as floats.
    # What it refuses goes to ``_DECODER``, which reads it (a lone surrogate, a BOM) or
    # says what is wrong.
    if not _LONG_DIGITS.search(raw):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            return _checked(raw, data, max_depth)
    return _decoded(raw, max_depth)


def _decoded(raw: bytes, max_depth: int) -> Parsed:
    """:func:`json_value` by ``_DECODER``."""
    try:
        doc = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _invalid(raw, f"body is not UTF-8 (byte {exc.start})")
    if not doc.strip():
        return Parsed(None)
    try:
        data = _DECODER.decode(doc)
    except _Refused as exc:
        return _invalid(raw, f"body is not valid JSON: {exc}")
    except RecursionError:
        return _invalid(raw, f"body is not valid JSON: it nests deeper than {max_depth} levels")
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        return _invalid(raw, f"body is not valid JSON: {_short(exc)}")
    return _checked(raw, data, max_depth)


def _checked(raw: bytes, data: Any, max_depth: int) -> Parsed:
    """``data`` read from ``raw``, kept if it nests at most ``max_depth`` deep, its lone
    surrogates escaped."""
    # Walking the value costs time; it is needed only when the body could nest too deep
    # or hold an escaped lone surrogate, which C-speed scans of the bytes rule out.
    if raw.count(b"[") + raw.count(b"{") >= max_depth or _SURROGATE_ESCAPE.search(raw):
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


def looks_like_json(raw: bytes) -> bool:
    """Whether ``raw`` opens an object or an array (after a BOM and whitespace): a body
    that says nothing of its type is taken as JSON then."""
    return raw.removeprefix(codecs.BOM_UTF8).lstrip()[:1] in _OPENERS


def form(raw: bytes, *, max_fields: int = MAX_FORM_FIELDS) -> Parsed:
    """``raw`` as an HTML form (``application/x-www-form-urlencoded``): a dict of each
    field to its value (the last one of a repeated field; empty fields left out); never
    raises.

    Bytes and percent-escapes that are not UTF-8 come out escaped as ``\\xNN``. On failure
    (more than ``max_fields`` fields), ``data`` is the body as escaped text and ``error``
    says why.
    """
    if raw.count(b"&") >= max_fields:
        return _invalid(raw, f"form body has more than {max_fields} fields")
    return Parsed(dict(parse_qsl(text(raw), errors="backslashreplace")))


def stored(doc: str | None, *, max_depth: int = MAX_DEPTH) -> Any:
    """JSON text the store kept, back as data safe to show: lone surrogates escaped and
    what nests deeper than ``max_depth`` cut (see :func:`clean`); never raises.

    What a daemon keeps now went through this module on its way in, but an older one kept
    whatever came, and a page that shows such an event must not fail. Cheap scans of the
    text leave the walk over the value to documents that could need it.
    """
    if doc is None:
        return None
    # one scan for what orjson reads otherwise than json.loads (19 digits in a row: perhaps
    # an integer past 64 bits, which it reads as a float) and what needs the walk below (a
    # lone surrogate's escape, perhaps); what it refuses (NaN, infinities, deep nesting)
    # goes to json.loads, which reads or refuses it as ever
    suspect = _TEXT_SUSPECT.search(doc) is not None
    try:
        value = json.loads(doc) if suspect else _fast_loads(doc)
    except RecursionError:  # deeper than the stack: keep the start of it
        return _cut_text(doc, f"nests deeper than {max_depth} levels")
    except ValueError as exc:  # not JSON: only a file written by something else
        return _cut_text(doc, f"not JSON: {_short(exc)}")
    if doc.count("[") + doc.count("{") < max_depth and not (
        suspect and _TEXT_SURROGATE_ESCAPE.search(doc)
    ):
        return value
    try:
        return clean(value, max_depth=max_depth, cut=True)
    except RecursionError:  # the walk goes max_depth deep: only on a stack used up already
        return _cut_text(doc, f"nests deeper than {max_depth} levels")


def _fast_loads(doc: str) -> Any:
    """``json.loads(doc)`` by orjson (3-4x faster: a flow control release reads back every
    event it held), for a text without 19 digits in a row."""
    try:
        return orjson.loads(doc)
    except orjson.JSONDecodeError:
        return json.loads(doc)


def _cut_text(doc: str, why: str) -> str:
    return f"{_repair(doc[:_CUT_CHARS])}\u2026 (cut: {why})"


def page_cursor(at: float, key: str) -> str:
    """An opaque cursor for the position ``(at, key)`` in a list: :func:`page_position`
    reads it back."""
    raw = json.dumps([at, key]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_position(cursor: str) -> tuple[float, str] | None:
    """The position a cursor made by :func:`page_cursor` holds, or ``None`` if ``cursor``
    is not one (of any text: a made-up cursor is no error of the daemon's); never raises.
    """
    if len(cursor) > MAX_CURSOR_CHARS:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        return None
    parsed = json_value(raw, max_depth=2)
    if parsed.error is not None:
        return None
    match parsed.data:
        case [int() | float() as at, str() as key] if not isinstance(at, bool):
            try:
                position = float(at)  # an integer past a float's range overflows
            except OverflowError:
                return None
            return (position, key) if math.isfinite(position) else None  # 1e999 reads as inf
    return None
