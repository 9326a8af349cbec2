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
                        `shutdown_grace`, the rest is cancelled (and runs again on restart)
```
"""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import socket
from contextlib import asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from cued.daemon.config.registry import source_kinds, task_kinds
from cued.daemon.config.secrets import resolve_secret
from cued.daemon.config.strict import config_folder_first
from cued.daemon.errors import CuedError
from cued.daemon.logs import get_logger
from cued.daemon.ops.local import Local
from cued.daemon.runtime.alerts import Alerts
from cued.daemon.runtime.backlog import Backlog
from cued.daemon.runtime.intake import DaemonIntake
from cued.daemon.runtime.metrics import Metrics
from cued.daemon.runtime.retention import prune_periodically
from cued.daemon.runtime.runner import Runner
from cued.daemon.runtime.spending import StoreSpending
from cued.daemon.runtime.telemetry import TracedTransport, open_tracing
from cued.daemon.sdk.sources import SourceContext
from cued.daemon.store.filemodes import private_file
from cued.daemon.store.sqlite import open_store
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
from cued.daemon.web.live import Live, publish_committed
from cued.daemon.web.server import PerConnection, serve_asgi
from cued.daemon.web.ui import with_ui

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from cued.daemon.config import Config
    from cued.daemon.runtime.asset_events import AssetSink
    from cued.daemon.sdk.kinds import TaskKind
    from cued.daemon.sdk.tracing import Tracing
    from cued.daemon.store import Store

__all__ = ["DaemonInfo", "control_socket_path", "open_runner", "open_state", "run_daemon"]


def _state_folder(state: Path) -> None:
    """Create the folder the state file is to be in (``state = "var/cued.db"`` on a
    fresh clone): private, as the file is.

    :raises CuedError: if it cannot be created, naming it and why
    """
    folder = state.parent
    if folder.is_dir():
        return
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CuedError(
            f"cannot create the folder {str(folder)!r} of the state file: {exc.strerror}"
        ) from None


@contextmanager
def _exclusive(state: Path) -> Iterator[None]:
    """One daemon per state file: a second one would run every run twice."""
    lock_path = state.resolve().with_name(state.name + ".lock")
    private_file(lock_path)  # made 0644 by older versions
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CuedError(f"another cued daemon is running on {str(state)!r}") from None
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
    async with _opened(config, lock=lock) as (store, http, kinds, tracing):
        alerts = _alerts(config, store, http)
        runner = _runner(config, store, http, kinds, _backlog(config), alerts, tracing=tracing)
        async with _serving(runner, resume_unfinished=resume):
            yield runner


@dataclass(frozen=True)
class _Parts:
    store: Store
    runner: Runner
    intake: DaemonIntake
    alerts: Alerts | None


@asynccontextmanager
async def _open_parts(config: Config) -> AsyncIterator[_Parts]:
    """The daemon's store, runner (serving) and intake, and its alerts if configured."""
    async with _opened(config, lock=True) as (store, http, kinds, tracing):
        alerts = _alerts(config, store, http)
        backlog = _backlog(config)
        # each needs the other: the runner records the asset events of the runs that
        # succeed through intake, and intake's loop is given the runner to start runs
        intake = DaemonIntake(config, store, backlog, tracing)
        runner = _runner(
            config, store, http, kinds, backlog, alerts, intake.record, tracing=tracing
        )
        # unfinished runs are resumed once the sources have started: a source may first
        # have to finish acknowledging what a crash left recorded but unacknowledged
        async with _serving(runner, resume_unfinished=False):
            yield _Parts(store, runner, intake, alerts)


@asynccontextmanager
async def _opened(
    config: Config, *, lock: bool
) -> AsyncIterator[tuple[Store, httpx.AsyncClient, dict[str, TaskKind], Tracing]]:
    """The store, the shared HTTP client, the task kinds and tracing, closed in the
    reverse order (tracing last: it sends the spans of runs stopped before it)."""
    state = config.state_path
    _state_folder(state)
    config_folder_first(config.base_dir)  # python tasks find modules beside the config
    limits = httpx.Limits(max_connections=config.daemon.max_running_tasks)
    with _exclusive(state) if lock else nullcontext():
        async with (
            open_tracing(config.telemetry) as tracing,
            open_store(state, synchronous=config.daemon.synchronous) as store,
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
            yield store, http, kinds, tracing


def _backlog(config: Config) -> Backlog[Any]:
    return Backlog(config.daemon.backlog_high_water, config.daemon.backlog_low_water)


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
    """The config's state file for a face with no daemon of its own: the CLI reads it
    (beside a running daemon, WAL lets it), and prunes through it when no daemon runs.

    :raises StoreError: if the file cannot be opened or has a newer schema
    """
    _state_folder(config.state_path)
    async with open_store(config.state_path, synchronous=config.daemon.synchronous) as store:
        yield Local(store, config)


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


def _sources(config: Config, intake: DaemonIntake, front: WebFront) -> list[Any]:
    kinds = source_kinds()
    built = []
    for name, source in config.sources.items():
        ctx = SourceContext(
            source=name,
            intake=intake,
            log=get_logger(source=name),
            routes=front,
            base_dir=config.base_dir,
        )
        cls = kinds[source.kind]
        built.append(cls(cls.Config.model_validate(source.params), ctx))
    return built


def _host(host: str) -> str:
    """A host as it goes in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _users(config: Config) -> Users:
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
    # Signals are caught from the start: one that arrives while the daemon starts up is
    # acted on once it is up, instead of killing it half-started.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        await _serve(config, signals, task_status)
    socket_path.unlink(missing_ok=True)
    log.info("daemon_stopped")


async def _serve(
    config: Config, signals: AsyncIterator[int], task_status: anyio.abc.TaskStatus[DaemonInfo]
) -> None:
    log = get_logger()
    socket_path = control_socket_path(config.state_path)
    # callers are named by their OS user, and only those `access` allows get in
    access = ControlAccess.of(config.daemon.control_group)
    async with _open_parts(config) as parts, anyio.create_task_group() as tg:
        store, runner, intake = parts.store, parts.runner, parts.intake
        if parts.alerts is not None:
            # the sender first sends what a crash (or `cued trigger` without a daemon) left
            await tg.start(parts.alerts.run)
        await tg.start(intake.run, runner)
        # live updates and metrics follow the store: they show only what is committed
        live, metrics = Live(), Metrics(runner)
        store.on_commit(metrics.committed)
        store.on_commit(partial(publish_committed, live))
        await tg.start(live.serve)  # at shutdown, ends open streams: no server waits on them
        up, stopping = anyio.Event(), anyio.Event()

        def ready() -> bool:
            return up.is_set() and not stopping.is_set()

        api = build_app(
            runner,
            trusted=False,
            users=_users(config),
            live=live,
            metrics=metrics,
            ready=ready,
            access=access,
        )
        front = WebFront(
            with_ui(api, runner, intake, _users(config), access),  # UI: daemon/ui
            max_body_bytes=config.http.max_body_bytes,
        )
        control = ControlGuard(
            BodyLimit(
                build_app(runner, trusted=True, live=live, metrics=metrics, ready=ready),
                config.http.max_body_bytes,
            ),
            access,
        )
        grace = config.daemon.shutdown_grace
        control_sock = bind_control_socket(socket_path, access)  # under the state's lock
        await tg.start(
            partial(
                serve_asgi, control, sockets=[control_sock], http=PeerCredentials, grace_s=grace
            )
        )
        # created before the server listens: a webhook reserves its path, which answers
        # 503 (not 404) until the source has started
        sources = _sources(config, intake, front)
        address = None
        if config.http.listen:
            sock = _bind(config.http.listen)
            address = sock.getsockname()[:2]
            # one memo per connection: the open API learns who opened it once (api_auth)
            await tg.start(
                partial(serve_asgi, front, sockets=[sock], http=PerConnection, grace_s=grace)
            )
        async with anyio.create_task_group() as sources_tg:
            for source in sources:
                await sources_tg.start(source.run)
            await runner.resume_unfinished()
            # after the sources' start: the files source first moves what a crash left
            # recorded, which it recognises by the recorded event
            tg.start_soon(prune_periodically, config, store)
            log.info(
                "daemon_started",
                state=str(config.state_path),
                control_socket=str(socket_path),
                http=f"http://{_host(address[0])}:{address[1]}" if address else None,
                # where a person goes first: the UI (the API is under /api/v1 beside it)
                ui=f"http://{_host(address[0])}:{address[1]}/ui/" if address else None,
                pipelines=sorted(config.pipelines),
                sources=sorted(config.sources),
            )
            up.set()
            task_status.started(DaemonInfo(runner, intake, address, live, metrics))
            async for signum in signals:
                log.info("daemon_stopping", signal=signal.Signals(signum).name, grace_s=grace)
                break
            stopping.set()
            sources_tg.cancel_scope.cancel()
        with anyio.move_on_after(grace):
            await runner.drain()
        if left := runner.slots.running_tasks:
            log.warning("daemon_stopping_tasks", running=left, note="they run again on restart")
        tg.cancel_scope.cancel()
