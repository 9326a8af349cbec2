"""The ``sql`` task kind against the machine's PostgreSQL and MariaDB, and SQLite files:
bound parameters whatever they hold, a transaction per task, data checks, reruns."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cued.daemon.errors import ConfigError, PermanentTaskError, TaskError
from cued.daemon.ops import repair
from cued.plugins.sql import SqlTask
from tests.support.alerts import outbox
from tests.support.kinds import task_context
from tests.support.running import daemon_running, wait_finished
from tests.support.servers import (
    create_mariadb_database,
    create_postgres_database,
    drop_database,
    mariadb_database,
    postgres_database,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: Text a database can hold as text: any character but NUL (PostgreSQL refuses it in
#: text) and lone surrogates (not UTF-8).
HOSTILE = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    max_size=200,
) | st.sampled_from(
    [
        "'); DROP TABLE facts; --",
        "\\'; DROP TABLE facts; --",
        "$1",
        "?",
        "%s",
        "%(x)s",
        "' OR '1'='1",
        '"; select 1; "',
        "\\",
        "\u2019; drop table facts; --",
        "{{ 7 * 7 }}",
    ]
)

#: Per driver: the DSN maker, the table, an insert and a select with its placeholders.
DRIVERS = {
    "postgresql": (
        "create table facts (id int primary key, note text)",
        "insert into facts (id, note) values ($1, $2)",
        "select note from facts where id = $1",
    ),
    "sqlite": (
        "create table facts (id integer primary key, note text)",
        "insert into facts (id, note) values (?, ?)",
        "select note from facts where id = ?",
    ),
    "mysql": (
        "create table facts (id int primary key, note text) character set utf8mb4",
        "insert into facts (id, note) values (%s, %s)",
        "select note from facts where id = %s",
    ),
}


async def run_sql(dsn: str, query: str, params: list[Any] | None = None, **more: Any) -> Any:
    """One ``sql`` task, as a daemon runs it (params through the model), pools closed after."""
    async with httpx.AsyncClient() as http, SqlTask() as kind:
        values = {"dsn": dsn, "query": query, "params": params or [], **more}
        return await kind.execute(SqlTask.Params.model_validate(values), task_context(http))


@pytest.fixture(scope="module", params=list(DRIVERS))
def database(request, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """``(driver, dsn)`` of a database with an empty ``facts`` table, for a whole module
    (property tests run many examples on it)."""
    driver = request.param
    if driver == "sqlite":
        dsn = f"sqlite:///{tmp_path_factory.mktemp('sql')}/facts.db"
    elif driver == "postgresql":
        dsn = anyio.run(create_postgres_database)
    else:
        dsn = anyio.run(create_mariadb_database)
    try:
        anyio.run(run_sql, dsn, DRIVERS[driver][0])
        yield driver, dsn
    finally:
        if driver != "sqlite":
            anyio.run(drop_database, dsn)


COUNTER = iter(range(1, 10**9))
#: Rows inserted so far, per database.
INSERTED: dict[str, int] = {}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(note=HOSTILE)
def test_a_bound_parameter_is_stored_as_given_whatever_it_holds(database, note):
    driver, dsn = database
    _, insert, select = DRIVERS[driver]
    row_id = next(COUNTER)

    async def scenario() -> tuple[Any, Any, Any]:
        inserted = await run_sql(dsn, insert, [row_id, note])
        selected = await run_sql(dsn, select, [row_id])
        count = await run_sql(dsn, "select count(*) as n from facts")
        return inserted, selected, count

    inserted, selected, count = anyio.run(scenario)
    assert inserted["affected"] == 1
    assert selected["rows"] == [{"note": note}]
    # the table is still there, holding every row inserted so far and nothing else
    INSERTED[dsn] = INSERTED.get(dsn, 0) + 1
    assert count["rows"][0]["n"] == INSERTED[dsn]


async def test_a_failing_expect_fails_the_task_shows_the_row_and_rolls_back(tmp_path):
    async with postgres_database() as dsn:
        await run_sql(dsn, "create table facts (id int primary key, total int)")
        with pytest.raises(PermanentTaskError) as failed:
            await run_sql(
                dsn,
                "insert into facts (id, total) values ($1, $2) returning id, total",
                [1, -5],
                expect="rows[0].total > 0",
            )
        after = await run_sql(dsn, "select count(*) as n from facts")
    message = str(failed.value)
    assert "rows[0].total > 0" in message
    assert '{"id": 1, "total": -5}' in message
    assert after["rows"] == [{"n": 0}]  # the insert went with the failed check


async def test_an_expect_on_no_rows_is_false_and_one_that_holds_passes(tmp_path):
    dsn = f"sqlite:///{tmp_path}/w.db"
    await run_sql(dsn, "create table facts (id integer primary key)")
    with pytest.raises(PermanentTaskError, match="no rows"):
        await run_sql(dsn, "select id from facts", expect="rows[0].id > 0")
    await run_sql(dsn, "insert into facts (id) values (?)", [7])
    checked = await run_sql(
        dsn, "select count(*) as n from facts", expect="rows[0].n == 1 and row_count == 1"
    )
    assert checked["rows"] == [{"n": 1}]


async def test_the_output_is_bounded_by_max_rows():
    async with postgres_database() as dsn:
        output = await run_sql(dsn, "select g as n from generate_series(1, 500) g", max_rows=3)
    assert output == {
        "rows": [{"n": 1}, {"n": 2}, {"n": 3}],
        "row_count": 3,
        "truncated": True,
        "affected": None,
    }


async def test_mariadb_reads_rows_and_counts_changes():
    async with mariadb_database() as dsn:
        await run_sql(dsn, "create table t (id int primary key, total decimal(10,2))")
        changed = await run_sql(dsn, "insert into t values (%s, %s), (%s, %s)", [1, 2.5, 2, 3])
        read = await run_sql(dsn, "select id, total from t order by id", max_rows=1)
    assert changed["affected"] == 2
    assert read == {
        "rows": [{"id": 1, "total": 2.5}],
        "row_count": 1,
        "truncated": True,
        "affected": None,
    }


async def test_a_refused_statement_fails_for_good_and_an_unreachable_server_retryably():
    async with postgres_database() as dsn:
        with pytest.raises(PermanentTaskError, match="no_such_table"):
            await run_sql(dsn, "select * from no_such_table")
        with pytest.raises(PermanentTaskError):  # two statements: asyncpg takes one
            await run_sql(dsn, "select 1; select 2", ["x"])
        with pytest.raises(PermanentTaskError, match="int"):  # a value of the wrong type
            await run_sql(dsn, "select $1::int", [""])
    with pytest.raises(TaskError) as unreachable:
        await run_sql("postgresql://postgres@127.0.0.1:1/x", "select 1")
    assert not isinstance(unreachable.value, PermanentTaskError)


async def test_a_dsn_from_the_environment_is_redacted_from_errors(monkeypatch):
    monkeypatch.setenv("CUED_TEST_WAREHOUSE", "postgresql://postgres:s3cr3t-pw@127.0.0.1:1/x")
    with pytest.raises(TaskError) as failed:
        await run_sql("env:CUED_TEST_WAREHOUSE", "select 1")
    assert "s3cr3t-pw" not in str(failed.value)


PIPELINE = """
[daemon]
log_level = "warning"
[http]
listen = "127.0.0.1:0"

[pipelines.load]
inputs = {{ id = 0, total = 0 }}

[pipelines.load.tasks.upsert]
kind = "sql"
dsn = "{dsn}"
query = "insert into facts (id, total) values ($1, $2) on conflict (id) do update set total = excluded.total"
params = ["{{{{ inputs.id }}}}", "{{{{ inputs.total }}}}"]

[pipelines.load.tasks.check]
kind = "sql"
needs = ["upsert"]
dsn = "{dsn}"
query = "select count(*) as n, sum(total) as total from facts"
expect = "rows[0].n > 0 and rows[0].total < 1000"
"""


async def test_a_rerun_of_a_load_does_not_double_it_and_a_failed_check_fails_the_run(
    make_config,
):
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.execute("create table facts (id int primary key, total int)")
        config = make_config(PIPELINE.format(dsn=dsn))
        async with daemon_running(config) as info:
            first = await info.runner.start_run("load", {"id": 1, "total": 10})
            second = await info.runner.start_run("load", {"id": 1, "total": 10})
            ran = await wait_finished(info, [first.run_id, second.run_id])
            # cued rerun of the load (and its check) of a run that succeeded
            await repair.rerun(info.runner, first.run_id, tasks=["upsert"])
            (rerun,) = await wait_finished(info, [first.run_id])
            attempts = await info.runner.store.get_attempts(first.run_id)
            over = await info.runner.start_run("load", {"id": 2, "total": 5000})
            (failed,) = await wait_finished(info, [over.run_id])
            instances = await info.runner.store.get_instances(over.run_id)
        rows = await conn.fetch("select id, total from facts order by id")
        await conn.close()
    assert [r.state for r in ran] == ["succeeded", "succeeded"]
    assert rerun.state == "succeeded"
    assert sorted(a.key for a in attempts) == ["check", "check", "upsert", "upsert"]
    assert [tuple(r) for r in rows] == [(1, 10), (2, 5000)]  # the load itself went in
    assert failed.state == "failed"
    check = next(i for i in instances if i.task == "check")
    assert check.state == "failed"
    assert "rows[0].total < 1000" in (check.error or "")


def test_validate_refuses_a_template_in_the_query(make_config):
    with pytest.raises(ConfigError, match="query cannot be a template"):
        make_config(
            """
[pipelines.p]
inputs = { name = "" }
[pipelines.p.tasks.t]
kind = "sql"
dsn = "sqlite:///tmp/x.db"
query = "select * from t where name = '{{ inputs.name }}'"
"""
        )


@pytest.mark.parametrize(
    ("values", "error"),
    [
        pytest.param({"dsn": "oracle://x", "query": "select 1"}, "DSN must start", id="scheme"),
        pytest.param(
            {"dsn": "sqlite:///x.db", "query": "select 1", "expect": "rows[0"},
            "does not parse",
            id="expect",
        ),
    ],
)
def test_params_refuse_what_cannot_work(values, error):
    with pytest.raises(ValueError, match=error):
        SqlTask.Params.model_validate(values)


def test_sqlite_files_stay_sqlite_files(tmp_path: Path):
    # the task wrote through aiosqlite into an ordinary file sqlite3 reads
    dsn = f"sqlite:///{tmp_path}/plain.db"
    anyio.run(run_sql, dsn, "create table t (x text)")
    anyio.run(run_sql, dsn, "insert into t values (?)", ["ok"])
    with sqlite3.connect(tmp_path / "plain.db") as db:
        assert db.execute("select x from t").fetchall() == [("ok",)]


ASSET_CHECK = """
[daemon]
log_level = "warning"
state = "state.db"
[http]
listen = "127.0.0.1:0"

[alerts.ops]
kind = "webhook"
url = "http://127.0.0.1:9/alerts"        # nobody listens: the alert waits in the outbox

[pipelines.load]
inputs = {{ total = 0 }}
[pipelines.load.tasks.upsert]
kind = "sql"
dsn = "{dsn}"
query = "insert into facts (id, total) values (1, $1) on conflict (id) do update set total = excluded.total returning total"
params = ["{{{{ inputs.total }}}}"]
expect = "rows[0].total >= 0"
produces = ["facts"]

[pipelines.report]
[pipelines.report.tasks.t]
kind = "sleep"
seconds = 0

[[triggers]]
source = "asset:facts"
pipeline = "report"
"""


async def test_a_failed_check_marks_the_asset_version_bad_and_raises_task_failed(
    make_config, tmp_path
):
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.execute("create table facts (id int primary key, total int)")
        config = make_config(ASSET_CHECK.format(dsn=dsn))
        async with daemon_running(config) as info:
            good = await info.runner.start_run("load", {"total": 5})
            (good_row,) = await wait_finished(info, [good.run_id])
            bad = await info.runner.start_run("load", {"total": -1})
            (bad_row,) = await wait_finished(info, [bad.run_id])
            versions = await info.runner.store.list_events(limit=100, source="asset:facts")
            reports = await info.runner.store.list_runs(limit=100, pipeline="report")
            host, port = info.http_address or ("", 0)
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as api:
                shown = (await api.get("/api/v1/assets/facts")).json()
        total = await conn.fetchval("select total from facts where id = 1")
        await conn.close()
    assert (good_row.state, bad_row.state) == ("succeeded", "failed")
    assert total == 5  # the bad load was rolled back with its check
    by_id = {v.event_id: v for v in versions}
    assert set(by_id) == {
        f"asset:facts:{good.run_id}",
        f"asset:facts:{bad.run_id}:failed-check:1",
    }
    marked = by_id[f"asset:facts:{bad.run_id}:failed-check:1"]
    assert marked.status == "invalid"  # a bad version starts nothing
    assert (marked.error or "").startswith("data check failed: expect 'rows[0].total >= 0'")
    assert '{"total": -1}' in (marked.error or "")
    assert marked.data["run_id"] == bad.run_id
    assert by_id[f"asset:facts:{good.run_id}"].status == "matched"
    assert len(reports) == 1  # only the good version started the report
    # lineage shows the bad version as bad, with the check's error
    newest, older = shown["versions"]
    assert (newest["run_id"], newest["bad"], older["bad"]) == (bad.run_id, True, False)
    assert newest["error"] == marked.error
    alerts = outbox(tmp_path / "state.db")
    assert f"ops:task_failed:{bad.run_id}:upsert:1" in alerts


async def test_a_dsn_variable_that_is_not_set_fails_for_good_naming_it(monkeypatch):
    monkeypatch.delenv("CUED_TEST_NO_SUCH_DSN", raising=False)
    with pytest.raises(PermanentTaskError, match="CUED_TEST_NO_SUCH_DSN"):
        await run_sql("env:CUED_TEST_NO_SUCH_DSN", "select 1")


async def test_a_dsn_from_a_file_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dsn").write_text(f"sqlite:///{tmp_path}/f.db\n")
    assert (await run_sql("file:dsn", "select 1 as one"))["rows"] == [{"one": 1}]
