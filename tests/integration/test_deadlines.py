"""Deadlines (SLAs): a run or a task still unfinished its deadline after the run was
created raises ``deadline_missed``, once; one that finished in time raises nothing."""

from __future__ import annotations

import anyio
import pytest

from cued.daemon.core.ids import new_id, now
from cued.daemon.store import RunRow
from cued.daemon.store.opening import open_store_at
from tests.support.http_server import serve_app
from tests.support.running import daemon_running
from tests.support.stores import keeping_state_in
from tests.support.webhook_receiver import Receiver


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


CONFIG = """
[http]
listen = "127.0.0.1:0"
[alerts.ops]
kind = "webhook"
url = "{base}/alerts"
on = ["deadline_missed"]

[pipelines.slow]
deadline = "300ms"
[pipelines.slow.tasks.wait]
kind = "sleep"
seconds = 1.5
deadline = "200ms"
[pipelines.slow.tasks.after]
kind = "sleep"
needs = ["wait"]

[pipelines.quick]
deadline = "300ms"
[pipelines.quick.tasks.t]
kind = "sleep"
"""


async def test_a_run_past_its_deadline_raises_one_alert_and_one_in_time_none(make_config):
    receiver = Receiver()
    async with serve_app(receiver.app) as base:
        config = make_config(CONFIG.format(base=base))
        async with daemon_running(config) as info:
            with anyio.fail_after(20):
                quick = (await info.runner.start_run("quick")).run_id
                slow = (await info.runner.start_run("slow")).run_id
                await info.runner.wait(quick)
                await info.runner.wait(slow)
                await receiver.until(lambda: len(receiver.hits) >= 2)
                await anyio.sleep(0.5)  # time for a second, wrong, alert to show itself
    ids = sorted(receiver.delivered("/alerts"))
    assert ids == [f"ops:deadline_missed:{slow}", f"ops:deadline_missed:{slow}:wait"]
    bodies = {b["alert_id"]: b for b in receiver.bodies("/alerts")}
    assert "missed its deadline" in bodies[f"ops:deadline_missed:{slow}"]["message"]


async def test_a_deadline_that_passed_while_the_daemon_was_down_is_raised_at_start(make_config):
    receiver = Receiver()
    async with serve_app(receiver.app) as base:
        config = make_config(CONFIG.format(base=base))
        # a run recorded an hour ago, never finished: the daemon was down meanwhile
        late = RunRow(new_id(), "slow", "queued", {}, now() - 3600)
        async with open_store_at(config.state_location()) as store:
            await store.submit([late]).wait()
        async with daemon_running(config) as info:
            with anyio.fail_after(20):
                await receiver.until(lambda: len(receiver.hits) >= 1)
                await info.runner.wait(late.run_id)
    assert f"ops:deadline_missed:{late.run_id}" in receiver.delivered("/alerts")


async def test_a_run_waiting_for_its_paused_pipeline_still_has_its_deadline(make_config):
    receiver = Receiver()
    async with serve_app(receiver.app) as base:
        config = make_config(CONFIG.format(base=base))
        async with daemon_running(config) as info:
            await info.runner.pause("quick")
            waiting = (await info.runner.start_run("quick")).run_id
            assert not info.runner.is_active(waiting)
            with anyio.fail_after(20):
                await receiver.until(lambda: len(receiver.hits) >= 1)
            assert list(receiver.delivered("/alerts")) == [f"ops:deadline_missed:{waiting}"]
            await info.runner.unpause("quick")
            with anyio.fail_after(20):
                assert (await info.runner.wait(waiting)).state == "succeeded"
