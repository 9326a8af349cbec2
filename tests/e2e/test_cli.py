"""The ``cued`` command line, as a user runs it: real processes, real files."""

from __future__ import annotations

import anyio

from cued.daemon.assembly import open_runner
from cued.daemon.config import load_config
from cued.daemon.runtime.intake import DaemonIntake
from cued.daemon.sdk.sources import Event
from tests.support.daemon import Daemon, cued, query, wait_for

CONFIG = """
[http]
listen = "127.0.0.1:0"

[daemon]
state = "state.db"
[pipelines.hello]
inputs = { name = "world" }
[pipelines.hello.tasks.greet]
kind = "shell"
argv = ["echo", "hello {{ inputs.name }}"]
[pipelines.broken]
[pipelines.broken.tasks.fail]
kind = "shell"
argv = ["false"]
"""


def write_config(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    return config


def test_trigger_without_a_daemon_runs_here_and_waits(tmp_path):
    config = write_config(tmp_path)
    result = cued(config, "trigger", "hello", "-i", "name=cli")
    assert result.returncode == 0, result.stderr
    assert "(no daemon runs: running it here)" in result.stdout
    run_id = result.stdout.split()[2]
    assert f"run {run_id}: succeeded" in result.stdout

    shown = cued(config, "show", run_id)
    assert shown.returncode == 0
    assert "state     succeeded" in shown.stdout
    assert '"name": "cli"' in shown.stdout
    assert "hello cli" in shown.stdout  # the output of the attempt


def test_a_failed_run_exits_1_and_is_listed_with_its_error(tmp_path):
    config = write_config(tmp_path)
    result = cued(config, "trigger", "broken")
    assert result.returncode == 1
    listed = cued(config, "runs", "--failed")
    assert "broken" in listed.stdout
    assert "fail: Program 'false' exited with code 1" in listed.stdout
    assert "hello" not in listed.stdout


async def test_trigger_goes_through_the_running_daemon(tmp_path):
    config = write_config(tmp_path)
    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    try:
        result = cued(config, "trigger", "hello", "--wait")
        assert result.returncode == 0, result.stderr
        assert "running it here" not in result.stdout
        assert "succeeded" in result.stdout
        listed = cued(config, "runs")
        assert listed.stdout.splitlines()[0].split() == [
            "RUN",
            "PIPELINE",
            "STATE",
            "CREATED",
            "DURATION",
        ]
        assert "hello" in listed.stdout
        # a second daemon on the same state file would run everything twice
        second = cued(config, "run")
        assert second.returncode == 1
        assert "another cued daemon is running on" in second.stderr
    finally:
        assert daemon.stop() == 0
    assert not (tmp_path / "state.db.d" / "control.sock").exists()


def test_errors_are_one_line_without_a_traceback(tmp_path):
    config = write_config(tmp_path)
    for args, message in [
        (("trigger", "nope"), "cued: error: no pipeline 'nope' (known: broken, hello)"),
        (
            ("trigger", "hello", "-i", "colour=red"),
            "cued: error: pipeline 'hello' has no input 'colour' (declared: name)",
        ),
        (("trigger", "hello", "-i", "oops"), "cued: error: input 'oops' is not KEY=VALUE"),
        (("show", "r-missing"), "cued: error: no run 'r-missing'"),
    ]:
        result = cued(config, *args)
        assert result.returncode == 1, args
        assert result.stderr.startswith(message), result.stderr
        assert "Traceback" not in result.stderr


async def test_an_input_of_bytes_that_are_not_utf8_is_kept_escaped(tmp_path):
    """Python gives such bytes of argv as lone surrogates, which no JSON body takes."""
    config = write_config(tmp_path)
    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    try:
        result = cued(config, "trigger", "hello", "-i", "name=caf\udcff", "--wait")
        assert result.returncode == 0, result.stderr
        run_id = result.stdout.split()[1].rstrip(":")
        shown = cued(config, "show", run_id)
        assert '"name": "caf\\\\xff"' in shown.stdout, shown.stdout
    finally:
        assert daemon.stop() == 0


async def test_arguments_of_bytes_that_are_not_utf8_get_an_answer_not_a_traceback(tmp_path):
    config = write_config(tmp_path)
    bad = "caf\udcff"  # how Python gives argv bytes that are not UTF-8
    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    try:
        for args in [
            ("show", bad),
            ("cancel", bad),
            ("retry", bad, "-t", bad),
            ("clear", bad, "-t", bad),
            ("runs", "--pipeline", bad),
            ("events", "--source", bad),
        ]:
            result = cued(config, *args)
            assert "Traceback" not in result.stderr, (args, result.stderr)
            assert result.stderr.count("\n") <= 1, (args, result.stderr)
            assert result.returncode in (0, 1), (args, result.stderr)
    finally:
        assert daemon.stop() == 0


def test_an_input_of_json_cued_does_not_keep_is_refused_in_one_line(tmp_path):
    config = write_config(tmp_path)
    for value, message in [
        ("NaN", "cued: error: input 'name' is not valid JSON: NaN is not a JSON value"),
        ("1e999", "cued: error: input 'name' is not valid JSON: the number 1e999 is too large"),
        ("[" * 100 + "]" * 100, "cued: error: input 'name' is not valid JSON for cued: it nests"),
    ]:
        result = cued(config, "trigger", "hello", "-i", f"name={value}")
        assert result.returncode == 1, value
        assert result.stderr.startswith(message), result.stderr
        assert "Traceback" not in result.stderr


def test_missing_config_file_is_named(tmp_path):
    result = cued(tmp_path / "nope.toml", "validate")
    assert result.returncode == 2
    assert f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory" in result.stderr


def test_events_lists_matched_unmatched_and_invalid_events(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        CONFIG
        + """
[sources.hook]
kind = "webhook"
path = "/hook"

[[triggers]]
source = "hook"
pipeline = "hello"
when = "event.data.go"
inputs = { name = "{{ event.data.name }}" }
"""
    )

    async def feed():
        async with open_runner(load_config(config)) as runner, anyio.create_task_group() as tg:
            intake = DaemonIntake(runner.config, runner.store, runner.backlog)
            await tg.start(intake.run, runner)
            receipts = await intake.record(
                [
                    Event("hook", "e-1", {"go": True, "name": "ev"}),
                    Event("hook", "e-2", {"go": False}),
                    Event("hook", "e-3", "not json", error="body is not valid JSON"),
                ]
            )
            await runner.wait(receipts[0].run_ids[0])
            tg.cancel_scope.cancel()
            return receipts

    receipts = anyio.run(feed)
    listed = cued(config, "events", "--data")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert lines["e-1"].split()[2] == "matched"
    assert receipts[0].run_ids[0] in lines["e-1"]
    assert '"name": "ev"' in lines["e-1"]
    assert lines["e-2"].split()[2] == "unmatched"
    assert "invalid" in lines["e-3"]
    assert "body is not valid JSON" in lines["e-3"]
    shown = cued(config, "show", receipts[0].run_ids[0])
    assert "event     e-1" in shown.stdout


async def test_pause_and_resume_a_pipeline_with_or_without_a_daemon(tmp_path):
    config = write_config(tmp_path)
    state = tmp_path / "state.db"
    # no daemon: recorded in the state file, which the daemon reads when it starts
    paused = cued(config, "pause", "hello")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout == "pipeline hello: paused (new runs wait until `cued resume`)\n"
    unknown = cued(config, "pause", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("cued: error: no pipeline 'nope' (known: broken, hello)")
    assert "Traceback" not in unknown.stderr
    # triggered here while paused: recorded, and said to wait (not run, not a failure)
    here = cued(config, "trigger", "hello")
    assert here.returncode == 0, here.stderr
    early = here.stdout.split()[1].rstrip(":")
    assert here.stdout == (
        f"run {early}: queued: pipeline 'hello' is paused, the run starts at `cued resume hello`\n"
    )
    daemon = Daemon(config, state)
    await daemon.start()
    try:
        waited = cued(config, "trigger", "hello", "--wait")
        assert waited.returncode == 0, waited.stderr
        assert "is paused, the run starts at `cued resume hello`" in waited.stdout
        started = cued(config, "trigger", "hello")
        assert started.returncode == 0, started.stderr
        run_id = started.stdout.split()[2]
        assert query(state, "SELECT state FROM runs WHERE run_id = ?", run_id) == [("queued",)]
        resumed = cued(config, "resume", "hello")
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout == "pipeline hello: resumed (3 waiting runs started)\n"
        await wait_for(
            lambda: (
                query(state, "SELECT state FROM runs WHERE run_id = ?", run_id) == [("succeeded",)]
            )
        )
        await wait_for(
            lambda: (
                query(state, "SELECT state FROM runs WHERE run_id = ?", early) == [("succeeded",)]
            )
        )
        # through the daemon: named by the OS user who asked
        cued(config, "pause", "hello")
        (by,) = query(state, "SELECT paused_by FROM paused_pipelines WHERE pipeline = 'hello'")
        assert by[0]
    finally:
        daemon.stop()
