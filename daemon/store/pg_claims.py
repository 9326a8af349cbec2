"""Claims of waiting runs on PostgreSQL: a run that waits for a slot is driven by the node
that claims it, whichever recorded it.

A node records its runs (``run_owners`` names it) and reads its waiting runs a few at a
time as slots free, each read a *claim*: in one transaction, fenced by the node's
generation like every commit of its, the next waiting runs of a pipeline's priority lane
are locked ``FOR UPDATE SKIP LOCKED`` and moved to the node (``run_owners.node``), marked
claimed by its generation (``run_owners.claimed``). A node with a free slot and nothing of
its own waiting claims the next runs of any node the same way (``anyone``): a run recorded
on a busy node is driven by an idle one.

The claim is the guard against a run started twice: a run is driven only by the node whose
claim holds (its generation, which it is while the node is alive: a node that restarts or
is adopted has a new one, and what it had claimed is claimable again). Two nodes claiming at
once skip each other's locked rows; a row claimed meanwhile is checked again as it is
locked (its ``claimed`` changed), and passed over. A run that holds a slot across the nodes
already (``run_slots``: its node took one, and died before it recorded the start) is its
node's to go on with, never claimed. Runs that count for a key's limit stay with their
node, which admits them by key (:mod:`~cued.daemon.runtime.keys`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg

from cued.daemon.errors import Fenced
from cued.daemon.store import pg_nodes

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["claim_by_id", "claim_next"]

_ME = "SELECT 1 FROM nodes WHERE node = $1 AND generation = $2 AND alive = 1 FOR SHARE"
# no live node holds a claim on it, and it holds no slot across the nodes
_CLAIMABLE = """
    NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node = o.node AND n.generation = o.claimed)
    AND NOT EXISTS (SELECT 1 FROM run_slots s WHERE s.run_id = o.run_id)
"""
# the candidates are locked first (others' locked ones skipped), then claimed by a
# statement of their own: its snapshot sees every claim committed before the locks were
# taken (a check in the locking statement would not: a claim committed meanwhile is
# checked again only on the row itself, not on the node it names)
_NEXT = f"""
SELECT o.run_id FROM runs r JOIN run_owners o ON o.run_id = r.run_id
WHERE r.pipeline = $1 AND r.priority = $2 AND r.state = 'queued'
    AND r.started_at IS NULL AND (r.key_limit IS NULL OR r.flow_key IS NULL)
    AND r.run_id > $3 AND ($6 OR o.node = $5) AND {_CLAIMABLE}
ORDER BY r.run_id LIMIT $4
FOR UPDATE OF o SKIP LOCKED
"""
_BY_ID = """
SELECT run_id FROM run_owners WHERE run_id = ANY($1::text[]) FOR UPDATE SKIP LOCKED
"""
_CLAIM = f"""
UPDATE run_owners o SET node = $1, claimed = $2 FROM runs r
WHERE r.run_id = o.run_id AND o.run_id = ANY($3::text[]) AND (
    o.node = $1 AND NOT $4
    OR r.state = 'queued' AND r.started_at IS NULL AND {_CLAIMABLE})
RETURNING o.run_id
"""


async def claim_next(
    db: Any,
    node: str,
    generation: int,
    pipeline: str,
    priority: int,
    *,
    after: str,
    limit: int,
    anyone: bool,
) -> list[str]:
    """Claim the next waiting runs of a pipeline's lane for ``node`` (see the module's
    docstring); their ids, oldest first.

    :raises Fenced: if the node's row is no longer its own, alive
    """
    args = (pipeline, priority, after, limit, node, anyone)
    return await _claim(db, node, generation, _NEXT, args, lane=True)


async def claim_by_id(db: Any, node: str, generation: int, run_ids: Sequence[str]) -> list[str]:
    """Claim the runs of ``run_ids`` for ``node`` that are its own, or no live node's and
    never started; their ids.

    :raises Fenced: if the node's row is no longer its own, alive
    """
    return await _claim(db, node, generation, _BY_ID, (list(run_ids),), lane=False)


async def _claim(
    db: Any, node: str, generation: int, lock: str, args: tuple[Any, ...], *, lane: bool
) -> list[str]:
    try:
        async with db.transaction():
            if await db.fetchval(_ME, node, generation) is None:
                raise Fenced(
                    f"node {node!r} (generation {generation}) lost its lease to another node"
                )
            locked = [r[0] for r in await db.fetch(lock, *args)]
            if not locked:
                return []
            # of a lane: each one as claimable; by id: the node's own ones too
            rows = await db.fetch(_CLAIM, node, generation, locked, lane)
    except asyncpg.PostgresError as exc:
        if pg_nodes.is_fenced(exc):
            raise Fenced(str(exc)) from exc
        raise
    return sorted(str(r[0]) for r in rows)
