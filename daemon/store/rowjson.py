"""The JSON text of a row's JSON fields (inputs, event data and meta, run ids, ...).

:func:`dumps` writes orjson's text, about ten times faster than ``json.dumps`` on the small
values rows hold, where that text reads back (``json.loads``, as the store reads) as
exactly what ``json.dumps``'s would, and ``json.dumps``'s text everywhere else. orjson
differs where it cannot write a value, or writes it otherwise:

* it refuses integers beyond 64 bits, keys that are not strings, strings with lone
  surrogates, and values nested deeper than 254 levels: ``json.dumps`` writes those;
* it writes ``NaN`` and the infinities as ``null`` (``json.dumps`` as ``NaN`` and
  ``Infinity``, which ``json.loads`` reads back): orjson's text is kept when it holds no
  ``null``, or when a walk over the value finds no such float (a Kafka message without
  a key has a ``null`` in its meta);
* it writes dataclasses, datetimes and subclasses of the JSON types its own way: those go
  to ``json.dumps`` too, which writes them (an ``IntEnum``, a subclass of ``str``) or
  refuses them as before. Only enums and UUIDs, which ``json.dumps`` refuses (failing the
  commit), orjson writes as their values; no row holds either.

The texts differ (orjson writes no spaces and UTF-8 where ``json.dumps`` escapes), the
values read back do not: ``tests/unit/test_rowjson.py`` checks it over arbitrary values.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

__all__ = ["dumps"]

_PASSTHROUGH = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} goes to json.dumps")


_NO_ITEMS = ()


def dumps(value: Any) -> str:
    """``value`` as JSON text that reads back as ``json.dumps(value)`` does.

    :raises TypeError: if ``json.dumps`` refuses ``value``
    :raises ValueError: likewise (a value that holds itself)
    """
    if value is _NO_ITEMS:  # the run ids of most events (CPython has one empty tuple)
        return "[]"
    try:
        text = orjson.dumps(value, default=_refuse, option=_PASSTHROUGH)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value)
    if b"null" in text and not _finite(value):  # orjson wrote a NaN or an infinity so
        return json.dumps(value)
    return text.decode()


def _finite(value: Any) -> bool:
    """Whether ``value`` holds no ``NaN`` and no infinity."""
    todo = [value]
    for item in todo:  # a breadth-first walk: todo grows as it goes
        kind = type(item)  # orjson took it: JSON's own types, no subclasses
        if kind is dict:
            todo.extend(item.values())
        elif kind is list or kind is tuple:
            todo.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            return False
    return True
