"""A group commit on SQLite: the statements of a batch (one per table, over all its rows:
:mod:`cued.daemon.store._sqlite_bulk`; each row's parameters read once per row class), its
claimed events, and the transaction that writes them, on the writing connection's thread."""

from __future__ import annotations

import sqlite3
import typing
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from cued.daemon.store import EventRow, RunRow
from cued.daemon.store._selects import _chunks
from cued.daemon.store._sqlite_bulk import put_rows
from cued.daemon.store.rowjson import dumps

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import aiosqlite

    from cued.daemon.store import Row
    from cued.daemon.store._batch import _Batch

_UPSERT_RUN = """
INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET state = excluded.state, started_at = excluded.started_at,
    ended_at = excluded.ended_at, error = excluded.error
"""
_PUT_INSTANCE = "INSERT OR REPLACE INTO task_instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_DELETE_INSTANCE = "DELETE FROM task_instances WHERE run_id = ? AND key = ?"
_PUT_APPROVAL = "INSERT OR REPLACE INTO approvals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_PUT_DECISION = "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# a wait settles once: what is no longer waiting changes only to be marked applied (its
# run went on), so an event and a deadline racing each other settle it one way
_WAIT_SETTLES = """
ON CONFLICT (run_id, key, attempt) DO UPDATE SET state = excluded.state,
    event_id = excluded.event_id, output = excluded.output,
    settled_at = excluded.settled_at, scanned = excluded.scanned, applied = excluded.applied
WHERE (waits.state = 'waiting' AND (excluded.state <> 'waiting' OR excluded.scanned > waits.scanned))
    OR (waits.state = excluded.state AND excluded.applied > waits.applied)
"""
# the first event to ask keeps the request; it changes only to be marked done
_PUT_CANCEL = """
INSERT INTO run_cancels VALUES (?, ?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET done = excluded.done WHERE excluded.done > run_cancels.done
"""
_PUT_WAIT = (
    "INSERT INTO waits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" + _WAIT_SETTLES
)
_PUT_ATTEMPT = "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# an alert already queued keeps its place and its history: only its delivery is updated
_PUT_OUTBOX = """
INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (alert_id) DO UPDATE SET sent_at = excluded.sent_at, attempts = excluded.attempts,
    last_error = excluded.last_error, next_at = excluded.next_at
WHERE excluded.attempts > 0
"""
_PUT_LOG_LINE = "INSERT OR REPLACE INTO task_logs VALUES (?, ?, ?, ?, ?, ?, ?)"
_TRIM_LOG = "DELETE FROM task_logs WHERE run_id = ? AND key = ? AND attempt = ? AND seq < ?"
_PUT_EVENT = "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_CLAIM_EVENT = (
    "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)
_PUT_DEDUPE = "INSERT OR REPLACE INTO dedupe_keys VALUES (?, ?, ?)"
_PUT_CURSOR = "INSERT OR REPLACE INTO source_cursors VALUES (?, ?, ?)"
_PUT_WINDOW = "INSERT OR REPLACE INTO flow_windows VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_PUT_HOLD = "INSERT OR REPLACE INTO flow_holds VALUES (?, ?, ?, ?)"
_PUT_THROTTLE = "INSERT OR REPLACE INTO flow_throttles VALUES (?, ?, ?, ?)"
# a window's events settled in one statement (the fields of WindowSettled: ?1 window_id,
# ?2 run_id, ?3 note, ?4 gone), before its holds go: see WindowSettled
_SETTLE_WINDOW = """
UPDATE events SET
    run_ids = CASE WHEN ?2 IS NULL THEN run_ids ELSE json_insert(run_ids, '$[#]', ?2) END,
    error = CASE WHEN error IS NULL THEN ?3 ELSE error || '; ' || ?3 END,
    status = CASE
        WHEN NOT ?4 OR EXISTS (
            SELECT 1 FROM flow_holds o WHERE o.event_id = events.event_id AND o.window_id <> ?1
        ) THEN 'held'
        WHEN ?2 IS NOT NULL OR json_array_length(run_ids) > 0 THEN 'matched'
        ELSE 'dropped'
    END
WHERE event_id IN (SELECT event_id FROM flow_holds WHERE window_id = ?1)
"""
_HOLDS_GONE = "DELETE FROM flow_holds WHERE window_id = ?"
_WINDOW_GONE = "DELETE FROM flow_windows WHERE window_id = ?"

# Row fields held as JSON text; every other field is stored as it is. A row's fields are
# in the order of its table's columns.
_JSON_FIELDS = frozenset(
    {"inputs", "data", "meta", "run_ids", "payload", "usage", "approvers", "context", "starts"}
)

_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


class _Statement(NamedTuple):
    """One statement of a commit, run for each row of ``params``."""

    sql: str
    params: list[tuple[Any, ...]]
    floats: tuple[int, ...] = ()
    """Where a row's parameters may hold a float."""

    def run(self, conn: sqlite3.Connection) -> None:
        put_rows(conn, self.sql, self.params, self.floats)


_Claimed = list[tuple[str, tuple[Any, ...], list[tuple[Any, ...]]]]
"""Each claimed event of a commit: its id, its row's parameters, its runs' parameters."""


def _claimed_work(batch: _Batch) -> _Claimed:
    events, runs = batch.claimed()
    by_event: dict[str | None, list[tuple[Any, ...]]] = {}
    for run in runs:
        by_event.setdefault(run.event_id, []).append(_params(run))
    return [(e.event_id, _params(e), by_event.get(e.event_id, [])) for e in events]


def _statements(batch: _Batch) -> list[_Statement]:
    """The statements of ``batch``'s transaction, each with its rows' parameters (but the
    claimed events' and their runs': :func:`_claimed_work`)."""
    work: list[_Statement] = []
    if batch.gone:
        work.append(_Statement(_DELETE_INSTANCE, [(g.run_id, g.key) for g in batch.gone.values()]))
    events, runs = batch.unclaimed()
    for rows, sql in (
        (runs, _UPSERT_RUN),
        (batch.instances.values(), _PUT_INSTANCE),
        (batch.attempts.values(), _PUT_ATTEMPT),
        (events, _PUT_EVENT),
        (batch.dedupe.values(), _PUT_DEDUPE),
        (batch.cursors.values(), _PUT_CURSOR),
        (batch.outbox.values(), _PUT_OUTBOX),
        (batch.approvals.values(), _PUT_APPROVAL),
        (batch.decisions.values(), _PUT_DECISION),
        (batch.waits.values(), _PUT_WAIT),
        (batch.cancels.values(), _PUT_CANCEL),
        (batch.log_lines.values(), _PUT_LOG_LINE),
        # after the lines: a line of this batch below the cut goes too
        (batch.log_trims.values(), _TRIM_LOG),
        (batch.windows.values(), _PUT_WINDOW),
        (batch.holds.values(), _PUT_HOLD),
        (batch.throttles.values(), _PUT_THROTTLE),
    ):
        if rows:
            work.append(_rows_of(sql, rows))
    # after the events and holds; each window's holds go before the next window is
    # settled, which then sees whether another window still holds an event of both
    for settled in batch.settled.values():
        work.append(_Statement(_SETTLE_WINDOW, [_params(settled)]))
        if settled.gone:
            work.append(_Statement(_HOLDS_GONE, [(settled.window_id,)]))
    if batch.windows_gone:
        gone = [(g.window_id,) for g in batch.windows_gone.values()]
        work += [_Statement(_HOLDS_GONE, gone), _Statement(_WINDOW_GONE, gone)]
    return work


def _rows_of(sql: str, rows: Iterable[Row]) -> _Statement:
    """``sql`` over ``rows`` (not empty, of one class)."""
    params = [_params(row) for row in rows]
    return _Statement(sql, params, _floats(type(next(iter(rows)))))


def _write_all(
    db: aiosqlite.Connection, work: list[_Statement], claimed: _Claimed
) -> set[str] | None:
    """On the writing connection's thread: every statement of a group commit, then the
    commit. Returns the claimed events that were stored already (written neither they
    nor their runs); ``None``, with nothing written, if the file stayed locked by another
    program."""
    conn = db._conn
    duplicates: set[str] = set()
    try:
        for statement in work:
            statement.run(conn)
        if claimed:
            # with the file's write lock (taken by the writes above, or here): no other
            # writer's event can come between what this reads and what it writes
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            for chunk in _chunks([event_id for event_id, _, _ in claimed]):
                marks = ",".join("?" * len(chunk))
                found = conn.execute(
                    f"SELECT event_id FROM events WHERE event_id IN ({marks})", chunk
                )
                duplicates.update(event_id for (event_id,) in found)
            fresh = [c for c in claimed if c[0] not in duplicates]
            events = [event for _, event, _ in fresh]
            runs = [run for _, _, runs in fresh for run in runs]
            put_rows(conn, _CLAIM_EVENT, events, _floats(EventRow))
            put_rows(conn, _UPSERT_RUN, runs, _floats(RunRow))
        conn.commit()
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode not in _BUSY:
            raise
        conn.rollback()
        return None
    return duplicates


def _params(row: Row) -> tuple[Any, ...]:
    read = _READERS.get(type(row))
    if read is None:
        read = _READERS[type(row)] = _reader(type(row))
    return read(row)


_READERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}
"""How to read each row class's parameters: worked out once per class, as every row of a
commit goes through here."""


def _reader(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    names: tuple[str, ...] = getattr(cls, "__slots__")  # noqa: B009 - mypy knows none on type
    fields: Callable[[Any], tuple[Any, ...]] = (
        attrgetter(*names) if len(names) > 1 else (lambda row: (getattr(row, names[0]),))
    )
    encoded = [i for i, name in enumerate(names) if name in _JSON_FIELDS]
    if not encoded:
        return fields

    def read(row: Any) -> tuple[Any, ...]:
        values = list(fields(row))
        for i in encoded:
            values[i] = dumps(values[i])
        return tuple(values)

    return read


_FLOATS: dict[type, tuple[int, ...]] = {}


def _floats(cls: type) -> tuple[int, ...]:
    """Where the parameters of a row of ``cls`` may hold a float (its fields typed so, but
    the JSON ones, which are text by then); worked out once per class."""
    found = _FLOATS.get(cls)
    if found is None:
        names: tuple[str, ...] = getattr(cls, "__slots__")  # noqa: B009 - as _reader
        try:
            hints = typing.get_type_hints(cls)
        except NameError:  # a type named for type checkers only: every field is looked at
            found = tuple(range(len(names)))
        else:
            found = tuple(
                i
                for i, name in enumerate(names)
                if name not in _JSON_FIELDS
                and float in (hints[name], *typing.get_args(hints[name]))
            )
        _FLOATS[cls] = found
    return found
