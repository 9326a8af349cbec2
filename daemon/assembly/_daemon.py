"""The daemon's process (:func:`run_daemon`): its state's lock, the signals, the servers
that outlive a loss of the database, and the loop that starts a session on the database
anew whenever it was lost (:func:`_serve`)."""

from __future__ import annotations

import signal
from functools import partial
from typing import TYPE_CHECKING

import anyio

from cued.daemon.assembly._faces import _Faces
from cued.daemon.assembly._session import _session
from cued.daemon.assembly._state import _exclusive
from cued.daemon.assembly._systemd import _Systemd
from cued.daemon.config.state import is_database_url
from cued.daemon.logs import get_logger
from cued.daemon.reading import make_state_folder
from cued.daemon.runtime.reconnect import DatabaseLink
from cued.daemon.service.watchdog import keep_alive
from cued.daemon.store.postgresql import lost_database
from cued.daemon.web.control_path import control_socket_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from cued.daemon.assembly._info import DaemonInfo
    from cued.daemon.config import Config


async def run_daemon(
    config: Config, *, task_status: anyio.abc.TaskStatus[DaemonInfo] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Run the daemon until SIGTERM or SIGINT (or until cancelled).

    Shutdown, in order: sources stop taking events (what they took is recorded, and
    acknowledged); running tasks get ``shutdown_grace`` to finish, no new one starts;
    what is still running is cancelled and runs again on restart; the store commits what
    it was given and closes.
    """
    log = get_logger()
    socket_path = control_socket_path(config.state_path)
    systemd = _Systemd.from_environment()
    # Signals are caught from the start: one that arrives while the daemon starts up is
    # acted on once it is up, instead of killing it half-started.
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            await _serve(config, signals, systemd, task_status)
    finally:
        systemd.notifier.close()
    socket_path.unlink(missing_ok=True)
    log.info("daemon_stopped")


async def _serve(
    config: Config,
    signals: AsyncIterator[int],
    systemd: _Systemd,
    task_status: anyio.abc.TaskStatus[DaemonInfo],
) -> None:
    """Serve until SIGTERM or SIGINT; with the state in PostgreSQL, reconnect in place
    whenever the database is lost once up (:mod:`cued.daemon.runtime.reconnect`)."""
    link: DatabaseLink[DaemonInfo] = DatabaseLink(config)
    stop = anyio.Event()
    reconnects = is_database_url(config.state_location())
    make_state_folder(config.state_path)
    # the state's lock for the process's whole life, not per connection to the database:
    # no second daemon takes this config folder over while this one reconnects
    with _exclusive(config.state_path, config.state_shown):
        async with anyio.create_task_group() as tg:
            faces = _Faces(config, systemd, link, tg)
            tg.start_soon(_take_signals, signals, stop, link, config.daemon.shutdown_grace)
            first = True
            while not stop.is_set():
                try:
                    await _session(link, faces, systemd, stop, task_status if first else None)
                except Exception as exc:
                    lost = lost_database(exc) if reconnects and link.current is not None else None
                    if lost is None:
                        raise
                    faces.outage()
                    if link.problem is None:  # lost now (not a try that failed)
                        link.lost(lost)
                        keep = partial(keep_alive, systemd.notifier, systemd.watchdog_s)
                        await tg.start(link.keep_alive_while_away, partial(keep, link.status_line))
                    else:
                        link.failed(lost)
                    await link.wait_to_retry(stop)
                else:
                    break
                first = False
            if link.problem is not None:
                systemd.notifier.stopping("stopping: the database was away")
            await faces.close()
            tg.cancel_scope.cancel()


async def _take_signals(
    signals: AsyncIterator[int], stop: anyio.Event, link: DatabaseLink[DaemonInfo], grace: float
) -> None:
    """SIGHUP: reload the configuration file; SIGTERM, SIGINT: stop."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            link.hup()
            continue
        get_logger().info("daemon_stopping", signal=signal.Signals(signum).name, grace_s=grace)
        stop.set()
        return
