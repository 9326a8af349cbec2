"""Backfill: a source's events of a past span (a schedule's ticks) recorded through intake
as live ones are, a few at a time.

The events come with the ids the live source gives them, so intake drops those recorded
already (by an earlier backfill or by the source itself) as duplicates: a second backfill
of one span starts nothing twice. No cursor moves: the live source goes on from where it
was. At most ``concurrency`` events are recorded at once, and the next ones only once
the runs these started have ended (or wait for a decision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from cued.daemon.sdk.sources import Event, Intake
    from cued.daemon.store import RunRow

__all__ = ["BackfillReport", "record_backfill"]


@dataclass
class BackfillReport:
    """What a backfill did, so far or in all."""

    events: int
    """Events in the span (ticks)."""
    done: int = 0
    """Events handled so far."""
    recorded: int = 0
    duplicates: int = 0
    """Recorded already (an earlier backfill, or the live source): started nothing."""
    run_ids: list[str] = field(default_factory=list)
    ended: dict[str, int] = field(default_factory=dict)
    """The runs started, by the state they ended in."""


async def record_backfill(
    intake: Intake,
    wait: Callable[[str], Awaitable[RunRow]],
    events: Sequence[Event],
    *,
    concurrency: int,
    progress: Callable[[BackfillReport], None] | None = None,
) -> BackfillReport:
    """Record ``events`` ``concurrency`` at a time, each group once the runs of the one
    before have ended; ``progress`` is told after each group.

    :param wait: waits for a run to end (or to wait for a decision)
    :raises StoreError: if a group was not recorded (the groups before it were)
    """
    report = BackfillReport(len(events))
    for first in range(0, len(events), concurrency):
        group = list(events[first : first + concurrency])
        await intake.wait_accepting()
        receipts = await intake.record(group)
        started = [run_id for r in receipts for run_id in r.run_ids]
        report.duplicates += sum(1 for r in receipts if r.status == "duplicate")
        report.recorded += sum(1 for r in receipts if r.status != "duplicate")
        report.run_ids += started
        ended: list[RunRow] = []

        async def see_end(run_id: str, into: list[RunRow] = ended) -> None:
            into.append(await wait(run_id))

        async with anyio.create_task_group() as tg:
            for run_id in started:
                tg.start_soon(see_end, run_id)
        for row in ended:
            report.ended[row.state] = report.ended.get(row.state, 0) + 1
        report.done += len(group)
        if progress is not None:
            progress(report)
    return report
