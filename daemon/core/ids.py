"""Ids and time stamps as the store keeps them: sortable ids, seconds since the epoch."""

from __future__ import annotations

import secrets
import time

__all__ = ["id_at", "id_from_bytes", "id_to_bytes", "new_id", "now"]

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


_last = 0


def new_id() -> str:
    """A sortable unique id (ULID layout: 48-bit milliseconds, then 80 random bits), each
    one sorting after the one before in this process (within a millisecond, or if the
    clock steps back, the last one plus one): the store's order of ids is the order runs
    were made, which is the order waiting runs start in, also after a restart."""
    global _last
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(secrets.token_bytes(10), "big")
    if value >> 80 <= _last >> 80:
        value = _last + 1
    _last = value
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def id_at(seconds: float) -> str:
    """The smallest id :func:`new_id` can make at ``seconds`` since the epoch: run ids sort
    by creation time, so a time range is an id range (clamped to what ids can hold)."""
    ms = min(max(int(seconds * 1000), 0), (1 << 48) - 1)
    value = ms << 80
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


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
    value = int.from_bytes(data, "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def now() -> float:
    """Wall-clock time as stored: seconds since the epoch."""
    return time.time()
