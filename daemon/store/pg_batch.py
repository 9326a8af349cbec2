"""A PostgreSQL commit's SQL: the whole batch of a group commit as one statement.

Each table's rows go as one array per column (``unnest``), inserted or updated by key
(``ON CONFLICT``), with what the batch's joins ask of the database in the same statement:
the dedupe keys other daemons may be taking at once, the flow-control holds and windows
(:mod:`~cued.daemon.store.pg_flow`), the slots freed. One round trip per commit; the
store (:mod:`~cued.daemon.store.postgresql`) sends it on the writer's connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from cued.daemon.store import (
    ApprovalRow,
    AttemptRow,
    CancelRow,
    CursorRow,
    DecisionRow,
    DedupeClaim,
    DedupeRow,
    EventRow,
    HoldRow,
    InstanceRow,
    LogLineRow,
    OutboxRow,
    RunRow,
    ThrottleRow,
    WaitRow,
    WindowRow,
    pg_nodes,
)
from cued.daemon.store._sqlite_commit import _params

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from cued.daemon.store import Row
    from cued.daemon.store._batch import _Batch

__all__ = ["PUT_PAUSE", "batch_sql", "outbox_row", "pg_text"]


def pg_text(value: Any) -> Any:
    """``value`` as PostgreSQL keeps it: text holds no NUL character, so one becomes
    U+FFFD."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _pg_params(row: Row) -> list[Any]:
    return [pg_text(v) for v in _params(row)]


# The type of each column, by name (every table names its columns alike): for the arrays
# a batch's rows are sent in
_FLOATS = frozenset(
    {"created_at", "started_at", "ended_at", "updated_at", "received_at", "seen_at",
     "sent_at", "next_at", "requested_at", "deadline_at", "decided_at", "at", "cost",
     "paused_at", "lookback_from", "opened_at", "settled_at", "due_at", "held_at",
     "expires_at"}
)  # fmt: skip
_INTS = frozenset(
    {
        "map_index",
        "attempts",
        "retry_base",
        "attempt",
        "min_approvals",
        "seq",
        "config_version",
        "scanned",
        "applied",
        "done",
        "key_limit",
        "priority",
        "parent_attempt",
        "held",
    }
)


def _type(column: str) -> str:
    return "float8" if column in _FLOATS else "int8" if column in _INTS else "text"


@dataclass(frozen=True)
class _Put:
    """An upsert of a table's rows: a row already there takes the new values of
    ``update`` (all but the key by default, as SQLite's ``INSERT OR REPLACE``)."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    update: tuple[str, ...] | None = None
    where: str = ""

    def sql(self, source: str, *, new_only: bool = False) -> str:
        """The upsert of the rows ``source`` selects (``new_only``: the insert of those
        whose key is not there yet, which leaves the others as they are)."""
        conflict = f"ON CONFLICT ({', '.join(self.key)}) DO "
        if new_only:
            return (
                f"INSERT INTO {self.table} ({', '.join(self.columns)}) {source} {conflict}NOTHING"
            )
        changed = self.update or tuple(c for c in self.columns if c not in self.key)
        sets = ", ".join(f"{c} = excluded.{c}" for c in changed)
        return (
            f"INSERT INTO {self.table} ({', '.join(self.columns)}) {source} "
            f"{conflict}UPDATE SET {sets}{self.where}"
        )

    def of_rows(self, rows: Iterable[Row], args: list[Any]) -> str:
        """The upsert of ``rows``, whose columns it appends to ``args`` as arrays."""
        return self.sql(f"SELECT * FROM {_unnest(self.columns, rows, args)}")


def _unnest(columns: tuple[str, ...], rows: Iterable[Row], args: list[Any]) -> str:
    """``unnest($n::type[], ...)`` of ``rows``, one array per column appended to ``args``."""
    marks = []
    for column, values in zip(
        columns, zip(*(_pg_params(r) for r in rows), strict=True), strict=True
    ):
        args.append(list(values))
        marks.append(f"${len(args)}::{_type(column)}[]")
    return f"unnest({', '.join(marks)})"


def _put(row: type[Row], table: str, key: tuple[str, ...], **kw: Any) -> _Put:
    return _Put(table, getattr(row, "__slots__"), key, **kw)  # noqa: B009 - a record's, unknown to mypy


_PUTS: dict[str, _Put] = {
    "runs": _put(RunRow, "runs", ("run_id",), update=("state", "started_at", "ended_at", "error")),
    "instances": _put(InstanceRow, "task_instances", ("run_id", "key")),
    "attempts": _put(AttemptRow, "attempts", ("run_id", "key", "attempt")),
    "events": _put(EventRow, "events", ("event_id",)),
    "dedupe": _put(DedupeRow, "dedupe_keys", ("trigger", "key")),
    "cursors": _put(CursorRow, "source_cursors", ("source",)),
    # an alert already queued keeps its place and its history: only its delivery changes
    "outbox": _put(
        OutboxRow,
        "outbox",
        ("alert_id",),
        update=("sent_at", "attempts", "last_error", "next_at"),
        where=" WHERE excluded.attempts > 0",
    ),
    "approvals": _put(ApprovalRow, "approvals", ("run_id", "key")),
    "decisions": _put(DecisionRow, "decisions", ("run_id", "key", "attempt", "who")),
    "log_lines": _put(LogLineRow, "task_logs", ("run_id", "seq")),
    # a wait settles once (see the SQLite store's _WAIT_SETTLES)
    "waits": _put(
        WaitRow,
        "waits",
        ("run_id", "key", "attempt"),
        update=("state", "event_id", "output", "settled_at", "scanned", "applied"),
        where=" WHERE (waits.state = 'waiting' AND (excluded.state <> 'waiting' OR "
        "excluded.scanned > waits.scanned)) OR (waits.state = excluded.state AND "
        "excluded.applied > waits.applied)",
    ),
    # the first event to ask keeps the request; it changes only to be marked done
    "cancels": _put(
        CancelRow,
        "run_cancels",
        ("run_id",),
        update=("done",),
        where=" WHERE excluded.done > run_cancels.done",
    ),
    "windows": _put(WindowRow, "flow_windows", ("window_id",)),
    "holds": _put(HoldRow, "flow_holds", ("window_id", "seq")),
    "throttles": _put(ThrottleRow, "flow_throttles", ("trigger", "key")),
}
_EVENT_COLUMNS = _PUTS["events"].columns
_RUN_COLUMNS = _PUTS["runs"].columns
# rows that several daemons on one database write alike (a source's cursor, a trigger's
# dedupe key, a throttled key's slots, a wait, a cancel request): in the same order by
# each, so two commits cannot deadlock on them
_SHARED = frozenset({"cursors", "dedupe", "throttles", "waits", "cancels"})
PUT_PAUSE = _Put("paused_pipelines", ("pipeline", "paused_at", "paused_by"), ("pipeline",)).sql(
    "VALUES ($1, $2, $3)"
)


def batch_sql(
    batch: _Batch,
    me: tuple[str, int] | None = None,
    pool_holders: Sequence[tuple[str, str, int]] = (),
    token: str | None = None,
) -> tuple[str, list[Any]]:
    """The whole batch as one statement (and its arguments): each table's rows upserted
    (or deleted) by a data-modifying ``WITH`` of its own, from one array per column; of a
    node (``me``: its name and generation), fenced, and its runs' owners kept (see
    :mod:`~cued.daemon.store.pg_nodes`), with the key slots of its runs that ended or
    parked and the pool slots of ``pool_holders`` freed (waking the waiters, through
    the notices of ``token``'s).

    One statement is one round trip and, on its own, one transaction: no BEGIN and COMMIT
    of their own. Its parts share one snapshot and do not see each other's rows, which
    holds for a batch: an instance and its removal never both are in one (the batch keeps
    the later), and lines that a trim of the batch cuts are left out of it here.
    """
    args: list[Any] = []
    parts: list[str] = []
    if batch.gone:
        pairs = _unnest(("run_id", "key"), batch.gone.values(), args)
        parts.append(f"DELETE FROM task_instances WHERE (run_id, key) IN (SELECT * FROM {pairs})")
    plain_events, plain_runs = batch.unclaimed()
    # the runs a dedupe key must be free for, and those keys: written apart (see below)
    keyed = _dedupe_claims(batch)
    if keyed:
        plain_runs = [r for r in plain_runs if r.run_id not in keyed]
    unclaimed: dict[str, list[Row]] = {
        "events": [*plain_events],
        "runs": [*plain_runs],
        "dedupe": [
            d for d in batch.dedupe.values() if not keyed or (d.trigger, d.key) not in _keys(keyed)
        ],
    }
    if batch.windows_gone:
        gone = _unnest(("window_id",), batch.windows_gone.values(), args)
        parts.append(f"DELETE FROM flow_holds WHERE window_id IN (SELECT * FROM {gone})")
        parts.append(f"DELETE FROM flow_windows WHERE window_id IN (SELECT * FROM {gone})")
    for name, put in _PUTS.items():
        rows: list[Row] = (
            unclaimed[name] if name in unclaimed else list(getattr(batch, name).values())
        )
        if name in _SHARED:
            rows.sort(key=attrgetter(*put.key))
        if name == "log_lines" and batch.log_trims:
            rows = [line for line in batch.log_lines.values() if not _trimmed(line, batch)]
        if rows:
            parts.append(put.of_rows(rows, args))
    if batch.settled:
        parts.append(_settle_sql(batch, args))
    if batch.log_trims:
        cuts = _unnest(
            ("run_id", "key", "attempt", "seq"),
            batch.log_trims.values(),
            args,
        )
        parts.append(
            f"DELETE FROM task_logs t USING {cuts} AS c(run_id, key, attempt, before_seq) "
            "WHERE t.run_id = c.run_id AND t.key = c.key AND t.attempt = c.attempt "
            "AND t.seq < c.before_seq"
        )
    node = me[0] if me is not None else None
    if plain_runs:
        parts += pg_nodes.owners_sql(node, plain_runs, args)
    steps = [f"s{n} AS ({part})" for n, part in enumerate(parts)]
    if plain_runs or pool_holders:
        steps += pg_nodes.freed_slots_sql(plain_runs, pool_holders, token, args)
    claimed = "'{}'::text[]"
    events, runs = batch.claimed()
    if keyed:
        runs = [r for r in runs if r.run_id not in keyed]
    if events:
        # written only if no event of its id is there: a second writer of one event
        # waits for the first's commit at the unique index, then writes nothing of it
        steps.append(
            "claimed AS ("
            + _PUTS["events"].sql(
                f"SELECT * FROM {_unnest(_EVENT_COLUMNS, events, args)}", new_only=True
            )
            + " RETURNING event_id)"
        )
        if runs:
            source = f"{_unnest(_RUN_COLUMNS, runs, args)} AS u({', '.join(_RUN_COLUMNS)})"
            steps.append(
                "claimed_runs AS ("
                + _PUTS["runs"].sql(
                    f"SELECT * FROM {source} WHERE u.event_id IN (SELECT event_id FROM claimed)"
                )
                + " RETURNING run_id, state)"
            )
            if node is not None:
                # owned by this node: only the runs written, not a losing writer's
                args.append(node)
                steps.append(
                    f"claimed_owners AS (INSERT INTO run_owners SELECT run_id, ${len(args)} "
                    "FROM claimed_runs WHERE state IN ('queued', 'running', 'waiting') "
                    "ON CONFLICT (run_id) DO NOTHING)"
                )
        args.append([e.event_id for e in events])
        claimed = f"ARRAY(SELECT unnest(${len(args)}::text[]) EXCEPT SELECT event_id FROM claimed)"
    lost = "'{}'::text[]"
    if keyed:
        lost = _dedupe_sql(batch, keyed, bool(events), node, steps, args)
    # (a WITH part that changes nothing is run only if read)
    notified = any(step.startswith("notified ") for step in steps)
    final = f"SELECT {claimed}, {lost}" + (" FROM notified" if notified else "")
    if me is not None:
        fence, check = pg_nodes.fence_sql(*me, args)
        steps.insert(0, fence)
        # the fence's check fails the whole statement unless the node is still itself
        final = f"SELECT {claimed}, {lost} FROM ({check}) AS fenced" + (
            ", notified" if notified else ""
        )
    if not steps:
        return final, args
    return f"WITH {', '.join(steps)} {final}", args


def _dedupe_claims(batch: _Batch) -> dict[str, DedupeClaim]:
    """The batch's runs that start only if their dedupe key is free (by run id), with
    their key's row and their run in the batch."""
    return {
        run_id: c
        for run_id, c in batch.dedupe_claims.items()
        if run_id in batch.runs and (c.trigger, c.key) in batch.dedupe
    }


def _keys(keyed: dict[str, DedupeClaim]) -> set[tuple[str, str]]:
    return {(c.trigger, c.key) for c in keyed.values()}


_SKIPPED_AS_DUPLICATE = "duplicate of its dedupe key, which another daemon recorded just before"


def _dedupe_sql(
    batch: _Batch,
    keyed: dict[str, DedupeClaim],
    events_claimed: bool,
    node: str | None,
    steps: list[str],
    args: list[Any],
) -> str:
    """The ``WITH`` parts (appended to ``steps``) that write the keys of ``keyed`` only if
    free, and their runs as asked if the key was, else ``skipped`` as duplicates; the
    expression of the runs skipped so.

    A key is free if no row of it is there (the insert of a key that another writer
    inserts at once waits for that one's commit, then writes nothing), or if its row is
    older than its window (the update of a row that another writer updates at once waits,
    then finds the row young, and writes nothing): of two daemons recording one key at
    once, one starts its run.
    """
    claims = sorted(keyed.values(), key=attrgetter("trigger", "key"))
    seen = [batch.dedupe[c.trigger, c.key].seen_at for c in claims]
    args += [
        [c.trigger for c in claims],
        [c.key for c in claims],
        seen,
        [c.window_s for c in claims],
        [c.run_id for c in claims],
    ]
    n = len(args)
    steps.append(
        f"dedupe_asked AS (SELECT * FROM unnest(${n - 4}::text[], ${n - 3}::text[], "
        f"${n - 2}::float8[], ${n - 1}::float8[], ${n}::text[]) "
        "AS c(trigger, key, seen_at, window_s, run_id))"
    )
    steps.append(
        "dedupe_aged AS (UPDATE dedupe_keys d SET seen_at = c.seen_at FROM dedupe_asked c "
        "WHERE d.trigger = c.trigger AND d.key = c.key AND d.seen_at <= c.seen_at - c.window_s "
        "RETURNING d.trigger, d.key)"
    )
    steps.append(
        "dedupe_new AS (INSERT INTO dedupe_keys (trigger, key, seen_at) "
        "SELECT trigger, key, seen_at FROM dedupe_asked ORDER BY trigger, key "
        "ON CONFLICT (trigger, key) DO NOTHING RETURNING trigger, key)"
    )
    steps.append(
        "dedupe_won AS (SELECT c.run_id FROM dedupe_asked c JOIN (SELECT * FROM dedupe_aged "
        "UNION ALL SELECT * FROM dedupe_new) AS f USING (trigger, key))"
    )
    runs = [batch.runs[c.run_id] for c in claims]
    free = "w.run_id IS NOT NULL"
    args.append(_SKIPPED_AS_DUPLICATE)
    changed = {
        "state": f"CASE WHEN {free} THEN u.state ELSE 'skipped' END",
        "ended_at": f"CASE WHEN {free} THEN u.ended_at ELSE u.created_at END",
        "error": f"CASE WHEN {free} THEN u.error ELSE ${len(args)} END",
    }
    columns = ", ".join(changed.get(c, f"u.{c}") for c in _RUN_COLUMNS)
    source = (
        f"SELECT {columns} FROM {_unnest(_RUN_COLUMNS, runs, args)} "
        f"AS u({', '.join(_RUN_COLUMNS)}) LEFT JOIN dedupe_won w USING (run_id)"
    )
    if events_claimed:
        # a run of an event another daemon recorded first is not written at all
        args.append(sorted(batch.claims))
        source += (
            f" WHERE u.event_id <> ALL(${len(args)}::text[]) "
            "OR u.event_id IN (SELECT event_id FROM claimed)"
        )
    steps.append(f"dedupe_runs AS ({_PUTS['runs'].sql(source)} RETURNING run_id, state)")
    if node is not None:
        args.append(node)
        steps.append(
            f"dedupe_owners AS (INSERT INTO run_owners SELECT run_id, ${len(args)} "
            "FROM dedupe_runs WHERE state IN ('queued', 'running', 'waiting') "
            "ON CONFLICT (run_id) DO NOTHING)"
        )
    return "ARRAY(SELECT run_id FROM dedupe_asked EXCEPT SELECT run_id FROM dedupe_won)"


def _settle_sql(batch: _Batch, args: list[Any]) -> str:
    """The events of the windows the batch settles (see ``WindowSettled``), each
    updated once with what all of them give it: the parts of one statement see the holds
    as they were before it (those of the windows gone too), and update a row only once."""
    settled = list(batch.settled.values())
    args += [
        [s.window_id for s in settled],
        [s.run_id for s in settled],
        [pg_text(s.note) for s in settled],
        [g.window_id for g in batch.windows_gone.values()],
    ]
    n = len(args)
    return (
        "UPDATE events e SET "
        "run_ids = CASE WHEN u.runs IS NULL THEN e.run_ids "
        "ELSE (e.run_ids::jsonb || to_jsonb(u.runs))::text END, "
        "error = CASE WHEN e.error IS NULL THEN u.notes ELSE e.error || '; ' || u.notes END, "
        "status = CASE WHEN EXISTS (SELECT 1 FROM flow_holds o WHERE o.event_id = e.event_id "
        f"AND o.window_id <> ALL(${n}::text[])) THEN 'held' "
        "WHEN u.runs IS NOT NULL OR jsonb_array_length(e.run_ids::jsonb) > 0 THEN 'matched' "
        "ELSE 'dropped' END "
        "FROM (SELECT h.event_id, string_agg(s.note, '; ' ORDER BY s.n) AS notes, "
        "array_agg(s.run_id ORDER BY s.n) FILTER (WHERE s.run_id IS NOT NULL) AS runs "
        f"FROM unnest(${n - 3}::text[], ${n - 2}::text[], ${n - 1}::text[]) "
        "WITH ORDINALITY AS s(window_id, run_id, note, n) "
        "JOIN flow_holds h ON h.window_id = s.window_id GROUP BY h.event_id) AS u "
        "WHERE e.event_id = u.event_id"
    )


def outbox_row(r: tuple[Any, ...]) -> OutboxRow:
    return OutboxRow(r[0], r[1], r[2], json.loads(r[3]), *r[4:])


def _trimmed(line: LogLineRow, batch: _Batch) -> bool:
    trim = batch.log_trims.get((line.run_id, line.key, line.attempt))
    return trim is not None and line.seq < trim.before_seq
