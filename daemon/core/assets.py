"""Assets as events: the one spelling of an asset's source and of its events' ids.

A run that produces ``NAME`` and succeeds records the asset event ``asset:NAME:RUN_ID``
(source ``asset:NAME``): one per run, so a run's assets are found by id, and an asset's
versions are the events of its source.
"""

from __future__ import annotations

__all__ = ["ASSET_SOURCES", "asset_event_id", "asset_of", "asset_source"]

_PREFIX = "asset:"

#: Every asset source sorts in ``[low, high)`` (``asset;`` follows ``asset:``): a range scan.
ASSET_SOURCES = (_PREFIX, _PREFIX[:-1] + chr(ord(_PREFIX[-1]) + 1))


def asset_source(asset: str) -> str:
    """The source of the events of ``asset``: ``asset:NAME``."""
    return f"{_PREFIX}{asset}"


def asset_event_id(asset: str, run_id: str) -> str:
    """The id of the event recording the version of ``asset`` that run ``run_id`` produced."""
    return f"{_PREFIX}{asset}:{run_id}"


def asset_of(source: str) -> str | None:
    """The asset whose events come from ``source``, or ``None`` if it is no asset's."""
    return source.removeprefix(_PREFIX) if source.startswith(_PREFIX) else None
