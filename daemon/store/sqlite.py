"""The SQLite store: WAL, one writer with group commit, versioned migrations.

One connection writes and one reads (WAL lets readers go on while the writer commits).
Every submission joins the open batch; the writer commits a whole batch in one transaction
with one statement per table over all its rows, so the cost of an fsync is shared by every
state change that arrived meanwhile instead of paid by each, and SQLite writes the rows
without taking the GIL back row by row (:mod:`cued.daemon.store._sqlite_bulk`). Before it takes a batch, the writer lets
whatever is ready to run have a turn or three of the event loop: an attempt that ends
meanwhile replaces its start (left :meth:`~SqliteStore.provisional`) before the start is
ever built.

The open batch is :mod:`cued.daemon.store._batch`, the transaction that commits it
:mod:`cued.daemon.store._sqlite_commit`, and what the store reads
:class:`~cued.daemon.store._reads.StoreReads` (the SELECTs and their rows' decoding:
:mod:`cued.daemon.store._selects`); PostgreSQL's store shares the batch and the reads.
"""

from __future__ import annotations

import hashlib
import os
import pwd
from collections import deque
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiosqlite
import anyio
import anyio.lowlevel

from cued.daemon.core.ids import now
from cued.daemon.errors import StoreError
from cued.daemon.logs import get_logger
from cued.daemon.store import (
    ConfigVersionRow,
    NodeRow,
    PauseRow,
    PruneCounts,
    pruning,
)
from cued.daemon.store._batch import _Batch
from cued.daemon.store._reads import StoreReads
from cued.daemon.store._selects import (
    COUNT_RUNS_BY_STATE,
    COUNT_WAITING_APPROVALS,
    _config_version,
    events_query,
    runs_query,
)
from cued.daemon.store._sqlite_commit import _claimed_work, _statements, _write_all
from cued.daemon.store.filemodes import private_state_files
from cued.daemon.store.migrations import migrate

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from cued.daemon.store import OutboxRow, Provisional, PrunePolicy, Row

__all__ = [
    "COUNT_RUNS_BY_STATE",
    "COUNT_WAITING_APPROVALS",
    "SqliteStore",
    "events_query",
    "open_store",
    "runs_query",
]

Synchronous = Literal["full", "normal"]

_log = get_logger()


class _Chore:
    """Work the writer does between two group commits, as one transaction of its own."""

    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[Any], Awaitable[Any]]) -> None:
        self.work = work
        self.done = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class SqliteStore(StoreReads):
    """Runs, task instances, attempts and events in one SQLite file."""

    shares_run_slots = False  # one node: its runner counts its runs itself
    shares_events = False  # one daemon per file: intake's check of known events is enough
    _VERSIONS_LOCK: str | None = None
    """What a writer takes before it gives the next config version (PostgreSQL: daemons
    sharing the database start at once; SQLite's writer is the file's only one)."""

    def __init__(
        self, path: Path, writer: aiosqlite.Connection, reader: pruning.Connection
    ) -> None:
        self.path = path
        self.where = str(path)
        self._writer = writer
        self._reader = reader
        self._batch = _Batch()
        # insertion-ordered: their rows join a commit in the order they were left
        self._provisional: dict[Provisional, None] = {}
        self._wake = anyio.Event()
        self._closing = False
        self._failed: StoreError | None = None
        self._chores: deque[_Chore] = deque()
        # since when the writer has had work and finished none of it (None: idle)
        self._busy_since: float | None = None
        self.commits = 0
        self.commit_seconds = 0.0
        self._commit_listeners: list[Callable[[float, Sequence[Row]], None]] = []
        self._node_name: str | None = None
        """The daemon's node, once it joined (marked gone when the store closes)."""

    def on_commit(self, listener: Callable[[float, Sequence[Row]], None]) -> None:
        self._commit_listeners.append(listener)

    def _committed(self, seconds: float, batch: _Batch) -> None:
        if not self._commit_listeners:
            return
        rows = batch.rows()
        for listener in self._commit_listeners:
            try:
                listener(seconds, rows)
            except Exception as exc:  # noqa: BLE001 - an observer's bug must not stop the writer
                _log.error("commit_listener_failed", error=repr(exc))

    # -- writing -----------------------------------------------------------------------

    def submit(self, rows: list[Row]) -> _Batch:
        self._check_open()
        batch = self._batch
        for row in rows:
            batch.add(row)
        self._work_came()
        return batch

    def provisional(self, rows: Provisional) -> None:
        self._check_open()
        self._provisional[rows] = None
        self._work_came()

    def withdraw(self, rows: Provisional) -> None:
        self._provisional.pop(rows, None)

    def _check_open(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closing:
            raise StoreError("the store is closed")

    def _work_came(self) -> None:
        if self._busy_since is None:
            self._busy_since = anyio.current_time()
        self._wake.set()

    def _work_done(self) -> None:
        """A commit or a chore finished: the writer made progress; what is still waiting
        is timed from now."""
        self._busy_since = anyio.current_time() if (self._batch or self._chores) else None

    def writer_stalled_s(self) -> float:
        since = self._busy_since
        return 0.0 if since is None else max(0.0, anyio.current_time() - since)

    async def _write_loop(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        # Shielded: the writer outlives everything that submits to it, also when the whole
        # daemon is cancelled from outside (every task at once); it stops when the store
        # closes, after the last submission, so no waiter is left hanging.
        with anyio.CancelScope(shield=True):
            while True:
                await self._wake.wait()
                # a few turns of the loop for what is ready to run while attempts whose
                # start is provisional run: one that ends meanwhile writes its end only
                # (its start is never built), and its run's end commits with it
                await anyio.lowlevel.checkpoint()
                for _ in range(_PROVISIONAL_TURNS):
                    if not self._provisional:
                        break
                    await anyio.lowlevel.checkpoint()
                self._wake = anyio.Event()
                batch, self._batch = self._batch, _Batch()
                if self._provisional:
                    # attempts still running: their starts join this commit (and make
                    # one, if nothing else was submitted: a long task is seen running)
                    for provisional in self._provisional:
                        for row in provisional.rows():
                            batch.add(row)
                    self._provisional.clear()
                if batch:
                    try:
                        self._committed(await self._commit(batch), batch)
                    except Exception as exc:
                        # the writer stops: what waits now, and what comes later, fails
                        # at once instead of waiting for a commit that will not come
                        self._failed = StoreError(f"cannot write to {self.where!r}: {exc}")
                        batch.error = self._batch.error = exc
                        self._batch.done.set()
                        self._drop_chores(self._failed)
                        raise self._failed from exc
                    finally:
                        batch.done.set()
                    self._work_done()
                batch.done.set()
                # one chore per turn: the writes submitted meanwhile commit before the next
                if self._chores:
                    await self._do_chore(self._chores.popleft())
                    if self._chores:
                        self._wake.set()
                if self._closing and not self._batch:
                    self._drop_chores(StoreError("the store is closed"))
                    return

    async def _commit(self, batch: _Batch) -> float:
        started = anyio.current_time()
        work = _statements(batch)
        claimed = _claimed_work(batch)
        # one trip to the connection's thread for the whole transaction, not one per
        # statement: each trip is a wake-up of the event loop (aiosqlite has no public way
        # to run a function on its thread; ``_execute`` is that, in the pinned version)
        delay = _BUSY_RETRY_S[0]
        while (
            duplicates := await self._writer._execute(_write_all, self._writer, work, claimed)  # type: ignore[no-untyped-call]
        ) is None:
            # another program holds the file's write lock past busy_timeout (a backup, a
            # sqlite3 shell left in a transaction): nothing was written; try again rather
            # than stop the daemon. Meanwhile the writer is stalled, which the watchdog
            # sees (under systemd, a lock held for ever ends in a restart)
            get_logger().warning("store_busy", state=self.where, retry_in_s=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, _BUSY_RETRY_S[1])
        batch.duplicates = duplicates
        seconds = anyio.current_time() - started
        self.commits += 1
        self.commit_seconds += seconds
        return seconds

    async def _chore(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``work`` on the writing connection, in the writer's loop between two group
        commits, as one transaction; return what it returns.

        :raises StoreError: if it failed (its transaction is rolled back)
        """
        if self._failed is not None:
            raise self._failed
        if self._closing:
            raise StoreError("the store is closed")
        chore = _Chore(work)
        self._chores.append(chore)
        self._work_came()
        await chore.done.wait()
        if chore.error is not None:
            raise StoreError(f"{self.where!r}: {chore.error}") from chore.error
        return chore.result

    async def _do_chore(self, chore: _Chore) -> None:
        started = anyio.current_time()
        db = self._writer
        try:
            # IMMEDIATE: the write lock from the start, so what the chore reads is what it
            # changes, even with another process (the CLI) writing to the file
            await db.execute("BEGIN IMMEDIATE")
            chore.result = await chore.work(db)
            await db.commit()
        except Exception as exc:  # noqa: BLE001 - the chore's caller gets it; writes go on
            chore.error = exc
            try:
                await db.rollback()
            except Exception as rollback:  # noqa: BLE001 - the next commit reports a broken file
                _log.error("store_rollback_failed", error=repr(rollback))
        else:
            self.commits += 1
            self.commit_seconds += anyio.current_time() - started
        finally:
            chore.done.set()
            self._work_done()

    def _drop_chores(self, error: StoreError) -> None:
        while self._chores:
            chore = self._chores.popleft()
            chore.error = error
            chore.done.set()

    async def prune(self, policy: PrunePolicy, *, batch: int = 500) -> PruneCounts:
        total = PruneCounts()

        async def step(db: aiosqlite.Connection) -> PruneCounts:
            # the runs with rows in the open batch (to commit after this) stay, this time
            return await pruning.step(db, policy, batch, self._batch.run_ids())

        while (pruned := await self._chore(step)).total:
            total += pruned
        return total

    async def prunable(self, policy: PrunePolicy) -> PruneCounts:
        return await pruning.count(self._reader, policy)

    async def set_paused(self, pipeline: str, pause: PauseRow | None) -> None:
        async def work(db: aiosqlite.Connection) -> None:
            if pause is None:
                await db.execute("DELETE FROM paused_pipelines WHERE pipeline = ?", (pipeline,))
            else:
                await db.execute(
                    "INSERT OR REPLACE INTO paused_pipelines VALUES (?, ?, ?)",
                    (pipeline, pause.paused_at, pause.paused_by),
                )

        await self._chore(work)

    async def add_config_version(self, text: str, file: str, at: float) -> ConfigVersionRow:
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

        # the version is the latest + 1, given here under the writer (not a rowid or a
        # sequence): the same on both stores, and `cued store copy` brings versions over
        async def work(db: Any) -> ConfigVersionRow:
            if self._VERSIONS_LOCK is not None:
                await db.execute_fetchall(self._VERSIONS_LOCK)
            latest = list(
                await db.execute_fetchall(
                    "SELECT * FROM config_versions ORDER BY version DESC LIMIT 1"
                )
            )
            if latest and latest[0][1] == digest:
                return _config_version(latest[0])
            version = int(latest[0][0]) + 1 if latest else 1
            await db.execute_fetchall(
                "INSERT INTO config_versions (version, hash, text, file, loaded_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (version, digest, text, file, at),
            )
            return ConfigVersionRow(version, digest, text, file, at)

        row: ConfigVersionRow = await self._chore(work)
        return row

    async def forget_throttles(self, before: float) -> None:
        async def work(db: Any) -> None:
            await db.execute_fetchall("DELETE FROM flow_throttles WHERE expires_at < ?", (before,))

        await self._chore(work)

    # -- nodes: one, holding no lease (see cued.daemon.store.nodes) ----------------------

    async def join(
        self, node: str, *, lease_s: float, host: str, pid: int, replacing: int | None = None
    ) -> NodeRow:
        at = now()

        async def work(db: aiosqlite.Connection) -> int:
            rows = list(await db.execute_fetchall("SELECT max(generation) FROM nodes"))
            generation = int(rows[0][0] or 0) + 1
            # one node: the last one's row goes (a new name at each start, by default)
            await db.execute("DELETE FROM nodes")
            await db.execute(
                "INSERT INTO nodes VALUES (?, ?, 1, ?, ?, 0.0, ?, ?, ?)",
                (node, generation, host, pid, at, at, at),
            )
            return generation

        generation: int = await self._chore(work)
        self._node_name = node
        return NodeRow(node, generation, True, host, pid, 0.0, at, at, at)

    async def renew(self) -> float | None:
        return None

    async def adopt(self) -> list[str]:
        return []

    async def take_run_slot(self, pipeline: str, run_id: str, limit: int) -> bool:
        return True  # one node: its runner's own count is the whole count

    async def give_back_run_slot(self, run_id: str) -> None:
        return None

    async def run_slots_held(self, run_ids: Sequence[str]) -> set[str]:
        return set()

    def deciding(self) -> AbstractAsyncContextManager[None]:
        return nullcontext()  # one node: its gates' own lock serializes its decisions

    async def run_owners(self, run_ids: Sequence[str]) -> dict[str, str]:
        return dict.fromkeys(run_ids, self._node_name or "")  # its one node owns them all

    async def claim_outbox(self, before: float, limit: int = 100) -> list[OutboxRow]:
        return await self.outbox_due(before, limit)  # one node: every alert is its own

    # (key and pool slots: never asked, the runner's own counts are the whole counts)
    async def take_key_slot(
        self, pipeline: str, key: str, run_id: str, priority: int, limit: int
    ) -> bool:
        return True

    async def take_pool_slot(self, pool: str, holder: tuple[str, str, int], limit: int) -> bool:
        return True

    async def give_back_pool_slot(self, holder: tuple[str, str, int]) -> None:
        return None

    def wake_slot_waiters_as(self, token: str | None) -> None:
        return None


#: Turns of the event loop the writer gives attempts whose start is provisional to end,
#: before it takes a batch: a no-op attempt started in one turn ends in the next (more
#: turns only delay every commit a little, for attempts that take longer anyway).
_PROVISIONAL_TURNS = 2

#: How long the writer waits to try a commit again after the file stayed locked by another
#: program past ``busy_timeout`` (doubling from the first to the second).
_BUSY_RETRY_S = (0.05, 1.0)


async def _connect(
    path: Path, synchronous: Synchronous, busy_timeout_s: float = 10.0
) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path)
    try:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        # another process (the CLI, a second daemon) may hold the write lock for a moment
        await db.execute(f"PRAGMA busy_timeout = {round(busy_timeout_s * 1000)}")
    except BaseException:
        # closed here: its thread would otherwise answer into a loop that has ended
        await db.close()
        raise
    return db


def _not_yours(path: Path, exc: BaseException | str) -> str:
    try:
        owner = pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError):
        owner = "the daemon's user"
    return (
        f"cannot open the state file {str(path)!r} ({exc}): only OS user {owner!r} may "
        f"read it; run cued as {owner!r}"
    )


@asynccontextmanager
async def open_store(
    path: str | Path, *, synchronous: Synchronous = "full", busy_timeout_s: float = 10.0
) -> AsyncIterator[SqliteStore]:
    """Open (creating and migrating as needed) the store at ``path``.

    On exit, whatever was submitted is committed before the connections close.

    :param synchronous: ``full`` makes every commit survive a power loss; ``normal``
        survives a crash of the process but may lose the last commits on power loss
    :param busy_timeout_s: how long a statement waits for a lock another program holds
        (a commit that waited this long tries again, and again, until it can write)
    :raises StoreError: if the file cannot be opened or has a newer schema
    """
    path = Path(path)
    # told before SQLite is asked: the file is 0600, its owner's alone
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(_not_yours(path, "permission denied"))
    try:
        private_state_files(path)  # 0600: it holds payloads, headers and outputs
        writer = await _connect(path, synchronous, busy_timeout_s)
    except PermissionError as exc:
        raise StoreError(_not_yours(path, exc)) from exc
    except Exception as exc:
        raise StoreError(f"cannot open the state file {str(path)!r}: {exc}") from exc
    try:
        await migrate(writer, path)
        reader = await _connect(path, synchronous, busy_timeout_s)
    except BaseException:
        await writer.close()
        raise
    store = SqliteStore(path, writer, reader)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(store._write_loop)
            try:
                yield store
            finally:
                store._closing = True
                store._wake.set()  # the loop commits what is left, then returns
    finally:
        with anyio.CancelScope(shield=True):
            if store._node_name is not None and store._failed is None:
                # after the last commit: the node is shown gone (`cued nodes`)
                await writer.execute(
                    "UPDATE nodes SET alive = 0 WHERE node = ?", (store._node_name,)
                )
                await writer.commit()
            await reader.close()
            await writer.close()
