"""The PostgreSQL store (asyncpg): the same Store as SQLite's, on a database server.

It *is* :class:`~cued.daemon.store.sqlite.SqliteStore` in everything but the SQL engine:
the batch that coalesces submissions, the single writer with group commit, the chores it
runs between two commits (pruning, pauses), and every read are that class's, so the two
stores cannot drift apart in what they mean. What differs is here:

- the commit: the whole batch as one statement on the writer's own connection, each
  table's rows sent as one array per column (one round trip, and one transaction without
  a BEGIN and COMMIT of its own: the commit's cost is the server's WAL flush);
- SQL that SQLite spells its own way (``INSERT OR REPLACE`` becomes ``ON CONFLICT ... DO
  UPDATE``; the latest event of each asset is a ``DISTINCT ON``); the reads' SQL is SQLite's,
  translated by :func:`pg_sql` (``?`` placeholders numbered, index hints dropped);
- reads go through a small pool of connections, so the API's reads run beside the writer;
- a lost connection: the writer's fails the store at once (it held the daemon's lock)
  with :class:`~cued.daemon.errors.DatabaseLost`, which the daemon answers by opening the
  store again (see the README, "State in PostgreSQL"); the readers' pool reconnects by
  itself;
- text: PostgreSQL keeps no NUL character in text, so one (which a task's output line may
  hold) is stored as U+FFFD; JSON is text already, with NULs escaped.

The schema is :mod:`cued.daemon.store.pg_migrations`. The writer's session holds an
advisory lock for the store's lifetime: ``shared`` by each daemon (several share one
database), ``exclusive`` by ``cued store copy`` (refused while a daemon runs on it, and
refusing daemons meanwhile); a process killed with -9 loses its session, and the lock.
"""

from __future__ import annotations

import itertools
import os
import re
from contextlib import asynccontextmanager
from functools import lru_cache
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import asyncpg

from cued.daemon.config.state import is_database_url, shown_url
from cued.daemon.core.assets import ASSET_SOURCES, asset_of
from cued.daemon.errors import DatabaseLost, Fenced, StoreError
from cued.daemon.logs import get_logger
from cued.daemon.store import (
    EventRow,
    HoldRow,
    NodeRow,
    OutboxRow,
    PauseRow,
    RunRow,
    WindowRow,
    pg_claims,
    pg_flow,
    pg_nodes,
    pg_outbox,
)
from cued.daemon.store._batch import _Batch
from cued.daemon.store._selects import _event
from cued.daemon.store.pg_batch import PUT_PAUSE, batch_sql, outbox_row, pg_text
from cued.daemon.store.pg_migrations import migrate
from cued.daemon.store.sqlite import SqliteStore, _Chore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Sequence

    import aiosqlite

    from cued.daemon.store import Row

__all__ = [
    "DAEMON_LOCK",
    "PostgresStore",
    "is_connection_lost",
    "is_database_url",
    "lost_database",
    "open_pg_store",
    "pg_sql",
]

#: The advisory lock (its 64-bit key: ``cued:run`` in ASCII) a daemon's session holds.
DAEMON_LOCK = int.from_bytes(b"cued:run", "big", signed=True)
#: The advisory lock (``cued:gat``) held while a gate is decided: one node at a time.
DECIDING_LOCK = int.from_bytes(b"cued:gat", "big", signed=True)

_log = get_logger()
#: How many times a release of windows goes again after the database gave it up (a
#: deadlock with another node's release: see PostgresStore.flow_release).
_RELEASE_TRIES = 5
#: The events the windows of one release hold, at most (but for its first window).
_RELEASE_EVENTS = 5_000
# each session says whose it is (pg_stat_activity): a daemon's, by its process id
_SESSION = {"application_name": f"cued:{os.getpid()}"}
_INDEXED_BY = re.compile(r"\s+INDEXED BY \w+")
# what a session that is gone raises: its socket closed or cut, the server shutting down
# or terminating it (pg_terminate_backend), or asyncpg's own "connection is closed"
_LOST = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    # a session whose protocol is left mid-operation (seen on the writer's session as the
    # server terminated it): unusable, and whether its last statement happened unknown
    asyncpg.exceptions._base.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)


def is_connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection to the database is gone (not that a statement
    was wrong): what waits for the database to come back."""
    return isinstance(exc, _LOST)


def lost_database(exc: BaseException) -> StoreError | None:
    """What in ``exc`` (an error, or a task group's group of them, with their causes) says
    that the daemon lost its database or its node's lease: a :class:`DatabaseLost`, a
    :class:`Fenced`, or asyncpg's error of a session that is gone (as a DatabaseLost).
    None: the daemon failed for another reason (the other errors a loss brings about,
    commits and reads that failed with it, come with one of these). A Fenced comes
    first: the lease lost is why the connections were then dropped."""
    seen: set[int] = set()
    todo = [exc]
    found: StoreError | None = None
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, Fenced):
            return error
        if found is None and isinstance(error, DatabaseLost):
            found = error
        elif (
            found is None
            and isinstance(error, _LOST)
            and not isinstance(error, OSError | TimeoutError)
        ):
            found = DatabaseLost(f"lost the connection to the database: {error}")
        if isinstance(error, BaseExceptionGroup):
            todo.extend(error.exceptions)
        if error.__cause__ is not None:
            todo.append(error.__cause__)
    return found


@lru_cache(maxsize=2048)
def pg_sql(sql: str) -> str:
    """SQLite's ``sql`` for PostgreSQL: ``?`` placeholders become ``$1``, ``$2``, ...
    (no query of the store has a ``?`` in a literal), and ``INDEXED BY`` hints go
    (PostgreSQL's planner takes none; its indexes are the same)."""
    numbers = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(numbers)}", _INDEXED_BY.sub("", sql))


def _args(parameters: Iterable[Any] | None) -> list[Any]:
    return [pg_text(v) for v in parameters or ()]


class _Connection:
    """One asyncpg connection with aiosqlite's ``execute_fetchall``, SQL translated."""

    __slots__ = ("_db",)

    def __init__(self, db: asyncpg.Connection) -> None:
        self._db = db

    async def execute_fetchall(
        self, sql: str, parameters: Iterable[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._db.fetch(pg_sql(sql), *_args(parameters))]

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> None:
        await self._db.executemany(pg_sql(sql), [_args(p) for p in parameters])


@asynccontextmanager
async def _away_as_lost() -> AsyncIterator[None]:
    """A lost session raises :class:`DatabaseLost` (the API answers 503; the daemon
    reconnects), not the driver's or the socket's error."""
    try:
        yield
    except _LOST as exc:
        raise DatabaseLost(f"the database does not answer: {exc}") from exc


class _Pool:
    """The readers: ``execute_fetchall`` on a connection of the pool."""

    __slots__ = ("_pool",)

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def execute_fetchall(
        self, sql: str, parameters: Iterable[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        try:  # (as _away_as_lost, without a context manager's cost on every read)
            async with self._pool.acquire() as db:
                rows = await db.fetch(pg_sql(sql), *_args(parameters))
        except _LOST as exc:
            raise DatabaseLost(f"the database does not answer: {exc}") from exc
        return [tuple(r) for r in rows]

    async def close(self) -> None:
        await self._pool.close()


class PostgresStore(SqliteStore):
    """Runs, task instances, attempts and events in a PostgreSQL database."""

    shares_run_slots = True  # several nodes: max_active_runs is counted in the database
    shares_events = True  # several nodes may take one event: each is claimed in the commit

    # (its 64-bit key: ``cued:ver`` in ASCII), held to the end of the version's transaction
    _VERSIONS_LOCK = f"SELECT pg_advisory_xact_lock({int.from_bytes(b'cued:ver', 'big')})"

    def __init__(self, url: str, writer: asyncpg.Connection, readers: asyncpg.Pool) -> None:
        # the SQLite writer is never used: the commit and the chores are overridden below
        super().__init__(Path(shown_url(url)), cast("aiosqlite.Connection", None), _Pool(readers))
        self.where = shown_url(url)
        self._db = writer
        self._pool = readers
        self._me: tuple[str, int] | None = None
        """This daemon's node and generation, once it joined: its commits are fenced."""
        self._url = url
        self._lease_db: asyncpg.Connection | None = None
        # the pool slots this node asked for (held or waited for), by run: each is freed
        # by the commit that records its attempt's end (or its run's), and only those
        # commits free any
        self._pool_asks: dict[str, set[tuple[str, int]]] = {}
        self._notices_token: str | None = None
        self._deciding_db: asyncpg.Connection | None = None
        """The session that holds the lock of gate decisions, while one is made here."""
        self._deciding = anyio.Lock()
        self.lease_s_hint = 10.0
        """How long a connection for a renewal may take to open (the node's lease)."""

    async def _commit(self, batch: _Batch) -> float:
        started = anyio.current_time()
        try:
            if batch.joins:
                # events held: their windows are decided with the database's, under the
                # keys' locks, in the transaction that records them (see pg_flow)
                async with self._db.transaction():
                    await pg_flow.join(self._db, batch.joins, batch.claims, batch.add)
                    found = await self._commit_statement(batch)
            else:
                found = await self._commit_statement(batch)
            batch.duplicates, batch.deduped = set(found[0]), set(found[1])
        except asyncpg.PostgresError as exc:
            if pg_nodes.is_fenced(exc):
                raise Fenced(str(exc)) from exc
            if is_connection_lost(exc):
                raise self.abandon(self._lost(exc)) from exc
            raise
        except _LOST as exc:
            # whether the commit happened is unknown: its batch fails, so nothing of it is
            # acknowledged (a source sends it again; its event's id claims it once)
            raise self.abandon(self._lost(exc)) from exc
        seconds = anyio.current_time() - started
        self.commits += 1
        self.commit_seconds += seconds
        return seconds

    async def _commit_statement(self, batch: _Batch) -> asyncpg.Record:
        """Write ``batch`` in one statement: the events it found recorded already, and
        the runs it found deduplicated meanwhile."""
        sql, args = batch_sql(batch, self._me, self._pools_freed(batch), self._notices_token)
        found = await self._db.fetchrow(sql, *args)
        assert found is not None, "a commit's statement ends in a SELECT of one row"
        return found

    async def _do_chore(self, chore: _Chore) -> None:
        started = anyio.current_time()
        try:
            async with self._db.transaction():
                chore.result = await chore.work(_Connection(self._db))
        except Exception as exc:  # noqa: BLE001 - the chore's caller gets it; writes go on
            chore.error = exc
        else:
            self.commits += 1
            self.commit_seconds += anyio.current_time() - started
        finally:
            chore.done.set()

    def _lost(self, exc: BaseException | None = None) -> DatabaseLost:
        why = f": {exc}" if exc is not None and str(exc) else ""
        return DatabaseLost(f"lost the connection to the database {self.where!r}{why}")

    def abandon(self, error: StoreError) -> StoreError:
        """Give the store up at once (the database is lost, or the node's lease): what
        waits for a commit or a chore fails with ``error``, nothing more is written, and
        the connections are dropped without a word to the server (which may not answer).
        Returns ``error``."""
        if self._failed is None:
            self._failed = error
        pending, self._batch = self._batch, _Batch()
        pending.error = error
        pending.done.set()
        self._provisional.clear()
        self._drop_chores(error)
        self._db.terminate()
        if self._lease_db is not None:
            self._lease_db.terminate()
            self._lease_db = None
        self._pool.terminate()
        return error

    async def set_paused(self, pipeline: str, pause: PauseRow | None) -> None:
        async def work(db: _Connection) -> None:
            if pause is None:
                await db.execute_fetchall(
                    "DELETE FROM paused_pipelines WHERE pipeline = ?", (pipeline,)
                )
            else:
                await db.execute_fetchall(
                    PUT_PAUSE, (pipeline, pause.paused_at, pg_text(pause.paused_by))
                )

        await self._chore(work)

    # -- flow control across nodes -----------------------------------------------------

    async def flow_release(
        self,
        at: float,
        limit: int,
        settle: Callable[
            [
                list[WindowRow],
                dict[str, list[tuple[HoldRow, EventRow | None]]],
                dict[tuple[str, str], tuple[float, ...]],
            ],
            list[Row],
        ],
    ) -> list[Row]:
        async def work(_: _Connection) -> list[Row]:
            windows, holds, starts = await pg_flow.release(
                self._db, at, limit, _RELEASE_EVENTS, _event
            )
            if not windows:
                return []
            rows = settle(windows, holds, starts)
            batch = _Batch()
            for row in rows:
                batch.add(row)
            sql, args = batch_sql(batch, self._me)
            await self._db.fetchval(sql, *args)
            await pg_flow.tell_due(self._db, pg_flow.due_of(rows))  # windows a throttle delays
            return rows

        for attempt in itertools.count(1):
            try:
                found: list[Row] = await self._chore(work)
            except StoreError as exc:
                # two releases of windows that hold one event (two triggers) may meet on
                # its row in either order: the database gives up one, which goes again
                if attempt < _RELEASE_TRIES and isinstance(
                    exc.__cause__, asyncpg.DeadlockDetectedError
                ):
                    continue
                raise
            return found
        raise AssertionError("unreachable")

    # -- nodes ---------------------------------------------------------------------------

    def _owned(self) -> tuple[str, list[Any]]:
        if self._me is None:
            return "", []
        return "AND run_id IN (SELECT run_id FROM run_owners WHERE node = ?)", [self._me[0]]

    async def join(
        self, node: str, *, lease_s: float, host: str, pid: int, replacing: int | None = None
    ) -> NodeRow:
        async with _away_as_lost(), self._pool.acquire() as db:
            row = await pg_nodes.join(
                db, node, lease_s=lease_s, host=host, pid=pid, where=self.where, replacing=replacing
            )
        self._me = (row.node, row.generation)
        self.claims_waiting_runs = True  # a node: the runs that wait are claimed (pg_claims)
        self.lease_s_hint = lease_s
        return row

    def _node(self) -> tuple[str, int]:
        if self._me is None:
            raise StoreError("the daemon has not joined as a node")
        return self._me

    async def renew(self) -> float | None:
        # on a connection of its own: neither the writer's commits nor the readers'
        # queries hold a renewal back; one that failed (or was given up) is made anew
        me = self._node()
        renewed = False
        try:
            if self._lease_db is None or self._lease_db.is_closed():
                self._lease_db = await asyncpg.connect(
                    self._url, timeout=self.lease_s_hint, server_settings=_SESSION
                )
            gone = await pg_nodes.renew(self._lease_db, *me)
            renewed = True
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise StoreError(f"cannot renew the lease of node {me[0]!r}: {exc}") from exc
        finally:
            if not renewed:
                await self._drop_lease_db()
        return gone

    async def _drop_lease_db(self) -> None:
        db, self._lease_db = self._lease_db, None
        if db is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await db.close()

    async def adopt(self) -> list[str]:
        me = self._node()
        try:
            async with _away_as_lost(), self._pool.acquire() as db:
                return await pg_nodes.adopt(db, *me)
        except asyncpg.PostgresError as exc:
            raise StoreError(f"node {me[0]!r} could not adopt runs: {exc}") from exc

    async def list_nodes(self) -> list[NodeRow]:
        async with _away_as_lost():
            return await pg_nodes.list_nodes(self._pool)

    async def take_run_slot(self, pipeline: str, run_id: str, limit: int) -> bool:
        if self._me is None:
            return True  # not a node (the CLI): no run is driven here
        async with _away_as_lost():
            return await pg_nodes.take_run_slot(self._pool, *self._me, pipeline, run_id, limit)

    async def give_back_run_slot(self, run_id: str) -> None:
        await self._pool.execute(
            "WITH k AS (DELETE FROM key_slots WHERE run_id = $1) "
            "DELETE FROM run_slots WHERE run_id = $1",
            run_id,
        )

    async def take_key_slot(
        self, pipeline: str, key: str, run_id: str, priority: int, limit: int
    ) -> bool:
        if self._me is None:
            return True  # not a node (the CLI): no run is driven here
        return await pg_nodes.take_key_slot(
            self._pool, *self._me, (pipeline, key, run_id), priority, limit
        )

    async def take_pool_slot(self, pool: str, holder: tuple[str, str, int], limit: int) -> bool:
        if self._me is None:
            return True
        run_id, key, attempt = holder
        # asked before the call: a commit meanwhile of the attempt's end frees what it took
        self._pool_asks.setdefault(run_id, set()).add((key, attempt))
        return await pg_nodes.take_pool_slot(self._pool, *self._me, pool, holder, limit)

    async def give_back_pool_slot(self, holder: tuple[str, str, int]) -> None:
        await self._pool.execute(
            "DELETE FROM pool_slots WHERE run_id = $1 AND key = $2 AND attempt = $3", *holder
        )
        run_id, key, attempt = holder
        if (asks := self._pool_asks.get(run_id)) is not None:
            asks.discard((key, attempt))
            if not asks:
                del self._pool_asks[run_id]

    def wake_slot_waiters_as(self, token: str | None) -> None:
        self._notices_token = token

    def _pools_freed(self, batch: _Batch) -> list[tuple[str, str, int]]:
        """The pool slots this node asked for that the batch frees: of the attempts it
        records ended, and of the runs it records ended or parked (forgotten here)."""
        asks = self._pool_asks
        if not asks:
            return []
        freed: list[tuple[str, str, int]] = []
        for (run_id, key, attempt), row in batch.attempts.items():
            held = asks.get(run_id)
            if held and row.state != "running" and (key, attempt) in held:
                held.discard((key, attempt))
                freed.append((run_id, key, attempt))
        for run in batch.runs.values():
            if run.state not in ("queued", "running") and (held := asks.get(run.run_id)):
                freed += [(run.run_id, key, attempt) for key, attempt in held]
                held.clear()
        for run_id in {f[0] for f in freed}:
            if not asks[run_id]:
                del asks[run_id]
        return freed

    async def next_waiting(
        self, pipeline: str, priority: int, *, after: str, limit: int, anyone: bool = False
    ) -> list[RunRow]:
        if self._me is None:
            return await super().next_waiting(pipeline, priority, after=after, limit=limit)
        async with self._pool.acquire() as db:
            claimed = await pg_claims.claim_next(
                db, *self._me, pipeline, priority, after=after, limit=limit, anyone=anyone
            )
        return sorted(await self.get_runs(claimed), key=attrgetter("run_id"))

    async def claim_runs(self, run_ids: Sequence[str]) -> list[RunRow]:
        if self._me is None or not run_ids:
            return await super().claim_runs(run_ids)
        async with self._pool.acquire() as db:
            claimed = await pg_claims.claim_by_id(db, *self._me, run_ids)
        return await self.get_runs(claimed)

    async def run_slots_held(self, run_ids: Sequence[str]) -> set[str]:
        async with _away_as_lost():
            rows = await self._pool.fetch(
                "SELECT run_id FROM run_slots WHERE run_id = ANY($1::text[]) AND held = 1",
                list(run_ids),
            )
        return {str(r[0]) for r in rows}

    @asynccontextmanager
    async def deciding(self) -> AsyncIterator[None]:
        # a session lock on a connection of its own (held across the decision's reads and
        # its commit, made on other connections); the server lets it go if the session is
        # lost with this node
        async with self._deciding:
            try:
                if self._deciding_db is None or self._deciding_db.is_closed():
                    self._deciding_db = await asyncpg.connect(
                        self._url, timeout=10, server_settings=_SESSION
                    )
                await self._deciding_db.execute("SELECT pg_advisory_lock($1)", DECIDING_LOCK)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise StoreError(f"cannot lock the gates of {self.where!r}: {exc}") from exc
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    try:
                        await self._deciding_db.execute(
                            "SELECT pg_advisory_unlock($1)", DECIDING_LOCK
                        )
                    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                        self._deciding_db.terminate()  # the lock goes with the session

    async def run_owners(self, run_ids: Sequence[str]) -> dict[str, str]:
        rows = await self._pool.fetch(
            "SELECT run_id, node FROM run_owners WHERE run_id = ANY($1::text[])", list(run_ids)
        )
        return {str(r[0]): str(r[1]) for r in rows}

    # -- the alert outbox: each alert delivered by one node (see pg_outbox) ---------------

    async def claim_outbox(self, before: float, limit: int = 100) -> list[OutboxRow]:
        if self._me is None:
            return await self.outbox_due(before, limit)  # not a node (the CLI) sends nothing
        rows = await self._pool.fetch(pg_outbox.CLAIM, before, limit, self._me[0])
        return [outbox_row(tuple(r)) for r in rows]

    async def outbox_due(self, before: float, limit: int = 100) -> list[OutboxRow]:
        mine, me = self._not_anothers()
        rows = await self._reader.execute_fetchall(
            f"SELECT * FROM outbox o WHERE sent_at IS NULL AND next_at <= ? {mine} "
            "ORDER BY next_at LIMIT ?",
            [before, *me, limit],
        )
        return [outbox_row(r) for r in rows]

    async def outbox_next_at(self) -> float | None:
        mine, me = self._not_anothers()
        rows = await self._reader.execute_fetchall(
            f"SELECT min(next_at) FROM outbox o WHERE sent_at IS NULL {mine}", me
        )
        return next((float(at) for (at,) in rows if at is not None), None)

    def _not_anothers(self) -> tuple[str, list[Any]]:
        """The clause that leaves out the alerts another live node claimed (none for the
        CLI, which is no node), and its argument."""
        if self._me is None:
            return "", []
        return pg_outbox.NOT_ANOTHERS, [self._me[0]]

    async def list_assets(self) -> list[tuple[str, int, EventRow]]:
        # each asset's latest event (DISTINCT ON keeps the first of each source, newest
        # first), with how many there are, in one range scan of events_by_source_time
        rows = await self._reader.execute_fetchall(
            "SELECT DISTINCT ON (source) *, count(*) OVER (PARTITION BY source) FROM events "
            "WHERE source >= ? AND source < ? ORDER BY source, received_at DESC, event_id DESC",
            ASSET_SOURCES,
        )
        return [(asset_of(r[1]) or r[1], int(r[8]), _event(r)) for r in rows]


async def _as_it_is(_: asyncpg.Connection) -> None:
    """A reader goes back to the pool as it is: reads change nothing of a session (no
    locks, no LISTEN, no SET), so asyncpg's reset, a round trip per read, is saved."""


async def _watch(
    store: PostgresStore, lost: anyio.Event, *, task_status: anyio.abc.TaskStatus[anyio.CancelScope]
) -> None:
    """Fail the store as soon as the writer's connection is lost, not at the next write:
    with it went the daemon's lock, and an idle daemon might otherwise go on for long
    without it.

    :raises DatabaseLost: when the connection is lost
    """
    with anyio.CancelScope() as scope:
        task_status.started(scope)
        await lost.wait()
        raise store.abandon(store._lost())


@asynccontextmanager
async def open_pg_store(
    url: str, *, exclusive: bool = False, shared: bool = False
) -> AsyncIterator[PostgresStore]:
    """Open (migrating as needed) the store in the database at ``url``.

    On exit, whatever was submitted is committed before the connections close.

    :param exclusive: hold the advisory lock alone while open (``cued store copy``: no
        daemon runs on the database meanwhile)
    :param shared: hold a share of it (a daemon: several share the database)
    :raises StoreError: if the database cannot be reached, the lock is held against
        this, or its schema is newer than this cued knows
    """
    where = shown_url(url)
    try:
        writer = await asyncpg.connect(url, timeout=10, server_settings=_SESSION)
    except Exception as exc:
        # whatever the reason (the server down, starting, refusing this database for now,
        # out of connections): a daemon that had the database waits for it (DatabaseLost)
        raise DatabaseLost(f"cannot connect to the database {where!r}: {exc}") from exc
    readers: asyncpg.Pool | None = None
    try:
        if exclusive and not await writer.fetchval("SELECT pg_try_advisory_lock($1)", DAEMON_LOCK):
            raise StoreError(f"another cued daemon is running on {where!r}")
        if shared and not await writer.fetchval(
            "SELECT pg_try_advisory_lock_shared($1)", DAEMON_LOCK
        ):
            raise StoreError(f"the database {where!r} is being copied (cued store copy)")
        await migrate(writer, where)
        try:
            readers = await asyncpg.create_pool(
                url, min_size=1, max_size=4, timeout=10, reset=_as_it_is, server_settings=_SESSION
            )
        except Exception as exc:
            raise DatabaseLost(f"cannot connect to the database {where!r}: {exc}") from exc
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await writer.close()
        if is_connection_lost(exc):
            raise DatabaseLost(f"cannot open the database {where!r}: {exc}") from exc
        if isinstance(exc, asyncpg.PostgresError | OSError):
            raise StoreError(f"cannot open the database {where!r}: {exc}") from exc
        raise
    store = PostgresStore(url, writer, readers)
    lost = anyio.Event()
    writer.add_termination_listener(lambda _: lost.set())
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(store._write_loop)
            watching = await tg.start(_watch, store, lost)
            try:
                yield store
            finally:
                watching.cancel()
                store._closing = True
                store._wake.set()  # the loop commits what is left, then returns
    finally:
        with anyio.CancelScope(shield=True):
            # after the last commit (the writer's loop has returned): the node leaves, and
            # others adopt its unfinished runs at once instead of after its lease
            if store._me is not None and store._failed is None:
                with anyio.move_on_after(10):
                    try:
                        await pg_nodes.leave(writer, *store._me)
                    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                        _log.warning("node_not_left", node=store._me[0], error=str(exc))
            if store._failed is not None:
                store.abandon(store._failed)  # a lost server is not waited for
            await store._drop_lease_db()
            if store._deciding_db is not None:
                store._deciding_db.terminate()
            await readers.close()
            await writer.close()
