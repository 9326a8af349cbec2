"""What every store answers, the same on SQLite and on PostgreSQL (``store_at`` gives each
test both): each read of the Store Protocol over rows written through ``submit``, and
what a restart hands back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from cued.daemon.core.ids import id_at
from cued.daemon.store import (
    GIVEN_UP_AT,
    ApprovalRow,
    AttemptRow,
    CursorRow,
    DecisionRow,
    DedupeRow,
    EventRow,
    InstanceGone,
    InstanceRow,
    LogLineRow,
    LogTrim,
    OutboxRow,
    PauseRow,
    RunRow,
)

if TYPE_CHECKING:
    from tests.support.stores import StoreAt

T0 = 1_800_000_000.0


def run(n: int, pipeline: str = "p", state: str = "succeeded", **kw) -> RunRow:
    # ids made at known times, so that they sort as the runs were created
    return RunRow(id_at(T0 + n) + f"{n:04d}", pipeline, state, {"n": n}, T0 + n, **kw)


async def test_runs_are_listed_newest_first_a_page_at_a_time_by_pipeline_state_and_time(
    store_at: StoreAt,
):
    runs = [
        run(n, "p" if n % 2 else "q", "failed" if n % 3 == 0 else "succeeded") for n in range(30)
    ]
    async with store_at.open() as store:
        await store.submit(list(runs)).wait()
        newest_first = sorted(runs, key=lambda r: r.run_id, reverse=True)
        first = await store.list_runs(limit=10)
        second = await store.list_runs(limit=10, before=first[-1].run_id)
        of_p = await store.list_runs(pipeline="p")
        failed_q = await store.list_runs(pipeline="q", state="failed")
        window = await store.list_runs(created_after=T0 + 5, created_before=T0 + 8)
        counts = await store.count_runs_by_state()
        some = await store.get_runs([runs[3].run_id, runs[7].run_id, "nope"])
        one = await store.get_run(runs[4].run_id)
        none = await store.get_run("nope")
    assert first + second == newest_first[:20]
    assert of_p == [r for r in newest_first if r.pipeline == "p"]
    assert failed_q == [r for r in newest_first if r.pipeline == "q" and r.state == "failed"]
    assert [r.inputs["n"] for r in window] == [7, 6, 5]
    assert counts == {"failed": 10, "succeeded": 20}
    assert sorted(r.run_id for r in some) == sorted([runs[3].run_id, runs[7].run_id])
    assert one == runs[4]
    assert none is None


async def test_a_run_row_keeps_what_it_was_created_with_and_takes_its_later_states(
    store_at: StoreAt,
):
    created = run(1, state="queued", event_id="e1", traceparent="00-abc-def-01")
    async with store_at.open() as store:
        await store.submit([created]).wait()
        # a later row of the run changes its state and times, not what it was made with
        await store.submit(
            [RunRow(created.run_id, "other", "failed", {"x": 2}, 0.0, T0 + 2, T0 + 3, "boom")]
        ).wait()
        row = await store.get_run(created.run_id)
    assert row == RunRow(
        created.run_id, "p", "failed", {"n": 1}, T0 + 1, T0 + 2, T0 + 3, "boom", "e1",
        "00-abc-def-01",
    )  # fmt: skip


async def test_instances_attempts_and_their_outputs_come_back_as_written(store_at: StoreAt):
    r = run(1, state="running")
    rows = [
        r,
        InstanceRow(r.run_id, "a", "a", None, "succeeded", 1, None, T0 + 1),
        InstanceRow(r.run_id, "m[0]", "m", 0, "failed", 2, "no", T0 + 2, retry_base=1),
        InstanceRow(r.run_id, "gone", "gone", None, "queued", 0, None, T0 + 3),
        AttemptRow(r.run_id, "a", 1, "succeeded", T0, T0 + 1, None, '{"rows": [1, 2]}', 0.25, {"in": 3}),
        AttemptRow(r.run_id, "m[0]", 1, "failed", T0 + 1, T0 + 2, "x"),
        AttemptRow(r.run_id, "m[0]", 2, "failed", T0 + 2, T0 + 3, "y", None, 0.5),
    ]  # fmt: skip
    async with store_at.open() as store:
        await store.submit(rows).wait()
        await store.submit([InstanceGone(r.run_id, "gone")]).wait()
        instances = await store.get_instances(r.run_id)
        attempts = await store.get_attempts(r.run_id)
        state = await store.run_state(r.run_id)
        spent = await store.costs(run_id=r.run_id)
        spent_since = await store.costs(since=T0 + 1)
        spent_none = await store.costs(run_id="nope")
    assert instances == rows[1:3]
    assert attempts[0] == AttemptRow(
        r.run_id, "a", 1, "succeeded", T0, T0 + 1, None, {"rows": [1, 2]}, 0.25, {"in": 3}
    )
    assert [(a.key, a.attempt, a.error) for a in attempts[1:]] == [
        ("m[0]", 1, "x"),
        ("m[0]", 2, "y"),
    ]
    assert state is not None
    assert state[0] == r
    assert state[2] == {"a": {"rows": [1, 2]}}
    assert (spent, spent_since, spent_none) == (0.75, 0.5, 0.0)


async def test_log_lines_by_task_attempt_and_number_and_the_oldest_trimmed(store_at: StoreAt):
    r = run(1, state="running")
    # keys that sort differently by code point than in a language's collation: a task's
    # mapped instances are the range "m[" .. "m\\", whatever the database's locale
    keys = ["m", "m[0]", "m[10]", "M", "m_x", "ma", "m\\"]
    lines = [
        LogLineRow(r.run_id, key, 1, seq, T0 + seq, "stdout", f"line {seq} of {key}")
        for seq, key in enumerate(keys * 3, start=1)
    ]
    async with store_at.open() as store:
        await store.submit([r, *lines]).wait()
        everything = await store.get_log_lines(r.run_id)
        of_m = await store.get_log_lines(r.run_id, task="m")
        of_instance = await store.get_log_lines(r.run_id, task="m[10]")
        page = await store.get_log_lines(r.run_id, after=5, limit=3)
        await store.submit([LogTrim(r.run_id, "m[0]", 1, 10)]).wait()
        trimmed = await store.get_log_lines(r.run_id, task="m[0]")
        last = await store.last_log_seq(r.run_id)
        none = await store.last_log_seq("nope")
        of_attempt_2 = await store.get_log_lines(r.run_id, attempt=2)
    assert everything == lines
    assert {line.key for line in of_m} == {"m", "m[0]", "m[10]"}
    assert {line.key for line in of_instance} == {"m[10]"}
    assert [line.seq for line in page] == [6, 7, 8]
    assert [line.seq for line in trimmed] == [16]
    assert (last, none, of_attempt_2) == (21, 0, [])


async def test_a_nul_in_a_line_or_an_error_does_not_fail_the_commit(store_at: StoreAt):
    r = run(1, state="failed", error="bad\x00byte")
    line = LogLineRow(r.run_id, "a", 1, 1, T0, "stdout", "a\x00b")
    async with store_at.open() as store:
        await store.submit([r, line]).wait()
        (kept,) = await store.get_log_lines(r.run_id)
        row = await store.get_run(r.run_id)
    # SQLite keeps the NUL; PostgreSQL keeps no NUL in text, and stores U+FFFD instead
    assert kept.line in ("a\x00b", "a\ufffdb")
    assert row is not None
    assert row.error in ("bad\x00byte", "bad\ufffdbyte")


async def test_events_are_listed_newest_first_a_page_at_a_time_and_assets_by_latest(
    store_at: StoreAt,
):
    events = [
        EventRow(f"e{n:02d}", "hook" if n % 2 else "kafka", T0 + n, "matched" if n % 3 else "invalid",
                 {"n": n}, {"h": "v"}, (f"r{n}",), None if n % 3 else "bad")
        for n in range(12)
    ]  # fmt: skip
    assets = [
        EventRow(f"a{n}", "asset:" + name, T0 + n, "matched", {"v": n}, {}, ())
        for n, name in enumerate(["orders", "orders", "users", "orders"])
    ]
    async with store_at.open() as store:
        await store.submit([*events, *assets]).wait()
        first = await store.list_events(limit=5, source="hook")
        second = await store.list_events(
            limit=5, source="hook", before=(first[-1].received_at, first[-1].event_id)
        )
        invalid = await store.list_events(status="invalid")
        known = await store.known_events(["e01", "e99", "a0"])
        got = await store.get_events(["e03", "nope"])
        listed = await store.list_assets()
    hooks = sorted((e for e in events if e.source == "hook"), key=lambda e: -e.received_at)
    assert first + second == hooks
    assert invalid == sorted(
        (e for e in events if e.status == "invalid"), key=lambda e: -e.received_at
    )
    assert known == {"e01", "a0"}
    assert got == [events[3]]
    assert [(name, count, latest.event_id) for name, count, latest in listed] == [
        ("orders", 3, "a3"),
        ("users", 1, "a2"),
    ]


async def test_dedupe_keys_cursors_and_pauses(store_at: StoreAt):
    async with store_at.open() as store:
        await store.submit(
            [
                DedupeRow("t", "k1", T0),
                DedupeRow("t", "k1", T0 + 5),  # seen again: the latest counts
                DedupeRow("u", "k1", T0 + 1),
                CursorRow("clock", "tick-1", T0),
                CursorRow("clock", "tick-2", T0 + 1),
            ]
        ).wait()
        seen = await store.dedupe_seen([("t", "k1"), ("u", "k1"), ("t", "nope")])
        many = await store.dedupe_seen([("t", f"k{n}") for n in range(600)])
        cursor = await store.get_cursor("clock")
        no_cursor = await store.get_cursor("nope")
        await store.set_paused("p", PauseRow("p", T0, "ann"))
        await store.set_paused("q", PauseRow("q", T0 + 1))
        await store.set_paused("p", PauseRow("p", T0 + 2, "bob"))
        await store.set_paused("q", None)
        paused = await store.paused_pipelines()
    assert seen == {("t", "k1"): T0 + 5, ("u", "k1"): T0 + 1}
    assert many == {("t", "k1"): T0 + 5}
    assert (cursor, no_cursor) == ("tick-2", None)
    assert paused == {"p": PauseRow("p", T0 + 2, "bob")}


async def test_approval_gates_and_decisions(store_at: StoreAt):
    r = run(1, state="waiting")
    gates = [
        ApprovalRow(r.run_id, "g1", 1, "ok?", ("ann", "group:ops"), 2, "reject", {"p": 1},
                    T0, T0 + 100, "waiting"),
        ApprovalRow(r.run_id, "g2", 1, "ok?", (), 1, "approve", None, T0 + 1, None, "waiting"),
        ApprovalRow(r.run_id, "g3", 1, "ok?", (), 1, "reject", {}, T0 + 2, T0 + 50, "approved",
                    T0 + 3),
    ]  # fmt: skip
    decisions = [
        DecisionRow(r.run_id, "g1", 1, "ann", "approve", {"p": 2}, "fine", T0 + 5),
        DecisionRow(r.run_id, "g1", 1, "bob", "reject", None, None, T0 + 6),
        DecisionRow(r.run_id, "g3", 1, "cy", "approve", None, None, T0 + 3),
    ]
    async with store_at.open() as store:
        await store.submit([r, *gates, *decisions]).wait()
        one = await store.get_approval(r.run_id, "g1")
        waiting = await store.list_approvals()
        every = await store.list_approvals(state=None, limit=2)
        count = await store.count_waiting_approvals()
        deadline = await store.next_approval_deadline()
        due = await store.approvals_due(T0 + 100)
        of_run = await store.get_approvals(r.run_id)
        of_g1 = await store.get_decisions(r.run_id, "g1")
        of_all = await store.get_decisions(r.run_id)
    assert one == gates[0]
    assert waiting == gates[:2]
    assert every == gates[:2]
    assert (count, deadline) == (2, T0 + 100)
    assert due == [gates[0]]
    assert of_run == gates
    assert of_g1 == decisions[:2]
    assert of_all == [decisions[2], *decisions[:2]]


async def test_an_alert_queued_again_keeps_its_history_and_only_delivery_updates_it(
    store_at: StoreAt,
):
    first = OutboxRow("al1", "ops", "run_failed", {"run": "r1"}, T0, next_at=T0)
    later = OutboxRow("al2", "ops", "run_failed", {"run": "r2"}, T0 + 1, next_at=T0 + 10)
    async with store_at.open() as store:
        await store.submit([first, later]).wait()
        # the same alert raised again (a run replayed): it keeps its place
        await store.submit([OutboxRow("al1", "x", "y", {}, T0 + 99, next_at=T0 + 99)]).wait()
        due = await store.outbox_due(T0 + 5)
        next_at = await store.outbox_next_at()
        # a failed try, then a given-up one: the delivery changes
        await store.submit(
            [OutboxRow("al1", "ops", "run_failed", {"run": "r1"}, T0, None, 1, "503", T0 + 20)]
        ).wait()
        after_try = await store.outbox_due(T0 + 30, limit=1)
        await store.submit(
            [OutboxRow("al2", "ops", "run_failed", {}, T0 + 1, None, 5, "gone", GIVEN_UP_AT)]
        ).wait()
        none_left = await store.outbox_due(T0 + 30)
    assert due == [first]
    assert next_at == T0
    assert [(a.alert_id, a.attempts, a.last_error) for a in after_try] == [("al2", 0, None)]
    assert [a.alert_id for a in none_left] == ["al1"]


async def test_committed_rows_reach_the_listeners_once_each_as_last_submitted(store_at: StoreAt):
    seen: list[list[object]] = []
    r = run(1, state="queued")
    async with store_at.open() as store:
        store.on_commit(lambda seconds, rows: seen.append(list(rows)))
        store.submit([r])
        done = store.submit([RunRow(r.run_id, "p", "running", {"n": 1}, T0 + 1)])
        await done.wait()
        await store.ping()
    assert [row for rows in seen for row in rows] == [
        RunRow(r.run_id, "p", "running", {"n": 1}, T0 + 1)
    ]


@pytest.mark.parametrize("unfinished", ["queued", "running"])
async def test_a_restart_resumes_unfinished_runs_only(store_at: StoreAt, unfinished: str):
    done, left = run(1), run(2, state=unfinished)
    async with store_at.open() as store:
        await store.submit([done, left]).wait()
    async with store_at.open() as store:
        resumed = await store.runs_to_resume()
    assert [row.run_id for row, _, _ in resumed] == [left.run_id]
