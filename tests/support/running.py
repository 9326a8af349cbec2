"""The whole daemon in the test's own event loop, for end-to-end tests of sources."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio

from cued.daemon.assembly import run_daemon

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from cued.daemon.assembly import DaemonInfo
    from cued.daemon.config import Config
    from cued.daemon.store import RunRow


@contextlib.asynccontextmanager
async def daemon_running(config: Config) -> AsyncIterator[DaemonInfo]:
    """Run the daemon (sources, HTTP front, runner, store) until the block ends.

    Enter it in the test itself, not in a fixture: the task group must be left by the
    task that entered it. Give the config ``[http] listen = "127.0.0.1:0"``; the port it
    got is ``info.http_address``.
    """
    async with anyio.create_task_group() as tg:
        info: DaemonInfo = await tg.start(run_daemon, config)
        try:
            yield info
        finally:
            tg.cancel_scope.cancel()


async def runs_of_event(info: DaemonInfo, event_id: str) -> list[str]:
    """The ids of the runs an event started, as recorded."""
    (event,) = [
        e for e in await info.runner.store.list_events(limit=100_000) if e.event_id == event_id
    ]
    return list(event.run_ids)


async def wait_finished(
    info: DaemonInfo, run_ids: list[str], timeout_s: float = 20
) -> list[RunRow]:
    with anyio.fail_after(timeout_s):
        return [await info.runner.wait(r) for r in run_ids]
