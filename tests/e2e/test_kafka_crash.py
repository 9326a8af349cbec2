"""kill -9 of the daemon while the Kafka source has two batches in flight (one being
recorded, the next handed in behind it), twice, then a restart: no offset was committed
ahead of what is recorded, and every message started its run exactly once.

Small batches (``max_batch = 20``) over a long topic keep the source at two batches in
flight for the whole flood: intake, not the broker, is what it waits for."""

from __future__ import annotations

import json

from tests.support.daemon import Daemon, query, wait_for
from tests.support.kafka_broker import (
    committed_offsets,
    create_topics,
    started_producer,
    unique_name,
)
from tests.support.kafka_source import eventually
from tests.support.raw_http import free_port

CONFIG = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "state.db"

[sources.orders]
kind = "kafka"
bootstrap = "{bootstrap}"
topics = ["{topic}"]
group = "{group}"
max_batch = 20
session_timeout = "2s"

[pipelines.p.tasks.t]
kind = "sleep"
seconds = 0

[[triggers]]
source = "orders"
pipeline = "p"
"""

PARTITIONS, MESSAGES = 3, 3000


async def test_kill_9_with_two_batches_in_flight_commits_nothing_ahead_and_loses_nothing(
    tmp_path, kafka
):
    topic, group = unique_name("orders"), unique_name("cued")
    await create_topics(kafka.bootstrap, topic, partitions=PARTITIONS)
    async with started_producer(kafka.bootstrap, linger_ms=5) as producer:
        for n in range(MESSAGES):
            await producer.send(topic, json.dumps({"n": n}).encode(), partition=n % PARTITIONS)
        await producer.flush()
    config = tmp_path / "config.toml"
    config.write_text(
        CONFIG.format(port=free_port(), bootstrap=kafka.bootstrap, topic=topic, group=group)
    )
    state = tmp_path / "state.db"
    partitions = [(topic, p) for p in range(PARTITIONS)]

    for recorded_at_least in (300, 1500):  # two crashes, mid-flood
        daemon = Daemon(config, state)
        await daemon.start()
        await wait_for(lambda n=recorded_at_least: _events(state) >= n, timeout_s=120)
        daemon.kill9()
        committed = await committed_offsets(kafka.bootstrap, group, partitions)
        recorded = _offsets(state)
        # every offset committed is of messages recorded: below it, none is missing
        for (_, partition), offset in committed.items():
            assert set(range(offset)) <= recorded.get(partition, set()), partition

    daemon = Daemon(config, state)
    await daemon.start()
    try:
        await wait_for(lambda: _events(state) == MESSAGES, timeout_s=120)
        await wait_for(lambda: _unfinished(state) == 0, timeout_s=120)

        async def all_committed() -> bool:
            return sum((await committed_offsets(kafka.bootstrap, group, partitions)).values()) == (
                MESSAGES
            )

        await eventually(all_committed, timeout_s=60)
    finally:
        assert daemon.stop() == 0

    per_event = dict(query(state, "SELECT event_id, count(*) FROM runs GROUP BY event_id"))
    assert set(per_event) == {
        f"orders:{topic}:{p}:{o}" for p in range(PARTITIONS) for o in range(MESSAGES // PARTITIONS)
    }
    assert set(per_event.values()) == {1}
    assert query(state, "SELECT count(*) FROM runs WHERE state != 'succeeded'") == [(0,)]


def _events(state) -> int:
    return query(state, "SELECT count(*) FROM events WHERE source = 'orders'")[0][0]


def _offsets(state) -> dict[int, set[int]]:
    found: dict[int, set[int]] = {}
    for (event_id,) in query(state, "SELECT event_id FROM events WHERE source = 'orders'"):
        _, _, partition, offset = event_id.rsplit(":", 3)
        found.setdefault(int(partition), set()).add(int(offset))
    return found


def _unfinished(state) -> int:
    return query(state, "SELECT count(*) FROM runs WHERE state IN ('queued', 'running')")[0][0]
