"""Waits: a run parks at a ``wait_event`` task until a webhook's event matches it (or one
that came before, within its lookback), or its timeout settles it; a ``sleep`` with
``until`` parks it until a moment. Real webhooks on loopback, on both stores."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest

from cued.daemon.ops import repair
from tests.support import probes
from tests.support.running import daemon_running
from tests.support.stores import keeping_state_in


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


def checkout(wait: str = "", after: str = "", head: str = "") -> str:
    """A pipeline that waits for the payment of its order, then sleeps; ``head``: more of
    its own table."""
    return f"""
[http]
listen = "127.0.0.1:0"

[sources.payments]
kind = "webhook"
path = "/hooks/payments"

[pipelines.checkout]
inputs = {{ order_id = "" }}
{head}

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


MATCH = "event.data.order_id == inputs.order_id"


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
    """The run's waits, once its lookback is checked (the store signals nothing: polled)."""
    while not (waits := await info.runner.store.get_waits(run_id)) or waits[0].scanned == 0:  # noqa: ASYNC110
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
            # the API and the run page say what it waits for
            host, port = info.http_address
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                (shown,) = (await client.get(f"/api/v1/runs/{run_id}")).json()["waits"]
                page = (await client.get(f"/ui/runs/{run_id}")).text
            assert shown["waits_for"] == f"an event of 'payments' where {MATCH}"
            assert (shown["key"], shown["state"], shown["until"]) == ("payment", "waiting", None)
            assert "waits for an event of &#39;payments&#39; where event.data.order_id" in page
            await _post(info, {"order_id": "A-1", "amount": 3})
            row = await _settled(info, run_id)
            attempts = {a.key: a for a in await info.runner.store.get_attempts(run_id)}
            (wait,) = await info.runner.store.get_waits(run_id)
    assert row.state == "succeeded"
    output = attempts["payment"].output
    assert output["event"]["data"] == {"order_id": "A-1", "amount": 3}
    assert output["event"]["source"] == "payments"
    assert (wait.state, wait.applied, wait.event_id) == ("matched", 1, output["event"]["id"])


async def test_an_event_within_the_lookback_wakes_a_wait_that_began_after_it(make_config):
    config = make_config(checkout('lookback = "1h"'))
    async with daemon_running(config) as info:
        with anyio.fail_after(30):
            receipt = await _post(info, {"order_id": "A-1"})
            run_id = (await info.runner.start_run("checkout", {"order_id": "A-1"})).run_id
            row = await _settled(info, run_id)
            (wait,) = await info.runner.store.get_waits(run_id)
    assert row.state == "succeeded"
    assert (wait.state, wait.event_id) == ("matched", receipt["event_id"])


async def test_without_a_lookback_an_earlier_event_does_not_count(make_config):
    config = make_config(checkout())
    async with daemon_running(config) as info:
        with anyio.fail_after(30):
            await _post(info, {"order_id": "A-1"})
            run_id = (await info.runner.start_run("checkout", {"order_id": "A-1"})).run_id
            (wait,) = await _waiting(info, run_id)
            assert wait.state == "waiting"
            await repair.cancel(info.runner, run_id)
            (wait,) = await info.runner.store.get_waits(run_id)
            row = await info.runner.store.get_run(run_id)
    assert (row.state, wait.state) == ("cancelled", "cancelled")


@pytest.mark.parametrize(
    ("on_timeout", "run_state", "payment"),
    [
        pytest.param("succeed", "succeeded", "succeeded", id="succeed"),
        pytest.param("fail", "failed", "failed", id="fail"),
    ],
)
async def test_a_wait_that_times_out_settles_as_configured(
    make_config, on_timeout, run_state, payment
):
    config = make_config(checkout(f'timeout = "300ms"\non_timeout = "{on_timeout}"'))
    async with daemon_running(config) as info:
        with anyio.fail_after(30):
            run_id = (await info.runner.start_run("checkout", {"order_id": "A-1"})).run_id
            row = await _settled(info, run_id)
            states = {i.key: i.state for i in await info.runner.store.get_instances(run_id)}
            attempts = {a.key: a for a in await info.runner.store.get_attempts(run_id)}
            (wait,) = await info.runner.store.get_waits(run_id)
    assert row.state == run_state
    assert states["payment"] == payment
    assert states["after"] == "succeeded"  # all_done: it reads how the wait ended
    assert attempts["payment"].output == {"event": None, "timed_out": True}
    assert (wait.state, wait.applied) == ("expired", 1)


SLEEPER = """
[pipelines.nap]
inputs = { at = 0.0 }
[pipelines.nap.tasks.first]
kind = "sleep"
[pipelines.nap.tasks.until]
kind = "sleep"
needs = ["first"]
until = "{{ inputs.at | add_duration('300ms') }}"
"""


async def test_a_sleep_until_parks_the_run_and_wakes_it_at_the_moment(make_config):
    config = make_config(SLEEPER)
    async with daemon_running(config) as info:
        with anyio.fail_after(30):
            at = time.time()
            run_id = (await info.runner.start_run("nap", {"at": at})).run_id
            row = await _settled(info, run_id)
            (wait,) = await info.runner.store.get_waits(run_id)
            attempts = {a.key: a for a in await info.runner.store.get_attempts(run_id)}
    assert row.state == "succeeded"
    due = wait.deadline_at
    assert due == pytest.approx(at + 0.3)  # 300 * 1 ms, in floats
    # it parked on a timer, which woke it once
    assert (wait.kind, wait.state, wait.applied) == ("timer", "expired", 1)
    assert len(attempts) == 2
    assert attempts["until"].output == {"until": due}
    assert attempts["until"].ended_at >= due


async def test_an_event_wakes_a_wait_whose_run_still_runs_other_tasks(make_config):
    """The run is in memory (a sibling holds a slot): the wait is settled there, in the
    transaction of its mark, and the run does not leave memory for it."""
    probe = probes.reset()
    hold = """
[pipelines.checkout.tasks.hold]
kind = "python"
function = "tests.support.probes:record"
args = { name = "hold", until_released = true }
"""
    config = make_config(checkout() + hold)
    async with daemon_running(config) as info:
        with anyio.fail_after(30):
            run_id = (await info.runner.start_run("checkout", {"order_id": "A-1"})).run_id
            await probe.entered.wait()
            await _waiting(info, run_id)
            await _post(info, {"order_id": "A-1"})
            while (await info.runner.store.get_waits(run_id))[0].applied == 0:  # noqa: ASYNC110
                await anyio.sleep(0.02)
            states = {i.key: i.state for i in await info.runner.store.get_instances(run_id)}
            assert states["payment"] == "succeeded"
            assert states["hold"] == "running"
            probe.released.set()
            row = await _settled(info, run_id)
    assert row.state == "succeeded"


CANCEL_ON = (
    """cancel_on = [{ source = "orders", when = "event.data.status == 'cancelled'", """
    """match = "event.data.id == run.inputs.order_id" }]"""
)
ORDERS = """
[sources.orders]
kind = "webhook"
path = "/hooks/orders"
"""


async def test_an_event_of_cancel_on_cancels_the_runs_it_matches_parked_or_running(make_config):
    probe = probes.reset()
    hold = """
[pipelines.checkout.tasks.hold]
kind = "python"
function = "tests.support.probes:record"
args = { name = "{{ inputs.order_id }}", until_released = true }
"""
    config = make_config(checkout(head=CANCEL_ON) + hold + ORDERS)
    async with daemon_running(config) as info:
        host, port = info.http_address
        with anyio.fail_after(30):
            runs = {
                o: (await info.runner.start_run("checkout", {"order_id": o})).run_id
                for o in ("A-1", "B-2")
            }
            while probe.in_flight < 2:  # noqa: ASYNC110 - the probe signals each entry only once
                await anyio.sleep(0.02)
            for run_id in runs.values():
                await _waiting(info, run_id)
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                # not cancelled: the wrong status, then another order
                for data in ({"id": "A-1", "status": "paid"}, {"id": "C-3", "status": "cancelled"}):
                    assert (await client.post("/hooks/orders", json=data)).status_code == 202
                answer = await client.post(
                    "/hooks/orders", json={"id": "A-1", "status": "cancelled"}
                )
            event_id = answer.json()["event_id"]
            cancelled = await _settled(info, runs["A-1"])
            other = await info.runner.store.get_run(runs["B-2"])
            # the request is marked once the run has left memory
            while not (asked := await info.runner.store.get_cancel(runs["A-1"])).done:  # noqa: ASYNC110
                await anyio.sleep(0.02)
            assert await info.runner.store.get_cancel(runs["B-2"]) is None
            waits = {
                o: [w.state for w in await info.runner.store.get_waits(r)] for o, r in runs.items()
            }
            probe.released.set()
    assert cancelled.state == "cancelled"
    assert cancelled.error == f"cancelled by event {event_id!r} of 'orders'"
    assert other.state == "running"
    assert (asked.run_id, asked.event_id, asked.done) == (runs["A-1"], event_id, 1)
    # the cancelled run's wait waits no more; the other's still does
    assert waits == {"A-1": ["cancelled"], "B-2": ["waiting"]}
