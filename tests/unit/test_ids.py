"""Ids sort in the order they were made: waiting runs start in that order, also after a
restart, when they are read back from the store by id."""

from __future__ import annotations

from cued.daemon.core.ids import id_at, new_id, now


def test_ids_made_one_after_another_sort_in_that_order_within_a_millisecond_too():
    ids = [new_id() for _ in range(20_000)]  # many share their millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_an_id_sorts_after_the_smallest_id_of_its_time():
    before = now()
    made = new_id()
    assert id_at(before - 0.001) < made
    assert len(made) == 26
