"""Per-key concurrency and priority end to end: events through a real webhook on loopback
into the real daemon, on each store (SQLite and PostgreSQL)."""

from __future__ import annotations

import anyio
import httpx
import pytest

from cued.daemon.ops.queries import Queries
from tests.support import probes
from tests.support.running import daemon_running, wait_finished
from tests.support.stores import keeping_state_in


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


CONFIG = """
[http]
listen = "127.0.0.1:0"

[sources.orders]
kind = "webhook"
path = "/orders"

[pipelines.sync]
inputs = { customer = "", n = 0 }
[pipelines.sync.tasks.t]
kind = "python"
function = "tests.support.probes:record"
args = { name = "{{ inputs.customer }}-{{ inputs.n }}", group = "{{ inputs.customer }}", until_released = true }

[pipelines.slow]
max_active_runs = 1
inputs = { name = "" }
[pipelines.slow.tasks.t]
kind = "python"
function = "tests.support.probes:record"
args = { name = "{{ inputs.name }}", until_released = true }

[[triggers]]
source = "orders"
pipeline = "sync"
when = "event.data.kind == 'sync'"
inputs = { customer = "{{ event.data.customer }}", n = "{{ event.data.n }}" }
key = "{{ event.data.customer }}"
concurrency = { limit = 1 }

[[triggers]]
source = "orders"
pipeline = "slow"
when = "event.data.kind == 'slow'"
inputs = { name = "{{ event.data.name }}" }
priority = "{{ event.data.p }}"
"""

HOT = 150


def base_url(info) -> str:
    host, port = info.http_address
    return f"http://{host}:{port}"


async def _post(client: httpx.AsyncClient, data: dict[str, object]) -> list[str]:
    response = await client.post("/orders", json=data)
    assert response.status_code == 202, response.text
    runs: list[str] = response.json()["runs"]
    return runs


async def _entered(probe: probes.Probe, count: int) -> None:
    with anyio.fail_after(30):
        while len(probe.calls) < count:
            probe.entered = anyio.Event()
            if len(probe.calls) >= count:
                break
            await probe.entered.wait()


async def test_a_flooded_key_runs_one_at_a_time_and_another_key_starts_before_it_drains(
    make_config,
):
    probe = probes.reset()
    config = make_config(CONFIG)
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        hot = [
            (await _post(client, {"kind": "sync", "customer": "hot", "n": n}))[0]
            for n in range(HOT)
        ]
        await _entered(probe, 1)
        (other,) = await _post(client, {"kind": "sync", "customer": "calm", "n": 0})
        # the other key's run starts while the hot key's first still holds it: the whole
        # flood of the hot key waits behind its limit, not in front of other keys
        await _entered(probe, 2)
        assert probe.calls == ["hot-0", "calm-0"]
        queries = Queries(info.runner.store, config)
        waiting = await queries.run_detail(hot[-1])
        assert waiting is not None
        assert (waiting.run.flow_key, waiting.run.key_limit) == ("hot", 1)
        assert waiting.waiting_for == "waiting for key 'hot' (limit 1)"
        assert info.runner.keys.held == HOT - 1
        # the API and the UI say the same
        answer = (await client.get(f"/api/v1/runs/{hot[-1]}")).json()
        assert (answer["flow_key"], answer["key_limit"], answer["priority"]) == ("hot", 1, 5)
        assert answer["waiting_for"] == "waiting for key 'hot' (limit 1)"
        page = (await client.get(f"/ui/runs/{hot[-1]}")).text
        assert "waiting for key &#39;hot&#39; (limit 1)" in page
        probe.released.set()
        rows = await wait_finished(info, [*hot, other], timeout_s=120)
    assert {r.state for r in rows} == {"succeeded"}
    assert probe.max_by_group == {"hot": 1, "calm": 1}
    # within the key, in the order the events came (one priority)
    assert [c for c in probe.calls if c.startswith("hot-")] == [f"hot-{n}" for n in range(HOT)]


async def test_under_a_full_pipeline_the_higher_priority_runs_start_first(make_config):
    probe = probes.reset()
    config = make_config(CONFIG)
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        runs = await _post(client, {"kind": "slow", "name": "first", "p": 5})
        await _entered(probe, 1)  # it holds the pipeline's only slot
        for n in range(3):
            runs += await _post(client, {"kind": "slow", "name": f"low-{n}", "p": 1})
            runs += await _post(client, {"kind": "slow", "name": f"high-{n}", "p": "9"})
        queries = Queries(info.runner.store, config)
        detail = await queries.run_detail(runs[-1])
        assert detail is not None
        assert detail.run.priority == 9
        assert detail.waiting_for == "waiting for a run slot (max_active_runs 1)"
        probe.released.set()
        rows = await wait_finished(info, runs, timeout_s=60)
    assert {r.state for r in rows} == {"succeeded"}
    assert probe.calls == ["first", "high-0", "high-1", "high-2", "low-0", "low-1", "low-2"]


async def test_a_priority_out_of_range_is_the_events_error_and_starts_nothing(make_config):
    config = make_config(CONFIG)
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        response = await client.post("/orders", json={"kind": "slow", "name": "x", "p": 12})
        assert response.status_code == 202, response.text
        assert response.json()["runs"] == []
        (event,) = await info.runner.store.list_events(source="orders")
    assert event.error is not None
    assert "priority must be a whole number from 0 to 9, got 12" in event.error


async def test_runs_waiting_for_their_key_count_for_backpressure(make_config):
    probe = probes.reset()
    config = make_config(
        CONFIG.replace(
            '[http]\nlisten = "127.0.0.1:0"',
            '[http]\nlisten = "127.0.0.1:0"\n[daemon]\nbacklog_high_water = 20\n'
            "backlog_low_water = 10",
        )
    )
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        answers = []
        for n in range(40):
            response = await client.post(
                "/orders", json={"kind": "sync", "customer": "hot", "n": n}
            )
            answers.append(response.status_code)
        # one runs (held by the test), twenty wait for their key: the rest are refused
        assert answers.count(202) == 21
        assert set(answers[21:]) == {429}
        assert info.runner.backlog.depth == 20
        probe.released.set()
        with anyio.fail_after(60):
            while info.runner.backlog.saturated:
                await info.runner.backlog.wait_accepting()
        late = await client.post("/orders", json={"kind": "sync", "customer": "hot", "n": 99})
        assert late.status_code == 202


async def test_a_pause_and_resume_start_no_run_waiting_for_its_key_twice(make_config):
    probe = probes.reset()
    config = make_config(CONFIG)
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        runs = [
            (await _post(client, {"kind": "sync", "customer": "hot", "n": n}))[0] for n in range(5)
        ]
        await _entered(probe, 1)
        await info.runner.pause("sync")
        # while paused, new runs wait in the store; those waiting for their key wait on
        runs += await _post(client, {"kind": "sync", "customer": "hot", "n": 5})
        assert await info.runner.unpause("sync") == 1
        assert info.runner.keys.held == 5
        probe.released.set()
        rows = await wait_finished(info, runs, timeout_s=60)
    assert {r.state for r in rows} == {"succeeded"}
    assert probe.calls == [f"hot-{n}" for n in range(6)]
    assert probe.max_by_group == {"hot": 1}
