"""The daemon on its store, from opening it until it stops or loses it (:func:`_session`):
its parts, the API and the UI on them, the sources, and the notices to systemd; with
the state in PostgreSQL, a new one after each loss of the database."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import anyio

from cued.daemon.assembly._info import DaemonInfo
from cued.daemon.assembly._notices import _progress, _ReloadNotices
from cued.daemon.assembly._parts import _open_parts
from cued.daemon.assembly._peers import _join_peers
from cued.daemon.assembly._sources import _Sources
from cued.daemon.config.secrets import resolve_secret
from cued.daemon.core.ids import now
from cued.daemon.logs import get_logger
from cued.daemon.runtime.metrics import Metrics
from cued.daemon.runtime.reload import Reloader
from cued.daemon.runtime.retention import prune_periodically
from cued.daemon.runtime.sources import SourceSet
from cued.daemon.runtime.supervision import Supervision
from cued.daemon.service.watchdog import ServiceNotices
from cued.daemon.web.api import Caller, Users, build_app
from cued.daemon.web.control import ControlAccess
from cued.daemon.web.control_path import control_socket_path
from cued.daemon.web.front import WebFront
from cued.daemon.web.live import Live, publish_committed
from cued.daemon.web.ui import with_ui

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.assembly._faces import _Faces
    from cued.daemon.assembly._systemd import _Systemd
    from cued.daemon.config import Config
    from cued.daemon.runtime.reconnect import DatabaseLink
    from cued.daemon.store import Store


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


async def _record_version(config: Config, store: Store) -> int | None:
    """Keep the configuration the daemon starts with as a version (``None`` for one
    built in code, not read from a file)."""
    if config.text is None:
        return None
    file = str(config.file) if config.file is not None else "<config>"
    return (await store.add_config_version(config.text, file, now())).version


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


def _new_users(users: Users, config: Config) -> Callable[[], None]:
    """Check the users of a reloaded configuration (their tokens resolve); return how to
    put them in place of the old ones."""
    fresh = _users(config).by_token

    def apply() -> None:
        users.by_token.clear()
        users.by_token.update(fresh)

    return apply


def _host(host: str) -> str:
    """A host as it goes in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
