"""Intake: events in, recorded with the runs they start in one transaction, then handed to
the runner. The only way events enter the daemon.

Order of work for a batch of events (one call of :meth:`DaemonIntake.record`):

1. drop events already recorded (a redelivery after a crash or a rebalance: same id);
2. match each against its source's triggers (pure, :mod:`cued.daemon.triggers`), and drop
   matches whose dedupe key fired within its window;
3. submit event rows, run rows, dedupe keys and the source's cursor as *one* submission,
   which the store commits in one transaction, and wait for the commit;
4. hand the new runs to the runner; return receipts, and the source acknowledges.

Steps 1-3 hold a lock, and ids stay "pending" until their commit, so two deliveries of the
same event racing each other start its runs once.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import anyio

from .errors import CuedError
from .sources import Receipt
from .store import CursorRow, DedupeRow, EventRow, now
from .triggers import Match, match

if TYPE_CHECKING:
    from .config import Config
    from .runner import Runner
    from .sources import Event
    from .store import Row, RunRow, Store

__all__ = ["DaemonIntake"]


class DaemonIntake:
    """Records events and starts the runs their triggers ask for.

    :param config: triggers come from here
    :param runner: new runs go here (and its backlog says whether sources may send more)
    :param store: where events, runs and dedupe keys are recorded
    """

    def __init__(self, config: Config, runner: Runner, store: Store) -> None:
        self._runner = runner
        self._store = store
        self._triggers: dict[str, list[Any]] = defaultdict(list)
        for trigger in config.triggers:
            self._triggers[trigger.source].append(trigger)
        self._lock = anyio.Lock()
        self._pending_ids: set[str] = set()
        self._pending_keys: set[tuple[str, str]] = set()
        self.received: dict[str, int] = defaultdict(int)

    def accepting(self) -> bool:
        return self._runner.backlog.accepting()

    async def wait_accepting(self) -> None:
        await self._runner.backlog.wait_accepting()

    async def cursor(self, source: str) -> str | None:
        return await self._store.get_cursor(source)

    async def record(self, events: list[Event], *, cursor: str | None = None) -> list[Receipt]:
        if not events and cursor is None:
            return []
        async with self._lock:
            ids = [e.event_id for e in events]
            known = await self._store.known_events(ids) | (self._pending_ids & set(ids))
            stamp = now()
            plans: list[tuple[Event, list[Match] | None, list[str]]] = []
            wanted_keys: list[tuple[str, str]] = []
            for event in events:
                if event.event_id in known:
                    plans.append((event, None, []))
                    continue
                known.add(event.event_id)  # a second copy within this batch is a duplicate
                if event.error is not None:
                    plans.append((event, [], []))
                    continue
                matches, notes = match(self._triggers.get(event.source, ()), event)
                wanted_keys.extend(
                    (m.trigger, m.dedupe_key) for m in matches if m.dedupe_key is not None
                )
                plans.append((event, matches, notes))
            seen = await self._store.dedupe_seen(wanted_keys) if wanted_keys else {}

            rows: list[Row] = []
            runs: list[RunRow] = []
            receipts: list[Receipt] = []
            keys: set[tuple[str, str]] = set()
            for event, fired, notes in plans:
                if fired is None:
                    receipts.append(Receipt(event.event_id, "duplicate"))
                    continue
                started, errors = self._start_runs(event, fired, seen, keys, stamp, rows)
                errors = [*([event.error] if event.error else []), *notes, *errors]
                status = "invalid" if event.error else ("matched" if started else "unmatched")
                runs.extend(started)
                run_ids = tuple(r.run_id for r in started)
                error = "; ".join(errors) or None
                rows.append(
                    EventRow(
                        event.event_id,
                        event.source,
                        event.received_at or stamp,
                        status,
                        event.data,
                        event.meta,
                        run_ids,
                        error,
                    )
                )
                receipts.append(Receipt(event.event_id, status, run_ids, error))
                self.received[event.source] += 1
            if cursor is not None and events:
                rows.append(CursorRow(events[0].source, cursor, stamp))
            rows.extend(runs)
            new_ids = {e.event_id for e, m, _ in plans if m is not None}
            self._pending_ids |= new_ids
            self._pending_keys |= keys
            durable = self._store.submit(rows)
        try:
            await durable.wait()
        finally:
            self._pending_ids -= new_ids
            self._pending_keys -= keys
        for run in runs:
            self._runner.enqueue(run)
        return receipts

    def _start_runs(
        self,
        event: Event,
        matches: list[Match],
        seen: dict[tuple[str, str], float],
        keys: set[tuple[str, str]],
        stamp: float,
        rows: list[Row],
    ) -> tuple[list[RunRow], list[str]]:
        started: list[RunRow] = []
        errors: list[str] = []
        for m in matches:
            if m.error is not None:
                errors.append(m.error)
                continue
            if m.dedupe_key is not None:
                pair = (m.trigger, m.dedupe_key)
                last = seen.get(pair)
                if (
                    pair in keys
                    or pair in self._pending_keys
                    or (last is not None and stamp - last < m.dedupe_window_s)
                ):
                    errors.append(
                        f"trigger {m.trigger!r}: duplicate of key {m.dedupe_key!r} within its window"
                    )
                    continue
                keys.add(pair)
                rows.append(DedupeRow(m.trigger, m.dedupe_key, stamp))
            try:
                started.append(self._runner.new_run(m.pipeline, m.inputs, event_id=event.event_id))
            except CuedError as exc:
                errors.append(f"trigger {m.trigger!r}: {exc}")
        return started, errors
