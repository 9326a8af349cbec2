"""Per-key concurrency: how many runs of one key are active, and which wait for their key.

A trigger with ``concurrency = { limit = N }`` gives each run it starts a key (its ``key``
template rendered on the event, or the trigger's name) and the limit; at most ``N`` runs of
one key of a pipeline are *admitted* at once. An admitted run goes on to the pipeline's
backlog (:mod:`~cued.daemon.runtime.backlog`), where it waits for a run slot like any other
run, or starts. One that is not admitted waits *here*, by its id only (16 bytes, as the
backlog's cold runs), until a run of its key leaves (ends, or parks at a gate): the next of
its key is admitted then, the highest priority first, the oldest first within a priority.

This is what keeps keys fair: a key flooded with runs has at most ``N`` of them in the
pipeline's backlog at any time, so another key's run waits behind at most ``N`` runs of each
busy key, never behind the whole flood. Nothing here does I/O: the runner tells it what
happens, and puts the runs it admits where they belong.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from cued.daemon.core.priorities import PRIORITIES
from cued.daemon.runtime.backlog import ColdIds, live_ids

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["KeyGate", "Released"]

T = TypeVar("T")

Key = tuple[str, str]
"""A pipeline and a flow key: what a limit counts."""


@dataclass(frozen=True, slots=True)
class Released(Generic[T]):
    """A run admitted as a run of its key left: ``run`` is its id (a run that never
    started), or the run itself (one that had started, kept in memory)."""

    run: str | T
    priority: int


@dataclass
class _Waiting(Generic[T]):
    """The runs of one key that wait for it."""

    limit: int
    taken: int = 0
    started: deque[tuple[T, int]] = field(default_factory=deque)
    """Runs that had started before (resumed after a gate): few, kept whole, first."""
    lanes: dict[int, ColdIds] = field(default_factory=dict)
    """Ids of runs that never started, by priority."""

    def __len__(self) -> int:
        return len(self.started) + sum(len(lane) for lane in self.lanes.values())


class KeyGate(Generic[T]):
    """The keys with runs active or waiting, and the runs that wait for their key."""

    def __init__(self) -> None:
        self._keys: dict[Key, _Waiting[T]] = {}
        # waiting ids taken out (cancelled): each is passed over when it comes to the front
        self._removed: Counter[str] = Counter()
        self._held = 0

    @property
    def held(self) -> int:
        """How many runs wait for their key (an upper bound, as the backlog's cold ids)."""
        return self._held

    def taken(self, pipeline: str, key: str) -> int:
        """How many runs of ``key`` are admitted (active, or waiting for a run slot)."""
        found = self._keys.get((pipeline, key))
        return found.taken if found is not None else 0

    def admit(
        self, pipeline: str, key: str, limit: int, run: str | T, priority: int
    ) -> list[Released[T]]:
        """A run of ``key`` comes: the runs admitted now, in order, which are ``run``
        itself if fewer than ``limit`` are admitted and none waits; else ``run`` waits
        here (its id, or the run itself if it had started before).

        :param limit: the run's limit (a reload may change it: the newest one counts)
        """
        found = (pipeline, key)
        waiting = self._keys.setdefault(found, _Waiting(limit))
        waiting.limit = limit
        if waiting.taken < limit and not waiting:
            waiting.taken += 1
            return [Released(run, priority)]
        if isinstance(run, str):
            waiting.lanes.setdefault(priority, ColdIds()).append(run)
        else:
            waiting.started.append((run, priority))
        self._held += 1
        return self._fill(found, waiting)

    def count(self, pipeline: str, key: str, limit: int) -> None:
        """Count a run that is active already (resumed at a restart), whatever the limit."""
        waiting = self._keys.setdefault((pipeline, key), _Waiting(limit))
        waiting.limit = limit
        waiting.taken += 1

    def release(self, pipeline: str, key: str) -> list[Released[T]]:
        """A run of ``key`` left (ended, parked, cancelled before it started): the runs
        admitted in its place, if any wait (more than one if the limit was raised)."""
        found = (pipeline, key)
        waiting = self._keys.get(found)
        if waiting is None:
            return []
        waiting.taken -= 1
        return self._fill(found, waiting)

    def _fill(self, found: Key, waiting: _Waiting[T]) -> list[Released[T]]:
        """Admit waiting runs of a key while it is under its limit."""
        admitted: list[Released[T]] = []
        while waiting.taken < waiting.limit and (next_run := self._next(waiting)) is not None:
            waiting.taken += 1
            admitted.append(next_run)
        if waiting.taken <= 0 and not waiting:
            del self._keys[found]
        return admitted

    def _next(self, waiting: _Waiting[T]) -> Released[T] | None:
        if waiting.started:
            run, priority = waiting.started.popleft()
            self._held -= 1
            return Released(run, priority)
        for priority in PRIORITIES:
            lane = waiting.lanes.get(priority)
            while lane:
                run_id = lane.popleft()
                if self._removed[run_id]:
                    self._removed[run_id] -= 1
                    if not self._removed[run_id]:
                        del self._removed[run_id]
                    continue
                self._held -= 1
                return Released(run_id, priority)
            waiting.lanes.pop(priority, None)
        return None

    def holds(self, run_id: str) -> bool:
        """Whether the run (one that never started) waits for its key: a scan of the ids,
        for a cancel or a lookup, not for every run."""
        found = sum(
            lane.count(run_id) for waiting in self._keys.values() for lane in waiting.lanes.values()
        )
        return found > self._removed[run_id]

    def remove(self, run_id: str) -> bool:
        """Take a waiting run (one that never started) out: cancelled; False if it does
        not wait here."""
        if not self.holds(run_id):
            return False
        self._removed[run_id] += 1
        self._held -= 1
        return True

    def held_ids(self, pipeline: str) -> set[str]:
        """The ids of ``pipeline``'s runs that wait for their key (a copy: for an unpause)."""
        found = (
            run_id
            for (name, _), waiting in self._keys.items()
            if name == pipeline
            for lane in waiting.lanes.values()
            for run_id in lane.ids()
        )
        return set(live_ids(found, self._removed))

    def remove_started(self, predicate: Callable[[T], bool]) -> T | None:
        """Take out the first waiting run that had started for which ``predicate`` holds."""
        for waiting in self._keys.values():
            for entry in waiting.started:
                if predicate(entry[0]):
                    waiting.started.remove(entry)
                    self._held -= 1
                    return entry[0]
        return None

    def waiting_for(self, run_id: str) -> tuple[str, int] | None:
        """The key a run that never started waits for, and its limit; None if it does
        not wait here (a scan, for the faces)."""
        for (_, key), waiting in self._keys.items():
            if any(lane.count(run_id) for lane in waiting.lanes.values()):
                return key, waiting.limit
        return None
