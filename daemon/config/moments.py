"""Moments and spans as users type them on the command line or send them to the API:
ISO 8601 (``2026-03-30T02:00:00+02:00``; no offset means UTC), ``now``, or a time ago
(``-1h``, ``-2d12h``: a duration as config writes it, see :mod:`.durations`).

Pure: "now" is given, so a relative moment means the same on every face.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from cued.daemon.config.durations import parse_duration

__all__ = ["parse_moment", "parse_span"]

# far enough for any use, near enough that every result is a valid datetime both ways
_LATEST = datetime(9999, 1, 1, tzinfo=UTC).timestamp()


def parse_moment(text: str, at: float, *, name: str = "time") -> float:
    """``text`` in seconds since the epoch; ``at`` is now (for ``now`` and ``-1h``).

    :param name: how the error names the value (``--since``)
    :raises ValueError: naming ``name`` and the forms accepted, if ``text`` is none of them
    """
    value = text.strip()
    if value.lower() == "now":
        return at
    if value.startswith("-"):
        try:
            ago = parse_duration(value[1:])
        except ValueError:
            raise _invalid(name, text) from None
        moment = at - ago
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except (ValueError, OverflowError):
            raise _invalid(name, text) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            moment = parsed.timestamp()
        except (ValueError, OverflowError):  # year 1 in a zone east of UTC
            raise _invalid(name, text) from None
    if not math.isfinite(moment) or not 0 <= moment < _LATEST:
        raise ValueError(f"{name} {text!r} is out of range (1970 to 9998)")
    return moment


def parse_span(
    start: str | None,
    end: str | None,
    at: float,
    *,
    names: tuple[str, str] = ("--since", "--until"),
) -> tuple[float | None, float | None]:
    """A span ``[start, end)`` in seconds since the epoch; an end left out is open.

    :raises ValueError: if either is not a moment, or the span is empty
    """
    lo = None if start is None else parse_moment(start, at, name=names[0])
    hi = None if end is None else parse_moment(end, at, name=names[1])
    if lo is not None and hi is not None and lo >= hi:
        raise ValueError(
            f"{names[0]} {start!r} is not before {names[1]} {end!r}: the span is empty"
        )
    return lo, hi


def _invalid(name: str, text: str) -> ValueError:
    return ValueError(
        f"{name} {text!r} is not a time: give ISO 8601 (2026-03-30T02:00:00Z; no offset "
        "means UTC), 'now', or a time ago such as '-1h', '-30m', '-2d'"
    )
