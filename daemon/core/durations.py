"""Durations as users write them: ``"250ms"``, ``"30s"``, ``"15m"``, ``"1h30m"``. Pure: the
config reads them (:mod:`cued.daemon.config.durations`), and so does the templates'
``add_duration`` filter."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

__all__ = ["add_duration", "as_moment", "parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Return a duration in seconds.

    :param value: a number of seconds, or a string of number-unit parts (ms, s, m, h, d)
    :raises ValueError: if the value is neither, or is negative, NaN or infinite
    """
    if isinstance(value, bool):
        raise ValueError(  # noqa: TRY004 - pydantic reports ValueError as a validation error
            f"expected a duration such as '30s', got {value!r}"
        )
    if isinstance(value, int | float):
        # TOML has ``nan`` and ``inf``. NaN compares false with everything, so it would slip
        # past the sign check; and neither is a length of time (a task without a timeout
        # leaves the key out).
        if not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, total = 0, 0.0
        for m in _PART.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        # enough digits overflow float to inf, e.g. a 400-digit number of seconds
        if text and pos == len(text) and math.isfinite(total):
            return total
    raise ValueError(
        f"{value!r} is not a duration: write a number and a unit, e.g. '500ms', '30s', '15m', '2h'"
    )


# far enough for any use, near enough that every moment is a valid datetime both ways
_LATEST = datetime(9999, 1, 1, tzinfo=UTC).timestamp()


def as_moment(value: object) -> float:
    """A moment in seconds since the epoch: ``value`` is one already (an event's
    ``received_at``), or ISO 8601 text (``2026-03-30T02:00:00+02:00``; no offset means UTC).

    :raises ValueError: if it is neither, or out of range (1970 to 9998)
    """
    moment: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        moment = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            moment = parsed.timestamp()
        except (ValueError, OverflowError):
            moment = None
    if moment is None or not math.isfinite(moment) or not 0 <= moment < _LATEST:
        raise ValueError(
            f"{value!r} is not a time: give seconds since the epoch or ISO 8601 "
            "(2026-03-30T02:00:00Z; no offset means UTC)"
        )
    return moment


def add_duration(moment: object, duration: object) -> float:
    """``moment`` (see :func:`as_moment`) plus ``duration`` (see :func:`parse_duration`), in
    seconds since the epoch: the templates' ``add_duration`` filter.

    :raises ValueError: if either is not what it should be
    """
    return as_moment(moment) + parse_duration(duration)
