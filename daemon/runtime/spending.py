"""Spending: the money attempts spent so far, read from the store, for the budgets of task
kinds (an AI step's ``max_cost`` per run or per day).

An attempt's cost (its :class:`~cued.daemon.sdk.kinds.Meter`) is recorded when the attempt
ends, so attempts still running are not counted: a cap can be overrun by the AI steps
running at that time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cued.daemon.store import Store

__all__ = ["StoreSpending"]


class StoreSpending:
    """The :class:`~cued.daemon.sdk.kinds.Spending` handed to tasks, from the store.

    :param store: where attempts, with their costs, are recorded
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    async def by_run(self, run_id: str) -> float:
        """Spent by the attempts of the run ``run_id`` that ended."""
        return await self._store.costs(run_id=run_id)

    async def today(self) -> float:
        """Spent by the attempts that ended since midnight UTC."""
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return await self._store.costs(since=midnight.timestamp())
