"""Debounce, throttle and batch hold across nodes: two daemons in this process on one
PostgreSQL database (the real server), taking events of one key through their own
webhooks. One window per key in the cluster, each released once, whichever node's timer
comes first; the throttle's slots counted in the database; a window outlives the node that
opened it.

The flow control's clock is the test's (both nodes share it), and both nodes are asked to
settle at once, as their timers would race: nothing waits for a period to pass."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from cued.daemon.config import parse_config
from tests.support.flood import until
from tests.support.running import daemon_running, wait_finished
from tests.support.stores import StoreAt, fresh_database, with_state

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from cued.daemon.assembly import DaemonInfo

T0 = 1_800_000_000.0

HEAD = """
[http]
listen = "127.0.0.1:0"

[daemon]
node = "{node}"

[sources.orders]
kind = "webhook"
path = "/hooks/orders"

[pipelines.sync]
inputs = {{ customer = "", x = "", n = "", xs = "" }}
[pipelines.sync.tasks.noop]
kind = "python"
function = "tests.support.probes:record"
args = {{ name = "{{{{ inputs.customer }}}}" }}
"""


class Clock:
    """Seconds since the epoch that move only when the test says."""

    def __init__(self, at: float = T0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture
async def db() -> AsyncIterator[StoreAt]:
    async with fresh_database(migrated=True) as url:
        yield StoreAt("postgresql", url)


@asynccontextmanager
async def node(tmp_path: Path, db: StoreAt, name: str, triggers: str) -> AsyncIterator[DaemonInfo]:
    """A daemon of its own (its folder, its HTTP port) on the shared database."""
    base = tmp_path / name
    base.mkdir(exist_ok=True)
    text = with_state(HEAD.format(node=name) + triggers, db)
    config = parse_config(text, file=str(base / "config.toml"), base_dir=base)
    async with daemon_running(config) as info:
        yield info


@asynccontextmanager
async def two_nodes(
    tmp_path: Path, db: StoreAt, triggers: str, clock: Clock | None = None
) -> AsyncIterator[tuple[DaemonInfo, DaemonInfo]]:
    async with node(tmp_path, db, "a", triggers) as a, node(tmp_path, db, "b", triggers) as b:
        if clock is not None:
            a.intake.flow.clock = b.intake.flow.clock = clock
        yield a, b


async def post(info: DaemonInfo, data: dict) -> dict:
    host, port = info.http_address or ("", 0)
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        response = await client.post("/hooks/orders", json=data)
    assert response.status_code == 202, response.text
    answer: dict = response.json()
    return answer


async def post_all(nodes: tuple[DaemonInfo, ...], events: list[dict]) -> list[dict]:
    """Post ``events`` at once, the n-th to node n modulo their number; the answers in
    the events' order."""
    answers: list[dict] = [{} for _ in events]

    async def one(n: int) -> None:
        answers[n] = await post(nodes[n % len(nodes)], events[n])

    async with anyio.create_task_group() as tg:
        for n in range(len(events)):
            tg.start_soon(one, n)
    return answers


async def settle_both(a: DaemonInfo, b: DaemonInfo, clock: Clock, at: float) -> None:
    """Move the clock to ``at`` and have both nodes settle what is due at once (their
    timers may join in: whoever claims a window first releases it)."""
    clock.at = at
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.intake.flow.settle_due, a.runner)
        tg.start_soon(b.intake.flow.settle_due, b.runner)


async def runs(info: DaemonInfo) -> list:
    return sorted(await info.runner.store.list_runs(limit=1000), key=lambda r: r.run_id)


async def events(info: DaemonInfo) -> dict:
    return {e.event_id: e for e in await info.runner.store.list_events(limit=1000)}


async def finished(a: DaemonInfo, b: DaemonInfo) -> list:
    """Every run, once each ended (on whichever node released it)."""

    async def ended() -> bool:
        return all(r.ended_at is not None for r in await runs(a))

    await until(ended)
    return await runs(a)


async def test_debounce_is_one_window_per_key_in_the_cluster_released_once(tmp_path, db):
    clock = Clock()
    triggers = """
[[triggers]]
source = "orders"
pipeline = "sync"
key = "{{ event.data.customer }}"
inputs = { customer = "{{ event.data.customer }}", x = "{{ event.data.x }}" }
debounce = { period = "15s", keep = "last" }
"""
    async with two_nodes(tmp_path, db, triggers, clock) as (a, b):
        first = await post_all((a, b), [{"customer": "c1", "x": n} for n in range(6)])
        assert {answer["status"] for answer in first} == {"held"}
        # whichever node took them, one window holds them all
        assert await db.query("SELECT key, held FROM flow_windows") == [("c1", 6)]
        clock.at = T0 + 5
        (later,) = await post_all((b,), [{"customer": "c1", "x": 6}])
        (window,) = await db.query("SELECT due_at, held FROM flow_windows")
        assert window == (T0 + 20, 7)
        await settle_both(a, b, clock, T0 + 19)
        assert await runs(a) == []
        await settle_both(a, b, clock, T0 + 20)
        assert len(await runs(a)) == 1
        # a quiet window later, a new burst on the other node: a window of its own
        clock.at = T0 + 100
        (last,) = await post_all((a,), [{"customer": "c1", "x": 7}])
        await settle_both(a, b, clock, T0 + 115)
        done = await finished(a, b)
        recorded = await events(a)
    assert [r.inputs["x"] for r in done] == [6, 7]
    burst = [recorded[answer["event_id"]] for answer in [*first, later]]
    assert {e.run_ids for e in burst} == {(done[0].run_id,)}
    assert recorded[last["event_id"]].run_ids == (done[1].run_id,)
    assert all(e.status == "matched" for e in recorded.values())


async def test_a_throttle_counts_its_slots_in_the_database_for_the_whole_cluster(tmp_path, db):
    clock = Clock()
    triggers = """
[[triggers]]
source = "orders"
pipeline = "sync"
inputs = { x = "{{ event.data.x }}" }
throttle = { limit = 2, period = "1m", excess = "delay" }
"""
    async with two_nodes(tmp_path, db, triggers, clock) as (a, b):
        await post_all((a, b), [{"x": n} for n in range(7)])
        started: list[int] = []
        for at in (T0, T0 + 59, T0 + 60, T0 + 119, T0 + 120, T0 + 179, T0 + 180):
            await settle_both(a, b, clock, at)
            started.append(len(await runs(a)))
        done = await finished(a, b)
        recorded = await events(a)
    # never more than two a minute, whichever node released them
    assert started == [2, 2, 4, 4, 6, 6, 7]
    assert sorted(r.inputs["x"] for r in done) == list(range(7))
    assert all(e.status == "matched" and len(e.run_ids) == 1 for e in recorded.values())


async def test_a_throttle_that_drops_drops_the_excess_of_the_cluster(tmp_path, db):
    clock = Clock()
    triggers = """
[[triggers]]
source = "orders"
pipeline = "sync"
key = "{{ event.data.customer }}"
throttle = { limit = 3, period = "1h", excess = "drop" }
"""
    async with two_nodes(tmp_path, db, triggers, clock) as (a, b):
        await post_all((a, b), [{"customer": "c"} for _ in range(10)])
        await settle_both(a, b, clock, T0)
        await finished(a, b)
        recorded = await events(a)
    statuses = sorted(e.status for e in recorded.values())
    assert statuses == ["dropped"] * 7 + ["matched"] * 3


async def test_every_event_is_in_exactly_one_batch_of_the_cluster(tmp_path, db):
    clock = Clock()
    triggers = """
[[triggers]]
source = "orders"
pipeline = "sync"
inputs = { n = "{{ event.batch | length }}", xs = "{{ event.batch | map(attribute='data') | map(attribute='x') | join(',') }}" }
batch = { size = 3, timeout = "1h" }
"""
    async with two_nodes(tmp_path, db, triggers, clock) as (a, b):
        answers = await post_all((a, b), [{"x": n} for n in range(10)])
        await settle_both(a, b, clock, T0)
        assert len(await runs(a)) == 3  # the full batches, at once
        await settle_both(a, b, clock, T0 + 3600)
        done = await finished(a, b)
        recorded = await events(a)
    batches = [[int(x) for x in r.inputs["xs"].split(",")] for r in done]
    assert sorted(len(xs) for xs in batches) == [1, 3, 3, 3]
    assert sorted(x for xs in batches for x in xs) == list(range(10))
    assert all(len(recorded[answer["event_id"]].run_ids) == 1 for answer in answers)


async def test_a_window_outlives_the_node_that_opened_it(tmp_path, db):
    """Node a opens the window and stops; b, which never saw an event of it, releases it
    when due, told of it by a's notice (on the real clock: nobody pokes b)."""
    triggers = """
[[triggers]]
source = "orders"
pipeline = "sync"
key = "{{ event.data.customer }}"
inputs = { customer = "{{ event.data.customer }}", x = "{{ event.data.x }}" }
debounce = { period = "2s" }
"""
    async with node(tmp_path, db, "b", triggers) as b:
        async with node(tmp_path, db, "a", triggers) as a:
            answer = await post(a, {"customer": "c1", "x": 1})
            assert answer["status"] == "held"
        # a is gone, its window is not
        assert len(await db.query("SELECT window_id FROM flow_windows")) == 1

        async def released() -> bool:
            return len(await runs(b)) == 1

        await until(released, timeout_s=30)
        (run,) = await runs(b)
        await wait_finished(b, [run.run_id])
        recorded = await events(b)
    assert recorded[answer["event_id"]].run_ids == (run.run_id,)
    assert await db.query("SELECT count(*) FROM flow_windows") == [(0,)]
