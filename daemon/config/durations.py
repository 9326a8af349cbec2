"""Durations as users write them in config: ``"250ms"``, ``"30s"``, ``"15m"``, ``"1h30m"``
(parsed by :func:`cued.daemon.core.durations.parse_duration`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator

from cued.daemon.core.durations import parse_duration

__all__ = ["Duration", "parse_duration"]

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A duration in seconds, parsed from ``"30s"``-style strings or plain numbers."""
