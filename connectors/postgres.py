"""``postgres`` source: new rows of a PostgreSQL table (an outbox) become events, in the
order of a cursor column.

The loop::

    SELECT the rows after the cursor, in its order, up to max_batch
      ->  one Event per row  ->  await intake.record(events, cursor=last row's)

The cursor (the last row's cursor column, as PostgreSQL writes it as text) is committed
in cued's own store *in the same transaction* as the events and the runs they start, so
a restart reads on after exactly the last row recorded: nothing is skipped and nothing
read twice. Every event's id is ``SOURCE:TABLE:CURSOR``, so even a row read twice would
be recognised and start nothing twice. Nothing is written to the application's database.

With ``channel``, the source LISTENs on it and reads as soon as a NOTIFY comes (have the
application, or a trigger, ``NOTIFY`` it with each insert), and asks the database nothing
in between: a NOTIFY sent while its connection was down is not missed, since it reads
on its new connection at once (with ``settle``, it also reads every ``poll_interval``,
for the rows that were too young to be read). Without ``channel``, it reads every
``poll_interval``.

The cursor column must grow in the order rows become visible (commit order): a row
committed later with a smaller cursor than one already read is never read. A sequence
taken by concurrent transactions can commit out of order (5 visible after 6 was read):
with several writers, fill the outbox through one writer, or take the cursor from a
sequence under a lock (``LOCK TABLE outbox IN SHARE ROW EXCLUSIVE MODE`` before the
insert), or read with ``settle`` (rows newer than that are left for the next read).

Backpressure: while the daemon's backlog is saturated, the source reads nothing.

What an event holds:

* ``data``: the row, column name to value: numbers, text and booleans as they are;
  ``numeric`` as an integer when whole, else a float; times and dates as ISO 8601 text,
  intervals in seconds; ``uuid`` as text; ``bytea`` as base64 (``meta.base64`` names the
  columns), as :func:`cued.daemon.sdk.db_value` reads them; ``json`` and ``jsonb`` parsed, through the same reading as any body
  from outside: a value cued cannot keep (nested deeper than 64 levels, say) makes the
  event ``invalid``, recorded like any other and passed (the cursor moves on).
* ``meta``: ``table``, ``cursor`` (the cursor column's value as text), and ``base64``
  when there are such columns.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
import anyio.abc
import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from cued.daemon.sdk import (
    ConnectorError,
    Duration,
    Event,
    bounded_id,
    db_value,
    describe_error,
    json_value,
    now,
)

from ._secrets import source_secret

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cued.daemon.sdk import SourceContext

__all__ = ["PostgresConfig", "PostgresSource", "quote_identifier", "row_event"]

#: A name of a table (optionally ``schema.table``), a column or a channel: written into
#: the SQL text (identifiers cannot be bound parameters), so only plain names are taken.
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_QUALIFIED = re.compile(rf"^{_IDENTIFIER}(\.{_IDENTIFIER})?$")
#: Retry delays while the database cannot be reached (at start, and after a loss).
_RETRY_S = (0.1, 5.0)
_CLOSE_TIMEOUT_S = 5.0
#: The column the cursor's text is read into (it does not clash with the table's own).
_CURSOR_COLUMN = "__cued_cursor"


class PostgresConfig(BaseModel):
    """Keys of a ``[sources.NAME]`` table with ``kind = "postgres"``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dsn: str = Field(min_length=1)
    """``postgresql://user@host:port/db``: ``env:NAME`` (from the environment),
    ``file:PATH``, or the value itself."""
    table: str = Field(pattern=_QUALIFIED.pattern)
    """The outbox table, ``name`` or ``schema.name``."""
    cursor: str = Field("id", pattern=rf"^{_IDENTIFIER}$")
    """An ordered column that grows with every new row: an identity, a sequence, a
    timestamp (see the module's documentation about commit order)."""
    channel: str | None = Field(None, pattern=rf"^{_IDENTIFIER}$")
    """LISTEN on this channel and read as soon as a NOTIFY comes."""
    poll_interval: Duration = Field(1.0, gt=0)
    """How often to read new rows without ``channel`` (with one: only with ``settle``)."""
    max_batch: int = Field(500, ge=1, le=10_000)
    """The most rows read and recorded (in one transaction) at once."""
    start: Literal["beginning", "end"] = "beginning"
    """Where a source with no cursor recorded yet starts: at the first row, or after the
    rows there are when it starts."""
    settle: Duration = Field(0.0, ge=0)
    """With a timestamp cursor: leave rows younger than this for a later read, so that
    transactions still open can commit theirs first."""
    connect_timeout: Duration = Field(10.0, ge=0)
    """At start, how long to keep trying to reach the database before the daemon fails."""


def quote_identifier(name: str) -> str:
    """``schema.table`` as ``"schema"."table"`` (the name is checked to be a plain one)."""
    return ".".join(f'"{part}"' for part in name.split("."))


def row_event(
    source: str,
    table: str,
    row: asyncpg.Record,
    json_columns: frozenset[str],
    received_at: float,
) -> Event:
    """The event for one row (with its cursor's text in ``__cued_cursor``); never raises."""
    cursor = row[_CURSOR_COLUMN]
    binary: list[str] = []
    data: dict[str, Any] = {}
    errors: list[str] = []
    for column, value in row.items():
        if column == _CURSOR_COLUMN:
            continue
        if column in json_columns and isinstance(value, str):
            parsed = json_value(value.encode("utf-8"))
            if parsed.error is not None:
                errors.append(f"column {column!r}: {parsed.error}")
            data[column] = parsed.data
        else:
            data[column] = db_value(value, binary, column)
    meta: dict[str, Any] = {"table": table, "cursor": cursor}
    if binary:
        meta["base64"] = sorted(set(binary))
    return Event(
        source=source,
        event_id=bounded_id(f"{source}:{table}:{cursor}"),
        data=data,
        meta=meta,
        received_at=received_at,
        error="; ".join(errors) or None,
    )


class PostgresSource:
    """Reads new rows of a table by a cursor column; see the module's documentation."""

    kind: ClassVar[str] = "postgres"
    Config: ClassVar[type[BaseModel]] = PostgresConfig

    def __init__(self, config: PostgresConfig, ctx: SourceContext) -> None:
        """:raises ConnectorError: if the DSN's variable is unset or its file unreadable"""
        self.config = config
        self.ctx = ctx
        self._what = f"postgres source {ctx.source!r}"
        self._dsn = source_secret(config.dsn, ctx.base_dir, "a PostgreSQL DSN")
        self._wake = anyio.Event()
        self._position: str | None = None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read until cancelled; ready once connected and the table checked.

        :raises ConnectorError: if the database cannot be reached within
            ``connect_timeout``, or the table or its cursor column does not exist
        """
        config = self.config
        conn = await self._connect(config.connect_timeout)
        try:
            query, json_columns = await self._prepare(conn)
            self._position = await self.ctx.intake.cursor(self.ctx.source)
            if self._position is None and config.start == "end":
                self._position = await conn.fetchval(
                    f"SELECT max({quote_identifier(config.cursor)})::text "
                    f"FROM {quote_identifier(config.table)}"
                )
            if config.channel is not None:
                await conn.add_listener(config.channel, self._notified)
            self.ctx.log.info(
                "postgres_listening",
                table=config.table,
                cursor=config.cursor,
                channel=config.channel,
                after=self._position,
            )
            task_status.started()
            while True:
                try:
                    await self._read(conn, query, json_columns)
                except (OSError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
                    # the connection lost or ended by the server (a restart, an admin): read
                    # on from the cursor on a new one; a table gone fails in _prepare
                    if not _passing(exc):
                        raise ConnectorError(
                            f"{self._what}: reading {config.table!r} failed: {describe_error(exc)}"
                        ) from exc
                    self.ctx.log.warning("postgres_connection_lost", error=describe_error(exc))
                    await _close(conn)
                    await anyio.sleep(_RETRY_S[1] / 5)
                    conn = await self._connect(None)
                    query, json_columns = await self._prepare(conn)
                    if config.channel is not None:
                        await conn.add_listener(config.channel, self._notified)
        finally:
            await _close(conn)

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _connect(self, timeout_s: float | None) -> asyncpg.Connection:
        """A connection, retrying for up to ``timeout_s`` (for ever if ``None``)."""
        deadline = None if timeout_s is None else anyio.current_time() + timeout_s
        delay, max_delay = _RETRY_S
        while True:
            try:
                with anyio.fail_after(5.0):
                    return await asyncpg.connect(self._dsn)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                fatal = isinstance(
                    exc,
                    asyncpg.InvalidAuthorizationSpecificationError
                    | asyncpg.InvalidCatalogNameError,
                )
                if fatal or (deadline is not None and anyio.current_time() + delay >= deadline):
                    raise ConnectorError(
                        f"{self._what}: cannot connect to the database"
                        + (f" within {timeout_s:g}s (connect_timeout)" if timeout_s else "")
                        + f": {describe_error(exc)}"
                    ) from exc
                self.ctx.log.warning(
                    "postgres_unreachable", error=describe_error(exc), retry_in_s=delay
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, max_delay)

    async def _prepare(self, conn: asyncpg.Connection) -> tuple[str, frozenset[str]]:
        """The query that reads the next rows, and the table's json columns.

        :raises ConnectorError: if the table or the cursor column does not exist
        """
        config = self.config
        table, column = quote_identifier(config.table), quote_identifier(config.cursor)
        try:
            columns: Sequence[asyncpg.Record] = await conn.fetch(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type "
                "FROM pg_attribute a WHERE a.attrelid = to_regclass($1) "
                "AND a.attnum > 0 AND NOT a.attisdropped",
                table,
            )
        except asyncpg.PostgresError as exc:
            raise ConnectorError(
                f"{self._what}: cannot read table {config.table!r}: {exc}"
            ) from exc
        types = {r["attname"]: r["type"] for r in columns}
        if not types:
            raise ConnectorError(f"{self._what}: the table {config.table!r} does not exist")
        if config.cursor not in types:
            raise ConnectorError(
                f"{self._what}: the table {config.table!r} has no column {config.cursor!r} "
                f"(cursor); it has {sorted(types)!r}"
            )
        # the type comes from the catalog, not from the config: safe to write into the SQL
        cast = types[config.cursor]
        if config.settle > 0 and not cast.startswith("timestamp"):
            raise ConnectorError(
                f"{self._what}: settle needs a timestamp cursor; {config.cursor!r} is {cast}"
            )
        settle = ""
        if config.settle > 0:
            settle = f" AND t.{column} <= now() - make_interval(secs => {config.settle!r})"
        query = (
            f"SELECT t.*, t.{column}::text AS {_CURSOR_COLUMN} FROM {table} AS t "
            f"WHERE ($1::text IS NULL OR t.{column} > $1::text::{cast}){settle} "
            f"ORDER BY t.{column} LIMIT $2"
        )
        json_columns = frozenset(n for n, t in types.items() if t in ("json", "jsonb"))
        return query, json_columns

    async def _read(
        self, conn: asyncpg.Connection, query: str, json_columns: frozenset[str]
    ) -> None:
        """Read and record one batch; wait for a NOTIFY or the poll interval if it was
        not full."""
        intake = self.ctx.intake
        if not intake.accepting():
            self.ctx.log.info("postgres_paused")
            await intake.wait_accepting()
            self.ctx.log.info("postgres_resumed")
        rows = await conn.fetch(query, self._position, self.config.max_batch)
        if rows:
            received_at = now()
            source, table = self.ctx.source, self.config.table
            events = [row_event(source, table, r, json_columns, received_at) for r in rows]
            position = rows[-1][_CURSOR_COLUMN]
            with anyio.CancelScope(shield=True):  # what was read is recorded, with its cursor
                await intake.record(events, cursor=position)
            self._position = position
        if len(rows) < self.config.max_batch:
            config = self.config
            polled = config.channel is None or config.settle > 0
            with anyio.move_on_after(config.poll_interval if polled else math.inf):
                await self._wake.wait()
            self._wake = anyio.Event()


async def _close(conn: asyncpg.Connection) -> None:
    with anyio.move_on_after(_CLOSE_TIMEOUT_S, shield=True):
        try:
            await conn.close()
        except (OSError, asyncpg.InterfaceError):
            conn.terminate()


#: SQLSTATE classes of errors that pass: connection exceptions, operator intervention (a
#: server shutting down, a backend terminated), insufficient resources, transaction
#: rollbacks, system errors. Any other (no privilege on the table, say) stops the source.
_PASSING_SQLSTATE = frozenset({"08", "57", "53", "40", "58"})


def _passing(exc: BaseException) -> bool:
    """Whether reading again on a new connection may succeed after ``exc``."""
    if not isinstance(exc, asyncpg.PostgresError):
        return True  # the connection itself: lost, closed, reset
    return str(getattr(exc, "sqlstate", "") or "")[:2] in _PASSING_SQLSTATE
