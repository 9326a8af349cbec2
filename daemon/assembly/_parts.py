"""The parts of a daemon on its store, opened and closed together: the store, the shared
HTTP client, the task kinds, tracing and the node's membership (:func:`_opened`), the
runner serving beside them, the intake and the alerts (:func:`_open_parts`, once per
session); and a runner (with an intake) of its own for a command when no daemon runs
(:func:`open_runner`, :func:`open_intake`)."""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from cued.daemon.assembly._state import _exclusive, _open_store
from cued.daemon.config.registry import task_kinds_used
from cued.daemon.config.strict import config_folder_first
from cued.daemon.reading import make_state_folder
from cued.daemon.runtime.alerts import Alerts
from cued.daemon.runtime.backlog import Backlog
from cued.daemon.runtime.intake import DaemonIntake
from cued.daemon.runtime.membership import Membership
from cued.daemon.runtime.runner import Runner
from cued.daemon.runtime.spending import StoreSpending
from cued.daemon.runtime.telemetry import TracedTransport, open_tracing
from cued.daemon.store.postgresql import PostgresStore, lost_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from cued.daemon.config import Config
    from cued.daemon.runtime.asset_events import AssetSink
    from cued.daemon.sdk.kinds import TaskKind
    from cued.daemon.sdk.tracing import Tracing
    from cued.daemon.store import NodeRow, Store


def _kinds(config: Config) -> dict[str, TaskKind]:
    return {name: cls() for name, cls in task_kinds_used(config).items()}


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
