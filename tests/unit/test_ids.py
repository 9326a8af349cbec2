"""Ids sort in the order they were made: waiting runs start in that order, also after a
restart, when they are read back from the store by id."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.core.ids import id_at, id_from_bytes, id_to_bytes, new_id, now


def test_ids_made_one_after_another_sort_in_that_order_within_a_millisecond_too():
    ids = [new_id() for _ in range(20_000)]  # many share their millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_an_id_sorts_after_the_smallest_id_of_its_time():
    before = now()
    made = new_id()
    assert id_at(before - 0.001) < made
    assert len(made) == 26


def test_an_id_packs_into_16_bytes_and_back():
    for made in [new_id() for _ in range(1_000)]:
        packed = id_to_bytes(made)
        assert packed is not None
        assert len(packed) == 16
        assert id_from_bytes(packed) == made


@given(st.text(max_size=40))
def test_what_is_no_id_is_not_packed_and_what_is_comes_back_the_same(text):
    packed = id_to_bytes(text)
    if packed is not None:
        assert id_from_bytes(packed) == text


@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_any_128_bits_pack_into_16_bytes_and_read_back_as_26_digits_of_5_bits(value):
    made = id_from_bytes(value.to_bytes(16, "big"))
    digits = "0123456789abcdefghjkmnpqrstvwxyz"
    assert made == "".join(digits[(value >> shift) & 31] for shift in range(125, -1, -5))
    assert id_to_bytes(made) == value.to_bytes(16, "big")
