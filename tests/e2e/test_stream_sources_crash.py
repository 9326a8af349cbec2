"""kill -9 of the daemon, three times, while messages pour in from NATS JetStream and rows
into a PostgreSQL outbox, then a restart: every message and every row has exactly one
event, every valid one started its run exactly once, the invalid ones are recorded as
such, and everything is acknowledged (the consumer's ack floor, the outbox cursor)."""

from __future__ import annotations

import json

import anyio
import asyncpg  # type: ignore[import-untyped]

from tests.support.daemon import Daemon, query, wait_for
from tests.support.raw_http import free_port
from tests.support.servers import NATS_URL, nats_stream, postgres_database, unique

CONFIG = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "state.db"
max_running_tasks = 64

[sources.orders]
kind = "nats"
servers = ["{nats}"]
stream = "{stream}"
durable = "{durable}"
fetch_wait = "200ms"
ack_wait = "2s"
max_batch = 50

[sources.outbox]
kind = "postgres"
dsn = "{dsn}"
table = "outbox"
poll_interval = "50ms"
max_batch = 50

[pipelines.p]
max_active_runs = 64
inputs = {{ what = "" }}
[pipelines.p.tasks.t]
kind = "sleep"
seconds = 0.01

[[triggers]]
source = "orders"
pipeline = "p"
inputs = {{ what = "order {{{{ event.data.n }}}}" }}
[[triggers]]
source = "outbox"
pipeline = "p"
inputs = {{ what = "row {{{{ event.data.body.n }}}}" }}
"""

#: Messages and rows in all; every INVALID_EVERY-th is one cued cannot keep.
MESSAGES, ROWS, INVALID_EVERY = 600, 600, 25


def too_deep(n: int) -> str:
    return "[" * 100 + str(n) + "]" * 100


async def test_kill_9_three_times_while_messages_and_rows_pour_in(tmp_path):
    async with nats_stream(["orders.>"]) as (client, stream), postgres_database() as dsn:
        js = client.jetstream()
        conn = await asyncpg.connect(dsn)
        await conn.execute(
            "create table outbox (id bigint generated always as identity primary key, "
            "body jsonb not null)"
        )
        durable = unique("cued")
        config = tmp_path / "config.toml"
        config.write_text(
            CONFIG.format(port=free_port(), nats=NATS_URL, stream=stream, durable=durable, dsn=dsn)
        )
        state = tmp_path / "state.db"

        async def publish() -> None:
            for n in range(MESSAGES):
                body = (
                    b"{broken %d" % n if n % INVALID_EVERY == 0 else json.dumps({"n": n}).encode()
                )
                await js.publish("orders.new", body)
                if n % 20 == 0:
                    await anyio.sleep(0.01)

        async def write_rows() -> None:
            for n in range(ROWS):
                body = too_deep(n) if n % INVALID_EVERY == 0 else json.dumps({"n": n})
                await conn.execute("insert into outbox (body) values ($1::jsonb)", body)
                if n % 20 == 0:
                    await anyio.sleep(0.01)

        crashes = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish)
            tg.start_soon(write_rows)
            for _ in range(3):
                crashes += 1
                daemon = Daemon(config, state)
                await daemon.start()
                seen = _count(state, "orders") + _count(state, "outbox")
                # in the thick of it: more recorded since the last start, more still coming
                await wait_for(
                    lambda s=seen: _count(state, "orders") + _count(state, "outbox") >= s + 60,
                    timeout_s=60,
                )
                daemon.kill9()
        recorded_before_restart = _count(state, "orders") + _count(state, "outbox")

        daemon = Daemon(config, state)
        await daemon.start()
        try:
            await wait_for(lambda: _count(state, "orders") == MESSAGES, timeout_s=120)
            await wait_for(lambda: _count(state, "outbox") == ROWS, timeout_s=120)
            await wait_for(lambda: _unfinished(state) == 0, timeout_s=120)

            async def acked() -> bool:
                info = await js.consumer_info(stream, durable)
                return info.ack_floor.stream_seq == MESSAGES and info.num_ack_pending == 0

            with anyio.fail_after(60):
                while not await acked():  # noqa: ASYNC110 - the server's state: nothing to wait on
                    await anyio.sleep(0.05)
        finally:
            assert daemon.stop() == 0
        await conn.close()

    assert crashes == 3
    assert 0 < recorded_before_restart
    events = dict(query(state, "SELECT event_id, status FROM events"))
    # every message and every row: one event each, under the id a redelivery repeats
    assert sorted(e for e in events if e.startswith("orders:")) == sorted(
        f"orders:{stream}:{seq}" for seq in range(1, MESSAGES + 1)
    )
    assert sorted(e for e in events if e.startswith("outbox:")) == sorted(
        f"outbox:outbox:{n}" for n in range(1, ROWS + 1)
    )
    # the invalid ones are recorded as such, the others started their run exactly once
    invalid = {e for e, status in events.items() if status == "invalid"}
    assert len(invalid) == MESSAGES // INVALID_EVERY + ROWS // INVALID_EVERY
    per_event = dict(query(state, "SELECT event_id, count(*) FROM runs GROUP BY event_id"))
    assert set(per_event) == set(events) - invalid
    assert set(per_event.values()) == {1}
    inputs = [w for (w,) in query(state, "SELECT json_extract(inputs, '$.what') FROM runs")]
    assert len(inputs) == len(set(inputs))  # no message or row ran twice
    assert query(state, "SELECT count(*) FROM runs WHERE state != 'succeeded'") == [(0,)]
    assert query(state, "SELECT cursor FROM source_cursors WHERE source = 'outbox'") == [
        (str(ROWS),)
    ]


def _count(state, source: str) -> int:
    if not state.exists():
        return 0
    return query(state, "SELECT count(*) FROM events WHERE source = ?", source)[0][0]


def _unfinished(state) -> int:
    return query(state, "SELECT count(*) FROM runs WHERE state IN ('queued', 'running')")[0][0]
