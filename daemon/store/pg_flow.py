"""Flow control across nodes: the windows and throttle slots of a PostgreSQL database
that several daemons share are the database's, not a node's.

Two kinds of transaction touch a trigger's key, and each holds the key's lock (an advisory
lock of the transaction, on the key's hash) while it reads and writes:

* a commit that records events held (:class:`~cued.daemon.store.FlowJoin`): it waits for
  the locks of its keys (in one order, so two commits cannot deadlock), reads the open
  window of each from the database, whichever node opened it, and decides with
  :func:`cued.daemon.core.flow.gather` which window each event joins or opens, then writes
  the holds, the windows and the events in the same statement;
* a release (:func:`release`): it takes the locks of the keys whose windows are due that
  no other transaction holds now (``pg_try_advisory_xact_lock``: it never waits, so it
  cannot deadlock with a commit), reads those windows again under the locks, and writes
  their runs, their events' notes, the throttle slots and the windows gone in the same
  transaction. Whichever node's timer comes first releases a window; the next finds it
  gone.

The decisions stay in :mod:`cued.daemon.core.flow` (Python, with the rows read under the
lock), not in SQL: they are the ones a single node makes, tested once; a lock is needed
anyway, since a window that does not exist yet has no row to lock. A node killed with a
window open leaves it in the database, where another node's timer releases it when due.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from cued.daemon.core.flow import Window, gather
from cued.daemon.core.ids import new_id
from cued.daemon.store.pg_notify import FROM_A_COMMIT
from cued.daemon.store.rows import EventRow, HoldRow, WindowRow

if TYPE_CHECKING:
    from collections.abc import Callable

    import asyncpg

    from cued.daemon.store.rows import FlowJoin, Row

__all__ = ["FLOW_CHANNEL", "join", "release", "tell_due"]

#: Where a commit that writes windows tells every node when the earliest is due.
FLOW_CHANNEL = "cued_flow"
_TELL = f"SELECT pg_notify('{FLOW_CHANNEL}', '{FROM_A_COMMIT} ' || $1::text)"

#: The first key of the keys' advisory locks (``cuef`` in ASCII): a space of their own,
#: apart from the one-key locks of the daemon and of the config versions.
_SPACE = int.from_bytes(b"cuef", "big")
_HASH = "hashtext(t || chr(31) || k)"
_KEYS = "unnest($1::text[], $2::text[]) AS u(t, k)"
# in the order of the hashes, so that two commits take the locks they share alike
_LOCK = (
    f"SELECT pg_advisory_xact_lock({_SPACE}, h) "
    f"FROM (SELECT DISTINCT {_HASH} AS h FROM {_KEYS} ORDER BY h) AS s"
)
_TRY_LOCK = f"SELECT t, k FROM {_KEYS} WHERE pg_try_advisory_xact_lock({_SPACE}, {_HASH})"
# the keys' open windows, then (window_id alone) the claimed events recorded already: one
# round trip, after the locks (a statement reads what was committed when it began)
_OPEN = (
    f"SELECT w.* FROM flow_windows w JOIN {_KEYS} ON w.trigger = u.t AND w.key = u.k "
    "WHERE w.phase = 'open' AND w.kind <> 'delay' UNION ALL "
    "SELECT event_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM events "
    "WHERE event_id = ANY($3::text[])"
)
_DUE_KEYS = (
    "SELECT trigger, key FROM flow_windows WHERE due_at IS NOT NULL AND due_at <= $1 "
    "ORDER BY due_at, window_id LIMIT $2"
)
_DUE = (
    f"SELECT w.* FROM flow_windows w JOIN {_KEYS} ON w.trigger = u.t AND w.key = u.k "
    "WHERE w.due_at IS NOT NULL AND w.due_at <= $3 ORDER BY w.due_at, w.window_id LIMIT $4"
)
_HOLDS = (
    "SELECT h.*, e.* FROM flow_holds h LEFT JOIN events e USING (event_id) "
    "WHERE h.window_id = ANY($1::text[]) ORDER BY h.window_id, h.seq"
)
_SLOTS = f"SELECT f.trigger, f.key, f.starts FROM flow_throttles f JOIN {_KEYS} ON f.trigger = u.t AND f.key = u.k"


def _keys(pairs: set[tuple[str, str]]) -> tuple[list[str], list[str]]:
    ordered = sorted(pairs)
    return [t for t, _ in ordered], [k for _, k in ordered]


async def tell_due(db: asyncpg.Connection, due: list[float]) -> None:
    """Tell every node's timer, once the transaction commits (and only then, whatever
    becomes of the node that wrote them), when the earliest of windows ``due`` is due."""
    if due:
        await db.execute(_TELL, repr(min(due)))


def due_of(rows: list[Row]) -> list[float]:
    """When the windows of ``rows`` are due."""
    return [r.due_at for r in rows if isinstance(r, WindowRow) and r.due_at is not None]


async def join(
    db: asyncpg.Connection,
    joins: list[FlowJoin],
    claims: set[str],
    add: Callable[[Row], None],
) -> None:
    """Decide where each of ``joins`` is held, with the windows the database has, and
    ``add`` the holds and windows to the commit (in the transaction that records the
    events, which holds the keys' locks until it ends).

    :param claims: the events the commit records only if no node has (``EventClaim``)
    """
    keys = _keys({(j.trigger, j.key) for j in joins})
    await db.execute(_LOCK, *keys)
    written: list[Row] = []
    opened: list[float | None] = []
    """When the windows opened, or closed (a full batch), are due: a window that an
    event moves later wakes a timer at its old time, which finds the new one."""
    # an event another node recorded first (a source's redelivery) it holds already: the
    # commit does not write this node's copy (its claim), nor its hold here; that node's
    # commit held the key's lock too, so it is committed by now
    claimed = [j.event_id for j in joins if j.event_id in claims]
    recorded: set[str] = set()
    windows: dict[tuple[str, str], Window | None] = {}
    kinds: dict[str, str] = {}
    for r in await db.fetch(_OPEN, *keys, claimed):
        if r[1] is None:
            recorded.add(r[0])
            continue
        found = WindowRow(*r)
        windows[found.trigger, found.key] = Window(
            found.window_id, found.opened_at, found.due_at, found.held
        )
        kinds[found.window_id] = found.kind
    for j in joins:
        if j.event_id in recorded:
            continue
        name = (j.trigger, j.key)
        joined = windows.get(name)
        # most events join the window being filled: an id only for a new one
        fresh = joined is None or j.rule.collects is None
        window, hold = gather(j.rule, joined, j.at, new_id() if fresh else "")
        windows[name] = window
        kind = kinds.setdefault(hold.window_id, hold.kind)
        if fresh or hold.phase == "closed":
            opened.append(hold.due_at)
        add(HoldRow(hold.window_id, hold.seq, j.event_id, j.at))
        written.append(
            WindowRow(
                hold.window_id,
                j.trigger,
                j.key,
                kind,
                hold.phase,
                hold.opened_at,
                hold.due_at,
                hold.seq,
            )
        )
    for window_row in written:
        add(window_row)
    await tell_due(db, [due for due in opened if due is not None])


async def release(
    db: asyncpg.Connection,
    at: float,
    limit: int,
    max_events: int,
    read_event: Callable[[Any], EventRow],
) -> tuple[
    list[WindowRow],
    dict[str, list[tuple[HoldRow, EventRow | None]]],
    dict[tuple[str, str], tuple[float, ...]],
]:
    """Claim up to ``limit`` windows due by ``at`` (holding ``max_events`` events at most,
    but for the first) whose keys no other transaction holds (their locks are this
    transaction's until it ends): the windows, the events each holds (whole), and the
    throttle slots of their keys."""
    due = {(str(r[0]), str(r[1])) for r in await db.fetch(_DUE_KEYS, at, limit)}
    if not due:
        return [], {}, {}
    locked = {(str(r[0]), str(r[1])) for r in await db.fetch(_TRY_LOCK, *_keys(due))}
    if not locked:
        return [], {}, {}
    keys = _keys(locked)
    windows: list[WindowRow] = []
    events = 0
    for r in await db.fetch(_DUE, *keys, at, limit):
        window = WindowRow(*r)
        if windows and events + window.held > max_events:
            break  # the rest at the next turn: what a release reads back stays bounded
        windows.append(window)
        events += window.held
    holds: dict[str, list[tuple[HoldRow, EventRow | None]]] = {}
    for r in await db.fetch(_HOLDS, [w.window_id for w in windows]):
        hold = HoldRow(*r[:4])
        holds.setdefault(hold.window_id, []).append(
            (hold, None if r[4] is None else read_event(tuple(r[4:])))
        )
    starts = {
        (str(r[0]), str(r[1])): tuple(float(s) for s in json.loads(r[2]))
        for r in await db.fetch(_SLOTS, *keys)
    }
    return windows, holds, starts
