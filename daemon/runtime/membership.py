"""This daemon as a node: it joins at start, renews its lease while it runs, and adopts
the runs of nodes that are gone.

On SQLite there is one node, which holds no lease: it joins (``cued nodes`` shows it)
and nothing more. On PostgreSQL (see :mod:`cued.daemon.store.pg_nodes` for the rows and
the fencing):

- at start, before anything is recorded or resumed, the node joins with a new generation
  and adopts the runs of the nodes that are gone (a lease lapsed, or they left), so that
  resuming unfinished runs resumes its own and those, and nobody else's;
- every third of its lease it renews the lease, by the database's clock; a renewal also
  says whether another node is gone, and then the node adopts that node's runs and
  resumes them as after a crash;
- a node that cannot renew its lease before it lapses (the database is unreachable, the
  process was stopped) gives up: its runs are the others' now. Its commits would be
  refused anyway (fencing); the daemon stops the tasks it runs, drops its runs from
  memory and, once the database answers, joins again with a new generation
  (:mod:`cued.daemon.runtime.reconnect`).
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import anyio

from cued.daemon.config.nodes import default_node_name
from cued.daemon.errors import Fenced, StoreError
from cued.daemon.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.config import Config
    from cued.daemon.runtime.runner import Runner
    from cued.daemon.store import NodeRow, Store

__all__ = ["Membership"]

_LOOK_AFTER_S = 0.01
"""How long after another node's lease lapses (as the database told) to look."""
_RETRY_S = (0.1, 1.0)
"""A renewal that failed is tried again after these (doubling), while the lease holds."""


class Membership:
    """The daemon's node: :meth:`join` once, then :meth:`run` beside the runner."""

    def __init__(self, store: Store, config: Config, before: NodeRow | None = None) -> None:
        """:param before: this process's node before it lost the database: the node
        joins again under its name, replacing that generation at once"""
        self.store = store
        self.name = before.node if before is not None else config.daemon.node or default_node_name()
        self.lease_s = config.daemon.lease
        self.row: NodeRow | None = None
        self.on_gone: list[Callable[[], None]] = []
        """Called when another node was found gone and its runs adopted (what it had
        claimed is for the others to take over: its unsent alerts)."""
        self._replacing = before.generation if before is not None else None
        self._log = get_logger().bind(node=self.name)

    async def join(self) -> list[str]:
        """Join, and adopt the runs of the nodes that are gone; their ids (which the
        runner's resumption of unfinished runs reads as this node's own).

        :raises StoreError: if a live node of this name holds its lease
        """
        self.row = await self.store.join(
            self.name,
            lease_s=self.lease_s,
            host=socket.gethostname(),
            pid=os.getpid(),
            replacing=self._replacing,
        )
        self._renewed_at = anyio.current_time()
        adopted = await self.store.adopt()
        # SQLite's one node is news to nobody (and the CLI's own runner says nothing)
        log = self._log.info if self.leased else self._log.debug
        log(
            "node_joined" if self._replacing is None else "node_rejoined",
            generation=self.row.generation,
            lease_s=self.lease_s,
            adopted=len(adopted),
        )
        return adopted

    @property
    def leased(self) -> bool:
        """Whether the node holds a lease (PostgreSQL), which :meth:`run` renews."""
        return self.row is not None and self.row.lease_s > 0

    async def run(
        self, runner: Runner, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Renew the lease every third of it, and adopt (and resume in ``runner``) the
        runs of the nodes that are gone, until cancelled; after :meth:`join`, and after
        the runner resumed its unfinished runs.

        :raises Fenced: if the lease lapsed, or another node took it over
        """
        task_status.started()
        if not self.leased:
            return
        every_s = self.lease_s / 3
        next_gone_at: float | None = None
        while True:
            wake = self._renewed_at + every_s
            if next_gone_at is not None:
                # when another's lease lapses, not only at this node's next renewal: its
                # runs wait for no more than that (a renewal made early costs nothing)
                wake = min(wake, next_gone_at + _LOOK_AFTER_S)
            await anyio.sleep(max(0.0, wake - anyio.current_time()))
            began = anyio.current_time()
            until_gone = await self._renew()
            next_gone_at = None if until_gone is None else began + until_gone
            if until_gone == 0.0:
                # looked now (a gone node whose row is locked is looked at again at the
                # next renewal, not in a tight loop)
                next_gone_at = None
                try:
                    adopted = await self.store.adopt()
                except Fenced:
                    raise
                except StoreError as exc:  # tried again at the next renewal
                    self._log.warning("adoption_failed", error=str(exc))
                    continue
                for gone in self.on_gone:
                    gone()
                if adopted:
                    self._log.info("node_adopted_runs", runs=len(adopted))
                    await runner.resume_adopted(adopted)

    async def _renew(self) -> float | None:
        """Renew before the lease lapses (by this node's clock, from the start of the last
        renewal: never later than the database's); in how many seconds another node's
        lease lapses (see :meth:`Store.renew`)."""
        deadline = self._renewed_at + self.lease_s
        delay = _RETRY_S[0]
        while (left := deadline - anyio.current_time()) > 0:
            began = anyio.current_time()
            with anyio.move_on_after(left):
                try:
                    gone = await self.store.renew()
                except Fenced:
                    raise
                except (StoreError, OSError) as exc:
                    self._log.warning("lease_renewal_failed", error=str(exc), left_s=left)
                else:
                    self._renewed_at = began
                    return gone
                await anyio.sleep(min(delay, max(0.0, deadline - anyio.current_time())))
                delay = min(delay * 2, _RETRY_S[1])
        raise Fenced(
            f"node {self.name!r} could not renew its lease within {self.lease_s}s: its runs "
            "are other nodes' now; its tasks stop (it joins anew once the database answers)"
        )
