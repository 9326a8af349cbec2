"""Exponential backoff with jitter (``cued.daemon.core.backoff``): the one formula behind a
task's retries, an alert's resends and an AI step's calls."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.core.backoff import backoff_s

attempts = st.integers(min_value=1, max_value=10_000)
delays_s = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
rands = st.floats(min_value=0.0, max_value=1.0)


@given(attempt=attempts, first_s=delays_s, max_s=delays_s, rand=rands)
def test_between_half_and_all_of_the_capped_delay(attempt, first_s, max_s, rand):
    delay = backoff_s(attempt, first_s=first_s, max_s=max_s, rand=rand)
    capped = min(first_s * 2.0 ** min(attempt - 1, 64), max_s)
    assert capped / 2 <= delay <= capped
    assert 0.0 <= delay <= max_s


@given(attempt=attempts, first_s=delays_s, max_s=delays_s, rand=rands)
def test_never_shorter_for_a_later_attempt(attempt, first_s, max_s, rand):
    now_s = backoff_s(attempt, first_s=first_s, max_s=max_s, rand=rand)
    later_s = backoff_s(attempt + 1, first_s=first_s, max_s=max_s, rand=rand)
    assert later_s >= now_s


@given(attempt=attempts, first_s=delays_s, max_s=delays_s)
def test_the_least_jitter_waits_half_the_most(attempt, first_s, max_s):
    least = backoff_s(attempt, first_s=first_s, max_s=max_s, rand=0.0)
    most = backoff_s(attempt, first_s=first_s, max_s=max_s, rand=1.0)
    assert least == most / 2


@pytest.mark.parametrize(
    ("attempt", "rand", "expected_s"),
    [
        pytest.param(1, 1.0, 1.0, id="first"),
        pytest.param(3, 1.0, 4.0, id="doubles"),
        pytest.param(3, 0.0, 2.0, id="half-at-least"),
        pytest.param(50, 1.0, 300.0, id="capped"),
        pytest.param(5000, 1.0, 300.0, id="no-overflow"),
    ],
)
def test_doubles_from_the_first_up_to_the_cap(attempt, rand, expected_s):
    assert backoff_s(attempt, first_s=1.0, max_s=300.0, rand=rand) == expected_s
