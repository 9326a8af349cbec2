"""Alerts: the right people hear at once when a task fails for good, by webhook, e-mail or
command, from a daemon in the test's own loop; a failing channel never blocks runs or the
other channels."""

from __future__ import annotations

import json
import os

import anyio
import pytest

from cued.daemon.runtime.alerts import message_id
from tests.support.alerts import PIPELINES, Mailbox, outbox
from tests.support.daemon import wait_for
from tests.support.http_server import serve_app
from tests.support.raw_http import free_port
from tests.support.running import daemon_running, wait_finished
from tests.support.webhook_receiver import Receiver

#: ``next_at`` of an alert that is no longer tried
NEVER = 253402300799.0


async def test_webhook_formats_and_rules(make_config, tmp_path):
    """json, slack, teams and a body template; task_failed once for a task that failed for
    good (not for the attempt that was retried), run_failed, run_succeeded, and a pipeline
    filter."""
    receiver = Receiver()
    async with serve_app(receiver.app) as url:
        config = make_config(
            PIPELINES
            + """
[alerts.json]
kind = "webhook"
url = "$URL/json"

[alerts.slack]
kind = "webhook"
url = "$URL/slack"
format = "slack"

[alerts.teams]
kind = "webhook"
url = "$URL/teams"
format = "teams"
headers = { X-Team = "ops" }

[alerts.custom]
kind = "webhook"
url = "$URL/custom"
on = ["task_failed"]
body = '''{"id": {{ alert.alert_id | tojson }}, "task": {{ alert.task | tojson }}, "error": {{ alert.error | tojson }}}'''

[alerts.success]
kind = "webhook"
url = "$URL/success"
on = ["run_succeeded"]
pipelines = ["good"]
""".replace("$URL", url)
        )
        with anyio.fail_after(15):
            async with daemon_running(config) as info:
                runs = {
                    p: (await info.runner.start_run(p)).run_id for p in ("bad", "good", "other")
                }
                rows = await wait_finished(info, list(runs.values()))
                assert [r.state for r in rows] == ["failed", "succeeded", "succeeded"]
                # every alert committed with the change it reports, before the run ended
                bad, good = runs["bad"], runs["good"]
                expected = {
                    *(f"{c}:task_failed:{bad}:flaky:2" for c in ("json", "slack", "teams")),
                    *(f"{c}:run_failed:{bad}" for c in ("json", "slack", "teams")),
                    f"custom:task_failed:{bad}:flaky:2",
                    f"success:run_succeeded:{good}",
                }
                assert set(outbox(tmp_path / "state.db")) == expected
                await receiver.until(lambda: len(receiver.hits) >= len(expected))

    assert sorted(h.headers["idempotency-key"] for h in receiver.hits) == sorted(expected)
    assert all(h.status == 200 for h in receiver.hits)
    assert all(h.headers["content-type"] == "application/json" for h in receiver.hits)

    by_rule = {b["rule"]: b for b in receiver.bodies("/json")}
    task = by_rule["task_failed"]
    assert task["alert_id"] == f"json:task_failed:{bad}:flaky:2"
    assert (task["pipeline"], task["run_id"], task["task"], task["attempt"]) == (
        "bad",
        bad,
        "flaky",
        2,
    )
    assert task["error"] == "the function failed"
    assert task["message"] == (
        f"Task 'flaky' failed for good (attempt 2) in run {bad} of pipeline 'bad': the function failed"
    )
    assert by_rule["run_failed"]["error"] == "flaky: the function failed"
    (json_hit,) = [h for h in receiver.hits if h.body == task]
    assert json_hit.headers["idempotency-key"] == task["alert_id"]

    slack = sorted(b["text"] for b in receiver.bodies("/slack"))
    assert slack[0].startswith(f"Task 'flaky' failed for good (attempt 2) in run {bad}")
    assert f"(alert slack:task_failed:{bad}:flaky:2)" in slack[0]
    assert slack[1].startswith(
        f"The run {bad} of pipeline 'bad' failed: flaky: the function failed"
    )

    teams = [h for h in receiver.hits if h.path == "/teams"]
    assert {h.headers["x-team"] for h in teams} == {"ops"}
    card = next(h.body for h in teams if "task_failed" in h.headers["idempotency-key"])
    assert card["@type"] == "MessageCard"
    assert card["summary"].startswith("Task 'flaky' failed for good")
    assert "the function failed" in card["text"]
    facts = {f["name"]: f["value"] for f in card["sections"][0]["facts"]}
    assert facts["Alert id"] == f"teams:task_failed:{bad}:flaky:2"
    assert (facts["Pipeline"], facts["Task"]) == ("bad", "flaky")

    assert receiver.bodies("/custom") == [
        {"id": f"custom:task_failed:{bad}:flaky:2", "task": "flaky", "error": "the function failed"}
    ]
    (success,) = receiver.bodies("/success")
    assert (success["rule"], success["pipeline"], success["run_id"]) == (
        "run_succeeded",
        "good",
        good,
    )


async def test_a_failing_or_hanging_channel_blocks_neither_runs_nor_other_channels(
    make_config, tmp_path
):
    """The target answers 500 until it recovers: runs finish meanwhile, the alert is tried
    again with backoff and arrives once; a channel that never answers times out without
    holding up the others."""
    receiver = Receiver(status={"/flaky": 500, "/slow": "hang"})
    state = tmp_path / "state.db"
    async with serve_app(receiver.app) as url:
        config = make_config(
            PIPELINES
            + """
[alerts.flaky]
kind = "webhook"
url = "$URL/flaky"
on = ["run_failed"]
backoff = "50ms"
backoff_max = "200ms"

[alerts.slow]
kind = "webhook"
url = "$URL/slow"
on = ["run_failed"]
timeout = "300ms"

[alerts.fine]
kind = "webhook"
url = "$URL/fine"
on = ["run_failed"]
""".replace("$URL", url)
        )
        try:
            with anyio.fail_after(15):
                async with daemon_running(config) as info:
                    runs = [(await info.runner.start_run("bad")).run_id for _ in range(3)]
                    rows = await wait_finished(info, runs)
                    assert {r.state for r in rows} == {"failed"}
                    await receiver.until(lambda: len(receiver.delivered("/fine")) == 3)
                    assert receiver.hanging >= 1, "the slow channel was not tried at all"
                    await receiver.until(
                        lambda: (
                            len(receiver.tries("/flaky")) == 3
                            and min(receiver.tries("/flaky").values()) >= 3
                        )
                    )
                    assert not receiver.delivered("/flaky")
                    receiver.status["/flaky"] = 200
                    await receiver.until(lambda: len(receiver.delivered("/flaky")) == 3)
                    # sent_at is recorded after the answer, and nothing signals it
                    await wait_for(
                        lambda: all(
                            r["sent_at"] for r in outbox(state).values() if r["channel"] == "flaky"
                        )
                    )
                    await wait_for(
                        lambda: (
                            [
                                r["attempts"] >= 1
                                for r in outbox(state).values()
                                if r["channel"] == "slow"
                            ]
                            == [True] * 3
                        )
                    )
        finally:
            receiver.release.set()

    assert set(receiver.delivered("/flaky").values()) == {1}, "an alert arrived twice"
    after = outbox(state)
    for alert_id, count in receiver.tries("/flaky").items():
        assert after[alert_id]["attempts"] == count >= 4
    slow = [r for r in after.values() if r["channel"] == "slow"]
    assert all("no answer within 0.3s" in r["last_error"] for r in slow if r["sent_at"] is None)


async def test_email_alert_reaches_a_real_smtp_server(make_config, tmp_path):
    mailbox = Mailbox(free_port())
    await mailbox.start()
    try:
        config = make_config(
            PIPELINES
            + f"""
[alerts.mail]
kind = "email"
host = "127.0.0.1"
port = {mailbox.port}
starttls = false
from = "cued@example.com"
to = ["oncall@example.com", "lead@example.com"]
on = ["task_failed"]
"""
        )
        with anyio.fail_after(15):
            async with daemon_running(config) as info:
                run_id = (await info.runner.start_run("bad", {})).run_id
                await wait_finished(info, [run_id])
                await mailbox.until(1)
    finally:
        await mailbox.stop()

    ((sender, to, message),) = mailbox.messages
    alert_id = f"mail:task_failed:{run_id}:flaky:2"
    assert sender == "cued@example.com"
    assert to == ["oncall@example.com", "lead@example.com"]
    assert message["Subject"] == f"[cued] task_failed: bad {run_id}"
    assert message["Message-ID"] == message_id(alert_id)
    assert message["X-Cued-Alert-Id"] == alert_id
    body = message.get_content()
    assert "Task 'flaky' failed for good" in body
    assert "Task:      flaky (attempt 2)" in body
    assert "the function failed" in body
    assert alert_id in body


async def test_command_alert_gets_the_alert_in_its_environment(make_config, tmp_path):
    """A command that exits 0 delivers; one that exits non-zero fails (its stderr is the
    error); one that outlives its timeout is killed."""
    (tmp_path / "record.sh").write_text(
        'printf "%s\\n%s\\n" "$CUED_ALERT_ID" "$CUED_ALERT_JSON" > "$1.tmp" && mv "$1.tmp" "$1"\n'
    )
    config = make_config(
        PIPELINES
        + """
[alerts.script]
kind = "command"
argv = ["sh", "record.sh", "alert-{{ alert.pipeline }}.txt"]
on = ["run_failed"]

[alerts.broken]
kind = "command"
argv = ["sh", "-c", "echo oops >&2; exit 3"]
on = ["run_failed"]
max_attempts = 2
backoff = "10ms"

[alerts.stuck]
kind = "command"
argv = ["sh", "-c", "echo $$ > stuck.pid; exec sleep 30"]
on = ["run_failed"]
max_attempts = 1
timeout = "300ms"
"""
    )
    state = tmp_path / "state.db"
    with anyio.fail_after(15):
        async with daemon_running(config) as info:
            run_id = (await info.runner.start_run("bad")).run_id
            await wait_finished(info, [run_id])
            written = tmp_path / "alert-bad.txt"
            # effects of other processes (the commands), and of the sender's commits
            await wait_for(written.exists)
            await wait_for(
                lambda: all(r["sent_at"] or r["next_at"] == NEVER for r in outbox(state).values())
            )

    alert_id, payload = written.read_text().splitlines()
    assert alert_id == f"script:run_failed:{run_id}"
    alert = json.loads(payload)
    assert (alert["alert_id"], alert["rule"], alert["pipeline"]) == (alert_id, "run_failed", "bad")
    assert alert["error"] == "flaky: the function failed"

    rows = outbox(state)
    assert rows[alert_id]["sent_at"] is not None
    broken = rows[f"broken:run_failed:{run_id}"]
    assert (broken["sent_at"], broken["attempts"], broken["next_at"]) == (None, 2, NEVER)
    assert broken["last_error"] == "program 'sh' exited with code 3: oops"
    stuck = rows[f"stuck:run_failed:{run_id}"]
    assert (stuck["sent_at"], stuck["attempts"]) == (None, 1)
    assert stuck["last_error"] == "no answer within 0.3s"
    pid = int((tmp_path / "stuck.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
