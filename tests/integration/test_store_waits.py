"""Waits and cancel requests in the store, the same on SQLite and on PostgreSQL: a wait
settles once, whichever of an event and its deadline comes first and in whatever batches
they are written; only the mark that its run went on changes it after; the reads find
what intake and the daemon look for. A cancel request keeps the first event that asked."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from cued.daemon.store import CancelRow, EventRow, WaitRow
from cued.daemon.store.sqlite import open_store

if TYPE_CHECKING:
    from tests.support.stores import StoreAt

T0 = 1_800_000_000.0


def wait(run_id: str, source: str = "payments", **kw) -> WaitRow:
    return WaitRow(
        run_id, "pay", 1, "event", source, "event.data.n == inputs.n", {"inputs": {"n": 1}},
        T0 - 60, T0 + 3600, "fail", T0, **kw,
    )  # fmt: skip


MATCHED = {"state": "matched", "event_id": "e1", "output": '{"event": {}}', "settled_at": T0 + 1}
EXPIRED = {"state": "expired", "output": '{"event": null}', "settled_at": T0 + 2}


@pytest.mark.parametrize("together", [True, False], ids=["one-batch", "two-batches"])
@pytest.mark.parametrize(
    ("first", "second"),
    [(MATCHED, EXPIRED), (EXPIRED, MATCHED), (MATCHED, {"scanned": 1})],
    ids=["event-first", "deadline-first", "scan-after-event"],
)
async def test_a_wait_settles_once_whatever_comes_second(
    store_at: StoreAt, together, first, second
):
    opened = wait("r1")
    async with store_at.open() as store:
        await store.submit([opened]).wait()
        rows = [replace(opened, **first), replace(opened, **second)]
        if together:
            await store.submit(rows).wait()
        else:
            for row in rows:
                await store.submit([row]).wait()
        (kept,) = await store.get_waits("r1")
        assert kept == replace(opened, **first)
        assert await store.waits_settled(10) == [kept]
        # the run went on: marked applied, and then nothing changes it
        await store.submit([replace(kept, applied=1)]).wait()
        await store.submit([replace(opened, **EXPIRED)]).wait()
        (final,) = await store.get_waits("r1")
        assert final == replace(kept, applied=1)
        assert await store.waits_settled(10) == []


async def test_the_reads_find_waits_by_source_deadline_and_scan(store_at: StoreAt):
    rows = [
        wait("r1"),
        wait("r2", "orders"),
        wait("r3", scanned=1),
        replace(wait("r4"), deadline_at=T0 + 10),
        wait("r5", **MATCHED),
        WaitRow("r6", "nap", 1, "timer", None, None, {}, None, T0 + 5, "succeed", T0, scanned=1),
    ]
    async with store_at.open() as store:
        await store.submit(rows).wait()
        await store.submit(
            [EventRow(f"e{n}", "payments", T0 + n, "unmatched", {"n": n}, {}) for n in range(5)]
        ).wait()
        first = await store.waits_of_sources(["payments"], limit=2)
        rest = await store.waits_of_sources(
            ["payments"], after=(first[-1].run_id, first[-1].key, first[-1].attempt), limit=10
        )
        both = await store.waits_of_sources(["payments", "orders"], limit=10)
        to_scan = await store.waits_to_scan(10)
        next_at = await store.next_wait_deadline()
        due = await store.waits_due(T0 + 10, 10)
        events = await store.events_of_source("payments", T0 + 2, limit=10)
    assert [w.run_id for w in first + rest] == ["r1", "r3", "r4"]
    assert {w.run_id for w in both} == {"r1", "r2", "r3", "r4"}
    assert {w.run_id for w in to_scan} == {"r1", "r2", "r4"}
    assert next_at == T0 + 5
    assert [w.run_id for w in due] == ["r6", "r4"]
    assert [e.event_id for e in events] == ["e2", "e3", "e4"]
    assert first[0].context == {"inputs": {"n": 1}}


async def test_a_cancel_request_keeps_the_first_event_that_asked(store_at: StoreAt):
    async with store_at.open() as store:
        await store.submit([CancelRow("r1", "e1", "orders", T0)]).wait()
        await store.submit(
            [CancelRow("r1", "e2", "orders", T0 + 1), CancelRow("r2", "e3", "orders", T0 + 2)]
        ).wait()
        pending = await store.cancels_pending(10)
        await store.submit([CancelRow("r1", "e1", "orders", T0, done=1)]).wait()
        after = await store.cancels_pending(10)
        kept = await store.get_cancel("r1")
    assert [(c.run_id, c.event_id) for c in pending] == [("r1", "e1"), ("r2", "e3")]
    assert [c.run_id for c in after] == ["r2"]
    assert kept == CancelRow("r1", "e1", "orders", T0, done=1)


async def test_what_intake_and_the_daemon_ask_of_waits_is_found_by_an_index(tmp_path):
    """No wait is looked for by reading the table: each query searches an index, or reads
    a partial one that holds only what it asks for (SQLite's plans; PostgreSQL has the
    same indexes)."""
    path = tmp_path / "state.db"
    async with open_store(path) as store:
        await store.submit([wait(f"r{n}") for n in range(50)]).wait()
        statements: list[str] = []
        reader = store._reader
        await reader.set_trace_callback(statements.append)
        await store.waits_of_sources(["payments"], after=("r1", "pay", 1), limit=10)
        await store.waits_to_scan(10)
        await store.next_wait_deadline()
        await store.waits_due(T0, 10)
        await store.waits_settled(10)
        await store.cancels_pending(10)
        await store.runs_in_state("p", "waiting", limit=10)
        await store.events_of_source("payments", T0, limit=10)
        await reader.set_trace_callback(None)
        plans = {
            sql: [row[3] for row in await reader.execute_fetchall("EXPLAIN QUERY PLAN " + sql)]
            for sql in statements
            if sql.startswith("SELECT")
        }
    assert len(plans) == 8, plans
    for sql, plan in plans.items():
        for line in plan:
            # a scan of a partial index reads only what it holds (the waits to check)
            assert "INDEX" in line or not line.startswith("SCAN"), f"{sql}\n{plan}"
            assert not line.startswith("USE TEMP B-TREE"), f"{sql}\n{plan}"
