"""Triggers: what `cued validate` says of them, and which events they fire on (pure)."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.config import parse_config
from cued.daemon.core.triggers import match
from cued.daemon.errors import ConfigError
from cued.daemon.sdk.sources import Event

BASE = """\
[sources.orders]
kind = "webhook"
path = "/orders"

[pipelines.etl]
inputs = { order_id = 0, note = "" }
[pipelines.etl.tasks.t]
kind = "sleep"
produces = ["orders_table"]

"""


def problems(extra: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + textwrap.dedent(extra), file="config.toml")
    return [(p.line, p.path, p.message) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("extra", "line", "path", "words"),
    [
        pytest.param(
            '[[triggers]]\nsource = "ordrs"\npipeline = "etl"\n',
            12,
            "triggers.0.source",
            "unknown source 'ordrs'; did you mean 'orders'?",
            id="unknown-source",
        ),
        pytest.param(
            '[[triggers]]\nsource = "orders"\npipeline = "elt"\n',
            13,
            "triggers.0.pipeline",
            "unknown pipeline 'elt'; did you mean 'etl'?",
            id="unknown-pipeline",
        ),
        pytest.param(
            '[[triggers]]\nsource = "orders"\npipeline = "etl"\ninputs = { day = "x" }\n',
            14,
            "triggers.0.inputs.day",
            "pipeline 'etl' has no input 'day' (declared: note, order_id)",
            id="undeclared-input",
        ),
        pytest.param(
            '[[triggers]]\nsource = "orders"\npipeline = "etl"\nwhen = "event.data.total >"\n',
            14,
            "triggers.0.when",
            "does not parse",
            id="when-syntax",
        ),
        pytest.param(
            '[[triggers]]\nsource = "orders"\npipeline = "etl"\nwhen = "inputs.x == 1"\n',
            14,
            "triggers.0.when",
            "refers to 'inputs', which does not exist here (use event)",
            id="when-not-event",
        ),
        pytest.param(
            '[[triggers]]\nsource = "orders"\npipeline = "etl"\ninputs = { note = "{{ event.body }}" }\n',
            14,
            "triggers.0.inputs",
            "refers to event.body, which does not exist",
            id="event-field",
        ),
        pytest.param(
            '[[triggers]]\nsource = "asset:nope"\npipeline = "etl"\n',
            12,
            "triggers.0.source",
            "no task produces asset 'nope' (produced: orders_table)",
            id="unknown-asset",
        ),
        pytest.param(
            '[[triggers]]\nsource = "orders"\npipeline = "etl"\ndedupe_window = "forever"\n',
            14,
            "triggers.0.dedupe_window",
            "is not a duration",
            id="bad-window",
        ),
        pytest.param(
            '[[triggers]]\nsource = "orders"\n',
            11,
            "triggers.0.pipeline",
            "required key is missing",
            id="no-pipeline",
        ),
        pytest.param(
            '[sources.x]\nkind = "ftp"\n',
            12,
            "sources.x.kind",
            "unknown source kind 'ftp' (known: amqp, files, kafka, mqtt, nats, postgres, "
            "redis_stream, schedule, webhook)",
            id="unknown-source-kind",
        ),
        pytest.param(
            '[sources.x]\nkind = "webhook"\npath = "/x"\nmethds = ["PUT"]\n',
            14,
            "sources.x.methds",
            "unknown key 'methds'; did you mean 'methods'?",
            id="source-key-typo",
        ),
        pytest.param(
            '[sources.x]\nkind = "webhook"\npath = "/x"\nsignature = "github"\n',
            11,
            "sources.x",
            "signature 'github' needs a secret",
            id="signature-without-secret",
        ),
    ],
)
def test_each_trigger_or_source_problem_names_line_key_and_what_is_wrong(extra, line, path, words):
    found = problems(extra)
    assert len(found) == 1, found
    ((got_line, got_path, message),) = found
    assert (got_line, got_path) == (line, path)
    assert words in message


def config_with(triggers: str):
    return parse_config(BASE + textwrap.dedent(triggers), file="config.toml")


def test_when_inputs_and_dedupe_are_evaluated_on_the_event():
    config = config_with(
        """
        [[triggers]]
        source = "orders"
        pipeline = "etl"
        when = "event.data.status == 'paid' and event.data.total > 100"
        inputs = { order_id = "{{ event.data.id }}", note = "from {{ event.source }}" }
        dedupe = "{{ event.data.id }}"
        """
    )
    paid = Event("orders", "e1", {"id": 7, "status": "paid", "total": 120})
    (m,), notes = match(config.triggers, paid)
    assert notes == []
    assert (m.pipeline, m.inputs, m.dedupe_key) == (
        "etl",
        {"order_id": 7, "note": "from orders"},
        "7",
    )
    assert match(
        config.triggers, Event("orders", "e2", {"id": 8, "status": "open", "total": 120})
    ) == ([], [])
    # a field the event lacks is false, not an error
    assert match(config.triggers, Event("orders", "e3", {"id": 9})) == ([], [])


@pytest.mark.parametrize(
    ("when", "data", "fires"),
    [
        pytest.param("event.data.total > 100", {}, False, id="greater"),
        pytest.param("event.data.total <= 100", {}, False, id="less-or-equal"),
        pytest.param("100 < event.data.total", {}, False, id="reflected"),
        pytest.param("event.data.status == 'paid'", {}, False, id="equal"),
        pytest.param("event.data.status != 'paid'", {}, True, id="not-equal"),
        pytest.param("not event.data.flag", {}, True, id="not"),
        pytest.param("event.data.order.id == 1", {}, False, id="chained"),
        pytest.param("event.data.order.id == 1", "text", False, id="data-is-text"),
        pytest.param("'x' in event.data.tags", {}, False, id="in"),
        pytest.param("event.data.x is defined", {}, False, id="is-defined"),
        pytest.param("event.data.x is undefined", {}, True, id="is-undefined"),
        pytest.param("event.data.name | lower == ''", {}, True, id="filter"),
        pytest.param("event.data.total > 100", {"total": 120}, True, id="present"),
    ],
)
def test_a_when_reads_a_missing_field_as_false(when, data, fires):
    config = config_with(
        f"""
        [[triggers]]
        source = "orders"
        pipeline = "etl"
        when = "{when}"
        """
    )
    matches, notes = match(config.triggers, Event("orders", "e", data))
    assert notes == []
    assert bool(matches) is fires


@pytest.mark.parametrize(
    ("when", "data", "words"),
    [
        pytest.param("event.data.total > 100", {"total": "many"}, "'>' not supported", id="type"),
        pytest.param("event.data.check()", {}, "no attribute 'check'", id="call-missing"),
        pytest.param("event.data.total + 1 > 2", {}, "no attribute 'total'", id="arithmetic"),
    ],
)
def test_a_when_that_goes_wrong_otherwise_is_still_a_note(when, data, words):
    config = config_with(
        f"""
        [[triggers]]
        source = "orders"
        pipeline = "etl"
        when = "{when}"
        """
    )
    matches, notes = match(config.triggers, Event("orders", "e", data))
    assert matches == []
    (note,) = notes
    assert note.startswith("trigger 'orders->etl': when:")
    assert words in note


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["status", "total", "a", "b", "x"]), children, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_a_when_on_any_event_data_fires_or_notes_never_raises(data):
    (trigger,) = _ANY_DATA_TRIGGERS
    match([trigger], Event("orders", "e", data))


def test_one_event_can_fire_several_triggers():
    config = config_with(
        """
        [[triggers]]
        name = "first"
        source = "orders"
        pipeline = "etl"
        [[triggers]]
        name = "second"
        source = "orders"
        pipeline = "etl"
        inputs = { note = "two" }
        """
    )
    matches, _ = match(config.triggers, Event("orders", "e", {}))
    assert [(m.trigger, m.inputs) for m in matches] == [("first", {}), ("second", {"note": "two"})]


def test_inputs_that_do_not_render_are_an_error_of_that_trigger_only():
    config = config_with(
        """
        [[triggers]]
        source = "orders"
        pipeline = "etl"
        inputs = { order_id = "{{ event.data.id }}" }
        """
    )
    (m,), _ = match(config.triggers, Event("orders", "e", {"no_id": 1}))
    assert m.error is not None
    assert "'dict object' has no attribute 'id'" in m.error


_ANY_DATA_TRIGGERS = config_with(
    """
    [[triggers]]
    source = "orders"
    pipeline = "etl"
    when = "event.data.status == 'paid' and event.data.total > 100 or event.data.a.b"
    """
).triggers
