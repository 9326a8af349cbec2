"""Key and pool slots across the nodes: several daemons on one PostgreSQL database.

Each node counts its runs of a key and its attempts of a pool in memory
(:mod:`~cued.daemon.runtime.keys`, :mod:`~cued.daemon.runtime.slots`), which is the whole
count with one node. With several, what a node admits so also takes a slot in the database
(:mod:`cued.daemon.store.pg_nodes`) before it goes on: a run one of its key's, before its
pipeline's run slot; an attempt one of its pool's, before a global task slot. The commit
that records the run ended or parked (the attempt ended) gives it back, and wakes whoever
waits for that key or pool: on the other nodes, a notice it sends as it commits; on its
own, the commit's listener here. A waiter asks again then, or after a backoff that grows
to half a second (a notice may be missed: one sent while it was not listening, or by an
adoption, which frees a gone node's slots). Nothing waits, nothing is asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from cued.daemon.logs import get_logger
from cued.daemon.store import AttemptRow, RunRow
from cued.daemon.store.pg_notify import SLOTS_CHANNEL

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from cued.daemon.store import Row, Store
    from cued.daemon.store.pg_notify import Notices

__all__ = ["SharedSlots", "parse_wake"]

_RETRY_S = (0.02, 0.5)
"""A waiter asks again after these (doubling), unless a notice wakes it first."""

_KINDS = frozenset({"key", "pool"})


def parse_wake(text: str) -> tuple[str, str] | None:
    """A notice on the slots' channel, ``key PIPELINE`` or ``pool POOL``, as (kind, name);
    None if it is neither (it came through the database: anything may be there)."""
    kind, sep, name = text.partition(" ")
    if not sep or kind not in _KINDS or not name:
        return None
    return kind, name


class SharedSlots:
    """A node's waits for key and pool slots in the database it shares.

    :param store: the shared store (its :attr:`~cued.daemon.store.Store.shares_run_slots`)
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        # one event per key's pipeline or pool waited for, set (and dropped) by a notice
        self._waiting: dict[tuple[str, str], anyio.Event] = {}
        # the pool of each attempt here that holds a slot of one: its end wakes the pool
        self._held: dict[tuple[str, str, int], str] = {}
        self._log = get_logger()
        store.on_commit(self._committed)

    def listen(self, notices: Notices) -> None:
        """Be woken by the other nodes' ``notices`` (before they serve), and have the
        store's commits send them."""
        notices.on(SLOTS_CHANNEL, self.wake, missed=self.wake_all)
        self._store.wake_slot_waiters_as(notices.token)

    def _committed(self, _seconds: float, rows: Sequence[Row]) -> None:
        """This node's commit: wake its own waiters for the slots it freed (a run of a
        key that ended or parked, an attempt of a pool that ended)."""
        if not self._waiting and not self._held:
            return
        for row in rows:
            if isinstance(row, AttemptRow):
                if row.state != "running" and (
                    pool := self._held.pop((row.run_id, row.key, row.attempt), None)
                ):
                    self._wake(("pool", pool))
            elif (
                isinstance(row, RunRow)
                and row.state not in ("queued", "running")
                and row.key_limit is not None
            ):
                self._wake(("key", row.pipeline))

    def wake(self, text: str) -> None:
        """A notice: a slot of a key of a pipeline, or of a pool, was freed."""
        if (found := parse_wake(text)) is not None:
            self._wake(found)

    def _wake(self, what: tuple[str, str]) -> None:
        if (event := self._waiting.pop(what, None)) is not None:
            event.set()

    def wake_all(self) -> None:
        """Notices may have been missed: every waiter asks again."""
        waiting, self._waiting = self._waiting, {}
        for event in waiting.values():
            event.set()

    async def key_slot(
        self,
        at: tuple[str, str, str],
        priority: int,
        limit: int,
        cancelled: Callable[[], bool],
    ) -> bool:
        """Take a slot of a pipeline's key for a run (``at``: the pipeline, the key and the
        run), waiting while the runs of the key hold them all; False if ``cancelled()``
        first (what it waited in is freed by the commit of its cancel).

        :raises Fenced: if the node's lease was taken over
        """
        pipeline, key, run_id = at
        delay = _RETRY_S[0]
        while not cancelled():
            if await self._store.take_key_slot(pipeline, key, run_id, priority, limit):
                return True
            await self._wait(("key", pipeline), delay)
            delay = min(delay * 2, _RETRY_S[1])
        return False

    async def pool_slot(
        self, pool: str, holder: tuple[str, str, int], limit: Callable[[], int]
    ) -> None:
        """Take a slot of ``pool`` for a task attempt (``holder``: its run, instance and
        attempt), waiting while others hold them all; ``limit()`` is the pool's size now
        (a reload may change it). Cancelled, it gives back what it held or waited in.

        :raises Fenced: if the node's lease was taken over
        """
        delay = _RETRY_S[0]
        try:
            while not await self._store.take_pool_slot(pool, holder, limit()):
                await self._wait(("pool", pool), delay)
                delay = min(delay * 2, _RETRY_S[1])
        except BaseException:
            await self.give_back_pool_slot(holder)
            raise
        self._held[holder] = pool

    async def give_back_pool_slot(self, holder: tuple[str, str, int]) -> None:
        """Give back (or stop waiting for) the pool slot of an attempt that did not start;
        one the database cannot be told of is freed with its run (or the node)."""
        self._held.pop(holder, None)
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            try:
                await self._store.give_back_pool_slot(holder)
            except Exception as exc:  # noqa: BLE001 - the cause is what the caller raises
                self._log.warning("pool_slot_not_given_back", run_id=holder[0], error=str(exc))

    async def _wait(self, what: tuple[str, str], delay: float) -> None:
        event = self._waiting.get(what)
        if event is None:
            event = self._waiting[what] = anyio.Event()
        with anyio.move_on_after(delay):
            await event.wait()
