"""Retention: what the ``[retention]`` table lets go, and the daemon's task that prunes it.

The daemon prunes once when it has started, then every ``prune_every``; ``cued prune``
does it on demand. The store deletes in small transactions that take turns with every
other write (:meth:`cued.daemon.store.rows.Store.prune`).

What goes (an age of ``0`` keeps that kind for ever):

* finished runs that ended more than ``runs`` ago, with their task instances, attempts,
  approval gates and decisions; a run not finished, or parked at an approval gate, stays;
* events received more than ``events`` ago. Each age means what it says: a run kept
  longer than its event keeps the event's id, and shows that the event is gone. (Keeping
  events while a run refers to them would make ``events`` mean nothing whenever runs are
  kept longer, and payloads are what takes the room.) An event id is forgotten with its
  event: a redelivery of it after that (a webhook retried for a month) counts as new;
* dedupe keys past their trigger's ``dedupe_window``, when they can no longer stop a run
  (keys of a trigger no longer configured: past the longest window configured);
* alerts raised more than ``alerts`` ago that were sent, or given up on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from cued.daemon.core.ids import now
from cued.daemon.errors import StoreError
from cued.daemon.logs import get_logger
from cued.daemon.store import PrunePolicy

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.config import Config
    from cued.daemon.store import PruneCounts, Store

__all__ = ["policy", "prune_periodically", "report"]

_DEFAULT_DEDUPE_WINDOW_S = 86400.0  # TriggerConfig's default


def policy(config: Config, at: float) -> PrunePolicy:
    """What ``config`` lets go at the time ``at`` (seconds since the epoch)."""
    retention = config.retention
    windows: dict[str, float] = {}
    for trigger in config.triggers:
        if trigger.dedupe is not None:
            windows[trigger.ref] = max(trigger.dedupe_window, windows.get(trigger.ref, 0.0))
    longest = max([_DEFAULT_DEDUPE_WINDOW_S, *windows.values()])

    def before(age_s: float) -> float | None:
        return None if age_s == 0 else at - age_s

    return PrunePolicy(
        runs_before=before(retention.runs),
        events_before=before(retention.events),
        alerts_before=before(retention.alerts),
        dedupe_before={key: at - window for key, window in windows.items()},
        dedupe_other_before=at - longest,
    )


def report(policy: PrunePolicy, counts: PruneCounts, *, dry_run: bool) -> dict[str, Any]:
    """What a prune did (or would do), as the API answers it and the CLI prints it."""
    return {
        "dry_run": dry_run,
        "cutoffs": {
            "runs": policy.runs_before,
            "events": policy.events_before,
            "alerts": policy.alerts_before,
            "dedupe_keys": dict(policy.dedupe_before),
            "dedupe_keys_other": policy.dedupe_other_before,
        },
        "counts": counts.as_dict(),
    }


async def prune_periodically(
    config: Config,
    store: Store,
    *,
    clock: Callable[[], float] = now,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Prune now, then every ``[retention] prune_every``, until cancelled. A failed prune
    is logged and tried again next time: retention must not stop the daemon."""
    log = get_logger()
    task_status.started()
    while True:
        try:
            pruned = await store.prune(policy(config, clock()))
        except StoreError as exc:
            log.error("prune_failed", error=str(exc))
        else:
            (log.info if pruned.total else log.debug)("pruned", **pruned.as_dict())
        await anyio.sleep(config.retention.prune_every)
