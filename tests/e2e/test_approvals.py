"""Approval gates: a run waits in the store for people to decide, across restarts, through
the CLI and over HTTP with a token; who decided, when and why is kept."""

from __future__ import annotations

import json
import os
import pwd

import anyio
import httpx
import pytest

from cued.daemon.errors import Forbidden, InvalidRequest
from cued.daemon.ops import repair
from tests.support.daemon import Daemon, cued, query, wait_for
from tests.support.running import daemon_running

GATED = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"

[auth.users.alice]
token = "alice-token"
roles = ["approver", "viewer"]
[auth.users.olga]
token = "olga-token"
roles = ["approver"]
groups = ["ops"]
[auth.users.victor]
token = "victor-token"
roles = ["viewer"]

[pipelines.post]
inputs = {{ topic = "cats" }}
[pipelines.post.tasks.draft]
kind = "shell"
argv = ["echo", "A post about {{{{ inputs.topic }}}}"]
[pipelines.post.tasks.gate]
kind = "approval"
needs = ["draft"]
message = "Publish '{{{{ tasks.draft.output.stdout | trim }}}}'?"
approvers = [{approvers}]
payload = {{ title = "{{{{ tasks.draft.output.stdout | trim }}}}" }}
{gate_extra}
[pipelines.post.tasks.publish]
kind = "shell"
needs = ["gate"]
argv = ["echo", "published {{{{ tasks.gate.output.payload.title }}}} ({{{{ tasks.gate.output.decision }}}})"]
[pipelines.post.tasks.report]
kind = "shell"
needs = ["gate"]
trigger_rule = "all_done"
argv = ["echo", "{{{{ tasks.gate.output.decision }}}}"]
"""


ME = pwd.getpwuid(os.geteuid()).pw_name
"""The OS user running the tests: the CLI decides under this name."""


def gated(gate_extra: str = "", approvers: str = '"alice", "group:ops"') -> str:
    return GATED.format(gate_extra=gate_extra, approvers=approvers)


def config_file(tmp_path, gate_extra: str = "", approvers: str = '"alice", "group:ops"'):
    config = tmp_path / "config.toml"
    config.write_text(gated(gate_extra, approvers))
    return config


def run_state(tmp_path, run_id):
    return query(tmp_path / "state.db", "SELECT state FROM runs WHERE run_id = ?", run_id)[0][0]


def outputs(tmp_path, run_id):
    rows = query(
        tmp_path / "state.db",
        "SELECT key, output FROM attempts WHERE run_id = ? AND output IS NOT NULL ORDER BY attempt",
        run_id,
    )
    return {key: json.loads(out) for key, out in rows}


async def test_a_gate_waits_across_a_restart_and_is_approved_through_the_cli(tmp_path):
    config = config_file(tmp_path, approvers=f'"alice", "{ME}"')
    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    run_id = cued(config, "trigger", "post").stdout.split()[2]
    await wait_for(lambda: run_state(tmp_path, run_id) == "waiting")
    daemon.kill9()  # nothing of the gate lives in memory

    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    try:
        waiting = cued(config, "approvals")
        assert run_id in waiting.stdout
        assert "Publish 'A post about cats'?" in waiting.stdout

        # the CLI decides as the OS user who runs it, never under another name
        refused = cued(config, "approve", run_id, "gate", "--as", "alice")
        assert refused.returncode == 1
        assert refused.stderr == (
            "cued: error: --as 'alice' is refused: a decision is recorded under the name "
            f"of the OS user who makes it, {ME!r}\n"
        )

        approved = cued(
            config,
            "approve",
            run_id,
            "gate",
            "--comment",
            "lovely",
            "--payload",
            '{"title": "Cats, edited"}',
        )
        assert approved.returncode == 0, approved.stderr
        assert f"gate gate of run {run_id}: approved" in approved.stdout
        await wait_for(lambda: run_state(tmp_path, run_id) == "succeeded")
    finally:
        assert daemon.stop() == 0

    out = outputs(tmp_path, run_id)
    assert out["publish"]["stdout"] == "published Cats, edited (approved)\n"
    assert out["gate"]["decided_by"][0] | {"at": None} == {
        "who": ME,
        "decision": "approve",
        "comment": "lovely",
        "at": None,
    }
    shown = cued(config, "show", run_id).stdout
    assert "lovely" in shown


async def test_the_cli_without_a_daemon_decides_under_the_os_user_name(tmp_path):
    config = config_file(tmp_path, gate_extra="min_approvals = 2", approvers=f'"alice", "{ME}"')
    run_id = cued(config, "trigger", "post").stdout.split()[2]
    assert run_state(tmp_path, run_id) == "waiting"
    first = cued(config, "approve", run_id, "gate", "-m", "one")
    again = cued(config, "approve", run_id, "gate", "-m", "two")
    as_alice = cued(config, "approve", run_id, "gate", "--as", "alice")
    decisions = query(
        tmp_path / "state.db", "SELECT who, comment FROM decisions WHERE run_id = ?", run_id
    )
    assert first.returncode == 0, first.stderr
    assert f"approved by {ME}; waiting for 2 approvals" in first.stdout
    # the same person approving twice is still one approval
    assert again.returncode == 0, again.stderr
    assert f"approved by {ME}; waiting for 2 approvals" in again.stdout
    assert as_alice.returncode == 1
    assert "--as 'alice' is refused" in as_alice.stderr
    assert decisions == [(ME, "two")]
    assert run_state(tmp_path, run_id) == "waiting"


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


def test_the_groups_of_a_user_come_from_auth_users(make_config):
    auth = make_config(
        '[auth.users.olga]\ntoken = "t-olga"\nroles = ["approver"]\ngroups = ["ops", "db"]\n'
        '[auth.users.eve]\ntoken = "t-eve"\n'
    ).auth
    assert auth.groups_of("olga") == {"ops", "db"}
    assert auth.groups_of("eve") == frozenset()
    assert auth.groups_of("nobody") == frozenset()
