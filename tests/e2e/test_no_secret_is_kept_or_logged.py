"""A secret that a task or an alert prints is redacted where the daemon keeps it (attempts,
the alert outbox, the API) and in the log lines of a real ``cued run``."""

from __future__ import annotations

import json

import anyio
import httpx

from cued.daemon.config.secrets import REDACTED
from tests.support.daemon import Daemon, cued, query, wait_for
from tests.support.running import daemon_running, wait_finished
from tests.support.secret_values import fresh_secret

PIPELINE = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"

[auth.users.vera]
token = "vera-viewer-token"
roles = ["viewer"]

[sources.hooks]
kind = "webhook"
path = "/hooks/in"
signature = "token"
secret = "env:CUED_TEST_SECRET"

[pipelines.leak]
inputs = { x = "" }
[pipelines.leak.tasks.show]
kind = "shell"
command = 'printf "the value: %s\\n" "$X"'
env = ["X={{ inputs.x }}"]
[pipelines.leak.tasks.fail]
kind = "shell"
command = 'printf "cannot use %s\\n" "$X" >&2; exit 3'
env = ["X={{ inputs.x }}"]
[pipelines.leak.tasks.say]
kind = "python"
function = "tests.support.pyfuncs:log_text"
args = { text = "it is {{ inputs.x }}" }

[alerts.loud]
kind = "command"
argv = ["sh", "-c", "echo \\"no: $CUED_TEST_SECRET\\" >&2; exit 1"]
env = ["CUED_TEST_SECRET"]
on = ["run_failed"]
max_attempts = 1
"""


async def test_a_secret_printed_by_a_task_or_an_alert_is_redacted_where_it_is_kept(
    make_config, monkeypatch, tmp_path
) -> None:
    secret = fresh_secret()
    monkeypatch.setenv("CUED_TEST_SECRET", secret)
    async with daemon_running(make_config(PIPELINE)) as info:
        host, port = info.http_address
        base = f"http://{host}:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            row = await info.runner.start_run("leak", {"x": secret})
            await wait_finished(info, [row.run_id])
            shown = await client.get(
                f"/api/v1/runs/{row.run_id}", headers={"authorization": "Bearer vera-viewer-token"}
            )
            # given up (next_at: never) after its one try: a program of its own, and a commit
            await wait_for(
                lambda: query(tmp_path / "state.db", "SELECT 1 FROM outbox WHERE next_at > 1e11")
            )
    assert shown.status_code == 200, shown.text
    run = shown.json()
    tasks = {t["key"]: t for t in run["tasks"]}
    (show,) = tasks["show"]["attempts"]
    (fail,) = tasks["fail"]["attempts"]
    assert show["output"]["stdout"] == f"the value: {REDACTED}\n"
    assert fail["error"].endswith(f"exited with code 3:\ncannot use {REDACTED}")
    assert secret not in json.dumps([run["tasks"], run["error"]])
    # the inputs are kept as they were given: they are the caller's own data
    assert run["inputs"] == {"x": secret}
    ((alert_error,),) = query(tmp_path / "state.db", "SELECT last_error FROM outbox")
    assert alert_error == f"program 'sh' exited with code 1: no: {REDACTED}"


async def test_the_daemons_log_lines_hold_no_secret(tmp_path) -> None:
    """A real ``cued run``: its JSON log lines, a task failure quoting the secret among them."""
    secret = fresh_secret()
    config = tmp_path / "config.toml"
    (tmp_path / "hook.secret").write_text(secret)
    config.write_text(
        PIPELINE.replace('listen = "127.0.0.1:0"', 'listen = ""').replace(
            '"env:CUED_TEST_SECRET"', '"file:hook.secret"'
        )
    )
    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    try:
        with anyio.fail_after(30):
            result = await anyio.to_thread.run_sync(
                lambda: cued(config, "trigger", "leak", "-i", f"x={secret}", "--wait")
            )
    finally:
        daemon.stop()
    assert "failed" in result.stdout + result.stderr
    log = daemon.log.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    (failed,) = [line for line in lines if line["event"] == "task_failed"]
    assert failed["error"].endswith(f"cannot use {REDACTED}")
    (said,) = [line for line in lines if line["event"] == "task_says"]
    assert said["text"] == f"it is {REDACTED}"
    assert secret not in log
    assert secret not in result.stdout + result.stderr
    (error,) = query(tmp_path / "state.db", "SELECT error FROM attempts WHERE error IS NOT NULL")
    assert secret not in error[0]
