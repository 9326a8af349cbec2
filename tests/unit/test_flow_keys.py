"""Per-key concurrency and priority, without I/O: the key gate admits at most a key's limit,
the highest priority first and the oldest first within one; the backlog hands out the
highest priority first, its cold runs loaded as their turn comes; a priority from outside
is parsed strictly."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cued.daemon.core.ids import new_id
from cued.daemon.core.priorities import priority_of
from cued.daemon.runtime.backlog import Backlog
from cued.daemon.runtime.keys import KeyGate, Released

KEYS = ("a", "b", "c")

# one step: a run of a key comes (with a priority), a run of a key ends, a waiting run
# is cancelled (the n-th of those waiting)
arrive = st.tuples(st.just("arrive"), st.sampled_from(KEYS), st.integers(0, 9))
finish = st.tuples(st.just("finish"), st.sampled_from(KEYS), st.just(0))
cancel = st.tuples(st.just("cancel"), st.sampled_from(KEYS), st.integers(0, 50))


@dataclass
class _Model:
    """What the gate should do, written the slow and obvious way."""

    limits: dict[str, int]
    active: dict[str, list[str]] = field(default_factory=dict)
    waiting: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    admitted: list[str] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)

    def took(self, key: str, released: list[Released[str]]) -> None:
        for r in released:
            assert isinstance(r.run, str)
            queue = self.waiting.get(key, [])
            if queue:
                # the best waiting run of its key: highest priority, then oldest
                best = min(queue, key=lambda w: (-w[0], w[1]))
                assert r.run == best[2], "not the first of its key by priority, then age"
                queue.remove(best)
            self.active.setdefault(key, []).append(r.run)
            self.admitted.append(r.run)
            assert len(self.active[key]) <= self.limits[key], f"key {key!r} over its limit"


@settings(max_examples=300, deadline=None)
@given(
    limits=st.fixed_dictionaries({k: st.integers(1, 3) for k in KEYS}),
    steps=st.lists(st.one_of(arrive, finish, cancel), max_size=200),
)
def test_no_key_exceeds_its_limit_and_each_key_admits_by_priority_then_age(limits, steps):
    gate: KeyGate[str] = KeyGate()
    model = _Model(limits)
    arrived = 0
    for op, key, n in steps:
        if op == "arrive":
            run_id = new_id()
            arrived += 1
            model.waiting.setdefault(key, []).append((n, arrived, run_id))
            model.took(key, gate.admit("p", key, limits[key], run_id, n))
        elif op == "finish" and model.active.get(key):
            model.active[key].pop(0)
            model.took(key, gate.release("p", key))
        elif op == "cancel" and model.waiting.get(key):
            _, _, run_id = model.waiting[key].pop(n % len(model.waiting[key]))
            assert gate.holds(run_id)
            assert gate.remove(run_id)
            assert not gate.holds(run_id)
            model.cancelled.add(run_id)
        for k in KEYS:
            assert gate.taken("p", k) == len(model.active.get(k, []))
    assert gate.held == sum(len(q) for q in model.waiting.values())
    # everything ends: every run not cancelled is admitted once, in the end
    for key in KEYS:
        while model.active.get(key):
            model.active[key].pop(0)
            model.took(key, gate.release("p", key))
    assert len(model.admitted) == len(set(model.admitted)) == arrived - len(model.cancelled)
    assert not set(model.admitted) & model.cancelled
    assert gate.held == 0


def test_a_flooded_key_keeps_its_limit_in_the_pipeline_queue_and_another_key_goes_first():
    # max_active_runs 1, limit 1 per key: 300 runs of "hot", then one of "cold"; the
    # pipeline's queue holds what keys admitted, so "cold" waits behind one "hot" at most
    gate: KeyGate[str] = KeyGate()
    backlog: Backlog[str] = Backlog(high_water=10_000, low_water=1, window=1_000)
    hot = [new_id() for _ in range(300)]
    for run_id in hot:
        for r in gate.admit("p", "hot", 1, run_id, 5):
            backlog.push("p", str(r.run))
    other = new_id()
    for r in gate.admit("p", "cold", 1, other, 5):
        backlog.push("p", str(r.run))
    started: list[str] = []
    while (run := backlog.pop("p")) is not None:
        started.append(run)
        key = "cold" if run == other else "hot"
        for r in gate.release("p", key):  # it ran, and ended
            backlog.push("p", str(r.run))
    assert started.index(other) == 1
    assert sorted(started) == sorted([*hot, other])
    assert [r for r in started if r != other] == hot


def test_a_run_that_had_started_waits_whole_for_its_key_and_comes_before_new_ones():
    gate: KeyGate[object] = KeyGate()
    resumed = object()
    assert [r.run for r in gate.admit("p", "k", 1, "new-1", 5)] == ["new-1"]
    assert gate.admit("p", "k", 1, "new-2", 9) == []
    assert gate.admit("p", "k", 1, resumed, 0) == []
    assert [r.run for r in gate.release("p", "k")] == [resumed]
    assert gate.remove_started(lambda r: r is resumed) is None  # gone from the queue
    assert [r.run for r in gate.release("p", "k")] == ["new-2"]


def test_a_raised_limit_admits_as_many_more_as_it_allows():
    gate: KeyGate[str] = KeyGate()
    gate.admit("p", "k", 1, "one", 5)
    gate.admit("p", "k", 1, "two", 5)
    gate.admit("p", "k", 1, "three", 5)
    released = gate.admit("p", "k", 3, "four", 5)  # a reload raised the limit
    assert [r.run for r in released] == ["two", "three"]
    assert gate.taken("p", "k") == 3


@settings(max_examples=200, deadline=None)
@given(
    window=st.integers(1, 6),
    steps=st.lists(st.one_of(st.integers(0, 9), st.just("pop")), max_size=120),
)
def test_the_backlog_hands_out_the_highest_priority_first_then_the_oldest(window, steps):
    # as the runner does: a new run is loaded if there is room, else it waits cold,
    # counted in its lane (in the store: here a list per lane); a pop that finds the top
    # priority cold loads it (at least one) and tries again
    backlog: Backlog[str] = Backlog(high_water=10_000, low_water=1, window=window)
    priority: dict[str, int] = {}
    order: dict[str, int] = {}
    waiting: set[str] = set()
    stored: dict[int, list[str]] = {}

    def pop() -> str | None:
        while True:
            found = backlog.pop("p")
            if found is not None or not backlog.wants_load("p"):
                return found
            taken = backlog.take("p", max(1, window - backlog.loaded_of("p")))
            assert not taken.ids  # nothing waits by id: each lane's count and cursor
            for lane, after, asked in taken.stored:
                read = [r for r in stored[lane] if r > after][:asked]
                backlog.read("p", lane, asked, read)
                for run_id in read:
                    backlog.settle("p", run_id, lane)
            backlog.loaded_all("p")

    for step in steps:
        if step == "pop":
            expected = min(waiting, key=lambda r: (-priority[r], order[r]), default=None)
            assert pop() == expected
            waiting.discard(expected)  # type: ignore[arg-type]
            continue
        run_id = new_id()
        priority[run_id], order[run_id] = step, len(order)
        waiting.add(run_id)
        stored.setdefault(step, []).append(run_id)
        if backlog.has_room("p", step) and not backlog.cold_of("p"):
            backlog.passed("p", run_id, step)
            backlog.push("p", run_id, step)
        else:
            backlog.push_stored("p", run_id, step)
        assert backlog.loaded_of("p") <= window + 10  # a window, and one per priority
    rest = sorted(waiting, key=lambda r: (-priority[r], order[r]))
    assert [pop() for _ in rest] == rest
    assert pop() is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(0, 0, id="int"),
        pytest.param("9", 9, id="text"),
        pytest.param(" 7\n", 7, id="spaces"),
        pytest.param("07", 7, id="leading-zero"),
    ],
)
def test_a_priority_is_a_whole_number_from_0_to_9(value, expected):
    assert priority_of(value) == expected


@pytest.mark.parametrize(
    "value",
    [10, -1, True, 2.0, "10", "-1", "+7", "1_0", "٣", "high", "", None, "5.0", "1e0"],
)
def test_anything_else_is_no_priority_and_the_message_names_it(value):
    with pytest.raises(ValueError, match="priority must be a whole number from 0 to 9, got"):
        priority_of(value)


@given(st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.booleans()))
def test_a_priority_from_outside_is_parsed_or_refused_never_anything_else(value):
    try:
        got = priority_of(value)
    except ValueError as exc:
        refused = str(exc)
    else:
        assert 0 <= got <= 9
        assert got == int(str(value).strip())
        return
    assert repr(value) in refused
