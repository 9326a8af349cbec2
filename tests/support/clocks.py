"""Clocks for tests of what happens at a time of day (the ``schedule`` source)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

__all__ = ["MINUTE", "ShiftedClock"]


class ShiftedClock:
    """Wall time that reads ``start`` when first asked, then runs at real speed: the
    source's first look at the clock is at ``start`` however long the daemon took to
    start."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self._first: float | None = None

    def __call__(self) -> datetime:
        if self._first is None:
            self._first = time.monotonic()
        return self.start + timedelta(seconds=time.monotonic() - self._first)


MINUTE = timedelta(minutes=1)
