"""Assets as events: the one spelling of an asset's source and of its events' ids.

A run that produces ``NAME`` and succeeds records the asset event ``asset:NAME:RUN_ID``
(source ``asset:NAME``): one per run, so a run's assets are found by id, and an asset's
versions are the events of its source.

A run whose producing task failed its data check records instead a version marked bad,
``asset:NAME:RUN_ID:failed-check:ATTEMPT``: an ``invalid`` event (it starts nothing) with
the check's error. Its id is not the good version's, so a rerun that then succeeds still
records one; and it names the attempt, so each failed rerun is its own bad version.
"""

from __future__ import annotations

__all__ = [
    "ASSET_SOURCES",
    "asset_event_id",
    "asset_of",
    "asset_source",
    "failed_check_event_id",
]

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


def failed_check_event_id(asset: str, run_id: str, attempt: int) -> str:
    """The id of the event recording the bad version of ``asset`` that attempt ``attempt``
    of a task of run ``run_id`` found with its data check."""
    return f"{asset_event_id(asset, run_id)}:failed-check:{attempt}"
