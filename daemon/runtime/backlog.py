"""The bounded backlog of runs waiting to start, and the backpressure signal sources obey.

Runs wait here for a slot (the pipeline's ``max_active_runs``). Past ``high_water``
waiting runs the backlog is *saturated*: sources stop taking events (Kafka pauses its
partitions, webhooks answer 429, the file watcher stops picking files) until it drains
below ``low_water``. The gap between the marks keeps sources from flapping.

Runs that wait for their key (per-key concurrency, :mod:`~cued.daemon.runtime.keys`) are
not in these queues but count for backpressure too: a flooded key pauses the sources before
its waiting runs grow without end.

Waiting runs stay on disk: each pipeline keeps at most ``window`` of its new runs *loaded*
(ready to start, their rows in memory); the runs behind them are *cold*, their rows in the
store until the window runs low and the runner loads the next ones (:meth:`take`,
:meth:`settle`). Memory does not grow with the cold runs: each lane keeps a *count* of
them and a *cursor*, the id of the last of its runs that went into memory; the cold ones
are the lane's runs in the store past the cursor, read in order by an index (the store's
``next_waiting``). Only a few runs wait cold by their id (16 bytes each, :class:`ColdIds`):
those the store's read of a lane would not find past its cursor (admitted by their key as
another of it left, started before and resumed, or older than the cursor).

A run that has started before is loaded when its turn comes like the others. Order is
kept: a pipeline's runs wait in lanes by priority (0 to 9), the highest first; within a
lane the loaded runs come first, then those known by id, then those in the store, each in
the order they came.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio

from cued.daemon.core.ids import id_from_bytes, id_to_bytes
from cued.daemon.core.priorities import DEFAULT_PRIORITY, PRIORITIES

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["Backlog", "ColdIds", "Taken", "live_ids"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Taken:
    """Cold runs of a pipeline taken out to be loaded (:meth:`Backlog.take`), in order:
    those known by id (``ids``), and per lane the number to read from the store past its
    cursor (``stored``: ``(priority, after, count)``, the highest priority first)."""

    ids: list[str]
    stored: list[tuple[int, str, int]]

    def __bool__(self) -> bool:
        return bool(self.ids or self.stored)


@dataclass
class _Lane:
    """A lane's cold runs: those in the store past ``after`` (``stored`` of them), and
    those known by id."""

    ids: ColdIds = field(default_factory=lambda: ColdIds())
    stored: int = 0
    after: str = ""
    """The id of the last run of the lane that went into memory (its runs at or before it
    are loaded, started, or known by id)."""
    last: str = ""
    """The id of the last run counted (those past it in the store are not: recorded while
    the pipeline was paused, say)."""

    def __len__(self) -> int:
        return len(self.ids) + self.stored


class Backlog(Generic[T]):
    """Runs waiting to start, one queue per pipeline, in lanes by priority.

    :param high_water: saturated once this many runs wait
    :param low_water: accepting again once fewer than this wait
    :param window: new runs of a pipeline kept loaded at most; the rest are ids only
    """

    def __init__(self, high_water: int, low_water: int, window: int = 1_000) -> None:
        if not 0 <= low_water < high_water:
            raise ValueError(f"need 0 <= low_water < high_water, got {low_water}, {high_water}")
        if window < 1:
            raise ValueError(f"need window >= 1, got {window}")
        self.high_water = high_water
        self.low_water = low_water
        self.window = window
        self._queues: dict[str, dict[int, deque[T]]] = {}
        self._cold: dict[str, dict[int, _Lane]] = {}
        # cold runs taken out (cancelled): each stays in its queue until it comes to the
        # front, where it is passed over
        self._removed: Counter[str] = Counter()
        # the lanes whose cold runs are being read: they wait still (none of a lower
        # priority starts meanwhile)
        self._reading: dict[str, set[int]] = {}
        self._depth = 0
        self._saturated = False
        self._accepting = anyio.Event()
        self._accepting.set()
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def depth(self) -> int:
        """How many runs wait (loaded, cold, or being loaded)."""
        return self._depth

    @property
    def loaded(self) -> int:
        """How many waiting runs are loaded (in memory, ready to start), over all pipelines."""
        return sum(len(q) for lanes in self._queues.values() for q in lanes.values())

    def loaded_of(self, pipeline: str) -> int:
        """How many waiting runs of ``pipeline`` are loaded."""
        return sum(len(q) for q in self._queues.get(pipeline, {}).values())

    def cold_of(self, pipeline: str, priority: int | None = None) -> int:
        """How many waiting runs of ``pipeline`` (of one priority, if given) are cold, an
        upper bound: ids taken out are counted until they reach the front, and runs of the
        store's cancelled or claimed by another node meanwhile until they are read."""
        lanes = self._cold.get(pipeline, {})
        if priority is not None:
            return len(lanes.get(priority, ()))
        return sum(len(ids) for ids in lanes.values())

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

    def has_room(self, pipeline: str, priority: int = DEFAULT_PRIORITY) -> bool:
        """Whether a new run of ``pipeline`` is kept loaded (else it goes cold): nothing of
        its priority is cold, and its window is not full."""
        return not self.cold_of(pipeline, priority) and self.loaded_of(pipeline) < self.window

    def wants_load(self, pipeline: str) -> bool:
        """Whether cold runs of ``pipeline`` are to be loaded now: its window is half empty,
        or its highest waiting priority has cold runs only (they start before any other)."""
        if not self.cold_of(pipeline):
            return False
        if self.loaded_of(pipeline) <= self.window // 2:
            return True
        top = self._top(pipeline)
        return top is not None and not self._queues.get(pipeline, {}).get(top)

    def _top(self, pipeline: str) -> int | None:
        """The highest priority with runs of ``pipeline`` waiting (loaded or cold)."""
        loaded, cold = self._queues.get(pipeline, {}), self._cold.get(pipeline, {})
        reading = self._reading.get(pipeline, ())
        return next((p for p in PRIORITIES if loaded.get(p) or cold.get(p) or p in reading), None)

    def push(self, pipeline: str, item: T, priority: int = DEFAULT_PRIORITY) -> None:
        """A loaded run waits (a new one only if :meth:`has_room`)."""
        self._queues.setdefault(pipeline, {}).setdefault(priority, deque()).append(item)
        self._grew()

    def push_cold(self, pipeline: str, run_id: str, priority: int = DEFAULT_PRIORITY) -> None:
        """A recorded run waits by its id, its row in the store only."""
        self._lane(pipeline, priority).ids.append(run_id)
        self._grew()

    def push_stored(self, pipeline: str, run_id: str, priority: int = DEFAULT_PRIORITY) -> None:
        """A recorded run that never started and counts for no key's limit waits in the
        store: counted only, if the store's read of its lane finds it past the cursor (as
        a new run's id sorts after every other), else by its id."""
        lane = self._lane(pipeline, priority)
        if run_id > lane.after:
            lane.stored += 1
            lane.last = max(lane.last, run_id)
        else:
            lane.ids.append(run_id)
        self._grew()

    def recount(self, pipeline: str, priority: int = DEFAULT_PRIORITY) -> None:
        """One more run waits in the store past the lane's cursor: a read took a run that
        was recorded but not yet counted (intake hands a run over after its commit) in the
        place of one that was."""
        self._lane(pipeline, priority).stored += 1
        self._grew()

    def passed(self, pipeline: str, run_id: str, priority: int = DEFAULT_PRIORITY) -> None:
        """A run of the lane that never started went into memory without waiting cold (its
        pipeline had room): the store's reads of the lane start after it."""
        lane = self._lane(pipeline, priority)
        lane.after = max(lane.after, run_id)

    def is_stored(self, pipeline: str, run_id: str, priority: int) -> bool:
        """Whether the run (one that never started and counts for no key's limit) may be
        one of the lane's runs counted in the store: some are, and its id is past the
        lane's cursor and not past the last counted."""
        lane = self._cold.get(pipeline, {}).get(priority)
        return lane is not None and lane.stored > 0 and lane.after < run_id <= lane.last

    def remove_stored(self, pipeline: str, run_id: str, priority: int) -> bool:
        """Take out a run of the store's that was cancelled there: False if it is not one
        this backlog counts (its id is not past its lane's cursor)."""
        if not self.is_stored(pipeline, run_id, priority):
            return False
        self._cold[pipeline][priority].stored -= 1
        self._shrank()
        return True

    def _lane(self, pipeline: str, priority: int) -> _Lane:
        lanes = self._cold.setdefault(pipeline, {})
        lane = lanes.get(priority)
        if lane is None:
            lane = lanes[priority] = _Lane()
        return lane

    def pop(self, pipeline: str) -> T | None:
        """The next loaded run of ``pipeline``: the oldest of the highest priority; None if
        none is loaded, or the highest priority waiting has cold runs only (they are to be
        loaded first)."""
        top = self._top(pipeline)
        queue = self._queues.get(pipeline, {}).get(top) if top is not None else None
        if not queue:
            return None
        item = queue.popleft()
        self._shrank()
        return item

    def cold_ids(self, pipeline: str) -> list[str]:
        """The ids of ``pipeline``'s cold runs known by id (a copy: for an unpause)."""
        return live_ids(
            (i for lane in self._cold.get(pipeline, {}).values() for i in lane.ids.ids()),
            self._removed,
        )

    def is_cold(self, run_id: str) -> bool:
        """Whether the run waits cold by its id (a scan of the ids: for a cancel or a
        lookup, not for every run)."""
        found = sum(
            lane.ids.count(run_id) for lanes in self._cold.values() for lane in lanes.values()
        )
        return found > self._removed[run_id]

    def remove_cold(self, run_id: str) -> bool:
        """Take a cold run out (cancelled); False if it is not cold."""
        if not self.is_cold(run_id):
            return False
        self._removed[run_id] += 1
        self._shrank()
        return True

    def take_cold(self, pipeline: str, count: int) -> list[str]:
        """Take the next ``count`` cold runs of ``pipeline`` known by id out, the highest
        priority first, the oldest first within one (those of the store stay)."""
        return self.take(pipeline, count, stored=False).ids

    def take(self, pipeline: str, count: int, *, stored: bool = True) -> Taken:
        """Take the next ``count`` cold runs of ``pipeline`` out, the highest priority
        first, within one those known by id first, then those of the store, to be loaded:
        they still count as waiting until :meth:`settle` or :meth:`dropped` (a lane's
        cursor moves as :meth:`read` says what its read found)."""
        lanes = self._cold.get(pipeline, {})
        taken = Taken([], [])
        left = count
        reading = self._reading.setdefault(pipeline, set())
        for priority in PRIORITIES:
            lane = lanes.get(priority)
            if not lane:
                continue
            reading.add(priority)
            cold = lane.ids
            while cold and left:
                run_id = cold.popleft()
                if self._removed[run_id]:
                    self._removed[run_id] -= 1
                    if not self._removed[run_id]:
                        del self._removed[run_id]
                else:
                    taken.ids.append(run_id)
                    left -= 1
            if stored and lane.stored and left:
                asked = min(left, lane.stored)
                lane.stored -= asked
                left -= asked
                taken.stored.append((priority, lane.after, asked))
            if not left:
                break
        return taken

    def loaded_all(self, pipeline: str) -> None:
        """What :meth:`take` took out of ``pipeline``'s lanes is loaded (or dropped)."""
        self._reading.pop(pipeline, None)

    def read(self, pipeline: str, priority: int, asked: int, found: list[str]) -> None:
        """The store's read of a lane taken out (:meth:`take`) found these runs, in order:
        the cursor moves past them; those asked for and not found were cancelled there, or
        claimed by another node, and wait no more."""
        if found:
            lane = self._lane(pipeline, priority)
            lane.after = max(lane.after, found[-1])
        for _ in range(asked - len(found)):
            self._shrank()

    def settle(self, pipeline: str, item: T, priority: int = DEFAULT_PRIORITY) -> None:
        """A run taken out of the cold ones is loaded: it waits at the end of the loaded
        runs of its priority."""
        self._queues.setdefault(pipeline, {}).setdefault(priority, deque()).append(item)

    def dropped(self) -> None:
        """A run taken out of the cold ones is not to start after all (cancelled, gone)."""
        self._shrank()

    def remove(self, pipeline: str, predicate: Callable[[T], bool]) -> T | None:
        """Take out the first loaded item of ``pipeline`` for which ``predicate`` holds."""
        for queue in self._queues.get(pipeline, {}).values():
            for item in queue:
                if predicate(item):
                    queue.remove(item)
                    self._shrank()
                    return item
        return None

    def count_elsewhere(self, delta: int) -> None:
        """``delta`` more (or fewer) runs wait outside the pipelines' queues, for their key
        (:mod:`~cued.daemon.runtime.keys`): they count for backpressure all the same."""
        for _ in range(delta):
            self._grew()
        for _ in range(-delta):
            self._shrank()

    def _grew(self) -> None:
        self._depth += 1
        if not self._saturated and self._depth >= self.high_water:
            self._set(True)

    def _shrank(self) -> None:
        self._depth -= 1
        if self._saturated and self._depth < self.low_water:
            self._set(False)

    def _set(self, saturated: bool) -> None:
        self._saturated = saturated
        if saturated:
            self._accepting = anyio.Event()
        else:
            self._accepting.set()
        for listener in self._listeners:
            listener(saturated)


def live_ids(ids: Iterable[str], removed: Counter[str]) -> list[str]:
    """``ids`` in order, less those taken out (each counted in ``removed`` is passed over
    once, as a queue passes it over when it comes to the front)."""
    left = Counter(removed)
    kept: list[str] = []
    for run_id in ids:
        if left[run_id]:
            left[run_id] -= 1
        else:
            kept.append(run_id)
    return kept


class ColdIds:
    """A queue of run ids, 16 bytes each (as :func:`~cued.daemon.core.ids.new_id` makes
    them; any other id is kept as it is, beside): a hundred thousand waiting runs cost
    1.6 MB, not the 12 MB of strings in a deque."""

    _ODD = b"\xff" * 16  # no packed id starts so: their top two bits are zero

    def __init__(self) -> None:
        self._data = bytearray()
        self._head = 0
        self._odd: deque[str] = deque()

    def __len__(self) -> int:
        return (len(self._data) - self._head) // 16

    def append(self, run_id: str) -> None:
        packed = id_to_bytes(run_id)
        if packed is None:
            self._odd.append(run_id)
            packed = self._ODD
        self._data += packed

    def popleft(self) -> str:
        if not self:
            raise IndexError("no cold id")
        packed = bytes(self._data[self._head : self._head + 16])
        self._head += 16
        if self._head >= 65_536 and self._head * 2 >= len(self._data):
            del self._data[: self._head]  # now and then, not per id: amortised
            self._head = 0
        return self._odd.popleft() if packed == self._ODD else id_from_bytes(packed)

    def ids(self) -> list[str]:
        odd = iter(self._odd)
        data = self._data
        return [
            next(odd)
            if data[at : at + 16] == self._ODD
            else id_from_bytes(bytes(data[at : at + 16]))
            for at in range(self._head, len(data), 16)
        ]

    def count(self, run_id: str) -> int:
        packed = id_to_bytes(run_id)
        if packed is None:
            return self._odd.count(run_id)
        found, at = 0, self._data.find(packed, self._head)
        while at != -1:
            if (at - self._head) % 16 == 0:
                found += 1
            at = self._data.find(packed, at + 1)
        return found
