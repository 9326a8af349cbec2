"""The bounded backlog of runs waiting to start, and the backpressure signal sources obey.

Runs wait here for a slot (the pipeline's ``max_active_runs``). Past ``high_water``
waiting runs the backlog is *saturated*: sources stop taking events (Kafka pauses its
partitions, webhooks answer 429, the file watcher stops picking files) until it drains
below ``low_water``. The gap between the marks keeps sources from flapping.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Backlog"]

T = TypeVar("T")


class Backlog(Generic[T]):
    """Runs waiting to start, one queue per pipeline.

    :param high_water: saturated once this many runs wait
    :param low_water: accepting again once fewer than this wait
    """

    def __init__(self, high_water: int, low_water: int) -> None:
        if not 0 <= low_water < high_water:
            raise ValueError(f"need 0 <= low_water < high_water, got {low_water}, {high_water}")
        self.high_water = high_water
        self.low_water = low_water
        self._queues: dict[str, deque[T]] = {}
        self._depth = 0
        self._saturated = False
        self._accepting = anyio.Event()
        self._accepting.set()
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def depth(self) -> int:
        """How many runs wait."""
        return self._depth

    @property
    def saturated(self) -> bool:
        """True from the high water mark until the backlog drains below the low one."""
        return self._saturated

    def accepting(self) -> bool:
        """Whether sources may take events now (the non-blocking check, for webhooks)."""
        return not self._saturated

    async def wait_accepting(self) -> None:
        """Return once sources may take events (the blocking check, for pull sources)."""
        while self._saturated:
            await self._accepting.wait()

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(saturated)`` whenever the backpressure state flips."""
        self._listeners.append(listener)

    def push(self, pipeline: str, item: T) -> None:
        self._queues.setdefault(pipeline, deque()).append(item)
        self._depth += 1
        if not self._saturated and self._depth >= self.high_water:
            self._set(True)

    def pop(self, pipeline: str) -> T | None:
        queue = self._queues.get(pipeline)
        if not queue:
            return None
        item = queue.popleft()
        self._depth -= 1
        if self._saturated and self._depth < self.low_water:
            self._set(False)
        return item

    def remove(self, pipeline: str, predicate: Callable[[T], bool]) -> T | None:
        """Take out the first waiting item of ``pipeline`` for which ``predicate`` holds."""
        queue = self._queues.get(pipeline, deque())
        for item in queue:
            if predicate(item):
                queue.remove(item)
                self._depth -= 1
                if self._saturated and self._depth < self.low_water:
                    self._set(False)
                return item
        return None

    def _set(self, saturated: bool) -> None:
        self._saturated = saturated
        if saturated:
            self._accepting = anyio.Event()
        else:
            self._accepting.set()
        for listener in self._listeners:
            listener(saturated)
