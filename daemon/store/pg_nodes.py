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
- **Adopting**: on each renewal, a node learns when the next other node's lease lapses
  (or that one left); it looks again then (not only at its next renewal), takes those
  nodes' runs in one transaction and resumes them as after a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from cued.daemon.errors import Fenced, StoreError
from cued.daemon.store.rows import NodeRow

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "FENCED_SQLSTATE",
    "adopt",
    "fence_sql",
    "is_fenced",
    "join",
    "leave",
    "list_nodes",
    "owners_sql",
    "renew",
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


async def take_run_slot(
    db: Any, node: str, generation: int, pipeline: str, run_id: str, limit: int
) -> bool:
    """Take one of ``pipeline``'s ``limit`` run slots for ``run_id`` (one it holds
    already is its own still); False if all are taken.

    :raises Fenced: if the node's row is no longer its own, alive
    """
    sql = "SELECT cued_take_run_slot($1, $2, $3, $4, $5)"
    try:
        taken = await db.fetchval(sql, node, generation, pipeline, run_id, limit)
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
        await db.execute("UPDATE run_slots SET node = $1 WHERE node = ANY($2::text[])", node, gone)
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
