"""``cued validate`` of ``wait_event`` tasks, ``sleep`` ``until`` and ``cancel_on``: each
problem with its file, line and key."""

from __future__ import annotations

from textwrap import dedent

import pytest

from cued.daemon.config import parse_config
from cued.daemon.errors import ConfigError

HEAD = """\
[sources.payments]
kind = "webhook"
path = "/p"

[pipelines.checkout]
inputs = { order_id = "" }
"""

WAIT = """
[pipelines.checkout.tasks.pay]
kind = "wait_event"
source = "payments"
match = "event.data.order_id == inputs.order_id"
lookback = "10m"
timeout = "1h"
on_timeout = "succeed"
"""


def _problem(text: str):
    with pytest.raises(ConfigError) as info:
        parse_config(dedent(text), file="config.toml")
    (found,) = info.value.problems
    return found


def test_a_valid_wait_sleep_and_cancel_on_pass():
    text = HEAD.replace(
        'inputs = { order_id = "" }',
        'inputs = { order_id = "" }\ncancel_on = [{ source = "payments", '
        'when = "event.data.status == \'void\'", match = "event.data.id == run.inputs.order_id" }]',
    )
    config = parse_config(
        text
        + WAIT
        + """
[pipelines.checkout.tasks.later]
kind = "sleep"
needs = ["pay"]
until = "{{ tasks.pay.output.event.received_at | add_duration('1d') }}"
"""
    )
    (cancel,) = config.pipelines["checkout"].cancel_on
    assert (cancel.source, cancel.when) == ("payments", "event.data.status == 'void'")


@pytest.mark.parametrize(
    ("change", "line", "path", "words"),
    [
        pytest.param(('source = "payments"', 'source = "paymants"'), 10, "source", ["'paymants'", "did you mean 'payments'"], id="unknown-source"),
        pytest.param(("event.data.order_id", "event.dta.order_id"), 11, "match", ["event.dta"], id="unknown-event-field"),
        pytest.param(("inputs.order_id\"", "inputs.order\""), 11, "match", ["input 'order'"], id="undeclared-input"),
        pytest.param(("== inputs.order_id", "== (("), 11, "match", ["does not parse"], id="does-not-parse"),
        pytest.param(("== inputs.order_id", "== secrets.key"), 11, "match", ["'secrets'"], id="unknown-name"),
        pytest.param(('"event.data.order_id == inputs.order_id"', '"{{ inputs.order_id }}"'), 11, "match", ["not a template"], id="a-template"),
        pytest.param(('lookback = "10m"', 'lookback = "ten"'), 12, "lookback", ["not a duration"], id="lookback"),
        pytest.param(('timeout = "1h"', 'timeout = "1x"'), 13, "timeout", ["not a duration"], id="timeout"),
        pytest.param(('"succeed"', '"maybe"'), 14, "on_timeout", ["'fail' or 'succeed'"], id="on-timeout"),
    ],
)  # fmt: skip
def test_each_problem_of_a_wait_names_its_line(change, line, path, words):
    problem = _problem(HEAD + WAIT.replace(*change))
    assert (problem.line, problem.path) == (line, f"pipelines.checkout.tasks.pay.{path}"), problem
    for word in words:
        assert word in problem.message, problem


@pytest.mark.parametrize(
    ("until", "words"),
    [
        pytest.param('"tomorrow"', ["'tomorrow' is not a time"], id="not-a-time"),
        pytest.param("-5", ["out of range", "not a time"], id="before-1970"),
    ],
)
def test_a_sleep_until_what_is_not_a_time_names_its_line(until, words):
    problem = _problem(
        HEAD + f'\n[pipelines.checkout.tasks.later]\nkind = "sleep"\nuntil = {until}\n'
    )
    assert (problem.line, problem.path) == (10, "pipelines.checkout.tasks.later.until"), problem
    assert any(word in problem.message for word in words), problem


@pytest.mark.parametrize(
    ("entry", "key", "words"),
    [
        pytest.param('{ source = "nope" }', "source", ["unknown source 'nope'"], id="source"),
        pytest.param('{ source = "payments", when = "run.id == 1" }', "when", ["'run'"], id="when-reads-run"),
        pytest.param('{ source = "payments", match = "run.state == 1" }', "match", ["run.state"], id="match-run-field"),
        pytest.param('{ source = "payments", match = "event.data.x == ((" }', "match", ["does not parse"], id="match-parse"),
        pytest.param('{ source = "payments", wen = "x" }', "wen", ["unknown key 'wen'"], id="typo"),
    ],
)  # fmt: skip
def test_each_problem_of_a_cancel_on_names_its_line(entry, key, words):
    text = HEAD + f"cancel_on = [{entry}]\n" + WAIT
    problem = _problem(text)
    assert (problem.line, problem.path) == (7, f"pipelines.checkout.cancel_on.0.{key}"), problem
    for word in words:
        assert word in problem.message, problem
