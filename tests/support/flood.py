"""A webhook flood sent to daemons (processes) on one PostgreSQL database while they are
killed and started again, and what the tests of it read back from the database."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import httpx

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping

    from tests.support.stores import StoreAt


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 60) -> None:
    """Poll ``check`` until true: the daemons are other processes, which cannot signal us."""
    with anyio.fail_after(timeout_s):
        while not await check():  # noqa: ASYNC110 - effects in other processes
            await anyio.sleep(0.05)


class Sender:
    """Posts events ``{"n": n}`` to the ``/hook`` webhook source with the delivery id
    ``d{n}`` (a retry is the same event): to one node, round robin, and on to the next
    while one does not answer or is ``down``; remembers what was acknowledged."""

    def __init__(self, clients: Mapping[str, httpx.AsyncClient]) -> None:
        """:param clients: each node's, by name"""
        self.clients = clients
        self.nodes = list(clients)
        self.acked: dict[str, str] = {}  # delivery id -> event id, answered 202 or 200
        self.down: set[str] = set()

    async def post(self, numbers: Iterable[int]) -> None:
        """Post each of ``numbers`` not acknowledged yet, once to each node at the most."""
        for n in numbers:
            for turn in range(len(self.nodes)):
                node = self.nodes[(n + turn) % len(self.nodes)]
                if f"d{n}" in self.acked or node in self.down:
                    continue
                try:
                    response = await self.clients[node].post(
                        "/hook", json={"n": n}, headers={"x-delivery": f"d{n}"}
                    )
                except httpx.TransportError:
                    continue  # the daemon is down: the sender tries the next, or later
                if response.status_code in (200, 202):
                    self.acked[f"d{n}"] = response.json()["event_id"]

    async def post_all(self, count: int, timeout_s: float = 60) -> None:
        """Post ``0`` to ``count - 1`` again and again until each was acknowledged."""
        with anyio.fail_after(timeout_s):
            while len(self.acked) < count:
                await self.post(range(count))


async def succeeded_tasks(db: StoreAt) -> set[str]:
    """The task instances recorded as succeeded, as ``run_id/key``."""
    rows = await db.query("SELECT run_id, key FROM task_instances WHERE state = 'succeeded'")
    return {f"{run_id}/{key}" for run_id, key in rows}


async def none_unfinished(db: StoreAt) -> bool:
    """Events were recorded, and every run has ended."""
    rows = await db.query("SELECT count(*) FROM runs WHERE state NOT IN ('succeeded', 'failed')")
    return rows[0][0] == 0 and len(await db.query("SELECT 1 FROM events")) > 0
