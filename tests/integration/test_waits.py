"""Waits: a run parks at a ``wait_event`` task until a webhook's event matches it (or one
that came before, within its lookback), or its timeout settles it; a ``sleep`` with
``until`` parks it until a moment. Real webhooks on loopback, on both stores."""

from __future__ import annotations

import anyio
import httpx
import pytest

from cued.daemon.ops import repair
from tests.support.running import daemon_running
from tests.support.stores import keeping_state_in


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


def checkout(wait: str = "", after: str = "") -> str:
    """A pipeline that waits for the payment of its order, then echoes it."""
    return f"""
[http]
listen = "127.0.0.1:0"

[sources.payments]
kind = "webhook"
path = "/hooks/payments"

[pipelines.checkout]
inputs = {{ order_id = "" }}

[pipelines.checkout.tasks.payment]
kind = "wait_event"
source = "payments"
match = "event.data.order_id == inputs.order_id"
{wait}

[pipelines.checkout.tasks.after]
kind = "sleep"
needs = ["payment"]
trigger_rule = "all_done"
{after}
"""


async def _post(info, data):
    host, port = info.http_address
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://{host}:{port}/hooks/payments", json=data)
    assert response.status_code == 202, response.text
    return response.json()


async def _settled(info, run_id):
    """The run once it has left the waiting state for good (ended)."""
    while True:
        row = await info.runner.wait(run_id)
        if row.state not in ("queued", "running", "waiting"):
            return row
        await anyio.sleep(0.02)


async def _waiting(info, run_id):
    while not (waits := await info.runner.store.get_waits(run_id)) or waits[0].scanned == 0:
        await anyio.sleep(0.02)
    return waits


async def test_an_event_that_matches_wakes_the_run_and_others_do_not(make_config):
    config = make_config(checkout())
    async with daemon_running(config) as info:
        with anyio.fail_after(30):
            run_id = (await info.runner.start_run("checkout", {"order_id": "A-1"})).run_id
            assert (await info.runner.wait(run_id)).state == "waiting"
            await _waiting(info, run_id)
            await _post(info, {"order_id": "B-2", "amount": 1})
            await _post(info, {"amount": 2})  # lacks the field: false, not an error
            (wait,) = await info.runner.store.get_waits(run_id)
            assert wait.state == "waiting"
            await _post(info, {"order_id": "A-1", "amount": 3})
            row = await _settled(info, run_id)
            attempts = {a.key: a for a in await info.runner.store.get_attempts(run_id)}
            (wait,) = await info.runner.store.get_waits(run_id)
    assert row.state == "succeeded"
    output = attempts["payment"].output
    assert output["event"]["data"] == {"order_id": "A-1", "amount": 3}
    assert output["event"]["source"] == "payments"
    assert (wait.state, wait.applied, wait.event_id) == ("matched", 1, output["event"]["id"])

