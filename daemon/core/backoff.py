"""Exponential backoff with jitter: how long to wait before trying again.

One formula for every retry in the daemon (a task's retries, an alert's resends, an AI
step's calls): exponential from a first delay, capped, then a random part of it between
half and all, so that the many tries that failed together (an outage) do not all come
back at once. Pure: the caller passes the random number in, so tests need no seed.
"""

from __future__ import annotations

__all__ = ["backoff_s"]

#: The doublings past which the delay is the cap whatever the first delay (2**64 times
#: any first delay longer than 1e-17 s is beyond any cap): ``2.0 ** n`` overflows past
#: n = 1023, and a task may be retried that often.
_MAX_DOUBLINGS = 64


def backoff_s(attempt: int, *, first_s: float, max_s: float, rand: float) -> float:
    """The delay before the try that follows failed try ``attempt``.

    :param attempt: the try that failed, from 1
    :param first_s: the delay after the first failure, before jitter; it doubles with each
    :param max_s: the longest delay, before jitter
    :param rand: a random number in ``[0, 1]`` (``random.random()``): 0 waits half the
        delay, 1 all of it
    :return: between half and all of ``min(first_s * 2 ** (attempt - 1), max_s)``
    """
    base = min(first_s * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS), max_s)
    return base * (0.5 + rand / 2)
