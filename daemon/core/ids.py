"""Ids and time stamps as the store keeps them: sortable ids, seconds since the epoch."""

from __future__ import annotations

import secrets
import time

__all__ = ["id_at", "id_from_bytes", "id_to_bytes", "new_id", "now"]

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
#: every two digits (10 bits) as one string, and where each pair sits in a 130-bit id
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_PAIR_SHIFTS = tuple(range(120, -1, -10))


def _encode(value: int) -> str:
    """A 128-bit ``value`` as 26 Crockford digits, most significant first: looked up two
    digits at a time (a join over 26 single digits cost ~3x as much, once per run and per
    event)."""
    return "".join([_PAIRS[value >> shift & 1023] for shift in _PAIR_SHIFTS])


_last = 0
_entropy = b""
_taken = 0
#: random bytes read from the system at once: one read for 400 ids, not one each (a system
#: call per id was 1-2 % of a one-task run's time); the same source as before
_ENTROPY_READ = 4000


def _random_80() -> int:
    """80 random bits from the operating system's source (``secrets``)."""
    global _entropy, _taken
    if _taken + 10 > len(_entropy):
        _entropy, _taken = secrets.token_bytes(_ENTROPY_READ), 0
    _taken += 10
    return int.from_bytes(_entropy[_taken - 10 : _taken], "big")


def new_id() -> str:
    """A sortable unique id (ULID layout: 48-bit milliseconds, then 80 random bits), each
    one sorting after the one before in this process (within a millisecond, or if the
    clock steps back, the last one plus one): the store's order of ids is the order runs
    were made, which is the order waiting runs start in, also after a restart."""
    global _last
    value = (time.time_ns() // 1_000_000) << 80 | _random_80()
    if value >> 80 <= _last >> 80:
        value = _last + 1
    _last = value
    return _encode(value)


def id_at(seconds: float) -> str:
    """The smallest id :func:`new_id` can make at ``seconds`` since the epoch: run ids sort
    by creation time, so a time range is an id range (clamped to what ids can hold)."""
    ms = min(max(int(seconds * 1000), 0), (1 << 48) - 1)
    return _encode(ms << 80)


_VALUE = {c: i for i, c in enumerate(_CROCKFORD)}


def id_to_bytes(value: str) -> bytes | None:
    """An id as :func:`new_id` makes it in 16 bytes (None if it is not one): a backlog
    keeps very many waiting runs' ids like this."""
    if len(value) != 26 or value[0] not in "01234567":
        return None
    number = 0
    for char in value:
        digit = _VALUE.get(char)
        if digit is None:
            return None
        number = number << 5 | digit
    return number.to_bytes(16, "big")


def id_from_bytes(data: bytes) -> str:
    """The id :func:`id_to_bytes` made ``data`` of."""
    return _encode(int.from_bytes(data, "big"))


def now() -> float:
    """Wall-clock time as stored: seconds since the epoch."""
    return time.time()
