"""A run's priority: who starts first when runs wait for a slot. Pure: no I/O.

A trigger's ``priority`` is a number from 0 to 9 or a template rendered per event; what it
renders came from outside (an event's data) and is parsed here, strictly.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_PRIORITY", "MAX_PRIORITY", "MIN_PRIORITY", "PRIORITIES", "priority_of"]

MIN_PRIORITY = 0
MAX_PRIORITY = 9
DEFAULT_PRIORITY = 5
"""A run's priority unless its trigger says otherwise (API and schedule runs too)."""

PRIORITIES = range(MAX_PRIORITY, MIN_PRIORITY - 1, -1)
"""Every priority, the highest (the first to start) first."""


def priority_of(value: Any) -> int:
    """``value`` (an int, or a rendered template's text) as a priority.

    :raises ValueError: if it is not a whole number from 0 to 9
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = value.strip() if isinstance(value, str) else repr(value)
        # ASCII digits only: int() would take "٣", "1_0" or " +7 "
        if not (text.isascii() and text.isdigit() and len(text) <= 2):
            raise ValueError(f"priority must be a whole number from 0 to 9, got {value!r}")
        number = int(text)
    if not MIN_PRIORITY <= number <= MAX_PRIORITY:
        raise ValueError(f"priority must be a whole number from 0 to 9, got {value!r}")
    return number
