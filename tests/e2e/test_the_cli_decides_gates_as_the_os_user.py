"""Approval gates through the CLI: a gate waits across a ``kill -9`` and a restart, and
``cued approve`` decides under the name of the OS user who runs it, with a daemon or without."""

from __future__ import annotations

import json
import os
import pwd

from tests.support.approvals import gated
from tests.support.daemon import Daemon, cued, query, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name
"""The OS user running the tests: the CLI decides under this name."""


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
