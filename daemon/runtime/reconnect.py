"""The daemon's hold on its PostgreSQL database, across losses of it.

When the daemon loses its database (the writer's connection, its node's lease, a
session the server terminated), everything that uses it is torn down as at a stop, but
at once: sources stop taking events (what they handed in and was not recorded is not
acknowledged), running tasks stop before the node's lease could lapse, and the runs in
memory are dropped (other nodes may adopt them). The servers stay up and answer ``503``
(:mod:`cued.daemon.web.outage`), systemd hears ``STATUS=reconnecting ...`` and its
watchdog keeps being fed (the process is healthy: it waits for the database, which a
restart would only wait for again, and systemd's start limit would end that for good).

Then the daemon tries again, after 0.1 s, doubling up to 10 s, each delay jittered
(between half and all of it: daemons cut off together do not all come back at once);
each failed try is logged once. Once the store opens, the daemon starts anew in the same
process: it joins as a node with a new generation (taking over its own previous row at
once, with its runs, unless another node adopted them meanwhile: fencing), resumes its
unfinished runs as at a start, listens for the other nodes' notices and starts its
sources again.
"""

from __future__ import annotations

import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio

from cued.daemon.core.backoff import backoff_s
from cued.daemon.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from anyio.streams.memory import MemoryObjectSendStream

    from cued.daemon.config import Config
    from cued.daemon.store import NodeRow

__all__ = ["RECONNECT_FIRST_S", "RECONNECT_MAX_S", "DatabaseLink"]

RECONNECT_FIRST_S = 0.1
"""The delay before the first try to reach the database again (before jitter)."""
RECONNECT_MAX_S = 10.0
"""The longest delay between two tries (before jitter)."""

T = TypeVar("T")
_log = get_logger()


class DatabaseLink(Generic[T]):
    """Whether the daemon has its database, what it runs on it now (``current``: the
    daemon's parts, renewed at each reconnection), and while it has not, why.

    :param config: the configuration the daemon starts with (a reload replaces it: the
        daemon starts again on the last one applied)
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.current: T | None = None
        """What the daemon runs now (None before it first started)."""
        self.node: NodeRow | None = None
        """The daemon's node as it last joined: it joins again under its name."""
        self.problem: str | None = None
        """Why the daemon has no database now (None: it has)."""
        self.tries = 0
        """Tries to reach the database since it was lost."""
        self.reconnections = 0
        self._next_try_at: float | None = None
        self._lost_at = 0.0
        self._hups: MemoryObjectSendStream[None] | None = None
        self._hup_pending = False
        self._outage: anyio.CancelScope | None = None

    # -- the daemon's state ------------------------------------------------------------

    def connected(self, current: T) -> None:
        """The daemon runs on the database (again): ``current`` is what it runs."""
        if self.problem is not None:
            self.reconnections += 1
            _log.info(
                "database_reconnected",
                tries=self.tries,
                after_s=round(anyio.current_time() - self._lost_at, 3),
            )
        self.current = current
        self.problem = None
        self.tries = 0
        self._next_try_at = None
        if self._outage is not None:
            self._outage.cancel()

    def lost(self, error: BaseException) -> None:
        """The daemon lost its database (or its lease): it reconnects."""
        self.problem = str(error)
        self.tries = 0
        self._lost_at = anyio.current_time()
        _log.warning("database_lost", error=self.problem, note="reconnecting in place")

    def failed(self, error: BaseException) -> None:
        """A try to reach the database again failed (logged once per try)."""
        self.tries += 1
        self.problem = str(error)

    def outage_problem(self) -> str:
        """What the servers say while the database is away."""
        return f"the daemon lost its database and is reconnecting: {self.problem}"

    def status_line(self) -> str:
        """``STATUS=`` while the database is away."""
        line = f"reconnecting to the database (try {self.tries + 1}"
        if self._next_try_at is not None:
            left_s = max(0.0, self._next_try_at - anyio.current_time())
            line += f", next in {left_s:.1f} s"
        return f"{line}): {self.problem}"

    async def wait_to_retry(self, stop: anyio.Event) -> None:
        """Wait before the next try (growing, jittered), or until ``stop`` is set."""
        delay_s = backoff_s(
            max(1, self.tries),
            first_s=RECONNECT_FIRST_S,
            max_s=RECONNECT_MAX_S,
            rand=random.random(),
        )
        if self.tries:
            _log.warning(
                "database_reconnect_failed",
                error=self.problem,
                tries=self.tries,
                retry_in_s=round(delay_s, 3),
            )
        self._next_try_at = anyio.current_time() + delay_s
        with anyio.move_on_after(delay_s):
            await stop.wait()

    async def keep_alive_while_away(
        self, keep_alive: Callable[[], Awaitable[None]], *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        """Run ``keep_alive`` (systemd's status and watchdog) until the database is back."""
        with anyio.CancelScope() as scope:
            self._outage = scope
            task_status.started()
            try:
                await keep_alive()
            finally:
                self._outage = None

    # -- SIGHUP ------------------------------------------------------------------------

    def hup(self) -> None:
        """Reload the configuration file (SIGHUP): now, or once the database is back."""
        if self._hups is None:
            self._hup_pending = True
            _log.warning("config_reload_deferred", note="applied once the database is back")
            return
        try:
            self._hups.send_nowait(None)
        except anyio.WouldBlock:
            pass  # one is pending already: it reads the file as it is then

    @asynccontextmanager
    async def reloads(self, reload: Callable[[], Awaitable[object]]) -> AsyncIterator[None]:
        """Apply the SIGHUPs the daemon gets with ``reload`` for the block's time (one
        deferred while the database was away first)."""
        send, receive = anyio.create_memory_object_stream[None](1)

        async def serve() -> None:
            async for _ in receive:
                await reload()

        async with send, receive, anyio.create_task_group() as tg:
            tg.start_soon(serve)
            self._hups = send
            if self._hup_pending:
                self._hup_pending = False
                send.send_nowait(None)
            try:
                yield
            finally:
                self._hups = None
                tg.cancel_scope.cancel()
