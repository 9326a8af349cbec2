"""The pure decisions of flow control (debounce, throttle, batch), and their settings as
``cued validate`` checks them."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.config import TriggerConfig, parse_config
from cued.daemon.core.flow import (
    Defer,
    Drop,
    Hold,
    KeyState,
    NotYet,
    Rule,
    Start,
    Window,
    admit,
    forgettable,
    gather,
    parse_due,
    release,
    take_slot,
)
from cued.daemon.core.triggers import match
from cued.daemon.errors import ConfigError
from cued.daemon.sdk.sources import Event

_ids = (f"w{i}" for i in itertools.count())


def _simulate(rule: Rule, times: list[float]) -> list[tuple[float, list[int]]]:
    """One key's events at ``times`` (ascending), with the timer releasing each window when
    it is due; the runs started: when, and which events each covers."""
    state = KeyState()
    windows: dict[str, tuple[float | None, str, list[int]]] = {}
    runs: list[tuple[float, list[int]]] = []

    def tick(until: float) -> None:
        nonlocal state
        while True:
            due = [(d, w) for w, (d, _, _) in windows.items() if d is not None and d <= until]
            if not due:
                return
            at, window_id = min(due)
            _, phase, events = windows.pop(window_id)
            state, outcome = release(rule, state, window_id, phase, at)
            assert not isinstance(outcome, NotYet)
            if isinstance(outcome, Start):
                runs.append((at, events))
            elif isinstance(outcome, Defer):
                windows[window_id] = (outcome.due_at, "slotted", events)

    for i, at in enumerate(times):
        tick(at)  # what is due by now is released first
        state, outcome = admit(rule, state, at, next(_ids))
        if isinstance(outcome, Start):
            runs.append((at, [i]))
        elif isinstance(outcome, Hold):
            _, _, events = windows.get(outcome.window_id, (None, "", []))
            windows[outcome.window_id] = (outcome.due_at, outcome.phase, [*events, i])
            assert outcome.seq == len(events) + 1
    tick(float("inf"))
    return runs


_times = st.lists(st.floats(0, 1000, allow_nan=False), max_size=60).map(sorted)


@given(_times, st.floats(0.5, 50))
def test_debounce_starts_exactly_one_run_per_quiet_window(times, period):
    rule = Rule(debounce_s=period)
    runs = _simulate(rule, times)
    # a quiet window ends where the next event is more than a period after the last
    bursts = 1 + sum(1 for a, b in itertools.pairwise(times) if b - a >= period) if times else 0
    assert len(runs) == bursts
    # every event in exactly one run, in order; each run a period after its last event
    assert [i for _, events in runs for i in events] == list(range(len(times)))
    assert all(at == times[events[-1]] + period for at, events in runs)


@given(_times, st.integers(1, 5), st.floats(1, 100), st.booleans())
def test_throttle_never_starts_more_than_limit_runs_in_a_period(times, limit, period, drop):
    rule = Rule(limit=limit, period_s=period, drop=drop)
    runs = _simulate(rule, times)
    starts = sorted(at for at, _ in runs)
    for i in range(len(starts) - limit):
        assert starts[i + limit] - starts[i] >= period - 1e-9
    covered = [i for _, events in runs for i in events]
    if drop:
        # what starts, starts at once; the rest is dropped
        assert all(at == times[events[0]] for at, events in runs)
    else:
        # delay: every event runs, in the order it came, none before it came
        assert sorted(covered) == list(range(len(times)))
        assert [events[0] for _, events in sorted(runs)] == list(range(len(times)))
        assert all(at >= times[events[0]] for at, events in runs)


@given(_times, st.integers(1, 7), st.one_of(st.none(), st.floats(0.5, 50)))
def test_batch_covers_every_event_once_in_batches_of_at_most_size(times, size, timeout):
    rule = Rule(size=size, timeout_s=timeout)
    runs = _simulate(rule, times)
    covered = [i for _, events in runs for i in events]
    assert all(len(events) <= size for _, events in runs)
    if timeout is None:
        # only full batches start; the rest waits (until more come)
        assert covered == list(range(len(times) // size * size))
        assert all(len(events) == size for _, events in runs)
    else:
        assert covered == list(range(len(times)))
        assert all(at <= times[events[0]] + timeout for at, events in runs)


def test_throttle_slots_go_in_order_after_the_last_slot_taken():
    rule = Rule(limit=2, period_s=60)
    state = KeyState()
    slots = []
    for _ in range(5):
        state, slot = take_slot(rule, state, 0.0)
        slots.append(slot)
    assert slots == [0.0, 0.0, 60.0, 60.0, 120.0]
    assert state.starts == (60.0, 120.0)  # only the latest `limit` are kept


def test_a_throttle_that_drops_keeps_no_slot_for_what_it_dropped():
    rule = Rule(limit=1, period_s=10, drop=True)
    state, first = admit(rule, KeyState(), 0.0, "w")
    state, second = admit(rule, state, 5.0, "w")
    state, third = admit(rule, state, 10.0, "w")
    assert (first, third) == (Start(), Start())
    assert isinstance(second, Drop)
    assert "1 runs per 10s" in second.reason


def test_a_debounce_window_moved_by_a_later_event_is_not_due_yet():
    rule = Rule(debounce_s=10)
    state, hold = admit(rule, KeyState(), 0.0, "w1")
    assert isinstance(hold, Hold)
    state, again = admit(rule, state, 5.0, "w2")
    assert isinstance(again, Hold)
    assert (again.window_id, again.due_at) == ("w1", 15.0)
    # the store still says 10 (the update is being committed): not due
    assert release(rule, state, "w1", "open", 10.0) == (state, NotYet())
    state, outcome = release(rule, state, "w1", "open", 15.0)
    assert outcome == Start()
    assert state.window is None
    assert forgettable(rule, state, 15.0)


def test_a_debounce_release_takes_a_throttle_slot_and_may_be_deferred():
    rule = Rule(debounce_s=1, limit=1, period_s=60)
    state, _ = admit(rule, KeyState(), 0.0, "w1")
    state, first = release(rule, state, "w1", "open", 1.0)
    state, _ = admit(rule, state, 2.0, "w2")
    state, second = release(rule, state, "w2", "open", 3.0)
    assert first == Start()
    assert second == Defer(61.0)
    assert release(rule, state, "w2", "slotted", 61.0)[1] == Start()
    assert not forgettable(rule, state, 61.0)
    assert forgettable(rule, state, 121.0)


BASE = """
[sources.s]
kind = "webhook"
path = "/s"

[pipelines.p]
inputs = { n = 0 }
[pipelines.p.tasks.t]
kind = "shell"
command = "true"

[[triggers]]
source = "s"
pipeline = "p"
"""


@pytest.mark.parametrize(
    ("lines", "where", "message"),
    [
        pytest.param('debounce = { period = "0s" }', "debounce.period", "greater than 0", id="period"),
        pytest.param('debounce = { period = "1s", keep = "middle" }', "debounce.keep", "'first', 'last' or 'all'", id="keep"),
        pytest.param('throttle = { limit = 0, period = "1m" }', "throttle.limit", "greater than or equal to 1", id="limit"),
        pytest.param('throttle = { limit = 1, period = "1m", excess = "queue" }', "throttle.excess", "'delay' or 'drop'", id="excess"),
        pytest.param("batch = { size = 0 }", "batch.size", "greater than or equal to 1", id="size"),
        pytest.param("batch = {}", "batch", "a size, a timeout or both", id="empty-batch"),
        pytest.param('batch = { size = 2 }\ndedupe = "{{ event.id }}"', "dedupe", "cannot have a dedupe key", id="batch-dedupe"),
        pytest.param('batch = { size = 2 }\ndebounce = { period = "1s" }', "debounce", "not both", id="batch-debounce"),
        pytest.param('inputs = { n = "{{ event.batch | length }}" }', "inputs", "event.batch", id="batch-without-batch"),
        pytest.param('key = "{{ event.nope }}"', "key", "event.nope", id="key-template"),
    ],
)  # fmt: skip
def test_validate_names_each_bad_flow_setting_with_its_line(lines, where, message):
    text = BASE + lines + "\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, file="cued.toml")
    problems = [p for p in caught.value.problems if p.path.endswith(where)]
    assert problems, caught.value
    (problem,) = problems
    assert message in problem.message
    assert problem.file == "cued.toml"
    top = where.split(".")[0]
    assert problem.line == next(
        n
        for n, line in enumerate(text.splitlines(), 1)
        if n > BASE.count("\n") and line.startswith(top + " ")
    )


def test_a_flow_controlled_trigger_validates_and_gives_its_rule():
    config = parse_config(
        BASE
        + 'key = "{{ event.data.c }}"\n'
        + 'inputs = { n = "{{ event.batch | length }}" }\n'
        + 'batch = { size = 500, timeout = "5s" }\n'
        + 'throttle = { limit = 10, period = "1m" }\n'
    )
    (trigger,) = config.triggers
    assert Rule.of(trigger) == Rule(limit=10, period_s=60.0, size=500, timeout_s=5.0)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_json, st.text())
def test_a_flow_key_over_any_event_data_is_text_or_a_note_never_a_crash(data, raw):
    """The key comes from outside (an event's data): whatever it holds, the match has a
    key of text, or an error that intake notes on the event."""
    trigger = TriggerConfig(
        source="s", pipeline="p", key="{{ event.data.k }}", debounce={"period": 1}
    )
    (m,) = match([trigger], Event("s", "e", {"k": data, "raw": raw}))[0]
    assert m.error is not None or isinstance(m.key, str)


@given(st.text())
def test_a_notice_of_a_due_time_is_a_finite_time_or_nothing_whatever_its_text(text):
    due = parse_due(text)
    assert due is None or (isinstance(due, float) and due - due == 0.0)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_due_time_told_as_its_repr_is_read_back_exactly(due):
    assert parse_due(repr(due)) == due


@given(_times)
def test_events_of_a_throttle_alone_gather_in_no_window_each_held_due_at_once(times):
    # (nodes sharing a database: each waits for its release, which counts the slots)
    rule = Rule(limit=1, period_s=60.0)
    for at in times:
        window, hold = gather(rule, Window("w0", 0.0, None, 3), at, "new")
        assert window is None
        assert hold == Hold("new", "delay", 1, at, at, "open")
