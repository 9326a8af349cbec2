"""The SELECTs of the listings of runs and events and of the counts (the stores', and also
for benchmarks and for tests of their query plans), and how a stored row is read back."""

from __future__ import annotations

import json
from typing import Any

import orjson

from cued.daemon.core.ids import id_at
from cued.daemon.core.untrusted import stored
from cued.daemon.store import (
    ApprovalRow,
    ConfigVersionRow,
    EventRow,
    RunRow,
    WaitRow,
)

_ID_SLACK_S = 60.0

# an event's columns but its data and meta (see _event_without_data)
_EVENT_WITHOUT_DATA = "e.event_id, e.source, e.received_at, e.status, e.run_ids, e.error"
# one pass over the index runs_by_state, not over the table
COUNT_RUNS_BY_STATE = "SELECT state, count(*) FROM runs GROUP BY state"
# the literal lets SQLite count the partial index approvals_waiting
COUNT_WAITING_APPROVALS = "SELECT count(*) FROM approvals WHERE state = 'waiting'"


_NEVER_STARTED = "state = 'queued' AND started_at IS NULL"
"""A run waiting for its first start (a rerun or a resumed one has started before)."""
_NO_KEY_LIMIT = "(key_limit IS NULL OR flow_key IS NULL)"
"""A run that counts for no key's limit (one that does waits for its key by id)."""


def runs_query(
    *,
    limit: int,
    pipeline: str | None = None,
    state: str | None = None,
    before: str | None = None,
    created_after: float | None = None,
    created_before: float | None = None,
) -> tuple[str, list[Any]]:
    """The SELECT of :meth:`~cued.daemon.store._reads.StoreReads.list_runs` and its
    parameters (also for benchmarks, and for tests of its query plan)."""
    where: list[str] = []
    args: list[Any] = []
    if pipeline:
        where.append("pipeline = ?")
        args.append(pipeline)
    if state:
        where.append("state = ?")
        args.append(state)
    if before is not None:
        where.append("run_id < ?")
        args.append(before)
    # ids sort by creation time: the id bounds (a minute wider than the times, for clocks
    # that stepped between making the id and stamping the row) turn a time range into a
    # range of an index
    if created_after is not None:
        where.append("created_at >= ? AND run_id >= ?")
        args += [created_after, id_at(created_after - _ID_SLACK_S)]
    if created_before is not None:
        where.append("created_at < ? AND run_id < ?")
        args += [created_before, id_at(created_before + _ID_SLACK_S)]
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    return f"SELECT * FROM runs {clause} ORDER BY run_id DESC LIMIT ?", [*args, limit]


def events_query(
    *,
    limit: int,
    source: str | None = None,
    status: str | None = None,
    before: tuple[float, str] | None = None,
) -> tuple[str, list[Any]]:
    """The SELECT of :meth:`~cued.daemon.store._reads.StoreReads.list_events` and its
    parameters."""
    where: list[str] = []
    args: list[Any] = []
    if source:
        where.append("source = ?")
        args.append(source)
    if status:
        where.append("status = ?")
        args.append(status)
    if before is not None:
        where.append("(received_at, event_id) < (?, ?)")
        args += list(before)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    sql = f"SELECT * FROM events {clause} ORDER BY received_at DESC, event_id DESC LIMIT ?"
    return sql, [*args, limit]


def _run(r: Any) -> RunRow:
    # inputs, like event data, came from outside: what an older daemon kept unrepaired
    # (lone surrogates, values nested hundreds deep) must not fail every list of runs
    inputs = stored(r[3])
    return RunRow(
        r[0], r[1], r[2], inputs if isinstance(inputs, dict) else {"stored": inputs}, *r[4:]
    )


def _config_version(r: Any) -> ConfigVersionRow:
    return ConfigVersionRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]))


def _event(r: Any) -> EventRow:
    # data and meta came from outside: what an older daemon kept unrepaired (lone
    # surrogates, values nested hundreds deep) must not fail every page that shows it
    meta = stored(r[5])
    return EventRow(
        r[0],
        r[1],
        r[2],
        r[3],
        stored(r[4]),
        meta if isinstance(meta, dict) else {"stored": meta},
        tuple(orjson.loads(r[6])),  # run ids this daemon wrote
        r[7],
    )


def _event_without_data(r: Any) -> EventRow:
    """An event read by :data:`_EVENT_WITHOUT_DATA`: its data ``None``, its meta empty."""
    return EventRow(r[0], r[1], r[2], r[3], None, {}, tuple(orjson.loads(r[4])), r[5])


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _approval(r: Any) -> ApprovalRow:
    return ApprovalRow(
        r[0],
        r[1],
        r[2],
        r[3],
        tuple(json.loads(r[4])),
        r[5],
        r[6],
        stored(r[7]),  # rendered from event data
        r[8],
        r[9],
        r[10],
        r[11],
    )


def _wait(r: Any) -> WaitRow:
    return WaitRow(
        r[0], r[1], r[2], r[3], r[4], r[5],
        stored(r[6]),  # context: what match reads, event data among it
        r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15], r[16],
    )  # fmt: skip


def _chunks(items: list[str], size: int = 500) -> list[list[str]]:
    # SQLite caps the number of parameters of one statement
    return [items[i : i + size] for i in range(0, len(items), size)]
