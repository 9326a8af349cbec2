"""Alerts survive a crash: killed with ``kill -9`` before an alert was delivered, the daemon
sends it once after its restart (outbox), and a resend carries the same id."""

from __future__ import annotations

import anyio

from cued.daemon.runtime.alerts import message_id
from tests.support.alerts import Mailbox, outbox
from tests.support.daemon import Daemon, cued, query, wait_for
from tests.support.http_server import serve_app
from tests.support.raw_http import free_port
from tests.support.webhook_receiver import Receiver

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
