"""Retention: what ``[retention]`` lets go is deleted, in small transactions through the
store's one writer; what is recent, unfinished or parked at a gate stays. Rows are written
with old timestamps: no test waits for anything to age."""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

import aiosqlite
import anyio
import httpx
import pytest

from cued.daemon.assembly import open_runner
from cued.daemon.core.ids import new_id, now
from cued.daemon.runtime import retention
from cued.daemon.store import (
    AttemptRow,
    DedupeRow,
    HoldRow,
    InstanceRow,
    OutboxRow,
    PruneCounts,
    PrunePolicy,
    RunRow,
    WindowRow,
    pruning,
)
from cued.daemon.store.sqlite import open_store
from cued.daemon.web.api import Caller, Users, build_app
from cued.daemon.web.server import serve_asgi
from tests.support.daemon import query
from tests.support.retention import DAY, NOW, OLD, RECENT, config_of, event_row, run_rows
from tests.support.running import daemon_running

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from cued.daemon.config import Config
    from cued.daemon.store import Row
    from tests.support.stores import StoreAt

GAVE_UP = 253402300799.0  # an alert's next_at once it is given up

ROOT = {"authorization": "Bearer root-token"}
VERA = {"authorization": "Bearer vera-token"}


def alert(created_at: float, *, sent: bool = False, gave_up: bool = False) -> OutboxRow:
    return OutboxRow(
        new_id(),
        "ops",
        "run_failed",
        {},
        created_at,
        sent_at=created_at + 1 if sent else None,
        attempts=1 if sent or gave_up else 0,
        next_at=GAVE_UP if gave_up else created_at,
    )


def ids(state: Path, table: str, column: str = "run_id") -> set[str]:
    return {row[0] for row in query(state, f"SELECT {column} FROM {table}")}


async def stored_ids(at: StoreAt, table: str, column: str = "run_id") -> set[str]:
    return {row[0] for row in await at.query(f"SELECT {column} FROM {table}")}


# -- what goes, what stays ---------------------------------------------------------------


async def test_what_is_older_than_its_age_goes_and_the_rest_stays(
    tmp_path: Path, store_at: StoreAt
) -> None:
    config = config_of(tmp_path)
    old_runs = [run_rows(OLD, state) for state in ("succeeded", "failed", "cancelled")]
    recent = run_rows(RECENT)
    running = run_rows(None, "running")  # created 40 days ago, still running
    queued = run_rows(None, "queued")
    parked = run_rows(None, "waiting")  # parked at its approval gate for 40 days
    kept_runs = [recent, running, queued, parked]
    old_event, recent_event = event_row(OLD), event_row(RECENT)
    alerts = {
        "old-sent": alert(OLD, sent=True),
        "old-given-up": alert(OLD, gave_up=True),
        "old-still-trying": alert(OLD),
        "recent-sent": alert(RECENT, sent=True),
    }
    dedupe = [
        DedupeRow("orders", "past-window", NOW - 2 * 3600),  # its window is 1h
        DedupeRow("orders", "in-window", NOW - 600),
        DedupeRow("gone", "past-longest", NOW - 2 * DAY),  # no such trigger: longest window, 1d
        DedupeRow("gone", "within-longest", NOW - 3600),
    ]
    async with store_at.open() as store:
        rows = [r for run in old_runs + kept_runs for r in run]
        await store.submit([*rows, old_event, recent_event, *alerts.values(), *dedupe]).wait()
        policy = retention.policy(config, NOW)
        would = await store.prunable(policy)
        pruned = await store.prune(policy)
        again = await store.prune(policy)

    assert would == pruned
    assert pruned == PruneCounts(
        runs=3,
        task_instances=3,
        attempts=3,
        approvals=3,
        decisions=3,
        events=1,
        dedupe_keys=2,
        outbox=2,
    )
    assert again.total == 0
    kept = {run[0].run_id for run in kept_runs}  # type: ignore[union-attr]
    for table in ("runs", "task_instances", "attempts", "approvals", "decisions"):
        assert await stored_ids(store_at, table) == kept, table
    assert await stored_ids(store_at, "events", "event_id") == {recent_event.event_id}
    assert await stored_ids(store_at, "outbox", "alert_id") == {
        alerts[k].alert_id for k in ("old-still-trying", "recent-sent")
    }
    assert await stored_ids(store_at, "dedupe_keys", "key") == {"in-window", "within-longest"}


async def test_an_age_of_zero_keeps_that_kind_for_ever(tmp_path: Path, store_at: StoreAt) -> None:
    config = config_of(tmp_path, "[retention]\nruns = 0\nevents = '0s'\nalerts = '0d'")
    run = run_rows(OLD)
    async with store_at.open() as store:
        await store.submit([*run, event_row(OLD), alert(OLD, sent=True)]).wait()
        policy = retention.policy(config, NOW)
        pruned = await store.prune(policy)
    assert (policy.runs_before, policy.events_before, policy.alerts_before) == (None, None, None)
    assert pruned.total == 0


async def test_a_run_whose_event_was_pruned_still_shows_in_the_api_and_ui(
    tmp_path: Path,
) -> None:
    # runs kept longer than events: a run of 40 days keeps the id of its pruned event
    config = config_of(tmp_path, "[retention]\nruns = '90d'\nevents = '30d'")
    event = event_row(OLD)
    run = run_rows(OLD, event_id=event.event_id)
    run_id = run[0].run_id  # type: ignore[union-attr]
    async with open_store(config.state_path) as store:
        await store.submit([*run, event]).wait()
    async with daemon_running(config) as info:
        # the daemon prunes when it starts
        with anyio.fail_after(10):
            while await info.runner.store.get_events([event.event_id]):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert info.http_address is not None
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=ROOT) as client:
            shown = await client.get(f"/api/v1/runs/{run_id}")
            page = await client.get(f"/ui/runs/{run_id}")
            gone = await client.get(f"/api/v1/events/{event.event_id}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["event_id"] == event.event_id
    assert shown.json()["event"] is None
    assert page.status_code == 200, page.text
    assert "no longer kept" in page.text
    assert gone.status_code == 404


async def test_an_event_whose_runs_were_pruned_still_shows_in_the_api_and_ui(
    tmp_path: Path,
) -> None:
    config = config_of(tmp_path, "[retention]\nruns = '30d'\nevents = '90d'")
    run = run_rows(OLD)
    run_id = run[0].run_id  # type: ignore[union-attr]
    event = event_row(OLD, run_id)
    async with open_store(config.state_path) as store:
        await store.submit([*run, event]).wait()
    async with daemon_running(config) as info:
        with anyio.fail_after(10):
            while await info.runner.store.get_run(run_id):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert info.http_address is not None
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=ROOT) as client:
            shown = await client.get(f"/api/v1/events/{event.event_id}")
            lineage = await client.get(f"/api/v1/events/{event.event_id}/lineage")
            page = await client.get(f"/ui/events/{event.event_id}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["runs"] == []
    assert lineage.status_code == 200, lineage.text
    assert page.status_code == 200, page.text


async def test_the_api_shows_what_would_go_and_an_operator_prunes_it(tmp_path: Path) -> None:
    config = config_of(tmp_path)
    async with open_store(config.state_path) as store:
        await store.submit([*run_rows(OLD), event_row(OLD)]).wait()
    # the API alone, on a runner of its own: the daemon would prune at start by itself
    async with api_alone(config) as client:
        shown = await client.get("/api/v1/retention", headers=VERA)
        refused = await client.post("/api/v1/retention/prune", headers=VERA)
        pruned = await client.post("/api/v1/retention/prune", headers=ROOT)
        after = await client.get("/api/v1/retention", headers=VERA)
    assert shown.status_code == 200, shown.text
    would = shown.json()
    assert would["dry_run"] is True
    assert would["cutoffs"]["events"] == pytest.approx(now() - 30 * DAY, abs=60)
    assert would["cutoffs"]["dedupe_keys"] == {"orders": pytest.approx(now() - 3600, abs=60)}
    assert (would["counts"]["runs"], would["counts"]["events"]) == (1, 1)
    assert refused.status_code == 403
    assert pruned.status_code == 200, pruned.text
    assert pruned.json()["dry_run"] is False
    assert pruned.json()["counts"] == would["counts"]
    assert sum(after.json()["counts"].values()) == 0


@asynccontextmanager
async def api_alone(config: Config) -> AsyncIterator[httpx.AsyncClient]:
    """The daemon's API, over HTTP on loopback, without its sources or periodic tasks."""
    users = Users(
        {
            "root-token": Caller("root", frozenset({"viewer", "operator"}), frozenset()),
            "vera-token": Caller("vera", frozenset({"viewer"}), frozenset()),
        }
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    host, port = sock.getsockname()
    async with open_runner(config, lock=False) as runner, anyio.create_task_group() as tg:
        app = build_app(runner, trusted=False, users=users)
        await tg.start(partial(serve_asgi, app, sockets=[sock], grace_s=1))
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            yield client
        tg.cancel_scope.cancel()


# -- small transactions, through the one writer ------------------------------------------


async def test_a_prune_of_more_rows_than_a_batch_takes_several_transactions(
    store_at: StoreAt,
) -> None:
    policy = PrunePolicy(events_before=NOW - DAY)
    async with store_at.open() as store:
        await store.submit([event_row(OLD) for _ in range(1200)]).wait()
        before = store.commits
        pruned = await store.prune(policy, batch=500)
        commits = store.commits - before
        left = await store.list_events(limit=10)
    assert pruned.events == 1200
    assert commits == 4  # 500, 500, 200, and the one that finds nothing left
    assert left == []


async def test_a_run_with_more_rows_than_a_batch_goes_over_several_transactions(
    store_at: StoreAt,
) -> None:
    run = RunRow(new_id(), "p", "succeeded", {}, OLD, OLD, OLD)
    rows: list[Row] = [run]
    for i in range(600):
        rows.append(InstanceRow(run.run_id, f"t[{i}]", "t", i, "succeeded", 1, None, OLD))
        rows.append(AttemptRow(run.run_id, f"t[{i}]", 1, "succeeded", OLD, OLD))
    async with store_at.open() as store:
        await store.submit(rows).wait()
        before = store.commits
        pruned = await store.prune(PrunePolicy(runs_before=NOW), batch=500)
        commits = store.commits - before
        gone = await store.get_run(run.run_id)
    assert (pruned.runs, pruned.task_instances, pruned.attempts) == (1, 600, 600)
    assert commits == 4  # 500 rows, 500 rows, the last 200 and the run, nothing
    assert gone is None


async def test_writes_commit_between_the_transactions_of_a_long_prune(store_at: StoreAt) -> None:
    order: list[str] = []
    async with store_at.open() as store:
        await store.submit([event_row(OLD) for _ in range(3000)]).wait()

        async def prune() -> None:
            await store.prune(PrunePolicy(events_before=NOW), batch=50)
            order.append("prune")

        async with anyio.create_task_group() as tg:
            before = store.commits
            tg.start_soon(prune)
            with anyio.fail_after(10):
                while store.commits == before:  # noqa: ASYNC110 - a step's commit signals nothing
                    await anyio.sleep(0.001)
            # the prune is under way, 59 steps to go
            await store.submit([RunRow(new_id(), "p", "queued", {}, NOW)]).wait()
            order.append("write")
    assert order == ["write", "prune"], "the write waited for the whole prune"


async def test_runs_with_rows_waiting_to_commit_are_left_for_next_time(tmp_path: Path) -> None:
    busy, idle = run_rows(OLD), run_rows(OLD)
    busy_id, idle_id = busy[0].run_id, idle[0].run_id  # type: ignore[union-attr]
    path = tmp_path / "state.db"
    async with open_store(path) as store:
        await store.submit([*busy, *idle]).wait()
    async with aiosqlite.connect(path) as db:
        pruned = await pruning.step(db, PrunePolicy(runs_before=NOW), 500, busy={busy_id})
        await db.commit()
    assert pruned.runs == 1
    assert ids(path, "runs") == {busy_id}
    assert idle_id not in ids(path, "attempts")


async def test_every_prune_query_searches_an_index_instead_of_scanning_a_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    async with open_store(path) as store:
        await store.submit([*run_rows(OLD), event_row(OLD), alert(OLD, sent=True)]).wait()
        await store.submit([DedupeRow("orders", "k", OLD)]).wait()
    policy = retention.policy(config_of(tmp_path), NOW)
    statements: list[str] = []
    async with aiosqlite.connect(path) as db:
        await db.set_trace_callback(statements.append)
        await pruning.count(db, policy)
        await pruning.step(db, policy, 500)
        await db.rollback()
        plans = {
            sql: [row[3] for row in await db.execute_fetchall("EXPLAIN QUERY PLAN " + sql)]
            for sql in list(statements)
            if sql.startswith(("SELECT", "DELETE"))
        }
    assert len(plans) >= 10
    for sql, plan in plans.items():
        for line in plan:
            assert not line.startswith(("SCAN", "USE TEMP B-TREE")), f"{sql}\n{plan}"
            if line.startswith("SEARCH"):
                table, how = line.split(" ", 2)[1:]
                assert how.startswith(INDEXES[table]), f"{sql}\n{plan}"


# The indexes a prune may use, by table (``t``: a run's rows, by the run's id); a DELETE
# that returns only a count (RETURNING 1) finds its rows in the key alone (COVERING)
INDEXES = {
    "runs": (
        "USING INDEX runs_finished",
        "USING INDEX sqlite_autoindex_runs_1 (run_id=?)",
        "USING COVERING INDEX sqlite_autoindex_runs_1 (run_id=?)",
    ),
    "events": (
        "USING COVERING INDEX events_by_time",
        "USING INDEX sqlite_autoindex_events_1",
        "USING COVERING INDEX sqlite_autoindex_events_1",
    ),
    "outbox": (
        "USING INDEX outbox_by_age",
        "USING INDEX sqlite_autoindex_outbox_1",
        "USING COVERING INDEX sqlite_autoindex_outbox_1",
    ),
    "dedupe_keys": ("USING COVERING INDEX dedupe_by_age", "USING PRIMARY KEY (trigger=?"),
    # an event flow control holds is kept: looked up by the event's id
    "flow_holds": ("USING COVERING INDEX flow_holds_by_event (event_id=?)",),
    **dict.fromkeys(
        ("task_instances", "attempts", "approvals", "decisions", "waits", "run_cancels"),
        ("USING PRIMARY KEY (run_id=?",),
    ),
    # task log lines are counted in their smaller index, deleted by the primary key
    **dict.fromkeys(
        ("t", "task_logs"),
        ("USING PRIMARY KEY (run_id=?", "USING COVERING INDEX task_logs_by_attempt (run_id=?)"),
    ),
}


async def test_an_old_event_that_flow_control_holds_is_kept(
    tmp_path: Path, store_at: StoreAt
) -> None:
    config = config_of(tmp_path, "[retention]\nevents = '1d'")
    held, other = event_row(OLD), event_row(OLD)
    window = WindowRow("w1", "orders->p", "", "batch", "open", OLD, None, 1)
    async with store_at.open() as store:
        await store.submit([held, other, window, HoldRow("w1", 1, held.event_id, OLD)]).wait()
        policy = retention.policy(config, NOW)
        assert (await store.prunable(policy)).events == 1
        pruned = await store.prune(policy)
        kept = await stored_ids(store_at, "events", "event_id")
    assert pruned.events == 1
    assert kept == {held.event_id}
