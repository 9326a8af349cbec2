"""Alerts: the right people hear at once when a task fails for good; an alert survives a
crash (outbox), a resend carries the same id, and a failing channel never blocks runs."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import socket
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest
from aiosmtpd.controller import Controller

from cued.daemon.config import parse_config
from cued.daemon.core import templates
from cued.daemon.core.backoff import backoff_s
from cued.daemon.errors import ConfigError
from cued.daemon.runtime.alerts import Alerts, message_id
from tests.support.daemon import Daemon, cued, query, wait_for
from tests.support.http_server import serve_app
from tests.support.running import daemon_running, wait_finished
from tests.support.webhook_receiver import Receiver

if TYPE_CHECKING:
    from email.message import EmailMessage

    import httpx

    from cued.daemon.store import Store

#: ``next_at`` of an alert that is no longer tried
NEVER = 253402300799.0


# -- receivers ---------------------------------------------------------------------------


class Mailbox:
    """A real SMTP server on 127.0.0.1 (aiosmtpd's Controller, in a thread of its own)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=port)
        self._loop = asyncio.get_running_loop()
        self._changed = anyio.Event()

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd calls it so
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        # the server's own thread: hand the message to the test's loop without waiting
        self._loop.call_soon_threadsafe(
            self._add, envelope.mail_from, list(envelope.rcpt_tos), message
        )
        return "250 OK"

    def _add(self, sender: str, to: list[str], message: EmailMessage) -> None:
        self.messages.append((sender, to, message))
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, count: int) -> None:
        while len(self.messages) < count:
            await self._changed.wait()

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self.controller.start)

    async def stop(self) -> None:
        await anyio.to_thread.run_sync(self.controller.stop)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def outbox(state) -> dict[str, dict[str, Any]]:
    """The outbox rows in the state file, by alert id."""
    rows = query(
        state, "SELECT alert_id, channel, rule, sent_at, attempts, last_error, next_at FROM outbox"
    )
    names = ("channel", "rule", "sent_at", "attempts", "last_error", "next_at")
    return {r[0]: dict(zip(names, r[1:], strict=True)) for r in rows}


PIPELINES = """
[http]
listen = "127.0.0.1:0"

[daemon]
state = "state.db"

[pipelines.bad.tasks.flaky]
kind = "python"
function = "tests.support.pyfuncs:fails"
retries = 1
retry_backoff = "10ms"

[pipelines.good.tasks.ok]
kind = "python"
function = "tests.support.pyfuncs:add"
args = { a = 1, b = 2 }

[pipelines.other.tasks.ok]
kind = "python"
function = "tests.support.pyfuncs:add"
args = { a = 1, b = 2 }
"""


# -- rows: which channels hear of what -----------------------------------------------------


def test_rows_one_per_channel_whose_rules_and_pipelines_match(make_config, tmp_path):
    config = make_config(
        PIPELINES
        + """
[alerts.all]
kind = "webhook"
url = "http://127.0.0.1:9/"
on = ["run_failed", "task_failed", "run_succeeded"]

[alerts.good_only]
kind = "command"
argv = ["true"]
on = ["run_failed"]
pipelines = ["good"]

[alerts.defaults]
kind = "webhook"
url = "env:HOOK_URL"
"""
    )
    alerts = Alerts(config.alerts, cast("Store", None), cast("httpx.AsyncClient", None), tmp_path)
    payload = {"rule": "run_failed", "run_id": "r1", "pipeline": "bad", "error": "t: boom"}

    rows = alerts.rows("run_failed", "run_failed:r1", payload)
    assert [r.alert_id for r in rows] == ["all:run_failed:r1", "defaults:run_failed:r1"]
    row = rows[0]
    assert (row.channel, row.rule, row.attempts, row.sent_at) == ("all", "run_failed", 0, None)
    assert row.next_at == row.created_at, "due at once"
    assert row.payload["alert_id"] == "all:run_failed:r1"
    assert row.payload["channel"] == "all"
    assert row.payload["message"] == "The run r1 of pipeline 'bad' failed: t: boom"
    assert row.payload["created_at"].startswith("20")
    assert row.payload["error"] == "t: boom"

    good = alerts.rows("run_failed", "run_failed:r2", {**payload, "pipeline": "good"})
    assert [r.channel for r in good] == ["all", "good_only", "defaults"]
    assert [r.channel for r in alerts.rows("run_succeeded", "k", payload)] == ["all"]
    assert alerts.rows("approval_waiting", "k", payload) == []


RUNNER_PAYLOADS = {
    "task_failed": {"task": "load", "attempt": 3, "error": "exit 1:\nno space"},
    "run_failed": {"error": "load: exit 1"},
    "run_succeeded": {"error": None},
    "deadline_missed": {"task": "load", "deadline_at": 1.0, "message": "task 'load' late"},
    "approval_waiting": {"task": "gate", "attempt": 1, "message": "Ship\nit?"},
}


@pytest.mark.parametrize("rule", list(RUNNER_PAYLOADS))
def test_every_rule_renders_a_line_and_the_default_email(make_config, tmp_path, rule):
    config = make_config(
        PIPELINES
        + f"""
[alerts.mail]
kind = "email"
host = "h"
from = "cued@example.com"
to = ["oncall@example.com"]
on = ["{rule}"]
"""
    )
    alerts = Alerts(config.alerts, cast("Store", None), cast("httpx.AsyncClient", None), tmp_path)
    # as the runner builds them
    base = {"rule": rule, "run_id": "r1", "pipeline": "etl", "event_id": None, "inputs": {"d": 1}}
    (row,) = alerts.rows(rule, f"{rule}:r1", {**base, **RUNNER_PAYLOADS[rule]})
    line = row.payload["message"]
    assert "\n" not in line
    assert "r1" in line
    assert "'etl'" in line
    mail = config.alerts["mail"]
    subject = templates.render(mail.subject, {"alert": row.payload})
    assert subject == f"[cued] {rule}: etl r1"
    body = templates.render(mail.body, {"alert": row.payload})
    assert body.startswith(line + "\n")
    assert f"Alert id:  mail:{rule}:r1" in body
    assert 'Inputs:    {"d": 1}' in body
    if rule == "approval_waiting":
        assert line.endswith("waits for approval: Ship it? (cued approve r1 gate)")
        assert row.payload["detail"] == "Ship\nit?"
        assert "Task:      gate (attempt 1)" in body
    if rule == "deadline_missed":
        assert line == "Task 'load' of run r1 of pipeline 'etl' missed its deadline"
        assert "Task:      load\n" in body
    if rule == "task_failed":
        assert line.endswith("(attempt 3) in run r1 of pipeline 'etl': exit 1: no space")
        assert "Error:\nexit 1:\nno space\n" in body


def test_backoff_doubles_with_jitter_up_to_its_cap(make_config):
    config = make_config(
        PIPELINES
        + '[alerts.a]\nkind = "command"\nargv = ["true"]\nbackoff = "1s"\nbackoff_max = "5m"\n'
    )
    channel = config.alerts["a"]

    def delay(attempt: int, rand: float) -> float:
        return backoff_s(attempt, first_s=channel.backoff, max_s=channel.backoff_max, rand=rand)

    assert [delay(n, 1.0) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert delay(3, 0.0) == 2.0
    assert delay(50, 1.0) == 300.0


def test_message_id_is_the_alert_id_made_valid():
    assert message_id("ops:task_failed:01abc:fan[3]:2") == (
        "<ops%3Atask_failed%3A01abc%3Afan%5B3%5D%3A2@cued>"
    )


# -- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "path", "words"),
    [
        pytest.param(
            '[alerts.ops]\nkind = "pager"\n',
            2,
            "alerts.ops.kind",
            ["unknown alert kind 'pager'", "command, email, webhook"],
            id="unknown-kind",
        ),
        pytest.param(
            '[alerts.ops]\nkind = "webhook"\nurl = "http://h/"\non = ["run_failed", "run_faild"]\n',
            4,
            "alerts.ops.on.1",
            ["'run_faild'", "run_failed", "task_failed"],
            id="unknown-rule",
        ),
        pytest.param(
            '\n[alerts.ops]\nkind = "webhook"\nformat = "slack"\n',
            2,
            "alerts.ops.url",
            ["required key is missing"],
            id="webhook-without-url",
        ),
        pytest.param(
            '[alerts.ops]\nkind = "webhook"\nurl = "http://h/"\npipelines = ["etl"]\n',
            4,
            "alerts.ops.pipelines",
            ["unknown pipeline 'etl'"],
            id="unknown-pipeline",
        ),
        pytest.param(
            '[alerts.ops]\nkind = "webhook"\nurl = "ftp://h/"\n',
            3,
            "alerts.ops.url",
            ["http(s) URL"],
            id="not-a-url",
        ),
        pytest.param(
            '[alerts.ops]\nkind = "email"\nhost = "h"\nfrom = "a@b"\nto = ["c@d"]\nsubjet = "x"\n',
            6,
            "alerts.ops.subjet",
            ["did you mean 'subject'"],
            id="email-typo",
        ),
        pytest.param(
            '[alerts.ops]\nkind = "command"\nargv = ["notify", "{{ inputs.day }}"]\n',
            3,
            "alerts.ops.argv.1",
            ["'inputs'", "use alert"],
            id="template-outside-alert",
        ),
    ],
)
def test_config_problems_name_line_key_and_what_is_wrong(text, line, path, words):
    config = '[pipelines.p.tasks.t]\nkind = "python"\nfunction = "m:f"\n\n'
    offset = config.count("\n")
    with pytest.raises(ConfigError) as info:
        parse_config(config + text, file="config.toml")
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.path) == ("config.toml", line + offset, path)
    for word in words:
        assert word in problem.message, problem


# -- end to end, in process ------------------------------------------------------------------


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


# -- kill -9 -----------------------------------------------------------------------------------

CRASH = """
[http]
listen = "127.0.0.1:0"

[daemon]
state = "state.db"

[pipelines.bad.tasks.boom]
kind = "shell"
command = "echo boom >&2; exit 1"
"""


async def test_kill_9_before_a_webhook_alert_is_delivered_then_restart_delivers_it_once(tmp_path):
    receiver = Receiver(status={"/ops": 503})
    config, state = tmp_path / "config.toml", tmp_path / "state.db"
    async with serve_app(receiver.app) as url:
        config.write_text(
            CRASH
            + f"""
[alerts.ops]
kind = "webhook"
url = "{url}/ops"
on = ["run_failed"]
backoff = "100ms"
backoff_max = "300ms"
"""
        )
        daemon = Daemon(config, state)
        await daemon.start()
        try:
            triggered = cued(config, "trigger", "bad")
            assert triggered.returncode == 0, triggered.stderr
            run_id = triggered.stdout.split()[2]
            alert_id = f"ops:run_failed:{run_id}"
            # the failure and its alert are committed, and the target refused it
            await wait_for(lambda: outbox(state).get(alert_id, {}).get("attempts", 0) >= 1)
        finally:
            daemon.kill9()
        assert query(state, "SELECT state FROM runs WHERE run_id = ?", run_id) == [("failed",)]
        assert outbox(state)[alert_id]["sent_at"] is None
        assert not receiver.delivered("/ops")

        receiver.status["/ops"] = 200
        daemon = Daemon(config, state)
        await daemon.start()
        try:
            with anyio.fail_after(10):
                await receiver.until(lambda: bool(receiver.delivered("/ops")))
            await wait_for(lambda: outbox(state)[alert_id]["sent_at"] is not None)
        finally:
            assert daemon.stop() == 0

    assert receiver.delivered("/ops") == {alert_id: 1}
    assert set(receiver.tries("/ops")) == {alert_id}, "a resend carried another id"
    assert {h.body["alert_id"] for h in receiver.hits} == {alert_id}
    row = outbox(state)[alert_id]
    assert row["attempts"] == len(receiver.hits) >= 2
    assert row["last_error"] is None


async def test_kill_9_before_an_email_alert_is_sent_then_restart_sends_it_once(tmp_path):
    mailbox = Mailbox(free_port())  # not started: the daemon's connection is refused
    config, state = tmp_path / "config.toml", tmp_path / "state.db"
    config.write_text(
        CRASH
        + f"""
[alerts.mail]
kind = "email"
host = "127.0.0.1"
port = {mailbox.port}
starttls = false
from = "cued@example.com"
to = ["oncall@example.com"]
on = ["task_failed"]
backoff = "100ms"
backoff_max = "300ms"
"""
    )
    daemon = Daemon(config, state)
    await daemon.start()
    try:
        triggered = cued(config, "trigger", "bad")
        assert triggered.returncode == 0, triggered.stderr
        run_id = triggered.stdout.split()[2]
        alert_id = f"mail:task_failed:{run_id}:boom:1"
        await wait_for(lambda: outbox(state).get(alert_id, {}).get("attempts", 0) >= 1)
    finally:
        daemon.kill9()
    assert outbox(state)[alert_id]["sent_at"] is None

    await mailbox.start()
    try:
        daemon = Daemon(config, state)
        await daemon.start()
        try:
            with anyio.fail_after(10):
                await mailbox.until(1)
            await wait_for(lambda: outbox(state)[alert_id]["sent_at"] is not None)
        finally:
            assert daemon.stop() == 0
    finally:
        await mailbox.stop()

    ((_, to, message),) = mailbox.messages
    assert to == ["oncall@example.com"]
    assert message["Message-ID"] == message_id(alert_id)
    assert message["Subject"] == f"[cued] task_failed: bad {run_id}"
    assert "boom" in message.get_content()
