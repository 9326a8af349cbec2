"""A trigger's ``key``, ``concurrency`` and ``priority``: checked by ``cued validate`` with
file, line and key; rendered on each event (a priority out of range is the event's error)."""

from __future__ import annotations

from textwrap import dedent

import pytest

from cued.daemon.config import parse_config
from cued.daemon.core.triggers import match
from cued.daemon.errors import ConfigError
from cued.daemon.sdk.sources import Event

BASE = """\
[sources.orders]
kind = "webhook"
path = "/orders"

[pipelines.sync.tasks.t]
kind = "shell"
argv = ["true"]

[[triggers]]
source = "orders"
pipeline = "sync"
"""


@pytest.mark.parametrize(
    ("extra", "line", "path", "words"),
    [
        pytest.param(
            "concurrency = { limit = 0 }", 12, "triggers.0.concurrency.limit", ["greater than"],
            id="limit-0",
        ),
        pytest.param(
            "concurrency = { limt = 1 }", 12, "triggers.0.concurrency.limt", ["unknown key"],
            id="limit-typo",
        ),
        pytest.param("priority = 12", 12, "triggers.0.priority", ["9"], id="priority-12"),
        pytest.param(
            'priority = "high"', 12, "triggers.0.priority", ["from 0 to 9", "'high'"],
            id="priority-word",
        ),
        pytest.param(
            'priority = "{{ 9 if event.data.vip else }}"', 12, "triggers.0.priority",
            ["does not parse"], id="priority-template-syntax",
        ),
        pytest.param(
            'key = "{{ inputs.customer }}"', 12, "triggers.0.key", ["use event"],
            id="key-refers-to-nothing",
        ),
    ],
)  # fmt: skip
def test_each_flow_setting_is_checked_with_file_line_and_key(extra, line, path, words):
    with pytest.raises(ConfigError) as info:
        parse_config(dedent(BASE) + extra + "\n", file="config.toml")
    (problem,) = [p for p in info.value.problems if p.path == path]
    assert (problem.file, problem.line) == ("config.toml", line), problem
    for word in words:
        assert word in problem.message, problem


def _event(data: dict[str, object]) -> Event:
    return Event(source="orders", data=data, event_id="e-1")


def test_a_trigger_renders_its_key_and_priority_on_each_event():
    config = parse_config(
        BASE
        + 'key = "{{ event.data.customer }}"\n'
        + "concurrency = { limit = 2 }\n"
        + 'priority = "{{ 9 if event.data.vip else 3 }}"\n',
        file="config.toml",
    )
    (vip,), _ = match(config.triggers, _event({"customer": "c-1", "vip": True}))
    (plain,), _ = match(config.triggers, _event({"customer": "c-2", "vip": False}))
    assert (vip.key, vip.key_limit, vip.priority, vip.error) == ("c-1", 2, 9, None)
    assert (plain.key, plain.priority) == ("c-2", 3)
    assert vip.flow() == {"flow_key": "c-1", "key_limit": 2, "priority": 9}


def test_without_a_key_a_limited_trigger_is_one_key_and_without_either_there_is_none():
    limited = parse_config(BASE + "concurrency = { limit = 1 }\n", file="config.toml")
    (m,), _ = match(limited.triggers, _event({}))
    assert (m.key, m.key_limit, m.priority) == ("orders->sync", 1, 5)
    assert m.flow() == {"flow_key": "orders->sync", "key_limit": 1}  # the default priority
    (m,), _ = match(parse_config(BASE, file="config.toml").triggers, _event({}))
    assert (m.key, m.key_limit, m.priority) == (None, None, 5)
    assert m.flow() == {}  # a run's defaults: its row is kept as made


@pytest.mark.parametrize("rendered", ["12", "-1", "nine", "", "5.5"])
def test_a_priority_the_event_makes_out_of_range_is_the_events_error(rendered):
    config = parse_config(BASE + 'priority = "{{ event.data.p }}"\n', file="config.toml")
    (m,), _ = match(config.triggers, _event({"p": rendered}))
    assert m.error is not None
    assert m.error.startswith("trigger 'orders->sync': priority must be a whole number")
    assert repr(rendered) in m.error


def test_a_key_longer_than_the_bound_is_the_events_error():
    config = parse_config(
        BASE + 'key = "{{ event.data.k }}"\nconcurrency = { limit = 1 }\n', file="config.toml"
    )
    (m,), _ = match(config.triggers, _event({"k": "x" * 10_000}))
    assert m.error is not None
    assert "longer than 512 characters" in m.error


CALLS = """\
[pipelines.checkout]
inputs = { order_id = 0 }
[pipelines.checkout.tasks.ship]
kind = "pipeline"
pipeline = "shipping"
inputs = { order = "{{ inputs.order_id }}" }

[pipelines.shipping]
inputs = { order = 0 }
[pipelines.shipping.tasks.label]
kind = "shell"
argv = ["true"]
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "path", "words"),
    [
        pytest.param(
            'pipeline = "shipping"', 'pipeline = "shiping"', 5,
            "pipelines.checkout.tasks.ship.pipeline",
            ["unknown pipeline 'shiping'", "did you mean 'shipping'?"], id="unknown-pipeline",
        ),
        pytest.param(
            'inputs = { order = "{{', 'inputs = { parcel = "{{', 6,
            "pipelines.checkout.tasks.ship.inputs.parcel",
            ["pipeline 'shipping' has no input 'parcel' (declared: order)"], id="unknown-input",
        ),
        pytest.param(
            'argv = ["true"]',
            'argv = ["true"]\n[pipelines.shipping.tasks.back]\nkind = "pipeline"\n'
            'pipeline = "checkout"',
            5, "pipelines.checkout.tasks.ship.pipeline",
            ["pipelines run each other in a cycle: checkout -> shipping -> checkout"],
            id="cycle",
        ),
        pytest.param(
            'pipeline = "shipping"', 'pipeline = "checkout"', 5,
            "pipelines.checkout.tasks.ship.pipeline",
            ["cycle: checkout -> checkout"], id="itself",
        ),
    ],
)  # fmt: skip
def test_a_pipeline_task_names_a_pipeline_that_exists_takes_its_inputs_and_makes_no_cycle(
    old, new, line, path, words
):
    parse_config(CALLS, file="config.toml")  # as it is, it is valid
    with pytest.raises(ConfigError) as info:
        parse_config(CALLS.replace(old, new, 1), file="config.toml")
    (problem,) = [p for p in info.value.problems if p.path == path]
    assert (problem.file, problem.line) == ("config.toml", line), problem
    for word in words:
        assert word in problem.message, problem
