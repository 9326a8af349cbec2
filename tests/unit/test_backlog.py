"""The backlog: a window of loaded runs per pipeline, the rest cold (ids only), one count
of waiting runs for backpressure."""

from __future__ import annotations

from cued.daemon.core.ids import new_id
from cued.daemon.runtime.backlog import Backlog


def test_cold_ids_come_back_in_order_and_count_as_waiting():
    backlog: Backlog[str] = Backlog(high_water=100_000, low_water=10, window=3)
    ids = [new_id() for _ in range(70_000)] + ["an-id-of-another-shape", new_id()]
    for run_id in ids:
        backlog.push_cold("p", run_id)
    assert backlog.depth == len(ids)
    assert not backlog.has_room("p")
    taken: list[str] = []
    while batch := backlog.take_cold("p", 1_000):
        taken += batch
        for _ in batch:
            backlog.dropped()
    assert taken == ids
    assert backlog.depth == 0
    assert backlog.has_room("p")


def test_a_cold_run_taken_out_is_passed_over_once_and_stops_counting():
    backlog: Backlog[str] = Backlog(high_water=5, low_water=2, window=1)
    flips: list[bool] = []
    backlog.on_change(flips.append)
    a, b, c, d, e = (new_id() for _ in range(5))
    for run_id in (a, b, c, d, e):
        backlog.push_cold("p", run_id)
    assert flips == [True]
    assert backlog.is_cold(c)
    assert backlog.remove_cold(c)
    assert not backlog.is_cold(c)
    assert not backlog.remove_cold(c)
    # the same run waits again (a rerun): its new place counts, its old one does not
    backlog.push_cold("p", c)
    assert backlog.is_cold(c)
    assert backlog.take_cold("p", 10) == [a, b, d, e, c]
    assert backlog.depth == 5
    for _ in range(4):
        backlog.dropped()
    assert flips == [True, False]


def test_new_runs_are_loaded_only_while_the_window_has_room_and_nothing_is_cold():
    backlog: Backlog[str] = Backlog(high_water=100, low_water=10, window=2)
    backlog.push("p", "one")
    assert backlog.has_room("p")
    backlog.push("p", "two")
    assert not backlog.has_room("p")
    assert backlog.has_room("q")
    backlog.push_cold("p", new_id())
    assert backlog.pop("p") == "one"
    assert not backlog.has_room("p")  # behind a cold one: it would jump the queue
    assert backlog.loaded == 1
    assert backlog.depth == 2
