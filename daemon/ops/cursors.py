"""Pages and their one cursor format: where a page ended, ``(time, id)``, opaque to clients.

Runs page by ``(created_at, run_id)``, events by ``(received_at, event_id)``; both cursors
are :func:`cued.daemon.core.untrusted.page_cursor`'s. Before this format, the API gave a
run's bare id as the cursor of a runs page, and a client may still hold one: it is read
as it was meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from cued.daemon.core.untrusted import page_cursor, page_position
from cued.daemon.errors import InvalidRequest

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Page", "cursor", "event_position", "page_of", "run_position"]

T = TypeVar("T")

# a run id as cued.daemon.core.ids.new_id makes it: 26 characters of Crockford's base 32
_RUN_ID = re.compile(r"[0-9a-hjkmnp-tv-z]{26}")
_SHOWN_CHARS = 100


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """A page of a list, newest first; ``next_cursor`` reads the page after it (``None``
    on the last page)."""

    items: list[T]
    next_cursor: str | None


def cursor(at: float, key: str) -> str:
    """The cursor of a page that ended at ``(at, key)``."""
    return page_cursor(at, key)


def page_of(rows: list[T], limit: int, position: Callable[[T], tuple[float, str]]) -> Page[T]:
    """``rows``, read with ``limit + 1``, as a page of ``limit``: its cursor is where its
    last item is (``position`` of it), if a page follows."""
    if len(rows) <= limit:
        return Page(rows, None)
    return Page(rows[:limit], cursor(*position(rows[limit - 1])))


def event_position(text: str) -> tuple[float, str]:
    """The ``(received_at, event_id)`` an events page's cursor holds.

    :raises InvalidRequest: if ``text`` is not a cursor a page gave
    """
    position = page_position(text)
    if position is None:
        raise _not_ours(text)
    return position


def run_position(text: str) -> str:
    """The run id a runs page's cursor holds (the page after it has the older runs).

    :raises InvalidRequest: if ``text`` is neither a cursor a page gave nor a run id (the
        cursor of earlier versions)
    """
    position = page_position(text)
    if position is not None:
        return position[1]
    if _RUN_ID.fullmatch(text):
        return text
    raise _not_ours(text)


def _not_ours(text: str) -> InvalidRequest:
    shown = text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}\u2026"
    return InvalidRequest(f"cursor {shown!r} is not one this API gave")
