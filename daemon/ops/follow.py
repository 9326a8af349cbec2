"""A run followed as it goes: which task attempts start and end, until the run ends or
parks at an approval gate (``cued trigger --wait``).

The run is read again and again through :class:`~.queries.Queries` (the state file, which
a running daemon writes and WAL lets others read), at an interval that starts short and
grows to ``max_interval_s`` while nothing changes: a face in another process has no other
way to learn of a commit than to read, and this bounds what it costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from cued.daemon.core.states import TERMINAL_RUN_STATES, RunState
from cued.daemon.errors import NotFound

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from cued.daemon.ops.queries import Queries
    from cued.daemon.store import AttemptRow, RunRow

__all__ = ["AttemptEnded", "AttemptStarted", "Change", "RunSettled", "follow"]


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    """A task attempt started (``attempt`` counts from 1)."""

    attempt: AttemptRow


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    """A task attempt ended: ``attempt.state`` says how, ``attempt.error`` why not well."""

    attempt: AttemptRow


@dataclass(frozen=True, slots=True)
class RunSettled:
    """The run ended, or waits for a decision; nothing more follows."""

    run: RunRow


Change = AttemptStarted | AttemptEnded | RunSettled


async def follow(
    queries: Queries,
    run_id: str,
    *,
    min_interval_s: float = 0.05,
    max_interval_s: float = 0.5,
) -> AsyncGenerator[Change, None]:
    """What happens to run ``run_id`` from now on, ending with :class:`RunSettled`.

    Attempts that had started or ended before the first read are given too (a run
    started just before it is followed may be quick).

    :raises NotFound: if there is no such run
    """
    started: set[tuple[str, int]] = set()
    ended: set[tuple[str, int]] = set()
    interval_s = min_interval_s
    while True:
        detail = await queries.run_detail(run_id)
        if detail is None:
            raise NotFound(f"no run {run_id!r}")
        changed = False
        for attempt in detail.attempts:
            at = (attempt.key, attempt.attempt)
            if at not in started:
                started.add(at)
                changed = True
                yield AttemptStarted(attempt)
            if attempt.ended_at is not None and at not in ended:
                ended.add(at)
                changed = True
                yield AttemptEnded(attempt)
        if detail.run.state in TERMINAL_RUN_STATES or detail.run.state == RunState.WAITING:
            yield RunSettled(detail.run)
            return
        interval_s = min_interval_s if changed else min(interval_s * 2, max_interval_s)
        await anyio.sleep(interval_s)
