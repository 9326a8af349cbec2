"""kill -9 of the daemon three times while messages pour in from MQTT, RabbitMQ or a Redis
stream, then a restart: every message the broker handed over has exactly one event, every
valid one its run once, every invalid one is recorded as invalid, and the broker holds
nothing back."""

from __future__ import annotations

import json
from collections import Counter

import anyio
import pytest

from tests.support.daemon import Daemon, query, wait_for
from tests.support.mq_brokers import KINDS, Broker, eventually

CONFIG = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
max_running_tasks = 64

{source}

[pipelines.p]
max_active_runs = 64
inputs = {{ n = 0 }}
[pipelines.p.tasks.t]
kind = "sleep"
seconds = 0.01

[[triggers]]
source = "src"
pipeline = "p"
inputs = {{ n = "{{{{ event.data.n }}}}" }}
"""

TOTAL, CHUNK = 600, 20
#: every this many messages, one whose payload opens an object and is not JSON
INVALID_EVERY = 50


def message(n: int) -> bytes:
    if n % INVALID_EVERY == 0:
        return f"{{not json {n}".encode()
    return json.dumps({"n": n}).encode()


@pytest.mark.parametrize("kind", KINDS)
async def test_kill_9_three_times_in_a_flood_loses_and_doubles_nothing(tmp_path, kind):
    broker = Broker(kind)
    await broker.prepare()
    try:
        config = tmp_path / "config.toml"
        config.write_text(CONFIG.format(source=broker.source_toml()))
        state = tmp_path / "state.db"

        async def flood() -> None:  # goes on while the daemon dies and comes back
            for start in range(0, TOTAL, CHUNK):
                await broker.publish([message(n) for n in range(start, start + CHUNK)])
                await anyio.sleep(0.1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(flood)
            for kill in range(1, 4):
                daemon = Daemon(config, state)
                await daemon.start()
                # in the thick of it: more recorded than before the last kill
                await wait_for(lambda k=kill: _events(state) >= k * TOTAL // 6, timeout_s=60)
                daemon.kill9()
        daemon = Daemon(config, state)
        await daemon.start()
        try:
            await wait_for(lambda: _events(state) >= TOTAL, timeout_s=90)
            await wait_for(lambda: _unfinished(state) == 0, timeout_s=60)
            if kind != "mqtt":  # MQTT brokers do not tell what they hold
                await eventually(lambda: _nothing_waiting(broker))
        finally:
            assert daemon.stop() == 0
    finally:
        await broker.remove()

    rows = query(state, "SELECT event_id, status, data, error FROM events WHERE source = 'src'")
    # exactly one event for each message: told apart by their payloads
    valid = Counter(json.loads(data)["n"] for _, status, data, _ in rows if status != "invalid")
    invalid = Counter(json.loads(data) for _, status, data, _ in rows if status == "invalid")
    assert valid == Counter(n for n in range(TOTAL) if n % INVALID_EVERY)
    assert invalid == Counter(f"{{not json {n}" for n in range(0, TOTAL, INVALID_EVERY))
    assert all(error for _, status, _, error in rows if status == "invalid")
    # each valid event started its run once, and each run succeeded once
    per_event = dict(query(state, "SELECT event_id, count(*) FROM runs GROUP BY event_id"))
    matched = {event_id for event_id, status, _, _ in rows if status == "matched"}
    assert set(per_event) == matched
    assert len(matched) == TOTAL - TOTAL // INVALID_EVERY
    assert set(per_event.values()) == {1}
    assert query(state, "SELECT count(*) FROM runs WHERE state != 'succeeded'") == [(0,)]


def _events(state) -> int:
    try:
        return query(state, "SELECT count(*) FROM events WHERE source = 'src'")[0][0]
    except Exception:  # noqa: BLE001 - the daemon has not created its tables yet
        return 0


def _unfinished(state) -> int:
    return query(state, "SELECT count(*) FROM runs WHERE state IN ('queued', 'running')")[0][0]


async def _nothing_waiting(broker: Broker) -> bool:
    return await broker.waiting() == 0
