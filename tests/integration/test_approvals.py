"""Approval gates: a run waits in the store for people to decide, over HTTP with a token of
an approver or for a number of approvals, until a rejection, a timeout or a cancel; who
decided, when and why is kept."""

from __future__ import annotations

import anyio
import httpx
import pytest

from cued.daemon.errors import Forbidden, InvalidRequest
from cued.daemon.ops import repair
from tests.support.approvals import gated
from tests.support.running import daemon_running
from tests.support.stores import keeping_state_in


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


async def test_http_decisions_need_a_token_of_an_approver(make_config):
    config = make_config(gated())
    async with daemon_running(config) as info:
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            with anyio.fail_after(20):
                run_id = (await info.runner.start_run("post")).run_id
                assert (await info.runner.wait(run_id)).state == "waiting"
                url = f"/api/v1/runs/{run_id}/tasks/gate/approve"
                assert (await client.post(url, json={})).status_code == 401
                wrong = await client.post(url, json={}, headers={"authorization": "Bearer nope"})
                assert wrong.status_code == 401
                viewer = await client.post(
                    url, json={}, headers={"authorization": "Bearer victor-token"}
                )
                assert viewer.status_code == 403
                assert viewer.json()["error"]["message"] == "'victor' lacks the 'approver' role"
                listed = await client.get(
                    "/api/v1/approvals", headers={"authorization": "Bearer alice-token"}
                )
                assert [g["run_id"] for g in listed.json()] == [run_id]
                # olga may decide through her group
                ok = await client.post(
                    url, json={"comment": "ship it"}, headers={"authorization": "Bearer olga-token"}
                )
                assert ok.status_code == 200, ok.text
                assert ok.json()["state"] == "approved"
                again = await client.post(
                    url, json={}, headers={"authorization": "Bearer alice-token"}
                )
                assert again.status_code == 409
                assert (await info.runner.wait(run_id)).state == "succeeded"
        (decision,) = await info.runner.store.get_decisions(run_id)
    assert (decision.who, decision.comment) == ("olga", "ship it")


async def test_a_gate_needing_two_approvals_waits_for_the_second(make_config):
    config = make_config(gated("min_approvals = 2"))
    async with daemon_running(config) as info:
        with anyio.fail_after(20):
            run_id = (await info.runner.start_run("post")).run_id
            await info.runner.wait(run_id)
            first = await info.runner.gates.decide(run_id, "gate", who="alice", approve=True)
            assert first.state == "waiting"
            second = await info.runner.gates.decide(
                run_id, "gate", who="olga", approve=True, groups={"ops"}
            )
            assert second.state == "approved"
            assert (await info.runner.wait(run_id)).state == "succeeded"


async def test_a_rejection_fails_the_gate_and_clean_up_reads_the_decision(make_config):
    config = make_config(gated())
    async with daemon_running(config) as info:
        with anyio.fail_after(20):
            run_id = (await info.runner.start_run("post")).run_id
            await info.runner.wait(run_id)
            with pytest.raises(Forbidden):
                await info.runner.gates.decide(run_id, "gate", who="eve", approve=False)
            await info.runner.gates.decide(
                run_id, "gate", who="alice", approve=False, comment="off topic"
            )
            row = await info.runner.wait(run_id)
            states = {
                i.key: (i.state, i.error) for i in await info.runner.store.get_instances(run_id)
            }
            report = {a.key: a.output for a in await info.runner.store.get_attempts(run_id)}[
                "report"
            ]
    assert row.state == "failed"
    assert states["gate"] == ("failed", "rejected by alice: off topic")
    assert states["publish"][0] == "upstream_failed"
    assert report["stdout"] == "rejected\n"


@pytest.mark.parametrize(
    ("on_timeout", "run_state", "gate_state"),
    [
        pytest.param("approve", "succeeded", "approved", id="approve"),
        pytest.param("fail", "failed", "timed_out", id="fail"),
    ],
)
async def test_a_gate_that_times_out_settles_as_configured(
    make_config, on_timeout, run_state, gate_state
):
    config = make_config(gated(f'timeout = "300ms"\non_timeout = "{on_timeout}"'))
    async with daemon_running(config) as info:
        with anyio.fail_after(20):
            run_id = (await info.runner.start_run("post")).run_id
            assert (await info.runner.wait(run_id)).state == "waiting"
            while (gate := await info.runner.store.get_approval(run_id, "gate")).state == "waiting":  # noqa: ASYNC110
                await anyio.sleep(0.05)
            row = await info.runner.wait(run_id)
            while row.state in ("queued", "running"):
                await anyio.sleep(0.05)
                row = await info.runner.wait(run_id)
    assert gate.state == gate_state
    assert row.state == run_state


async def test_a_waiting_run_frees_its_slot_and_memory_and_can_be_cancelled(make_config):
    config = make_config(
        gated().replace(
            'inputs = { topic = "cats" }', 'max_active_runs = 1\ninputs = { topic = "cats" }'
        )
    )
    async with daemon_running(config) as info:
        with anyio.fail_after(20):
            first = (await info.runner.start_run("post")).run_id
            second = (await info.runner.start_run("post")).run_id
            assert (await info.runner.wait(first)).state == "waiting"
            assert (await info.runner.wait(second)).state == "waiting", (
                "the parked run kept its slot"
            )
            assert not info.runner.is_active(first)
            with pytest.raises(InvalidRequest, match="cannot be rerun now"):
                await repair.rerun(info.runner, first)
            cancelled = await repair.cancel(info.runner, first)
            gate = await info.runner.store.get_approval(first, "gate")
    assert cancelled.state == "cancelled"
    assert gate.state == "cancelled"
