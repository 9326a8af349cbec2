"""What task kinds that keep connections share: one client (a producer, a connection, a
pool) per key, made when the first task needs it and kept for every task of the daemon,
and closed when the daemon stops (``aclose``, or ``async with kind:``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, Self, TypeVar

import anyio

from cued.daemon.sdk import TaskError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

__all__ = ["Closing", "Shared"]

K = TypeVar("K")
V = TypeVar("V")


class Shared(Generic[K, V]):
    """The clients of one task kind, by key."""

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._items: dict[K, V] = {}
        self._lock = anyio.Lock()
        self._closed = False

    async def get(self, key: K, make: Callable[[], Awaitable[V]]) -> V:
        """The client for ``key``, made by ``make`` on first use (one at a time, however
        many tasks wait for it); nothing is kept when ``make`` raises.

        :raises TaskError: once :meth:`close` was called (the daemon is stopping)
        """
        if (item := self._items.get(key)) is not None:
            return item
        async with self._lock:
            if (item := self._items.get(key)) is not None:
                return item
            if self._closed:
                raise TaskError(f"the {self._kind} task kind is closed: the daemon is stopping")
            item = await make()
            self._items[key] = item
            return item

    def close(self) -> list[V]:
        """Make no more; the clients made so far, for the caller to close."""
        self._closed = True
        items, self._items = list(self._items.values()), {}
        return items


class Closing:
    """``async with kind:`` closes the kind (its ``aclose``) at the end."""

    async def aclose(self) -> None:
        """Close what the kind keeps; the daemon calls it after the last task ended."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
