"""Nodes on PostgreSQL: several daemons share one database, each owning its runs through a
lease that it renews, by the database's clock (no node trusts its own).

- **Joining**: a daemon registers under its node name with a new generation (from a
  sequence: unique in the database). A name whose row is alive and whose lease has not
  lapsed is in use: the joiner waits for the lease, and is refused if it is renewed.
  The joiner owns what its name owned (its previous incarnation's unfinished runs) and
  the unfinished runs nobody owns (copied from SQLite, or recorded by the CLI).
- **Owning**: every unfinished run has a row in ``run_owners`` naming its node; the
  node's group commit adds it for the runs it records, and removes it as they finish.
- **Fencing**: every group commit of a node locks its own row (``FOR SHARE``) and fails
  the whole commit (:func:`cued_fenced`, in the same statement) unless the row is still
  there, of its generation, and alive. Adoption locks the dead node's row ``FOR UPDATE``
  and deletes it in the transaction that takes its runs, so the two are serialized: a
  commit is either before the adoption (and the adopter reads what it wrote) or fails.
- **Run slots**: ``max_active_runs`` holds across the nodes: a run takes one of its
  pipeline's slots (``run_slots``, counted under a lock of the pipeline's) before it is
  driven, and gives it back in the commit that records it ended or parked. A run that
  asks and finds none free waits in the same table; the oldest runs waiting on live
  nodes take the slots first, whichever node asks first (no node starves the others).
  A dead node's slots go with its runs to the adopter.
- **Key and pool slots**, alike: a run of a trigger's key with a concurrency limit takes
  one of its key's slots (``key_slots``) before its pipeline's, the waiting runs of the
  highest priority first, then the oldest; a task attempt of a pool takes one of the
  pool's (``pool_slots``), the first to ask first. The commit that records the run ended
  or parked gives its key slot back; the one that records the attempt's end, its pool
  slot. A commit that frees a slot others wait for wakes them (``NOTIFY`` on
  :data:`SLOTS_CHANNEL`, as it commits). A dead node's pool slots are freed when it is
  adopted (its attempts ran there), and its key slots too but those of runs holding a
  run slot, which go on with them on the adopter at once.
- **Adopting**: on each renewal, a node learns when the next other node's lease lapses
  (or that one left); it looks again then (not only at its next renewal), takes those
  nodes' runs in one transaction and resumes them as after a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from cued.daemon.errors import Fenced, StoreError
from cued.daemon.store.pg_notify import SLOTS_CHANNEL
from cued.daemon.store.rows import NodeRow

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "FENCED_SQLSTATE",
    "adopt",
    "fence_sql",
    "freed_slots_sql",
    "is_fenced",
    "join",
    "leave",
    "list_nodes",
    "owners_sql",
    "renew",
    "take_key_slot",
    "take_pool_slot",
    "take_run_slot",
]

#: The SQLSTATE ``cued_fenced`` raises (pg_migrations.py).
FENCED_SQLSTATE = "CUF01"

_NOW = "extract(epoch FROM clock_timestamp())::float8"
_UNFINISHED = "('queued', 'running')"
_NOT_ENDED = "('queued', 'running', 'waiting')"
# a node whose runs are someone else's to take: it left, or its lease lapsed
_GONE = f"(n.alive = 0 OR n.expires_at < {_NOW})"

_REGISTER = f"""
INSERT INTO nodes VALUES ($1, nextval('node_generations'), 1, $2, $3, $4::float8, {_NOW}, {_NOW},
    {_NOW} + $4)
ON CONFLICT (node) DO UPDATE SET generation = excluded.generation, alive = 1,
    host = excluded.host, pid = excluded.pid, lease_s = excluded.lease_s,
    started_at = excluded.started_at, renewed_at = excluded.renewed_at,
    expires_at = excluded.expires_at
WHERE nodes.alive = 0 OR nodes.expires_at < excluded.started_at OR nodes.generation = $5
RETURNING *
"""
# the unfinished runs nobody owns (copied from SQLite, or recorded without a daemon)
_CLAIM_ORPHANS = f"""
INSERT INTO run_owners SELECT run_id, $1 FROM runs r WHERE state IN {_NOT_ENDED}
    AND NOT EXISTS (SELECT 1 FROM run_owners o WHERE o.run_id = r.run_id)
ON CONFLICT (run_id) DO NOTHING
"""
# and in how many seconds the next other node's lease lapses (0: one is gone already)
_RENEW = f"""
UPDATE nodes SET renewed_at = {_NOW}, expires_at = {_NOW} + lease_s
WHERE node = $1 AND generation = $2 AND alive = 1
RETURNING (SELECT min(CASE WHEN n.alive = 0 THEN 0.0
                           ELSE greatest(n.expires_at - {_NOW}, 0.0) END)
           FROM nodes n WHERE n.node <> $1)
"""
_ME = "SELECT 1 FROM nodes WHERE node = $1 AND generation = $2 AND alive = 1 FOR SHARE"
_GONE_NODES = f"SELECT node FROM nodes n WHERE node <> $1 AND {_GONE} FOR UPDATE SKIP LOCKED"
_TAKE = "UPDATE run_owners SET node = $1 WHERE node = ANY($2::text[]) RETURNING run_id"
_FORGET_WAITERS = "DELETE FROM run_slots WHERE node = ANY($1::text[]) AND held = 0"
# a gone node's attempts ran there: their pool slots are free; its runs' key slots too,
# but those of the runs that hold their run slot (resumed at once, holding both)
_FREE_POOLS = "DELETE FROM pool_slots WHERE node = ANY($1::text[])"
_FREE_KEYS = """
DELETE FROM key_slots k WHERE node = ANY($1::text[]) AND (held = 0 OR NOT EXISTS (
    SELECT 1 FROM run_slots s WHERE s.run_id = k.run_id AND s.held = 1))
"""
_TO_RESUME = f"""
SELECT run_id FROM runs WHERE run_id = ANY($1::text[]) AND state IN {_UNFINISHED}
ORDER BY run_id
"""
_LEAVE = f"""
UPDATE nodes SET alive = 0, expires_at = {_NOW} WHERE node = $1 AND generation = $2
"""
_LIST = f"""
SELECT n.*, n.expires_at < {_NOW},
    (SELECT count(*) FROM run_owners o JOIN runs r USING (run_id)
     WHERE o.node = n.node AND r.state IN {_NOT_ENDED})
FROM nodes n ORDER BY n.node
"""


def fence_sql(node: str, generation: int, args: list[Any]) -> tuple[str, str]:
    """A group commit's fence: the ``WITH`` part that locks the node's row, and the final
    ``SELECT`` that fails the whole statement unless the row is the node's, alive.
    Appends its two arguments to ``args``."""
    args += [node, generation]
    n, g = len(args) - 1, len(args)
    fence = (
        f"fence AS (SELECT 1 FROM nodes WHERE node = ${n} AND generation = ${g} "
        "AND alive = 1 FOR SHARE)"
    )
    check = f"SELECT CASE WHEN EXISTS (SELECT 1 FROM fence) THEN 1 ELSE cued_fenced(${n}, ${g}) END"
    return fence, check


def owners_sql(node: str | None, run_rows: Sequence[Any], args: list[Any]) -> list[str]:
    """The ``WITH`` parts that keep ``run_owners`` and ``run_slots`` in step with the
    runs of a group commit: a run not ended is owned by ``node`` (if nobody owns it yet;
    one it drives, in any case; ``None``: a commit of no node, the CLI's), an ended one
    by nobody; one that ended or parked holds no slot. Appends their arguments to
    ``args``."""
    going = [r.run_id for r in run_rows if r.state in ("queued", "waiting")]
    driven = [r.run_id for r in run_rows if r.state == "running"]
    ended = [r.run_id for r in run_rows if r.state not in ("queued", "running", "waiting")]
    idle = [r.run_id for r in run_rows if r.state not in ("queued", "running")]
    parts = []
    if going and node is not None:
        args += [going, node]
        parts.append(
            f"INSERT INTO run_owners SELECT unnest(${len(args) - 1}::text[]), ${len(args)} "
            "ON CONFLICT (run_id) DO NOTHING"
        )
    if driven and node is not None:
        # a run is the node's that drives it (one parked elsewhere and resumed here by a
        # decision, say): it is the one to resume if this node goes
        args += [driven, node]
        parts.append(
            f"INSERT INTO run_owners SELECT unnest(${len(args) - 1}::text[]), ${len(args)} "
            "ON CONFLICT (run_id) DO UPDATE SET node = excluded.node "
            "WHERE run_owners.node <> excluded.node"
        )
    if ended:
        args.append(ended)
        parts.append(f"DELETE FROM run_owners WHERE run_id = ANY(${len(args)}::text[])")
    if idle:
        args.append(idle)
        parts.append(f"DELETE FROM run_slots WHERE run_id = ANY(${len(args)}::text[])")
    return parts


def freed_slots_sql(
    run_rows: Sequence[Any],
    pool_holders: Sequence[tuple[str, str, int]],
    token: str | None,
    args: list[Any],
) -> list[str]:
    """The named ``WITH`` parts of a group commit that free key and pool slots: those of
    the runs of a key (``run_rows``) that ended or parked, those of ``pool_holders`` (the
    attempts that ended, and any of those runs); and, if ``token`` (the node's, for its
    notices), one that wakes whoever waits for what they free, on :data:`SLOTS_CHANNEL`,
    once it commits. The statement's final ``SELECT`` must read ``notified`` (one row),
    if it is there. Appends their arguments to ``args``."""
    idle = [
        r.run_id
        for r in run_rows
        if r.state not in ("queued", "running") and r.key_limit is not None and r.flow_key
    ]
    steps: list[str] = []
    woken: list[str] = []
    if idle:
        args.append(idle)
        steps.append(
            f"freed_keys AS (DELETE FROM key_slots WHERE run_id = ANY(${len(args)}::text[]) "
            "RETURNING pipeline, key, held)"
        )
        woken.append(
            "SELECT 'key ' || f.pipeline FROM freed_keys f WHERE f.held = 1 AND EXISTS ("
            "SELECT 1 FROM key_slots o WHERE o.pipeline = f.pipeline AND o.key = f.key "
            "AND o.held = 0)"
        )
    if pool_holders:
        args += [[h[0] for h in pool_holders], [h[1] for h in pool_holders]]
        args.append([h[2] for h in pool_holders])
        n = len(args)
        steps.append(
            "freed_pools AS (DELETE FROM pool_slots WHERE (run_id, key, attempt) IN ("
            f"SELECT * FROM unnest(${n - 2}::text[], ${n - 1}::text[], ${n}::bigint[])) "
            "RETURNING pool, held)"
        )
        woken.append(
            "SELECT 'pool ' || f.pool FROM freed_pools f WHERE f.held = 1 AND EXISTS ("
            "SELECT 1 FROM pool_slots o WHERE o.pool = f.pool AND o.held = 0)"
        )
    if woken and token is not None:
        args += [SLOTS_CHANNEL, token]
        n = len(args)
        steps.append(
            f"notified AS (SELECT count(pg_notify(${n - 1}, ${n} || ' ' || w)) "
            f"FROM ({' UNION '.join(woken)}) AS w(w))"
        )
    return steps


async def take_run_slot(
    db: Any, node: str, generation: int, pipeline: str, run_id: str, limit: int
) -> bool:
    """Take one of ``pipeline``'s ``limit`` run slots for ``run_id`` (one it holds
    already is its own still); False if all are taken.

    :raises Fenced: if the node's row is no longer its own, alive
    """
    sql = "SELECT cued_take_run_slot($1, $2, $3, $4, $5)"
    return await _take(db, sql, node, generation, pipeline, run_id, limit)


async def take_key_slot(
    db: Any,
    node: str,
    generation: int,
    at: tuple[str, str, str],
    priority: int,
    limit: int,
) -> bool:
    """Take one of the ``limit`` slots of a pipeline's key for a run (``at``: the
    pipeline, the key and the run; one it holds already is its own still); False if all
    are taken.

    :raises Fenced: if the node's row is no longer its own, alive
    """
    sql = "SELECT cued_take_key_slot($1, $2, $3, $4, $5, $6, $7)"
    return await _take(db, sql, node, generation, *at, priority, limit)


async def take_pool_slot(
    db: Any, node: str, generation: int, pool: str, holder: tuple[str, str, int], limit: int
) -> bool:
    """Take one of ``pool``'s ``limit`` slots for a task attempt (``holder``: its run,
    task instance and attempt; one it holds already is its own still); False if all are
    taken.

    :raises Fenced: if the node's row is no longer its own, alive
    """
    sql = "SELECT cued_take_pool_slot($1, $2, $3, $4, $5, $6, $7)"
    return await _take(db, sql, node, generation, pool, *holder, limit)


async def _take(db: Any, sql: str, *args: Any) -> bool:
    try:
        taken = await db.fetchval(sql, *args)
    except asyncpg.PostgresError as exc:
        if is_fenced(exc):
            raise Fenced(str(exc)) from exc
        raise
    return bool(taken)


async def join(
    db: Any,
    node: str,
    *,
    lease_s: float,
    host: str,
    pid: int,
    where: str,
    replacing: int | None = None,
) -> NodeRow:
    """Register ``node`` with a new generation (see the module's docstring).

    A row of the name that is alive is waited for until its lease lapses (a daemon
    killed and started again at once finds its own), unless it is renewed meanwhile.

    :param replacing: this process's own generation before it lost the database: its
        row is taken over at once, lease or not (that incarnation stopped its tasks and
        can write no more), with its runs, unless another node adopted them meanwhile

    :raises StoreError: if a live node of that name renews its lease
    """
    seen: tuple[int, float] | None = None
    while True:
        async with db.transaction():
            row = await db.fetchrow(_REGISTER, node, host, pid, lease_s, replacing)
            if row is not None:
                await db.execute(_CLAIM_ORPHANS, node)
                # its runs that waited for a slot ask again when their turn comes here
                # (a waiter that asks no more would hold back every later run)
                await db.execute(_FORGET_WAITERS, [node])
                await db.execute(_FREE_POOLS, [node])
                await db.execute(_FREE_KEYS, [node])
                return NodeRow.read(row)
            other = await db.fetchrow(
                f"SELECT generation, renewed_at, expires_at - {_NOW}, host, pid "
                "FROM nodes WHERE node = $1",
                node,
            )
        if other is None:
            continue  # it left meanwhile
        generation, renewed_at, left_s, other_host, other_pid = other
        if seen is not None and seen != (generation, renewed_at):
            raise StoreError(
                f"node {node!r} is running already in {where!r} (host {other_host!r}, "
                f"pid {other_pid}): give this daemon another [daemon] node"
            )
        seen = (generation, renewed_at)
        await anyio.sleep(max(0.0, float(left_s)) + 0.05)


async def renew(db: Any, node: str, generation: int) -> float | None:
    """Renew the lease; in how many seconds the next other node's lease lapses (0.0: one
    is gone, its runs are to be adopted; None: there is no other node).

    :raises Fenced: if the node's row is no longer its own, alive
    """
    row = await db.fetchrow(_RENEW, node, generation)
    if row is None:
        raise Fenced(f"node {node!r} (generation {generation}) lost its lease to another node")
    return None if row[0] is None else float(row[0])


async def adopt(db: Any, node: str, generation: int) -> list[str]:
    """Take the runs of the nodes that are gone (deleting their rows, which fences them);
    the ids of those to resume, oldest first.

    :raises Fenced: if the node's own row is no longer its own, alive
    """
    async with db.transaction():
        if await db.fetchval(_ME, node, generation) is None:
            raise Fenced(f"node {node!r} (generation {generation}) lost its lease to another node")
        gone = [r[0] for r in await db.fetch(_GONE_NODES, node)]
        if not gone:
            return []
        # a statement of its own, after the rows are locked: its snapshot has every run
        # their last commits recorded
        taken = [r[0] for r in await db.fetch(_TAKE, node, gone)]
        await db.execute(_FORGET_WAITERS, gone)
        await db.execute(_FREE_POOLS, gone)
        await db.execute(_FREE_KEYS, gone)
        await db.execute("UPDATE run_slots SET node = $1 WHERE node = ANY($2::text[])", node, gone)
        await db.execute("UPDATE key_slots SET node = $1 WHERE node = ANY($2::text[])", node, gone)
        await db.execute("DELETE FROM nodes WHERE node = ANY($1::text[])", gone)
        return [r[0] for r in await db.fetch(_TO_RESUME, taken)]


async def leave(db: asyncpg.Connection, node: str, generation: int) -> None:
    """Mark the node gone at once (a clean stop): others adopt its runs at their next
    renewal, without waiting for its lease."""
    await db.execute(_LEAVE, node, generation)


async def list_nodes(db: Any) -> list[NodeRow]:
    """Every node, by name, with the runs it owns (``db``: a connection or the pool)."""
    return [NodeRow.read(r, bool(r[9]), int(r[10])) for r in await db.fetch(_LIST)]


def is_fenced(exc: BaseException) -> bool:
    """Whether a commit failed because the node was fenced."""
    return isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == FENCED_SQLSTATE
