"""Durations as users write them in config: ``"250ms"``, ``"30s"``, ``"15m"``, ``"1h30m"``."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

__all__ = ["Duration", "parse_duration"]

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


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A duration in seconds, parsed from ``"30s"``-style strings or plain numbers."""
