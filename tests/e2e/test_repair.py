"""Rerun from the point of failure, clear, cancel: a fix is one command, and every attempt
of every rerun stays in the run's history."""

from __future__ import annotations

import anyio
import pytest

from cued.daemon.assembly import open_runner
from cued.daemon.errors import InvalidRequest, NotFound
from cued.daemon.ops import repair
from tests.support.daemon import Daemon, cued, query

CHAIN = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"

[pipelines.five]
[pipelines.five.tasks.t1]
kind = "shell"
command = "echo t1 >> {ledger}"
[pipelines.five.tasks.t2]
kind = "shell"
needs = ["t1"]
command = "echo t2 >> {ledger}"
[pipelines.five.tasks.t3]
kind = "shell"
needs = ["t2"]
command = "echo t3 >> {ledger}; test ! -e {broken}"
[pipelines.five.tasks.t4]
kind = "shell"
needs = ["t3"]
command = "echo t4 >> {ledger}"
[pipelines.five.tasks.t5]
kind = "shell"
needs = ["t4"]
command = "echo t5 >> {ledger}"
"""


def setup(tmp_path):
    ledger, broken = tmp_path / "ledger", tmp_path / "broken"
    config = tmp_path / "config.toml"
    config.write_text(CHAIN.format(ledger=ledger, broken=broken))
    broken.touch()
    return config, ledger, broken


def ran(ledger) -> list[str]:
    return ledger.read_text().split() if ledger.exists() else []


def test_retry_after_the_fix_reruns_only_the_failed_task_and_what_follows(tmp_path):
    config, ledger, broken = setup(tmp_path)
    first = cued(config, "trigger", "five")
    assert first.returncode == 1
    run_id = first.stdout.split()[2]
    assert ran(ledger) == ["t1", "t2", "t3"]
    states = dict(
        query(
            tmp_path / "state.db", "SELECT key, state FROM task_instances WHERE run_id = ?", run_id
        )
    )
    assert states == {
        "t1": "succeeded",
        "t2": "succeeded",
        "t3": "failed",
        "t4": "upstream_failed",
        "t5": "upstream_failed",
    }

    broken.unlink()  # the cause is fixed
    again = cued(config, "retry", run_id)
    assert again.returncode == 0, again.stderr
    assert f"run {run_id}: succeeded" in again.stdout
    assert ran(ledger) == ["t1", "t2", "t3", "t3", "t4", "t5"]
    history = query(
        tmp_path / "state.db",
        "SELECT key, attempt, state FROM attempts WHERE run_id = ? ORDER BY key, attempt",
        run_id,
    )
    assert history == [
        ("t1", 1, "succeeded"),
        ("t2", 1, "succeeded"),
        ("t3", 1, "failed"),
        ("t3", 2, "succeeded"),
        ("t4", 1, "succeeded"),
        ("t5", 1, "succeeded"),
    ]


async def test_retry_goes_through_the_running_daemon(tmp_path):
    config, ledger, broken = setup(tmp_path)
    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    try:
        run_id = cued(config, "trigger", "five", "--wait").stdout.split()[1].rstrip(":")
        broken.unlink()
        again = cued(config, "retry", run_id)
        assert again.returncode == 0, again.stderr
        assert f"run {run_id}: succeeded" in again.stdout
    finally:
        assert daemon.stop() == 0
    assert ran(ledger) == ["t1", "t2", "t3", "t3", "t4", "t5"]


def test_clear_reruns_named_tasks_and_with_downstream_what_follows(tmp_path):
    config, ledger, broken = setup(tmp_path)
    broken.unlink()
    run_id = cued(config, "trigger", "five").stdout.split()[2]
    assert ran(ledger) == ["t1", "t2", "t3", "t4", "t5"]

    only = cued(config, "clear", run_id, "--task", "t2")
    assert only.returncode == 0, only.stderr
    assert ran(ledger)[5:] == ["t2"]

    onwards = cued(config, "clear", run_id, "--task", "t4", "--downstream")
    assert onwards.returncode == 0, onwards.stderr
    assert ran(ledger)[6:] == ["t4", "t5"]
    attempts = dict(
        query(
            tmp_path / "state.db",
            "SELECT key, max(attempt) FROM attempts WHERE run_id = ? GROUP BY key",
            run_id,
        )
    )
    assert attempts == {"t1": 1, "t2": 2, "t3": 1, "t4": 2, "t5": 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("retry", "RUN"), "nothing failed in run", id="nothing-failed"),
        pytest.param(
            ("clear", "RUN", "--task", "t9"), "pipeline 'five' has no task 't9'", id="unknown-task"
        ),
        pytest.param(("retry", "nope"), "no run 'nope'", id="unknown-run"),
    ],
)
def test_reruns_that_cannot_be_done_say_why(tmp_path, args, message):
    config, _, broken = setup(tmp_path)
    broken.unlink()
    run_id = cued(config, "trigger", "five").stdout.split()[2]
    result = cued(config, *[run_id if a == "RUN" else a for a in args])
    assert result.returncode == 1
    assert message in result.stderr


async def test_a_rerun_task_gets_its_retries_afresh(make_config, tmp_path):
    config = make_config(
        f"""
[pipelines.p]
[pipelines.p.tasks.flaky]
kind = "shell"
command = "test -e {tmp_path / "ok"}"
retries = 1
retry_backoff = "1ms"
"""
    )
    async with open_runner(config) as runner:
        with anyio.fail_after(20):
            run_id = (await runner.start_run("p")).run_id
            assert (await runner.wait(run_id)).state == "failed"
            await repair.rerun(runner, run_id)
            assert (await runner.wait(run_id)).state == "failed"
            (tmp_path / "ok").touch()
            await repair.rerun(runner, run_id)
            row = await runner.wait(run_id)
            attempts = [(a.attempt, a.state) for a in await runner.store.get_attempts(run_id)]
    assert row.state == "succeeded"
    assert attempts == [
        (1, "failed"),
        (2, "failed"),
        (3, "failed"),
        (4, "failed"),
        (5, "succeeded"),
    ]


async def test_a_running_run_cannot_be_rerun_and_an_unknown_one_is_not_found(make_config):
    config = make_config('[pipelines.p]\n[pipelines.p.tasks.s]\nkind = "sleep"\nseconds = 30\n')
    async with open_runner(config) as runner:
        run_id = (await runner.start_run("p")).run_id
        with pytest.raises(InvalidRequest, match="is still running"):
            await repair.rerun(runner, run_id)
        with pytest.raises(NotFound):
            await repair.rerun(runner, "r-nope")
        await repair.cancel(runner, run_id)


def test_failed_runs_are_listed_with_their_error_and_event(tmp_path):
    config, _, _ = setup(tmp_path)
    run_id = cued(config, "trigger", "five").stdout.split()[2]
    listed = cued(config, "runs", "--failed")
    header, line = listed.stdout.splitlines()[:2]
    assert header.split() == ["RUN", "PIPELINE", "STATE", "CREATED", "DURATION", "EVENT", "ERROR"]
    assert line.startswith(run_id)
    assert "t3: Command" in line


async def test_each_end_of_a_rerun_run_raises_its_own_alert(make_config, tmp_path):
    import sqlite3

    config = make_config(
        """
[alerts.ops]
kind = "webhook"
url = "http://127.0.0.1:9/unused"
on = ["run_failed"]
[pipelines.p]
[pipelines.p.tasks.bad]
kind = "shell"
argv = ["false"]
"""
    )
    async with open_runner(config) as runner:
        with anyio.fail_after(20):
            run_id = (await runner.start_run("p")).run_id
            await runner.wait(run_id)
            await repair.rerun(runner, run_id)
            await runner.wait(run_id)
    with sqlite3.connect(config.state_path) as db:
        ids = sorted(a for (a,) in db.execute("SELECT alert_id FROM outbox"))
    assert ids == [f"ops:run_failed:{run_id}", f"ops:run_failed:{run_id}:rerun1"]
