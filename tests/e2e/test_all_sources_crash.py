"""kill -9 of the daemon while events pour in from every source at once, then restart:
every acknowledged event started its runs exactly once, and nothing was lost."""

from __future__ import annotations

import json

import anyio
import httpx

from tests.support.daemon import Daemon, query, wait_for
from tests.support.kafka_broker import (
    committed_offsets,
    create_topics,
    started_producer,
    unique_name,
)
from tests.support.raw_http import free_port

CONFIG = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "state.db"
max_running_tasks = 64

[sources.hook]
kind = "webhook"
path = "/hook"
id_header = "X-Delivery"          # a sender's retry is the same event

[sources.drop]
kind = "files"
path = "drop"
stable_for = "100ms"
rescan_every = "200ms"

[sources.orders]
kind = "kafka"
bootstrap = "{bootstrap}"
topics = ["{topic}"]
group = "{group}"

[sources.clock]
kind = "schedule"
every = "200ms"
catchup = "all"

[pipelines.p]
max_active_runs = 64
inputs = {{ what = "" }}
[pipelines.p.tasks.t]
kind = "sleep"
seconds = 0.01

[[triggers]]
source = "hook"
pipeline = "p"
inputs = {{ what = "hook {{{{ event.data.n }}}}" }}
[[triggers]]
source = "drop"
pipeline = "p"
inputs = {{ what = "file {{{{ event.data.name }}}}" }}
[[triggers]]
source = "orders"
pipeline = "p"
inputs = {{ what = "order {{{{ event.data.n }}}}" }}
[[triggers]]
source = "clock"
pipeline = "p"
inputs = {{ what = "tick {{{{ event.data.tick_utc }}}}" }}
"""

HOOKS, FILES, ORDERS = 150, 40, 300


async def test_kill_9_while_events_pour_in_from_every_source_loses_and_doubles_nothing(
    tmp_path, kafka
):
    topic, group = unique_name("orders"), unique_name("cued")
    await create_topics(kafka.bootstrap, topic)
    port = free_port()
    (tmp_path / "drop").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(port=port, bootstrap=kafka.bootstrap, topic=topic, group=group))
    state = tmp_path / "state.db"
    acked: dict[str, str] = {}  # delivery id -> event id, answered 202 or 200

    async def post_hooks(client: httpx.AsyncClient, numbers: range) -> None:
        for n in numbers:
            try:
                response = await client.post(
                    "/hook", json={"n": n}, headers={"x-delivery": f"d{n}"}
                )
            except httpx.TransportError:
                continue  # the daemon is down: the sender tries again later
            if response.status_code in (200, 202):
                acked[f"d{n}"] = response.json()["event_id"]

    async with started_producer(kafka.bootstrap) as producer:
        for n in range(ORDERS):
            await producer.send(topic, json.dumps({"n": n}).encode())
        await producer.flush()

    daemon = Daemon(config, state)
    await daemon.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(post_hooks, client, range(HOOKS))

            async def drop_files() -> None:
                for n in range(FILES):
                    path = tmp_path / "drop" / f"f{n}.csv"
                    path.write_text(f"{n}\n")
                    await anyio.sleep(0.02)

            tg.start_soon(drop_files)
            # in the thick of it: some of everything recorded, much still coming
            await wait_for(lambda: len(acked) >= 40 and _count(state, "drop") >= 5, timeout_s=30)
            daemon.kill9()
        before = {r for (r,) in query(state, "SELECT event_id FROM events")}

        daemon = Daemon(config, state)
        await daemon.start()
        try:
            # senders try again what was not acknowledged, with the same delivery ids
            with anyio.fail_after(60):
                while len(acked) < HOOKS:
                    await post_hooks(client, range(HOOKS))
            await wait_for(lambda: _count(state, "drop") == FILES, timeout_s=60)
            await wait_for(lambda: _count(state, "orders") == ORDERS, timeout_s=60)
            await wait_for(lambda: _unfinished(state) == 0, timeout_s=60)
            offsets = await committed_offsets(kafka.bootstrap, group, [(topic, 0)])
        finally:
            assert daemon.stop() == 0

    assert len(before) > 0
    # every event started its run exactly once (one trigger per source), and none twice
    per_event = dict(query(state, "SELECT event_id, count(*) FROM runs GROUP BY event_id"))
    events = {e for (e,) in query(state, "SELECT event_id FROM events")}
    assert set(per_event) == events
    assert set(per_event.values()) == {1}
    # every acknowledged webhook delivery, every file, every Kafka message is there
    assert set(acked.values()) <= events
    assert {e for e in events if e.startswith("hook:")} == {f"hook:d{n}" for n in range(HOOKS)}
    assert _count(state, "drop") == FILES
    assert sorted(e.rsplit(":", 1)[1] for e in events if e.startswith("orders:")) == sorted(
        str(n) for n in range(ORDERS)
    )
    assert sum(offsets.values()) == ORDERS
    assert sorted(p.name for p in (tmp_path / "drop" / "processed").iterdir()) == sorted(
        f"f{n}.csv" for n in range(FILES)
    )
    # schedule ticks: each once (ids are the tick times), each with its run
    ticks = [e for e in events if e.startswith("clock:")]
    assert len(ticks) == len(set(ticks)) > 0
    assert query(state, "SELECT count(*) FROM runs WHERE state != 'succeeded'") == [(0,)]


def _count(state, source: str) -> int:
    return query(state, "SELECT count(*) FROM events WHERE source = ?", source)[0][0]


def _unfinished(state) -> int:
    return query(state, "SELECT count(*) FROM runs WHERE state IN ('queued', 'running')")[0][0]
