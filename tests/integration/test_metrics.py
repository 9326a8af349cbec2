"""Prometheus metrics and health: what a run and a webhook event leave in /metrics, the
gauges of what runs and waits, backpressure, and /healthz and /readyz, all without a
token."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cued.daemon.assembly import open_runner
from cued.daemon.runtime.metrics import Metrics
from cued.daemon.web.api import build_app
from tests.support.running import daemon_running, wait_finished
from tests.support.stores import keeping_state_in

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


CONFIG = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
{daemon}

[auth.users.vera]
token = "vera-token"
roles = ["viewer", "operator"]

[sources.orders]
kind = "webhook"
path = "/hooks/orders"

[[triggers]]
source = "orders"
pipeline = "etl"
when = "event.data.total > 100"

[pipelines.etl.tasks.extract]
kind = "python"
function = "tests.support.pyfuncs:add"
args = {{ a = 1, b = 2 }}
[pipelines.etl.tasks.load]
kind = "sleep"
needs = ["extract"]

[pipelines.slow]
max_active_runs = 1
[pipelines.slow.tasks.wait]
kind = "sleep"
seconds = 60
"""


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def value(text: str, name: str, **labels: str) -> float:
    found = [v for n, ls, v in samples(text) if n == name and ls == labels]
    assert len(found) == 1, (name, labels, [(n, ls) for n, ls, _ in samples(text) if n == name])
    return found[0]


async def test_a_run_and_a_webhook_event_are_counted(make_config):
    async with daemon_running(make_config(CONFIG.format(daemon=""))) as info:
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            hook = await client.post("/hooks/orders", json={"id": 1, "total": 500})
            ignored = await client.post("/hooks/orders", json={"id": 2, "total": 5})
            await wait_finished(info, hook.json()["runs"])
            triggered = await client.post(
                "/api/v1/pipelines/etl/runs?wait=true",
                headers={"authorization": "Bearer vera-token"},
            )
            scraped = await client.get("/metrics")
    assert ignored.json()["status"] == "unmatched"
    assert triggered.json()["state"] == "succeeded"
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text
    assert value(text, "cued_events_total", source="orders", status="matched") == 1
    assert value(text, "cued_events_total", source="orders", status="unmatched") == 1
    assert value(text, "cued_runs_total", pipeline="etl", state="succeeded") == 2
    assert value(text, "cued_runs_total", pipeline="etl", state="queued") == 2
    assert value(text, "cued_tasks_total", pipeline="etl", state="succeeded") == 4
    assert value(text, "cued_task_duration_seconds_count", pipeline="etl", kind="python") == 2
    assert value(text, "cued_task_duration_seconds_count", pipeline="etl", kind="sleep") == 2
    assert value(text, "cued_store_commit_seconds_count") >= 4
    assert value(text, "cued_runs_running") == 0
    assert value(text, "cued_tasks_running") == 0
    assert value(text, "cued_backpressure") == 0


async def test_gauges_show_what_runs_what_waits_and_backpressure(make_config):
    config = make_config(CONFIG.format(daemon="backlog_high_water = 2\nbacklog_low_water = 1"))
    async with daemon_running(config) as info:
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            runs = [(await info.runner.start_run("slow")).run_id for _ in range(4)]
            with anyio.fail_after(10):
                while info.runner.slots.running_tasks < 1:  # noqa: ASYNC110 - the first one starts
                    await anyio.sleep(0.01)
            busy = (await client.get("/metrics")).text
            for run_id in runs:
                await info.runner.cancel(run_id)
            idle = (await client.get("/metrics")).text
    assert value(busy, "cued_runs_running") == 1
    assert value(busy, "cued_runs_queued") == 3
    assert value(busy, "cued_backlog_depth") == 3
    assert value(busy, "cued_tasks_running") == 1
    assert value(busy, "cued_backpressure") == 1
    assert value(idle, "cued_backpressure") == 0
    assert value(idle, "cued_runs_total", pipeline="slow", state="cancelled") == 4


async def test_health_and_readiness_need_no_token(make_config):
    async with daemon_running(make_config(CONFIG.format(daemon=""))) as info:
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            health = await client.get("/healthz")
            ready = await client.get("/readyz")
            api = await client.get("/api/v1/runs")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "checks": {}}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"store": "ok", "sources": "started"}}
    assert api.status_code == 401


async def test_not_ready_until_sources_start_nor_once_the_store_is_gone(make_config):
    config = make_config(CONFIG.format(daemon=""))
    started = False
    async with open_runner(config) as runner:
        app = build_app(runner, trusted=False, metrics=Metrics(runner), ready=lambda: started)
        transport = httpx.ASGITransport(app=app)
        # no users: health is answered to a loopback Host only
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            before = await client.get("/readyz")
            started = True
            after = await client.get("/readyz")
            # the runner's first look at the waits reads the store: done, before it goes
            await runner.waits.idle()
            await runner.store._reader.close()  # type: ignore[attr-defined]
            gone = await client.get("/readyz")
            alive = await client.get("/healthz")
    assert before.status_code == 503
    assert before.json()["checks"] == {"store": "ok", "sources": "not started"}
    assert after.status_code == 200
    assert gone.status_code == 503
    assert gone.json()["checks"]["store"].startswith("error:")
    assert alive.status_code == 200


async def test_each_daemon_has_a_registry_of_its_own(make_config):
    config = make_config(CONFIG.format(daemon=""))
    async with open_runner(config) as runner:
        first, second = Metrics(runner), Metrics(runner)
        first.events.labels("orders", "matched").inc()
        assert "cued_events_total" in first.render().decode()
        assert 'source="orders"' not in second.render().decode()
