"""The alert outbox shared by several nodes on PostgreSQL: each alert is delivered by one
node, the one that claimed it (``outbox_claims``), never by two live nodes.

- A node's sender claims the alerts due (:data:`CLAIM`) before it sends them: those nobody
  claimed, its own (claimed by its name before a restart), and those of a node that is
  gone (it left, or its lease lapsed). Two nodes claiming one alert at once meet at its
  claim's unique key: the second waits for the first's commit, then finds the claim a
  live node's and leaves the alert out.
- What a node reads to know when to look again (:data:`NOT_ANOTHERS`) leaves out the alerts
  another live node claimed: it never wakes for them. When that node goes, the node that
  adopts its runs looks at the outbox again (see ``Membership``), and so do the others
  at their next look.
- An alert stays claimed until it is sent or given up (its retries are its claimer's); a
  claim goes with its alert when the outbox is pruned.

A node killed (or cut off) between a send and the commit of its ``sent_at`` leaves the
alert claimed and unsent: whoever takes it over sends it again, with the same id. So
delivery is at least once across a node's loss, as across a crash with one node.
"""

from __future__ import annotations

__all__ = ["CLAIM", "NOT_ANOTHERS"]

_NOW = "extract(epoch FROM clock_timestamp())::float8"


def _live(claim: str) -> str:
    return (
        f"EXISTS (SELECT 1 FROM nodes n WHERE n.node = {claim}.node AND n.alive = 1 "
        f"AND n.expires_at >= {_NOW})"
    )


#: The clause (SQLite's ``?`` style, one argument: this node's name) that leaves out an
#: outbox row ``o`` claimed by another live node.
NOT_ANOTHERS = (
    "AND NOT EXISTS (SELECT 1 FROM outbox_claims c WHERE c.alert_id = o.alert_id "
    f"AND c.node <> ? AND {_live('c')})"
)

#: Claim up to $2 alerts due by $1 for node $3, and read them (oldest due first).
CLAIM = f"""
WITH due AS (
    SELECT o.alert_id FROM outbox o WHERE o.sent_at IS NULL AND o.next_at <= $1
    {NOT_ANOTHERS.replace("?", "$3")}
    ORDER BY o.next_at LIMIT $2
), claimed AS (
    INSERT INTO outbox_claims SELECT alert_id, $3 FROM due ORDER BY alert_id
    ON CONFLICT (alert_id) DO UPDATE SET node = excluded.node
    WHERE outbox_claims.node = excluded.node OR NOT {_live("outbox_claims")}
    RETURNING alert_id
)
SELECT o.* FROM outbox o JOIN claimed USING (alert_id) ORDER BY o.next_at
"""
