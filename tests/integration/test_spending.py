"""What tasks spent, read from the store (daemon/runtime/spending.py)."""

from __future__ import annotations

import time

from cued.daemon.runtime.spending import StoreSpending
from cued.daemon.store import AttemptRow


async def test_costs_by_run_and_since_midnight(store_at):
    today = time.time()
    long_ago = today - 3 * 86400
    async with store_at.open() as store:
        await store.submit(
            [
                AttemptRow("r1", "ask", 1, "failed", today, today, "boom", cost=0.25),
                AttemptRow("r1", "ask", 2, "succeeded", today, today, None, '"ok"', 0.5),
                AttemptRow("r2", "ask", 1, "succeeded", long_ago, long_ago, None, "1", 2.0),
                AttemptRow("r3", "echo", 1, "succeeded", today, today, None, "1"),  # no cost
            ]
        ).wait()
        spending = StoreSpending(store)
        assert await spending.by_run("r1") == 0.75  # failed attempts spent too
        assert await spending.by_run("r2") == 2.0
        assert await spending.by_run("r3") == 0.0
        assert await spending.today() == 0.75
