"""The store's contract, on SQLite and on PostgreSQL alike (the ``store_at`` fixture gives
each test both): group commit, what it hands back after a restart, what it commits when
everything is cancelled. Then what is each engine's own: migrations, query plans."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import anyio
import asyncpg
import pytest

from cued.daemon.config.state import shown_url
from cued.daemon.core.ids import new_id, now
from cued.daemon.errors import StoreError
from cued.daemon.store import AttemptRow, EventRow, InstanceRow, RunRow
from cued.daemon.store._sqlite_bulk import BULK_FROM
from cued.daemon.store.migrations import MIGRATIONS
from cued.daemon.store.pg_migrations import PG_MIGRATIONS
from cued.daemon.store.postgresql import DAEMON_LOCK, open_pg_store, pg_sql
from cued.daemon.store.sqlite import (
    COUNT_RUNS_BY_STATE,
    COUNT_WAITING_APPROVALS,
    events_query,
    open_store,
    runs_query,
)
from tests.support.stores import fresh_database


async def test_a_new_file_is_migrated_to_the_current_schema_in_wal_mode(tmp_path):
    path = tmp_path / "state.db"
    async with open_store(path):
        pass
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    assert {"runs", "task_instances", "attempts", "events"} <= tables


async def test_a_file_from_a_newer_cued_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(
        StoreError,
        match=f"has schema version 99, newer than this cued knows \\({len(MIGRATIONS)}\\): upgrade",
    ):
        async with open_store(path):
            pass


async def test_a_file_of_an_older_schema_is_migrated_keeping_its_rows(tmp_path):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
        db.execute(
            "INSERT INTO runs VALUES ('r1', 'p', 'succeeded', '{}', 1.0, 1.0, 2.0, NULL, NULL)"
        )
        db.execute("INSERT INTO attempts VALUES ('r1', 't', 1, 'succeeded', 1.0, 2.0, NULL, '3')")
    async with open_store(path) as store:
        (attempt,) = await store.get_attempts("r1")
        assert (await store.get_run("r1")).state == "succeeded"
    assert (attempt.output, attempt.cost) == (3, None)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)


async def test_many_submissions_share_few_commits_and_the_last_row_wins(store_at):
    async with store_at.open() as store:
        run = RunRow(new_id(), "p", "running", {"x": 1}, now())
        store.submit([run])
        batches = [
            store.submit(
                [
                    InstanceRow(
                        run.run_id, f"t{i % 10}", f"t{i % 10}", None, "running", i, None, now()
                    )
                ]
            )
            for i in range(1000)
        ]
        for batch in batches:
            await batch.wait()
        commits = store.commits
        instances = await store.get_instances(run.run_id)
    assert commits < 10, "each submission paid for its own commit"
    assert len(instances) == 10
    assert {i.attempts for i in instances} == set(range(990, 1000))


@pytest.mark.parametrize("odd", [None, "nul \x00 in it"], ids=["plain", "a-nul-in-one-row"])
async def test_a_commit_as_big_as_a_floods_reads_back_as_submitted(store_at, odd):
    """Each table's rows in one statement (SQLite: as JSON), or row by row where one of
    them holds what the JSON would not keep (PostgreSQL keeps no NUL: U+FFFD)."""
    n = BULK_FROM + 10
    runs = [
        RunRow(new_id(), "p", "succeeded", {"i": i, "é": [None, 1.5]}, now(), now(), now() + 1)
        for i in range(n)
    ]
    runs[7] = RunRow(runs[7].run_id, "p", "failed", {}, 1.0e9, None, 2.5, odd, priority=9)
    events = [
        EventRow(new_id(), "s", now(), "matched", {"n": i}, {"key": None}, (runs[i].run_id,))
        for i in range(n)
    ]
    rows = [
        *runs,
        *events,
        *(InstanceRow(r.run_id, "t", "t", None, "succeeded", 1, None, now()) for r in runs),
        *(AttemptRow(r.run_id, "t", 1, "succeeded", now(), now(), None, '{"ok": 1}') for r in runs),
    ]
    async with store_at.open() as store:
        await store.submit(rows).wait()
        got_runs = await store.get_runs([r.run_id for r in runs])
        got_events = await store.get_events([e.event_id for e in events])
        attempts = await store.get_attempts(runs[7].run_id)
        instances = await store.get_instances(runs[-1].run_id)
    if odd is not None and store_at.kind == "postgresql":
        runs[7] = replace(runs[7], error=odd.replace("\x00", "\ufffd"))
    assert sorted(got_runs, key=lambda r: r.run_id) == sorted(runs, key=lambda r: r.run_id)
    assert sorted(got_events, key=lambda e: e.event_id) == sorted(events, key=lambda e: e.event_id)
    assert [(a.state, a.output) for a in attempts] == [("succeeded", {"ok": 1})]
    assert [(i.key, i.state) for i in instances] == [("t", "succeeded")]


async def test_unfinished_runs_come_back_with_the_outputs_of_succeeded_instances(store_at):
    async with store_at.open() as store:
        done = RunRow(new_id(), "p", "succeeded", {}, now())
        half = RunRow(new_id(), "p", "running", {"day": "mon"}, now())
        queued = RunRow(new_id(), "p", "queued", {}, now())
        await store.submit(
            [
                done,
                half,
                queued,
                InstanceRow(half.run_id, "a", "a", None, "succeeded", 1, None, now()),
                InstanceRow(half.run_id, "b", "b", None, "running", 2, None, now()),
                AttemptRow(half.run_id, "a", 1, "succeeded", now(), now(), None, '{"rows": 3}'),
                AttemptRow(half.run_id, "b", 1, "failed", now(), now(), "boom"),
                AttemptRow(half.run_id, "b", 2, "running", now()),
            ]
        ).wait()
    async with store_at.open() as store:
        resumed = await store.runs_to_resume()
    assert [r.run_id for r, _, _ in resumed] == sorted([half.run_id, queued.run_id])
    row, instances, outputs = next(x for x in resumed if x[0].run_id == half.run_id)
    assert row.inputs == {"day": "mon"}
    assert {(i.key, i.state, i.attempts) for i in instances} == {
        ("a", "succeeded", 1),
        ("b", "running", 2),
    }
    assert outputs == {"a": {"rows": 3}}


async def test_what_was_submitted_is_committed_when_the_store_closes(store_at):
    async with store_at.open() as store:
        run = RunRow(new_id(), "p", "queued", {}, now())
        store.submit([run])  # not awaited
    async with store_at.open() as store:
        assert await store.get_run(run.run_id) == run


def test_ids_sort_by_creation_time():
    ids = []
    for _ in range(3):
        ids.append(new_id())
        anyio.run(anyio.sleep, 0.002)
    assert ids == sorted(ids)
    assert len(set(ids)) == 3


async def test_the_writer_commits_what_is_waited_for_even_when_everything_is_cancelled(store_at):
    # a daemon cancelled from outside cancels every task at once; a run finishing then
    # waits, shielded, for its last rows: the writer must still commit them
    run = RunRow(new_id(), "p", "succeeded", {}, now())
    committed = anyio.Event()

    async def daemon(*, task_status):
        async with store_at.open() as store:
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await store.submit([run]).wait()
                    committed.set()

    async with anyio.create_task_group() as tg:
        await tg.start(daemon)
        tg.cancel_scope.cancel()
    assert committed.is_set()
    async with store_at.open() as store:
        assert await store.get_run(run.run_id) == run


# -- the queries of lists and counts --------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(runs_query(limit=51), id="runs"),
        pytest.param(runs_query(limit=51, before="01m"), id="runs-cursor"),
        pytest.param(runs_query(limit=51, pipeline="p", before="01m"), id="runs-pipeline"),
        pytest.param(runs_query(limit=51, state="failed", before="01m"), id="runs-state"),
        pytest.param(runs_query(limit=51, pipeline="p", state="failed"), id="runs-both"),
        pytest.param(runs_query(limit=51, created_after=1.0, created_before=2.0), id="runs-time"),
        pytest.param(events_query(limit=51, before=(1.0, "e")), id="events-cursor"),
        pytest.param(events_query(limit=51, source="s", before=(1.0, "e")), id="events-source"),
        pytest.param(events_query(limit=51, status="invalid", before=(1.0, "e")), id="status"),
    ],
)
async def test_list_queries_are_range_scans_of_an_index(tmp_path, query):
    sql, args = query
    async with open_store(tmp_path / "state.db") as store:
        plan = await store._reader.execute_fetchall("EXPLAIN QUERY PLAN " + sql, args)
    details = " ".join(row[3] for row in plan)
    assert "USING INDEX" in details or "USING PRIMARY KEY" in details, details
    assert "TEMP B-TREE" not in details, details  # no sort of the whole table


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param(COUNT_RUNS_BY_STATE, id="runs-by-state"),
        pytest.param(COUNT_WAITING_APPROVALS, id="waiting-approvals"),
    ],
)
async def test_counts_read_an_index_not_the_table(tmp_path, sql):
    async with open_store(tmp_path / "state.db") as store:
        plan = await store._reader.execute_fetchall("EXPLAIN QUERY PLAN " + sql)
    details = " ".join(row[3] for row in plan)
    assert "USING COVERING INDEX" in details or "USING INDEX" in details, details
    assert "TEMP B-TREE" not in details, details


# -- PostgreSQL's own -----------------------------------------------------------------------


async def test_a_new_database_is_migrated_to_the_current_schema():
    async with fresh_database() as url:
        async with open_pg_store(url):
            pass
        db = await asyncpg.connect(url)
        try:
            assert await db.fetchval("SELECT version FROM cued_schema") == len(PG_MIGRATIONS)
            tables = {
                r["tablename"]
                for r in await db.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
        finally:
            await db.close()
    assert {"runs", "task_instances", "attempts", "events", "task_logs"} <= tables


async def test_daemons_that_start_at_once_on_an_empty_database_migrate_it_once():
    async with fresh_database() as url:
        opened = 0

        async def start() -> None:
            nonlocal opened
            async with open_pg_store(url):
                opened += 1

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(start)
        db = await asyncpg.connect(url)
        try:
            versions = await db.fetch("SELECT version FROM cued_schema")
        finally:
            await db.close()
    assert opened == 4
    assert [tuple(v) for v in versions] == [(len(PG_MIGRATIONS),)]


async def test_a_database_from_a_newer_cued_is_refused_with_a_clear_error():
    async with fresh_database() as url:
        async with open_pg_store(url):
            pass
        db = await asyncpg.connect(url)
        try:
            await db.execute("UPDATE cued_schema SET version = 99")
        finally:
            await db.close()
        with pytest.raises(
            StoreError,
            match=f"has schema version 99, newer than this cued knows \\({len(PG_MIGRATIONS)}\\)",
        ):
            async with open_pg_store(url):
                pass


async def test_daemons_share_a_database_a_copy_has_it_alone_and_the_lock_goes_with_a_session():
    async with fresh_database() as url:
        async with open_pg_store(url, shared=True), open_pg_store(url, shared=True):
            with pytest.raises(StoreError, match="another cued daemon is running on"):
                async with open_pg_store(url, exclusive=True):
                    pass
            # readers (the CLI) need no lock
            async with open_pg_store(url) as reader:
                await reader.ping()
        async with open_pg_store(url, exclusive=True) as store:
            with pytest.raises(StoreError, match="is being copied"):
                async with open_pg_store(url, shared=True):
                    pass
            db = await asyncpg.connect(url)
            try:
                # of this database only: other tests' daemons hold theirs meanwhile
                held = await db.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    DAEMON_LOCK & 0xFFFFFFFF,
                )
            finally:
                await db.close()
            await store.ping()
    assert held == 1


async def test_an_absent_server_is_a_store_error_naming_it_without_its_password():
    with pytest.raises(
        StoreError, match=r"cannot connect to the database 'postgresql://u@127\.0\.0\.1:1/x'"
    ):
        async with open_pg_store("postgresql://u:hunter2@127.0.0.1:1/x"):
            pass


def test_sqlite_placeholders_are_numbered_and_index_hints_dropped():
    assert (
        pg_sql("SELECT * FROM runs INDEXED BY runs_finished WHERE a = ? AND b IN (?, ?)")
        == "SELECT * FROM runs WHERE a = $1 AND b IN ($2, $3)"
    )
    assert shown_url("postgresql://cued:s3cret@db:5432/cued") == "postgresql://cued@db:5432/cued"
    assert shown_url("postgresql://db/cued") == "postgresql://db/cued"


async def test_a_lost_connection_fails_the_store_at_once_not_at_the_next_write():
    # the writer's session held the daemon's lock: a daemon that lost it must stop, even
    # when idle, before another one may take the database over
    async with fresh_database() as url:
        with pytest.raises(ExceptionGroup) as info:  # noqa: PT012 - the store's task group
            async with open_pg_store(url, exclusive=True) as store:
                admin = await asyncpg.connect(url)
                try:
                    # (of this database only: other tests' daemons hold theirs)
                    await admin.fetchval(
                        # of this database only: not other tests' daemons
                        "SELECT pg_terminate_backend(pid) FROM pg_locks "
                        "WHERE locktype = 'advisory' AND objid = $1 AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database())",
                        DAEMON_LOCK & 0xFFFFFFFF,
                    )
                finally:
                    await admin.close()
                with anyio.fail_after(10):
                    await anyio.sleep_forever()  # cancelled by the store's failure
        with pytest.raises(StoreError, match="lost the connection to the database"):
            store.submit([RunRow(new_id(), "p", "queued", {}, now())])
    (error,) = info.value.exceptions
    assert isinstance(error, StoreError)
    assert "lost the connection to the database" in str(error)
