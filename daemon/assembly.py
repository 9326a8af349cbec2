"""The daemon: wires store, runner and servers into one task group, and stops gracefully.

```
async with tracing, store, http client, task group:
    runner.serve        resumes unfinished runs, then runs what is submitted
    control API         on a Unix socket beside the state file (the CLI's way in; who may
                        use it: daemon/web/control.py), and
    HTTP front          on [http] listen: webhooks (and the same API)
    sources             each in the task group, handing events to intake
    alerts              sends the alert outbox (webhook, email, command), retrying
    retention           prunes what [retention] lets go, every prune_every
    signals             SIGTERM/SIGINT: sources stop, running tasks may finish for
                        `shutdown_grace`, the rest is cancelled (and runs again on restart);
                        SIGHUP: reload the configuration file (daemon/runtime/reload.py)
    systemd             READY=1 once all of the above is up, STATUS=, watchdog pings while
                        the daemon makes progress, RELOADING=1 then READY=1 around a
                        reload, STOPPING=1 at SIGTERM; HTTP on the sockets it passes
                        (daemon/service/)
```

With the state in PostgreSQL, all of the above but the servers, the signals and systemd
is one *session* on the database: a session that loses it (or its node's lease) is torn
down, the servers answer 503 meanwhile, and a new session starts once the database
answers (daemon/runtime/reconnect.py).
"""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import socket
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from cued.daemon.config.registry import source_kinds, task_kinds
from cued.daemon.config.secrets import resolve_secret
from cued.daemon.config.state import is_database_url
from cued.daemon.config.strict import config_folder_first
from cued.daemon.core.ids import now
from cued.daemon.errors import CuedError
from cued.daemon.logs import get_logger
from cued.daemon.ops.local import Local
from cued.daemon.ops.status import Reload
from cued.daemon.reading import make_state_folder
from cued.daemon.runtime.alerts import Alerts
from cued.daemon.runtime.backlog import Backlog
from cued.daemon.runtime.claims import WaitingNotices
from cued.daemon.runtime.intake import DaemonIntake
from cued.daemon.runtime.membership import Membership
from cued.daemon.runtime.metrics import Metrics
from cued.daemon.runtime.reconnect import DatabaseLink
from cued.daemon.runtime.reload import Reloader, ReloadOutcome
from cued.daemon.runtime.retention import prune_periodically
from cued.daemon.runtime.runner import Runner
from cued.daemon.runtime.signals import PeerSignals
from cued.daemon.runtime.sources import SourceSet
from cued.daemon.runtime.spending import StoreSpending
from cued.daemon.runtime.supervision import Supervision
from cued.daemon.runtime.telemetry import TracedTransport, open_tracing
from cued.daemon.sdk.sources import SourceContext
from cued.daemon.service.activation import inherited_sockets, loopback_only
from cued.daemon.service.notify import (
    Notifier,
    discard_service_environment,
    watchdog_interval_s,
)
from cued.daemon.service.watchdog import Progress, ServiceNotices, keep_alive
from cued.daemon.store.copying import copy_state
from cued.daemon.store.filemodes import private_file
from cued.daemon.store.opening import open_store_at
from cued.daemon.store.pg_flow import FLOW_CHANNEL
from cued.daemon.store.pg_notify import Notices
from cued.daemon.store.postgresql import PostgresStore, lost_database
from cued.daemon.web.api import Caller, Users, build_app
from cued.daemon.web.body_limit import BodyLimit
from cued.daemon.web.control import (
    ControlAccess,
    ControlGuard,
    PeerCredentials,
    bind_control_socket,
    control_socket_path,
)
from cued.daemon.web.front import WebFront
from cued.daemon.web.live import Live, LiveShare, publish_committed
from cued.daemon.web.outage import Switch, outage_app
from cued.daemon.web.server import PerConnection, serve_asgi
from cued.daemon.web.ui import with_ui

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from contextlib import AbstractAsyncContextManager

    from starlette.types import ASGIApp

    from cued.daemon.config import Config, SourceConfig
    from cued.daemon.runtime.asset_events import AssetSink
    from cued.daemon.sdk.kinds import TaskKind
    from cued.daemon.sdk.sources import Source
    from cued.daemon.sdk.tracing import Tracing
    from cued.daemon.store import NodeRow, Store

__all__ = [
    "DaemonInfo",
    "control_socket_path",
    "copy_state_between",
    "open_intake",
    "open_runner",
    "open_state",
    "run_daemon",
]


@contextmanager
def _exclusive(state: Path, shown: str) -> Iterator[None]:
    """One daemon per state file (with the state in a database, per config folder, for
    its control socket; the database has a lock of its own): a second one would run every
    run twice."""
    lock_path = state.resolve().with_name(state.name + ".lock")
    private_file(lock_path)  # made 0644 by older versions
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CuedError(f"another cued daemon is running on {shown!r}") from None
        yield
    finally:
        os.close(fd)


def _kinds(config: Config) -> dict[str, TaskKind]:
    used = {t.kind for p in config.pipelines.values() for t in p.tasks.values()}
    return {name: cls() for name, cls in task_kinds().items() if name in used}


@asynccontextmanager
async def open_runner(
    config: Config, *, lock: bool = True, resume: bool = True
) -> AsyncIterator[Runner]:
    """A runner on the config's store, serving in a task group of its own: for ``cued
    trigger`` when no daemon runs (the daemon builds its own, with intake beside it).

    :param lock: take the state file's daemon lock
    :param resume: resume unfinished runs at once
    :raises CuedError: if another daemon holds the lock
    """
    async with _opened(config, lock=lock) as (store, http, kinds, tracing, node):
        alerts = _alerts(config, store, http)
        runner = _runner(config, store, http, kinds, _backlog(config), alerts, tracing=tracing)
        async with _serving(runner, resume_unfinished=resume), anyio.create_task_group() as tg:
            await tg.start(node.run, runner)
            yield runner
            tg.cancel_scope.cancel()


@asynccontextmanager
async def open_intake(config: Config) -> AsyncIterator[tuple[Runner, DaemonIntake]]:
    """A runner (as :func:`open_runner`) with an intake of its own serving beside it: for
    ``cued backfill`` when no daemon runs (no source runs; what is handed to the intake
    is recorded and started here)."""
    async with open_runner(config) as runner, anyio.create_task_group() as tg:
        intake = DaemonIntake(config, runner.store, runner.backlog, runner.tracing)
        runner.flow = intake.flow
        await tg.start(intake.run, runner)
        yield runner, intake
        tg.cancel_scope.cancel()


@dataclass(frozen=True)
class _Parts:
    store: Store
    runner: Runner
    intake: DaemonIntake
    alerts: Alerts | None
    node: Membership


@asynccontextmanager
async def _open_parts(config: Config, before: NodeRow | None) -> AsyncIterator[_Parts]:
    """The daemon's store, runner (serving), intake and alerts (their sender runs with no
    channel too: a reload may add one; an alert queued for a channel no longer configured
    is given up when due). The caller holds the state's lock.

    :param before: the daemon's node before it lost the database (it joins again)
    """
    async with _opened(config, lock=False, shared=True, before=before) as (
        store,
        http,
        kinds,
        tracing,
        node,
    ):
        # always: a reload may add the first alert channel
        alerts = Alerts(config.alerts, store, http, config.base_dir)
        backlog = _backlog(config)
        # each needs the other: the runner records the asset events of the runs that
        # succeed through intake, and intake's loop is given the runner to start runs
        intake = DaemonIntake(config, store, backlog, tracing)
        runner = _runner(
            config,
            store,
            http,
            kinds,
            backlog,
            alerts,
            intake.record,
            tracing=tracing,
            events_flushed=intake.flushed,
        )
        runner.flow = intake.flow
        # unfinished runs are resumed once the sources have started: a source may first
        # have to finish acknowledging what a crash left recorded but unacknowledged
        async with _serving(runner, resume_unfinished=False):
            yield _Parts(store, runner, intake, alerts, node)


@asynccontextmanager
async def _opened(
    config: Config, *, lock: bool, shared: bool | None = None, before: NodeRow | None = None
) -> AsyncIterator[tuple[Store, httpx.AsyncClient, dict[str, TaskKind], Tracing, Membership]]:
    """The store, the shared HTTP client, the task kinds and tracing, closed in the
    reverse order (tracing last: it sends the spans of runs stopped before it); and the
    daemon's node, joined (before anything is recorded: the runs it records are its own)
    with the runs of gone nodes adopted.

    :param lock: take the state's daemon lock
    :param shared: take a share of the database's lock (by default, if ``lock``)
    :param before: the node this process was before it lost the database
    """
    state = config.state_path
    make_state_folder(state)
    config_folder_first(config.base_dir)  # python tasks find modules beside the config
    limits = httpx.Limits(max_connections=config.daemon.max_running_tasks)
    with _exclusive(state, config.state_shown) if lock else nullcontext():
        async with (
            open_tracing(config.telemetry) as tracing,
            _open_store(config, shared=lock if shared is None else shared) as store,
            # no read timeout of its own: each task's `timeout` bounds its requests
            httpx.AsyncClient(
                limits=limits,
                timeout=httpx.Timeout(None, connect=10.0),
                # traced: each request of a task attempt gets a span and a traceparent
                transport=(
                    TracedTransport(httpx.AsyncHTTPTransport(limits=limits))
                    if tracing.enabled
                    else None
                ),
            ) as http,
            _closing(kinds := _kinds(config)),
        ):
            node = Membership(store, config, before)
            await node.join()
            try:
                yield store, http, kinds, tracing, node
            except BaseException as exc:
                if (lost := lost_database(exc)) is not None and isinstance(store, PostgresStore):
                    # its lease lapsed (or was taken): not a word more to the database, and
                    # no wait for a server that may not answer
                    store.abandon(lost)
                raise


def _backlog(config: Config) -> Backlog[Any]:
    return Backlog(
        config.daemon.backlog_high_water,
        config.daemon.backlog_low_water,
        config.daemon.backlog_window,
    )


def _alerts(config: Config, store: Store, http: httpx.AsyncClient) -> Alerts | None:
    # given to the runner before anything can start a run: every alert a run raises goes
    # to the outbox in the transaction of what it reports; the daemon sends them
    return Alerts(config.alerts, store, http, config.base_dir) if config.alerts else None


def _runner(
    config: Config,
    store: Store,
    http: httpx.AsyncClient,
    kinds: dict[str, TaskKind],
    backlog: Backlog[Any],
    alerts: Alerts | None,
    assets: AssetSink | None = None,
    *,
    tracing: Tracing,
    events_flushed: Callable[[], Awaitable[None]] | None = None,
) -> Runner:
    return Runner(
        config,
        store,
        kinds,
        http,
        backlog=backlog,
        spending=StoreSpending(store),
        alerts=alerts,
        assets=assets,
        tracing=tracing,
        events_flushed=events_flushed,
    )


@asynccontextmanager
async def _serving(runner: Runner, *, resume_unfinished: bool) -> AsyncIterator[None]:
    """Serve ``runner`` in a task group of its own for the block's time (its runs are
    cancelled when the block ends)."""
    # Everything built so far (modules, config, plans) lives as long as the daemon: moved
    # out of the collector's sight, each collection of the old generation, which the
    # objects every run makes set off, no longer walks it (about a quarter of the time
    # per task in bench.cued_workload; see BENCHMARKS.md, "Per-run cost").
    gc.collect()
    gc.freeze()
    # and collections come less often: a daemon with thousands of runs in flight holds
    # tens of thousands of live objects (tasks, coroutines, rows), which every collection
    # of an older generation walks again; 50,000 allocations before a young collection
    # instead of 700 took 10 % of the CPU per run off (bench.run_cost, BENCHMARKS.md)
    gc.set_threshold(50_000, 20, 100)
    async with anyio.create_task_group() as tg:
        await tg.start(partial(runner.serve, resume_unfinished=resume_unfinished))
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def open_state(config: Config) -> AsyncIterator[Local]:
    """The config's state for a face with no daemon of its own: the CLI reads it (beside
    a running daemon: WAL lets it, as PostgreSQL does), and prunes through it when no
    daemon runs.

    :raises StoreError: if the file cannot be opened or has a newer schema
    """
    make_state_folder(config.state_path)
    async with _open_store(config) as store:
        yield Local(store, config)


async def copy_state_between(
    source: str, target: str, *, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """``cued store copy``: every row of the store at ``source`` into the empty one at
    ``target`` (each a SQLite file's path, a ``postgresql://`` URL, or ``env:NAME``
    holding either); the rows of each table.

    :raises CuedError: if a variable is unset, the source file is not there, a store
        cannot be opened, the target is not empty or the counts differ afterwards
    """
    source, target = _named_store(source), _named_store(target)
    if not is_database_url(source) and not os.path.isfile(source):  # noqa: ASYNC240 - one stat
        raise CuedError(f"no state file at {source!r} to copy from")
    # both ends under their daemon's lock: a daemon running on either is refused
    with _store_lock(source), _store_lock(target):
        async with (
            open_store_at(source, exclusive=True) as src,
            open_store_at(target, exclusive=True) as dst,
        ):
            return await copy_state(src, dst, progress=progress)


def _store_lock(location: str) -> AbstractContextManager[None]:
    """A SQLite file's daemon lock (a database's is taken when it is opened)."""
    if is_database_url(location):
        return nullcontext()
    return _exclusive(Path(location), location)


def _named_store(name: str) -> str:
    if not name.startswith("env:"):
        return name
    value = os.environ.get(name[4:])
    if value is None:
        raise CuedError(f"environment variable {name[4:]!r} (for a store) is not set")
    return value


def _open_store(config: Config, *, shared: bool = False) -> AbstractAsyncContextManager[Store]:
    """The config's store: its SQLite file, or its PostgreSQL database (taking the
    database's daemon lock, shared with the other daemons on it, if ``shared``).

    :raises CuedError: if a database URL from the environment or a file is not there
    """
    return open_store_at(
        config.state_location(), synchronous=config.daemon.synchronous, shared=shared
    )


@asynccontextmanager
async def _closing(kinds: dict[str, Any]) -> AsyncIterator[None]:
    """Close the task kinds that hold connections (a Kafka producer) once the last task
    has ended, before the store closes."""
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            for kind in kinds.values():
                if (aclose := getattr(kind, "aclose", None)) is not None:
                    await aclose()


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio sets TCP_NODELAY on accepted connections only when
    # the socket says it is TCP, and without it every keep-alive response waits ~40 ms for
    # a delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, int(port)))
    except (OSError, ValueError) as exc:
        sock.close()
        raise CuedError(f"cannot listen on {listen!r} ([http] listen): {exc}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class _SourceRoutes:
    """One source's way to the web front: the paths it reserves are remembered, to be
    released when it stops for good (removed or replaced at a reload)."""

    def __init__(self, front: WebFront) -> None:
        self._front = front
        self.paths: list[str] = []

    def reserve(self, path: str, *, max_body_bytes: int) -> None:
        self._front.reserve(path, max_body_bytes=max_body_bytes)
        self.paths.append(path)

    def mount(self, path: str, app: ASGIApp) -> None:
        self._front.mount(path, app)

    def unmount(self, path: str) -> None:
        self._front.unmount(path)

    def release(self, path: str) -> None:
        self._front.release(path)


class _Sources:
    """Makes the configured sources (:class:`~cued.daemon.runtime.sources.BuildSource`)."""

    def __init__(self, config: Config, intake: DaemonIntake) -> None:
        self._base_dir = config.base_dir
        self._intake = intake
        self.front: WebFront | None = None
        """Where webhooks mount: set before any source is made."""
        self._routes: dict[str, _SourceRoutes] = {}

    def __call__(self, name: str, config: SourceConfig) -> Source:
        assert self.front is not None, "the web front is not made yet"
        routes = self._routes[name] = _SourceRoutes(self.front)
        ctx = SourceContext(
            source=name,
            intake=self._intake,
            log=get_logger(source=name),
            routes=routes,
            base_dir=self._base_dir,
        )
        cls = source_kinds()[config.kind]
        built: Source = cls(cls.Config.model_validate(config.params), ctx)
        return built

    def release(self, name: str) -> None:
        routes = self._routes.pop(name, None)
        if routes is not None:
            for path in routes.paths:
                routes.release(path)

    def hold(self, name: str) -> None:
        if (routes := self._routes.get(name)) is not None and self.front is not None:
            for path in routes.paths:
                self.front.hand_over(path)

    def settle(self) -> None:
        if self.front is not None:
            self.front.settle()


def _progress(store: Store, intake: DaemonIntake, supervision: Supervision) -> Progress:
    return Progress(
        writer_stalled_s=store.writer_stalled_s(),
        intake_stalled_s=intake.stalled_s(),
        ended_sources=tuple(supervision.ended_sources()),
    )


def _address(sock: socket.socket) -> tuple[str, int] | None:
    """Where a TCP socket listens (None for a Unix one)."""
    name = sock.getsockname()
    return (str(name[0]), int(name[1])) if isinstance(name, tuple) else None


def _host(host: str) -> str:
    """A host as it goes in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _users(config: Config) -> Users:
    """The API's users, their tokens resolved.

    :raises CuedError: if a token's variable is unset or its file unreadable
    """
    return Users(
        {
            resolve_secret(user.token, config.base_dir, what=f"the token of {name!r}"): Caller(
                name, frozenset(user.roles), frozenset(user.groups)
            )
            for name, user in config.auth.users.items()
        }
    )


@dataclass(frozen=True)
class DaemonInfo:
    """What a started daemon tells whoever started it (tests, embedding programs)."""

    runner: Runner
    intake: DaemonIntake
    http_address: tuple[str, int] | None
    live: Live | None = None
    metrics: Metrics | None = None
    reloader: Reloader | None = None
    sources: SourceSet | None = None
    supervision: Supervision | None = None
    link: DatabaseLink[DaemonInfo] | None = None
    """The daemon's hold on its database: after a reconnection, ``link.current`` is the
    daemon's parts anew (these are those it first started with)."""


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


@dataclass(frozen=True)
class _Systemd:
    """What systemd gave the daemon: a notification socket, a watchdog interval and
    listening sockets (each absent when the daemon runs without systemd)."""

    notifier: Notifier
    watchdog_s: float | None
    sockets: list[socket.socket]

    @classmethod
    def from_environment(cls) -> _Systemd:
        pid = os.getpid()
        found = cls(
            Notifier.from_environment(os.environ),
            watchdog_interval_s(os.environ, pid),
            inherited_sockets(os.environ, pid),
        )
        discard_service_environment(os.environ)  # no task's process acts on them
        return found


def _listening(config: Config, systemd: _Systemd) -> list[socket.socket]:
    """The HTTP front's sockets: those systemd passed, else one bound to [http] listen.

    :raises CuedError: if the API is open (no [auth.users]) and a passed socket listens
        beyond loopback, which ``cued validate`` refuses for ``listen`` too
    """
    if systemd.sockets:
        if not config.auth.users and not loopback_only(systemd.sockets):
            raise CuedError(
                "systemd passed a socket that listens beyond loopback, and with no "
                "[auth.users] the API and UI take no token: set ListenStream= to "
                "127.0.0.1:PORT or [::1]:PORT, or add [auth.users.NAME] with tokens"
            )
        return systemd.sockets
    return [_bind(config.http.listen)] if config.http.listen else []


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


class _Faces:
    """The control socket's and the HTTP front's servers: made once the daemon first
    starts, they outlive a loss of the database, and each serves a
    :class:`~cued.daemon.web.outage.Switch` (the daemon's apps while it has the database,
    an answer that it reconnects while it has not)."""

    def __init__(
        self,
        config: Config,
        systemd: _Systemd,
        link: DatabaseLink[DaemonInfo],
        tg: anyio.abc.TaskGroup,
    ) -> None:
        self._config = config
        self._systemd = systemd
        self._tg = tg
        self._outage = outage_app(link.outage_problem)
        self.control = Switch(self._outage)
        self.front = Switch(self._outage)
        self.address: tuple[str, int] | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()

    async def serve(self, control: ASGIApp, front: ASGIApp) -> None:
        """Serve ``control`` and ``front`` (the first time: bind and start the servers)."""
        self.control.app, self.front.app = control, front
        if self._scope is None:
            await self._tg.start(self._run)

    def outage(self) -> None:
        self.control.app = self.front.app = self._outage

    async def close(self) -> None:
        """Stop the servers (open requests get ``shutdown_grace``)."""
        if self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        config = self._config
        grace = config.daemon.shutdown_grace
        access = ControlAccess.of(config.daemon.control_group)
        guarded = ControlGuard(BodyLimit(self.control, config.http.max_body_bytes), access)
        try:
            with anyio.CancelScope() as self._scope:
                async with anyio.create_task_group() as tg:
                    # under the state's lock
                    control_sock = bind_control_socket(
                        control_socket_path(config.state_path), access
                    )
                    await tg.start(
                        partial(
                            serve_asgi,
                            guarded,
                            sockets=[control_sock],
                            http=PeerCredentials,
                            grace_s=grace,
                        )
                    )
                    if listening := _listening(config, self._systemd):
                        self.address = _address(listening[0])
                        # one memo per connection: the open API learns who opened it once
                        await tg.start(
                            partial(
                                serve_asgi,
                                self.front,
                                sockets=listening,
                                http=PerConnection,
                                grace_s=grace,
                            )
                        )
                    task_status.started()
        finally:
            self._stopped.set()


async def _session(
    link: DatabaseLink[DaemonInfo],
    faces: _Faces,
    systemd: _Systemd,
    stop: anyio.Event,
    task_status: anyio.abc.TaskStatus[DaemonInfo] | None,
) -> None:
    """The daemon on its store, from opening it until ``stop`` (or until it is lost):
    ``task_status`` is told once it is up, the first time."""
    log = get_logger()
    config = link.config
    socket_path = control_socket_path(config.state_path)
    # callers are named by their OS user, and only those `access` allows get in
    access = ControlAccess.of(config.daemon.control_group)
    async with _open_parts(config, link.node) as parts, anyio.create_task_group() as tg:
        store, runner, intake = parts.store, parts.runner, parts.intake
        link.node = parts.node.row
        version = await _record_version(config, store)
        runner.reconfigure(config, version, {})
        if parts.alerts is not None:
            # the sender first sends what a crash (or `cued trigger` without a daemon) left
            await tg.start(parts.alerts.run)
            parts.node.on_gone.append(parts.alerts.wake)  # a gone node's alerts are ours too
        await tg.start(intake.run, runner)
        # live updates and metrics follow the store: they show only what is committed
        live, metrics = Live(), Metrics(runner)
        store.on_commit(metrics.committed)
        store.on_commit(partial(publish_committed, live))
        await tg.start(live.serve)  # at shutdown, ends open streams: no server waits on them
        await _join_peers(config, store, runner, live, tg, parts.node.name)
        up, stopping = anyio.Event(), anyio.Event()
        supervision = Supervision(lambda: runner.backlog.saturated)
        supervision.config_version = version

        def ready() -> bool:
            return up.is_set() and not stopping.is_set()

        # one set of users for the API and the UI, changed in place by a reload
        users = _users(config)
        # the sources reach the web front, which is made after the API that reloads them
        build_sources = _Sources(config, intake)
        sources_set = SourceSet(build_sources, supervision)
        reloader = Reloader(
            config,
            version,
            store=store,
            runner=runner,
            intake=intake,
            sources=sources_set,
            alerts=parts.alerts,
            prepare=[partial(_new_users, users)],
        )
        api = build_app(
            runner,
            trusted=False,
            users=users,
            live=live,
            metrics=metrics,
            ready=ready,
            access=access,
            reloader=reloader,
            supervised=supervision,
            intake=intake,
        )
        front = WebFront(
            with_ui(api, runner, intake, users, access),  # UI: daemon/ui
            max_body_bytes=config.http.max_body_bytes,
        )
        build_sources.front = front
        control = build_app(
            runner,
            trusted=True,
            live=live,
            metrics=metrics,
            ready=ready,
            reloader=reloader,
            supervised=supervision,
            intake=intake,
        )
        # made before the server listens: a webhook reserves its path, which answers
        # 503 (not 404) until the source has started
        sources_set.build(config.sources)
        await faces.serve(control, front)
        address = faces.address
        try:
            async with anyio.create_task_group() as sources_tg:
                await sources_tg.start(sources_set.serve)
                await runner.resume_unfinished()
                # after the resumption: the runs it adopts are not in memory yet
                await tg.start(parts.node.run, runner)
                # after the sources' start: the files source first moves what a crash left
                # recorded, which it recognises by the recorded event
                tg.start_soon(prune_periodically, config, store)
                log.info(
                    "daemon_started" if task_status is not None else "daemon_resumed",
                    state=config.state_shown,
                    control_socket=str(socket_path),
                    http=f"http://{_host(address[0])}:{address[1]}" if address else None,
                    # where a person goes first: the UI (the API is under /api/v1 beside it)
                    ui=f"http://{_host(address[0])}:{address[1]}/ui/" if address else None,
                    pipelines=sorted(config.pipelines),
                    sources=sorted(config.sources),
                    config_version=version,
                    socket_activated=bool(systemd.sockets),
                    node=parts.node.name,
                    generation=parts.node.row.generation if parts.node.row else None,
                )
                notices = ServiceNotices(
                    systemd.notifier,
                    runner,
                    supervision,
                    partial(_progress, store, intake, supervision),
                    watchdog_s=systemd.watchdog_s,
                )
                store.on_commit(notices.changed)
                runner.backlog.on_change(notices.changed)
                reloader.on_reload(_ReloadNotices(notices, supervision))
                up.set()
                info = DaemonInfo(
                    runner, intake, address, live, metrics, reloader, sources_set, supervision, link
                )
                link.connected(info)
                # the store is open, unfinished runs resumed, every source takes events and
                # the HTTP front listens: `After=cued.service` may count on all of it now
                notices.ready()
                await tg.start(notices.run)  # after READY=1: its first STATUS= follows it
                if task_status is not None:
                    task_status.started(info)
                async with link.reloads(reloader.reload):
                    await stop.wait()
                notices.stopping()
                stopping.set()
                supervision.stopping()
                sources_tg.cancel_scope.cancel()
        finally:
            link.config = reloader.config  # the daemon goes on with the last one applied
        grace = config.daemon.shutdown_grace
        with anyio.move_on_after(grace):
            await runner.drain()
        if left := runner.slots.running_tasks:
            log.warning("daemon_stopping_tasks", running=left, note="they run again on restart")
        live.close()  # open streams end: the servers do not wait for them
        await faces.close()  # before the store closes: open requests may still record
        tg.cancel_scope.cancel()


async def _join_peers(
    config: Config,
    store: Store,
    runner: Runner,
    live: Live,
    tg: anyio.abc.TaskGroup,
    node: str,
) -> None:
    """With the state in PostgreSQL, other daemons may share it: one connection of this
    daemon's listens for their notices and sends its own (no daemon asks the database on
    a timer). Live updates are shared both ways, so each daemon's stream shows every
    daemon's runs; decisions, cancels and pauses made here reach the daemon that has the
    run (:mod:`cued.daemon.runtime.signals`), windows of flow control written here wake
    every node's timer, and runs that wait here are claimed by nodes with a free slot
    (:mod:`cued.daemon.runtime.claims`). With SQLite, nothing: one daemon."""
    location = config.state_location()
    if not is_database_url(location):
        return
    notices = Notices(location)
    share = LiveShare(live, notices)
    signals = PeerSignals(notices, node)
    waiting = WaitingNotices(notices)
    store.on_commit(share.committed)
    if runner.slots.shared is not None:
        runner.slots.shared.listen(notices)  # woken as pool and key slots free up
    if runner.flow is not None:
        # each node's timer learns of the windows the others write (see pg_flow)
        notices.on(FLOW_CHANNEL, runner.flow.heard, missed=runner.flow.poke)
    await tg.start(share.serve)
    await tg.start(partial(signals.serve, runner))
    await tg.start(partial(waiting.serve, runner))
    await tg.start(notices.serve)  # after every channel's handlers are registered
    runner.signals = signals
    runner.on_waiting(waiting.waiting)  # other nodes claim what waits here


class _ReloadNotices:
    """Tells systemd (``RELOADING=1``, then ``READY=1``) and ``cued status`` of each
    reload."""

    def __init__(self, notices: ServiceNotices, supervision: Supervision) -> None:
        self._notices = notices
        self._supervision = supervision

    def reload_began(self) -> None:
        self._notices.reloading()

    def reload_ended(self, outcome: ReloadOutcome) -> None:
        error = "; ".join(outcome.problems) or None
        self._supervision.reloaded(
            Reload(outcome.ended_at, "applied" if outcome.applied else "refused", error),
            outcome.version,
        )
        self._notices.ready()


async def _record_version(config: Config, store: Store) -> int | None:
    """Keep the configuration the daemon starts with as a version (``None`` for one
    built in code, not read from a file)."""
    if config.text is None:
        return None
    file = str(config.file) if config.file is not None else "<config>"
    return (await store.add_config_version(config.text, file, now())).version


def _new_users(users: Users, config: Config) -> Callable[[], None]:
    """Check the users of a reloaded configuration (their tokens resolve); return how to
    put them in place of the old ones."""
    fresh = _users(config).by_token

    def apply() -> None:
        users.by_token.clear()
        users.by_token.update(fresh)

    return apply
