"""Alerts: which channels hear of what, the line and the e-mail each rule renders, the
backoff between tries, and what the config of a channel may not get wrong."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import pytest

from cued.daemon.config import parse_config
from cued.daemon.core import templates
from cued.daemon.core.backoff import backoff_s
from cued.daemon.errors import ConfigError
from cued.daemon.runtime.alerts import Alerts, message_id
from tests.support.alerts import PIPELINES

if TYPE_CHECKING:
    import httpx

    from cued.daemon.store import Store

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
    # what a run asks before it builds an alert's payload: some channel takes the rule
    assert alerts.wants("run_succeeded")
    assert alerts.wants("task_failed")
    assert not alerts.wants("approval_waiting")
    # a reload's channels: from then on
    alerts.configure({"good_only": config.alerts["good_only"]}, tmp_path)
    assert alerts.wants("run_failed")
    assert not alerts.wants("run_succeeded")


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
