"""The watchdog and the ``STATUS=`` line: what the daemon tells systemd while it runs.

A ping (``WATCHDOG=1``) is not a timer that fires whatever happens: every half of
``WATCHDOG_USEC`` the daemon checks that it makes progress and pings only if it does:

- the event loop: the check runs on it, so a blocked loop sends nothing (how late the
  check woke is logged when it is more than the limit);
- the store writer: no submission has waited longer than the limit (half the watchdog
  interval) without a commit finishing, so a writer wedged on a lock or a hung disk stops
  the pings and systemd restarts the daemon;
- the sources: every source's task still runs, and no event handed to intake has waited
  longer than the limit to be recorded.

While pings are withheld, ``STATUS=`` says why, and the log says it once per stall.
The ``STATUS=`` line is sent again when something it shows may have changed (a commit,
backpressure flipping), at most once per second: no loop wakes without work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from cued.daemon.logs import get_logger
from cued.daemon.ops.status import daemon_status

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.ops.host import Daemon
    from cued.daemon.ops.status import DaemonStatus
    from cued.daemon.runtime.supervision import Supervision
    from cued.daemon.service.notify import Notifier

__all__ = ["Progress", "ServiceNotices", "keep_alive", "progress_problems", "status_line"]

_STATUS_EVERY_S = 1.0
_log = get_logger()


@dataclass(frozen=True, slots=True)
class Progress:
    """What the watchdog measures, in seconds of no progress."""

    writer_stalled_s: float
    intake_stalled_s: float
    ended_sources: tuple[str, ...]


def progress_problems(progress: Progress, limit_s: float) -> list[str]:
    """Why the daemon is not making progress, if it is not (empty: ping)."""
    problems = []
    if progress.writer_stalled_s > limit_s:
        problems.append(f"store writer stalled for {progress.writer_stalled_s:.0f} s")
    if progress.intake_stalled_s > limit_s:
        problems.append(
            f"an event handed in waits {progress.intake_stalled_s:.0f} s to be recorded"
        )
    if progress.ended_sources:
        problems.append(f"source(s) ended: {', '.join(progress.ended_sources)}")
    return problems


def status_line(status: DaemonStatus, problems: list[str] | None = None) -> str:
    """The one line ``systemctl status`` shows."""
    runs = "1 run active" if status.active_runs == 1 else f"{status.active_runs} runs active"
    parts = [runs, f"backlog {status.backlog}"]
    taking = sum(s.state == "taking events" for s in status.sources)
    parts.append(f"{taking}/{len(status.sources)} sources taking events")
    if held := status.held_back:
        parts.append(f"saturated, held back: {', '.join(held)}")
    if problems:
        parts.append(f"watchdog withheld: {'; '.join(problems)}")
    return ", ".join(parts)


class ServiceNotices:
    """Sends the watchdog pings and keeps ``STATUS=`` current; run :meth:`run` in the
    daemon's task group once it is ready.

    :param notifier: where to send (nothing is sent without ``NOTIFY_SOCKET``)
    :param watchdog_s: ``WATCHDOG_USEC`` in seconds, None without a watchdog
    :param progress: measures the progress now
    """

    def __init__(
        self,
        notifier: Notifier,
        daemon: Daemon,
        supervision: Supervision,
        progress: Callable[[], Progress],
        *,
        watchdog_s: float | None,
    ) -> None:
        self._notifier = notifier
        self._daemon = daemon
        self._supervision = supervision
        self._progress = progress
        self._watchdog_s = watchdog_s
        self._changed = anyio.Event()
        self._problems: list[str] = []
        self._last_line = ""

    def changed(self, *_: object) -> None:
        """Something the status line shows may have changed (a store commit listener,
        a backlog listener)."""
        self._changed.set()

    def current_line(self) -> str:
        return status_line(daemon_status(self._daemon, self._supervision), self._problems)

    def ready(self) -> None:
        """``READY=1``, with the status line: the daemon is up."""
        self._last_line = self.current_line()
        self._notifier.ready(self._last_line)

    def reloading(self) -> None:
        """``RELOADING=1``: for the reload (``Type=notify-reload``) to call as it begins,
        then :meth:`ready` once the new configuration is applied or refused."""
        self._notifier.reloading()

    def stopping(self) -> None:
        self._notifier.stopping("stopping: sources stop, running tasks finish")

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        if not self._notifier.enabled:
            task_status.started()
            return
        async with anyio.create_task_group() as tg:
            if self._watchdog_s is not None:
                tg.start_soon(self._watch, self._watchdog_s)
            task_status.started()
            await self._keep_status()

    async def _keep_status(self) -> None:
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            self._send_status()
            await anyio.sleep(_STATUS_EVERY_S)  # what changes meanwhile goes in one line

    def _send_status(self) -> None:
        line = self.current_line()
        if line != self._last_line:
            self._last_line = line
            self._notifier.status(line)

    async def _watch(self, interval_s: float) -> None:
        every_s = interval_s / 2
        limit_s = interval_s / 2
        while True:
            due = anyio.current_time() + every_s
            await anyio.sleep(every_s)
            late_s = anyio.current_time() - due
            if late_s > limit_s:
                _log.warning("event_loop_was_blocked", late_s=round(late_s, 3))
            problems = progress_problems(self._progress(), limit_s)
            if problems and not self._problems:
                _log.warning("watchdog_withheld", problems=problems)
            elif self._problems and not problems:
                _log.info("watchdog_resumed")
            self._problems = problems
            if not problems:
                self._notifier.watchdog()
            self._send_status()


async def keep_alive(notifier: Notifier, watchdog_s: float | None, line: Callable[[], str]) -> None:
    """While the daemon reconnects to its database: ``STATUS=`` says so (``line()``, sent
    as it changes), and the watchdog is pinged, until cancelled. The pings go on because
    the process is healthy (its event loop turns; it waits for the database, which a
    restart would only wait for again); they come from the event loop, so a blocked one
    still gets the daemon restarted."""
    if not notifier.enabled:
        await anyio.sleep_forever()
    every_s = _STATUS_EVERY_S if watchdog_s is None else min(_STATUS_EVERY_S, watchdog_s / 2)
    last = ""
    while True:
        if (now_line := line()) != last:
            last = now_line
            notifier.status(now_line)
        if watchdog_s is not None:
            notifier.watchdog()
        await anyio.sleep(every_s)
