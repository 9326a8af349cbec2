"""The ``postgres`` source against the machine's PostgreSQL: each test has a database of
its own, dropped after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest
import structlog
from pydantic import ValidationError

from cued.connectors.postgres import PostgresConfig, PostgresSource
from cued.daemon.errors import ConfigError, ConnectorError
from cued.daemon.sdk.sources import Receipt, SourceContext
from tests.support import probes
from tests.support.fakes import AcceptingIntake, NoRoutes
from tests.support.kafka_source import eventually
from tests.support.running import daemon_running
from tests.support.servers import postgres_database

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.assembly import DaemonInfo
    from cued.daemon.sdk.sources import Event
    from cued.daemon.store import EventRow, RunRow

OUTBOX = """
create table outbox (
    id bigint generated always as identity primary key,
    kind text not null,
    body jsonb,
    amount numeric,
    raw bytea,
    at timestamptz not null default now()
)
"""


def config_toml(dsn: str, extra: str = "", daemon: str = "") -> str:
    return f"""
[daemon]
log_level = "warning"
{daemon}
[http]
listen = "127.0.0.1:0"

[sources.outbox]
kind = "postgres"
dsn = "{dsn}"
table = "outbox"
poll_interval = "100ms"
{extra}

[pipelines.orders]
inputs = {{ order_id = "" }}
[pipelines.orders.tasks.handle]
kind = "python"
function = "tests.support.probes:record"
args = {{ name = "{{{{ inputs.order_id }}}}" }}

[[triggers]]
source = "outbox"
pipeline = "orders"
when = "event.data.kind == 'order'"
inputs = {{ order_id = "{{{{ event.data.body.id }}}}" }}
"""


async def insert(conn: asyncpg.Connection, *rows: tuple[str, Any]) -> None:
    for kind, body in rows:
        await conn.execute(
            "insert into outbox (kind, body) values ($1, $2::jsonb)",
            kind,
            None if body is None else json.dumps(body),
        )


async def events_of(info: DaemonInfo) -> list[EventRow]:
    return await info.runner.store.list_events(limit=100_000, source="outbox")


async def finished_runs(info: DaemonInfo, count: int) -> list[RunRow]:
    async def check() -> list[RunRow]:
        runs = await info.runner.store.list_runs(limit=100_000, pipeline="orders")
        done = [r for r in runs if r.state in ("succeeded", "failed", "cancelled")]
        assert len(runs) <= count, f"{len(runs)} runs, expected {count}"
        return done if len(done) == count else []

    return list(await eventually(check))


async def count_events(info: DaemonInfo, count: int) -> list[EventRow]:
    events = await events_of(info)
    return events if len(events) == count else []


async def test_new_rows_become_events_and_a_restart_reads_on_after_the_last(make_config):
    probe = probes.reset()
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.execute(OUTBOX)
        await insert(conn, ("order", {"id": "o1"}), ("note", {"x": 1}), ("order", {"id": "o2"}))
        await conn.execute(
            "insert into outbox (kind, amount, raw) values ('money', 12.50, '\\xff00'::bytea)"
        )
        config = make_config(config_toml(dsn))
        async with daemon_running(config) as info:
            await finished_runs(info, 2)
            first = {e.event_id: e for e in await eventually(lambda: count_events(info, 4))}
            cursor = await info.runner.store.get_cursor("outbox")
        await insert(conn, ("order", {"id": "o3"}))  # while the daemon is down
        async with daemon_running(config) as info:
            await finished_runs(info, 3)
            events = await eventually(lambda: count_events(info, 5))
            await insert(conn, ("order", {"id": "o4"}))  # while it runs
            await finished_runs(info, 4)
        await conn.close()

    assert sorted(probe.calls) == ["o1", "o2", "o3", "o4"]  # each once, none skipped
    assert cursor == "4"
    assert sorted(first) == [f"outbox:outbox:{n}" for n in range(1, 5)]
    order = first["outbox:outbox:1"]
    assert (order.status, order.data["body"], order.meta["cursor"]) == (
        "matched",
        {"id": "o1"},
        "1",
    )
    assert first["outbox:outbox:2"].status == "unmatched"
    money = first["outbox:outbox:4"]
    assert (money.data["amount"], money.data["raw"], money.meta["base64"]) == (
        12.5,
        "/wA=",
        ["raw"],
    )
    assert len(events) == 5


async def test_a_json_value_cued_cannot_keep_is_recorded_invalid_and_passed(make_config):
    probe = probes.reset()
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.execute(OUTBOX)
        deep: Any = "bottom"
        for _ in range(100):
            deep = [deep]
        await insert(conn, ("order", deep), ("order", {"id": "after"}))
        async with daemon_running(make_config(config_toml(dsn))) as info:
            await finished_runs(info, 1)
            events = {e.event_id: e for e in await eventually(lambda: count_events(info, 2))}
        await conn.close()
    bad = events["outbox:outbox:1"]
    assert bad.status == "invalid"
    assert "body" in (bad.error or "")
    assert probe.calls == ["after"]


async def test_a_notify_wakes_the_source_at_once(make_config):
    """The poll interval is an hour: only the NOTIFY can have woken it."""
    probe = probes.reset()
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.execute(OUTBOX)
        config = make_config(
            config_toml(dsn, 'channel = "outbox_new"').replace(
                'poll_interval = "100ms"', 'poll_interval = "1h"'
            )
        )
        async with daemon_running(config) as info:
            await insert(conn, ("order", {"id": "woken"}))
            await conn.execute("notify outbox_new")
            await finished_runs(info, 1)
        await conn.close()
    assert probe.calls == ["woken"]


async def test_with_a_channel_nothing_is_read_between_two_notifies(make_config):
    """The poll interval is 100 ms, yet with a channel the source's connection sends the
    database no statement while nothing is notified (a window of ten intervals shows it:
    a negative, so it needs a window; it never fails from slowness)."""
    probe = probes.reset()
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.execute(OUTBOX)
        config = make_config(config_toml(dsn, 'channel = "outbox_new"'))
        async with daemon_running(config) as info:
            await insert(conn, ("order", {"id": "first"}))
            await conn.execute("notify outbox_new")
            await finished_runs(info, 1)
            reads = (
                "SELECT count(*), max(query_start) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'SELECT t.*%'"
            )
            before = await conn.fetchrow(reads)
            await anyio.sleep(1.0)  # ten poll intervals
            after = await conn.fetchrow(reads)
            await insert(conn, ("order", {"id": "second"}))
            await conn.execute("notify outbox_new")
            await finished_runs(info, 2)
        await conn.close()
    assert before[0] == 1  # the source's connection, its last statement a read
    assert after == before  # no read began since
    assert probe.calls == ["first", "second"]


async def test_start_at_the_end_skips_the_rows_already_there(make_config):
    probe = probes.reset()
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.execute(OUTBOX)
        await insert(conn, ("order", {"id": "old"}))
        async with daemon_running(make_config(config_toml(dsn, 'start = "end"'))) as info:
            await insert(conn, ("order", {"id": "new"}))
            await finished_runs(info, 1)
        await conn.close()
    assert probe.calls == ["new"]


GATE: anyio.Event | None = None
HELD: list[str] = []


async def held(order_id: str) -> None:
    HELD.append(order_id)
    assert GATE is not None
    await GATE.wait()


async def test_a_saturated_backlog_stops_reading_until_it_drains(make_config):
    global GATE
    GATE = anyio.Event()
    HELD.clear()
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.execute(OUTBOX)
        await insert(conn, *[("order", {"id": f"o{i}"}) for i in range(100)])
        text = (
            config_toml(
                dsn, "max_batch = 10", daemon="backlog_high_water = 5\nbacklog_low_water = 2"
            )
            .replace("tests.support.probes:record", "tests.integration.test_postgres_source:held")
            .replace("args = { name =", "args = { order_id =")
            .replace(
                'inputs = { order_id = "" }', 'max_active_runs = 1\ninputs = { order_id = "" }'
            )
        )
        async with daemon_running(make_config(text)) as info:
            backlog = info.runner.backlog
            await eventually(lambda: _true(backlog.saturated))
            taken = len(await events_of(info))
            for _ in range(3):
                await anyio.sleep(0.5)
                assert len(await events_of(info)) == taken
            assert backlog.saturated
            assert taken <= backlog.high_water + 10
            GATE.set()
            await finished_runs(info, 100)
        await conn.close()
    assert sorted(HELD) == sorted(f"o{i}" for i in range(100))


async def test_a_table_or_cursor_column_that_is_not_there_fails_the_start():
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.execute("create table outbox (seq int)")
        await conn.close()
        missing_table = PostgresSource(PostgresConfig(dsn=dsn, table="nope"), _context())
        with pytest.raises(ConnectorError, match="'nope' does not exist"):
            await missing_table.run()
        missing_column = PostgresSource(PostgresConfig(dsn=dsn, table="outbox"), _context())
        with pytest.raises(ConnectorError, match=r"no column 'id'.*'seq'"):
            await missing_column.run()


async def test_an_unreachable_database_fails_the_start():
    source = PostgresSource(
        PostgresConfig(dsn="postgresql://postgres@127.0.0.1:1/x", table="t", connect_timeout=0.3),
        _context(),
    )
    with pytest.raises(ConnectorError, match="cannot connect"):
        await source.run()


async def test_a_timestamp_cursor_reads_in_time_order(make_config):
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.execute("create table outbox (at timestamptz primary key, kind text)")
        await conn.execute(
            "insert into outbox values ('2026-01-02T00:00:00Z', 'b'), ('2026-01-01T00:00:00Z', 'a')"
        )
        intake = _Recording()
        source = PostgresSource(
            PostgresConfig(dsn=dsn, table="outbox", cursor="at", poll_interval=0.05),
            _context(intake),
        )
        async with anyio.create_task_group() as tg:
            await tg.start(source.run)
            await eventually(lambda: _true(len(intake.events) == 2))
            await conn.execute("insert into outbox values ('2026-01-03T00:00:00Z', 'c')")
            await eventually(lambda: _true(len(intake.events) == 3))
            tg.cancel_scope.cancel()
        await conn.close()
    assert [e.data["kind"] for e in intake.events] == ["a", "b", "c"]
    assert intake.cursors[-1] == "2026-01-03 00:00:00+00"


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"table": "outbox; drop table x"}, id="table-not-a-name"),
        pytest.param({"cursor": 'id" --'}, id="cursor-not-a-name"),
        pytest.param({"channel": "a b"}, id="channel-not-a-name"),
        pytest.param({"start": "middle"}, id="start"),
    ],
)
def test_the_config_refuses_what_cannot_work(extra):
    with pytest.raises(ValidationError):
        PostgresConfig.model_validate({"dsn": "postgresql://x/y", "table": "outbox"} | extra)


def test_validate_names_the_line_of_a_bad_table(make_config):
    with pytest.raises(ConfigError, match=r"config\.toml:4: sources\.outbox\.table"):
        make_config(
            '[sources.outbox]\nkind = "postgres"\ndsn = "postgresql://x/y"\ntable = "a;b"\n'
        )


# -- helpers ----------------------------------------------------------------------------


class _Recording(AcceptingIntake):
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.cursors: list[str | None] = []

    async def record(
        self,
        events: list[Event],
        *,
        cursor: str | None = None,
        acknowledge: Callable[[list[Receipt]], None] | None = None,
    ) -> list[Receipt]:
        self.events.extend(events)
        self.cursors.append(cursor)
        return [Receipt(e.event_id, "matched") for e in events]


def _context(intake: Any = None) -> SourceContext:
    return SourceContext(
        "outbox", intake or _Recording(), structlog.get_logger(), NoRoutes(), Path(".")
    )


async def _true(value: bool) -> bool:
    return value


async def test_a_connection_the_server_ends_is_made_again_and_reading_goes_on(make_config):
    probe = probes.reset()
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.execute(OUTBOX)
        await insert(conn, ("order", {"id": "before"}))
        async with daemon_running(make_config(config_toml(dsn))) as info:
            await finished_runs(info, 1)
            ended = await conn.fetch(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where datname = current_database() and pid <> pg_backend_pid()"
            )
            await insert(conn, ("order", {"id": "after"}))
            await finished_runs(info, 2)
        await conn.close()
    assert len(ended) >= 1
    assert probe.calls == ["before", "after"]


async def test_a_table_the_source_may_not_read_stops_it_naming_the_table():
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        role = f"cued_reader_{dsn.rsplit('_', 1)[-1]}"
        await conn.execute("create table outbox (id int primary key)")
        await conn.execute(f'create role "{role}" login')
        try:
            await conn.execute(f'grant select on outbox to "{role}"')
            source = PostgresSource(
                PostgresConfig(dsn=dsn.replace("postgres@", f"{role}@"), table="outbox"),
                _context(),
            )

            async def read_then_revoke() -> None:
                async with anyio.create_task_group() as tg:
                    await tg.start(source.run)
                    await conn.execute(f'revoke select on outbox from "{role}"')

            with pytest.raises(ExceptionGroup) as stopped:
                await read_then_revoke()
            (error,) = stopped.value.exceptions
            assert isinstance(error, ConnectorError)
            assert "reading 'outbox' failed: permission denied" in str(error)
        finally:
            await conn.execute(f'drop owned by "{role}"')
            await conn.close()
            await _drop_role(role)


async def _drop_role(role: str) -> None:
    from tests.support.servers import POSTGRES

    admin = await asyncpg.connect(f"{POSTGRES}/postgres")
    try:
        await admin.execute(f'drop role if exists "{role}"')
    finally:
        await admin.close()


async def test_settle_needs_a_timestamp_cursor():
    async with postgres_database() as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.execute("create table outbox (id int primary key)")
        await conn.close()
        source = PostgresSource(PostgresConfig(dsn=dsn, table="outbox", settle=1.0), _context())
        with pytest.raises(ConnectorError, match="settle needs a timestamp cursor"):
            await source.run()
