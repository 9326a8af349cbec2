"""Which event wakes a wait (pure matching), what a wait keeps of its task's values, the
``add_duration`` filter and a ``sleep``'s ``until``: no I/O."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cued.daemon.core.durations import add_duration, as_moment
from cued.daemon.core.templates import render
from cued.daemon.core.waits import event_output, first_match, match_context, matches
from cued.daemon.sdk import AwaitingTime
from cued.plugins.sleep import PARK_AFTER_S, SleepParams, SleepTask

MATCH = "event.data.order_id == inputs.order_id"
CONTEXT = {"inputs": {"order_id": "A-1", "other": "x" * 1000}, "tasks": {}, "run": {"id": "r"}}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _event(data, event_id="e1"):
    return event_output(event_id, "payments", data, {}, 1_700_000_000.0)


@pytest.mark.parametrize(
    ("data", "woken"),
    [
        pytest.param({"order_id": "A-1"}, True, id="same"),
        pytest.param({"order_id": "B-2"}, False, id="other"),
        pytest.param({}, False, id="field-missing"),
        pytest.param(None, False, id="no-data"),
        pytest.param([1, 2], False, id="a-list"),
        pytest.param({"order_id": {"nested": 1}}, False, id="a-dict"),
    ],
)
def test_an_event_wakes_the_wait_of_its_order_only(data, woken):
    assert matches(MATCH, match_context(MATCH, CONTEXT), _event(data)) is woken


@given(data=json_values)
def test_any_event_data_is_matched_or_not_and_never_raises(data):
    # event data comes from outside: whatever it holds, matching answers
    woken = matches(MATCH, match_context(MATCH, CONTEXT), _event(data))
    assert woken is (isinstance(data, dict) and data.get("order_id") == "A-1")


@given(order=st.text(), data=json_values)
def test_a_wait_kept_its_values_and_matches_as_the_full_context_would(order, data):
    context = {**CONTEXT, "inputs": {"order_id": order}}
    kept = match_context(MATCH, context)
    assert kept == {"inputs": {"order_id": order}}  # only what match reads
    event = _event({"order_id": data})
    assert matches(MATCH, kept, event) is matches(MATCH, context, event)


def test_an_expression_that_fails_on_an_event_does_not_match_it():
    assert matches("event.data.n + 1 > 2", {}, _event({"n": "text"})) is False
    assert matches("event.data.n + 1 > 2", {}, _event({"n": 5})) is True


def test_without_match_every_event_of_the_source_wakes_it():
    assert matches(None, {}, _event(None)) is True


def test_the_first_matching_event_of_several_is_taken():
    events = [_event({"order_id": i}, f"e{i}") for i in ("B-2", "A-1", "A-1")]
    found = first_match(MATCH, CONTEXT, events)
    assert found is events[1]
    assert first_match(MATCH, CONTEXT, events[:1]) is None


def test_add_duration_moves_a_time_on():
    assert render("{{ 100 | add_duration('1d') }}", {}) == 100 + 86400
    assert render("{{ '1970-01-01T00:00:00Z' | add_duration('1h30m') }}", {}) == 5400.0


@given(st.text())
def test_a_time_in_any_text_is_parsed_or_refused_with_a_value_error(text):
    problem, moment = None, None
    try:
        moment = as_moment(text)
    except ValueError as exc:
        problem = str(exc)
    if problem is not None:
        assert repr(text) in problem
    else:
        assert moment is not None
        assert moment >= 0


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
    )
)
def test_iso_times_round_trip(moment):
    assert as_moment(moment.isoformat()) == pytest.approx(moment.timestamp())
    assert add_duration(moment.isoformat(), "0s") == pytest.approx(moment.timestamp())


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"until": "tomorrow"}, id="not-a-time"),
        pytest.param({"until": 10, "seconds": 5}, id="both"),
        pytest.param({"until": float("inf")}, id="infinite"),
    ],
)
def test_a_sleep_until_what_is_not_a_time_is_refused(params):
    with pytest.raises(ValidationError):
        SleepParams.model_validate(params)


def test_a_sleep_until_a_template_is_checked_once_rendered():
    assert SleepParams.model_validate({"until": "{{ inputs.at }}"}).until == "{{ inputs.at }}"


async def test_a_long_seconds_sleep_parks_on_a_timer_and_a_short_one_sleeps(ctx):
    before = time.time()
    parked = await SleepTask().execute(SleepParams(seconds=PARK_AFTER_S), ctx)
    assert isinstance(parked, AwaitingTime)
    assert before + PARK_AFTER_S <= parked.at <= time.time() + PARK_AFTER_S
    assert await SleepTask().execute(SleepParams(seconds=0), ctx) is None
    until = await SleepTask().execute(SleepParams(until="2030-01-01T00:00:00Z"), ctx)
    assert until == AwaitingTime(datetime(2030, 1, 1, tzinfo=UTC).timestamp())
