"""kill -9 of the daemon while a run is half done, then restart: the run completes, and no
task that had succeeded runs again."""

from __future__ import annotations

import signal
from collections import Counter

from tests.support.daemon import Daemon, cued, query, wait_for

CONFIG = """
[http]
listen = "127.0.0.1:0"

[daemon]
state = "state.db"
max_running_tasks = 8
shutdown_grace = "1s"

[pipelines.crash]
inputs = {{ n = 60 }}

[pipelines.crash.tasks.first]
kind = "shell"
command = "echo start first >> {ledger}; echo end first >> {ledger}"

[pipelines.crash.tasks.fan]
kind = "shell"
needs = ["first"]
map = "{{{{ range(inputs.n) | list }}}}"
# the first half ends at once; the second half holds until the file `hold` exists, so the
# kill below falls mid-fan-out however fast or slow the machine is
command = "echo start fan[{{{{ item }}}}] >> {ledger}; if [ {{{{ item }}}} -ge 30 ]; then while [ ! -f {hold} ]; do sleep 0.02; done; fi; echo end fan[{{{{ item }}}}] >> {ledger}"

[pipelines.crash.tasks.gate]
kind = "shell"
needs = ["fan"]
command = "echo start gate >> {ledger}; while [ ! -f {release} ]; do sleep 0.02; done; echo end gate >> {ledger}"

[pipelines.crash.tasks.last]
kind = "shell"
needs = ["gate"]
command = "echo start last $CUED_IDEMPOTENCY_KEY >> {ledger}"
"""


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_kill_9_mid_run_then_restart_completes_it_without_rerunning_finished_tasks(tmp_path):
    """(The tasks a kill -9 orphans wait for files; they are created in the end, however the
    test ends, so no shell loop outlives it.)"""
    try:
        await _kill_9_mid_run_then_restart(tmp_path)
    finally:
        (tmp_path / "hold").touch()
        (tmp_path / "release").touch()


async def _kill_9_mid_run_then_restart(tmp_path):
    ledger, release, hold = tmp_path / "ledger", tmp_path / "release", tmp_path / "hold"
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(ledger=ledger, release=release, hold=hold))
    state = tmp_path / "state.db"

    daemon = Daemon(config, state)
    await daemon.start()
    try:
        triggered = cued(config, "trigger", "crash")
        assert triggered.returncode == 0, triggered.stderr
        run_id = triggered.stdout.split()[2]
        # half done: the first half of the fan-out has finished, the second is in flight
        # (8 at a time, max_running_tasks) and held
        succeeded = "SELECT count(*) FROM task_instances WHERE run_id = ? AND state = 'succeeded'"
        await wait_for(
            lambda: (
                query(state, succeeded, run_id) == [(31,)]
                and sum(line.startswith("start fan") for line in lines(ledger)) == 38
            )
        )
    finally:
        daemon.kill9()

    done_before = {
        key
        for (key,) in query(
            state, "SELECT key FROM task_instances WHERE run_id = ? AND state = 'succeeded'", run_id
        )
    }
    assert done_before == {"first"} | {f"fan[{i}]" for i in range(30)}
    hold.touch()
    release.touch()

    daemon = Daemon(config, state)
    await daemon.start()
    try:
        await wait_for(
            lambda: (
                query(state, "SELECT state FROM runs WHERE run_id = ?", run_id)[0][0] != "running"
            )
        )
    finally:
        assert daemon.stop() == 0

    assert query(state, "SELECT state FROM runs WHERE run_id = ?", run_id) == [("succeeded",)]
    starts = Counter(line.split()[1] for line in lines(ledger) if line.startswith("start"))
    # every task that had succeeded before the kill ran exactly once
    for key in done_before:
        assert starts[key] == 1, key
    # every instance ran to its end, and those downstream of the crash ran once
    ends = Counter(line.split()[1] for line in lines(ledger) if line.startswith("end"))
    assert all(ends[f"fan[{i}]"] >= 1 for i in range(60))
    assert starts["gate"] == 1
    assert starts["last"] == 1
    # an instance interrupted by the kill ran again as a new attempt with the same key
    rerun = query(
        state,
        "SELECT key, max(attempt) FROM attempts WHERE run_id = ? GROUP BY key HAVING max(attempt) > 1",
        run_id,
    )
    assert rerun, "nothing was in flight at the kill"
    assert {key for key, _ in rerun}.isdisjoint(done_before)
    assert f"start last {run_id}/last" in lines(ledger)


GRACEFUL = """
[http]
listen = "127.0.0.1:0"

[daemon]
state = "state.db"
shutdown_grace = "20s"

[pipelines.two]
[pipelines.two.tasks.a]
kind = "shell"
# a holds until the test has seen the daemon begin to stop, then ends within the grace
command = "echo start a >> {ledger}; while [ ! -f {release} ]; do sleep 0.02; done; echo end a >> {ledger}"
[pipelines.two.tasks.b]
kind = "shell"
needs = ["a"]
command = "echo start b >> {ledger}"
"""


async def test_sigterm_lets_running_tasks_finish_and_the_rest_runs_after_restart(tmp_path):
    ledger, release = tmp_path / "ledger", tmp_path / "release"
    config = tmp_path / "config.toml"
    config.write_text(GRACEFUL.format(ledger=ledger, release=release))
    state = tmp_path / "state.db"

    daemon = Daemon(config, state)
    await daemon.start()
    run_id = cued(config, "trigger", "two").stdout.split()[2]
    await wait_for(lambda: "start a" in lines(ledger))
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGTERM)
    await wait_for(lambda: "daemon_stopping" in daemon.log.read_text())
    release.touch()  # a ends within the grace period
    assert daemon.stop() == 0
    assert lines(ledger) == ["start a", "end a"], "the running task was not let finish"
    assert query(
        state, "SELECT key, state FROM task_instances WHERE run_id = ? ORDER BY key", run_id
    ) == [
        ("a", "succeeded"),
        ("b", "queued"),
    ]
    assert query(state, "SELECT state FROM runs WHERE run_id = ?", run_id) == [("running",)]

    daemon = Daemon(config, state)
    await daemon.start()
    try:
        await wait_for(
            lambda: (
                query(state, "SELECT state FROM runs WHERE run_id = ?", run_id) == [("succeeded",)]
            )
        )
    finally:
        assert daemon.stop() == 0
    assert lines(ledger) == ["start a", "end a", "start b"]


UNCOMMITTED = """
[http]
listen = "127.0.0.1:0"

[daemon]
state = "state.db"

[pipelines.pair]
[pipelines.pair.tasks.a]
kind = "python"
function = "steps:step"
args = {{ name = "a", ledger = "{ledger}" }}
[pipelines.pair.tasks.b]
kind = "python"
function = "steps:step"
needs = ["a"]
args = {{ name = "b", ledger = "{ledger}" }}
"""

# b's first attempt kills the daemon before it awaits anything: its start is still
# provisional (a's success, which b waits for, is committed; b's start rides with the
# next commit, which never comes)
STEPS = """
import os, signal

async def step(name, ledger, ctx):
    with open(ledger, "a") as out:
        out.write(f"start {name} {ctx.idempotency_key}\\n")
    if name == "b" and not os.path.exists(ledger + ".killed"):
        open(ledger + ".killed", "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return name
"""


async def test_kill_9_before_an_attempts_start_is_committed_runs_it_again(tmp_path):
    folder = tmp_path / "p"  # short: the control socket's path is bounded
    folder.mkdir()
    ledger = folder / "ledger"
    (folder / "steps.py").write_text(STEPS)
    config = folder / "config.toml"
    config.write_text(UNCOMMITTED.format(ledger=ledger))
    state = folder / "state.db"

    daemon = Daemon(config, state)
    await daemon.start()
    try:
        triggered = cued(config, "trigger", "pair")
        assert triggered.returncode == 0, triggered.stderr
        run_id = triggered.stdout.split()[2]
        assert daemon.process is not None
        process = daemon.process
        await wait_for(lambda: process.poll() is not None)
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill9()
    assert daemon.process.returncode == -signal.SIGKILL
    # a's success is durable; b's attempt never was: b is as a's commit left it, queued
    assert query(
        state, "SELECT key, state FROM task_instances WHERE run_id = ? ORDER BY key", run_id
    ) == [("a", "succeeded"), ("b", "queued")]
    assert query(state, "SELECT key, state FROM attempts WHERE run_id = ?", run_id) == [
        ("a", "succeeded")
    ]

    daemon = Daemon(config, state)
    await daemon.start()
    try:
        await wait_for(
            lambda: (
                query(state, "SELECT state FROM runs WHERE run_id = ?", run_id) == [("succeeded",)]
            )
        )
    finally:
        assert daemon.stop() == 0
    # a ran once; b again, with the same idempotency key, as its next attempt
    assert lines(ledger) == [f"start a {run_id}/a", f"start b {run_id}/b", f"start b {run_id}/b"]
    assert query(
        state, "SELECT key, attempt, state FROM attempts WHERE run_id = ? ORDER BY key", run_id
    ) == [("a", 1, "succeeded"), ("b", 2, "succeeded")]
