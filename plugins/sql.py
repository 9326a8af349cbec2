"""The ``sql`` task kind: one statement against PostgreSQL, SQLite or MariaDB/MySQL, in a
transaction of its own, with bound parameters and an optional data check.

* **Drivers**, chosen by the DSN's scheme: ``postgresql://`` (or ``postgres://``) with
  asyncpg, placeholders ``$1, $2``; ``sqlite:///absolute/path.db`` or
  ``sqlite:relative/path.db`` (relative to the daemon's working directory) with aiosqlite,
  placeholders ``?``; ``mysql://`` or ``mariadb://`` with aiomysql, placeholders ``%s``.
* **Bound parameters only**: ``params`` go to the driver as values, never into the SQL
  text, and ``query`` may not be a template (``cued validate`` refuses one), so nothing
  from an event can change what the statement is. asyncpg and aiosqlite send them apart
  from the statement; aiomysql (PyMySQL underneath) escapes them into the statement on the
  client, minding the server's ``NO_BACKSLASH_ESCAPES`` mode. One statement per task:
  asyncpg and aiosqlite refuse several, and so does aiomysql unless the DSN asks for them.
* **A transaction per task**: the statement and the check commit together or not at all.
  A failed check, or any error, rolls the statement back.
* **Bounded output**: ``{"rows": [...], "row_count": N, "truncated": bool, "affected":
  N}``: at most ``max_rows`` rows (column name to value, read as
  :func:`cued.daemon.sdk.db_value` reads them); ``affected`` is the rows an ``insert``,
  ``update`` or ``delete`` changed. SQLite and MariaDB read no further than that; asyncpg
  reads the whole result before it is cut, so give a large ``select`` a ``limit``.
* **Data checks**: ``expect`` is a condition in the trigger's ``when`` language over
  ``rows``, ``row_count`` and ``affected`` (``rows[0].n > 0``); false fails the task for
  good (no retry), rolling the statement back, with the first row in the error. A row
  that is not there is false (``rows[0].n > 0`` on no rows fails the check).

Errors: a lost connection, a deadlock or a serialization failure is worth a retry
(:class:`TaskError`); a statement the database refuses (syntax, a missing table, a
constraint) is not (:class:`PermanentTaskError`).

One connection pool per DSN (PostgreSQL, MariaDB) serves every task of the daemon;
:meth:`SqlTask.aclose` closes them. SQLite opens the file for each task.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

import aiosqlite
import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cued.daemon.sdk import (
    CuedError,
    DataCheckFailed,
    ParamProblem,
    PermanentTaskError,
    TaskError,
    TemplateProblem,
    condition_holds,
    condition_template,
    db_value,
    decimal,
    describe_error,
    has_template,
    mark_secret,
    parse_template,
    resolve_secret,
)

from ._shared import Closing, Shared

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    import aiomysql  # type: ignore[import-untyped]
    import asyncpg

    from cued.daemon.sdk import TaskContext

__all__ = ["SqlParams", "SqlTask", "driver_of"]

_SCHEMES = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mariadb": "mysql",
}
_CLOSE_TIMEOUT_S = 10.0
#: How much of the first row a failed check shows.
_ROW_SHOWN_CHARS = 2000


def driver_of(dsn: str) -> str | None:
    """``postgresql``, ``sqlite`` or ``mysql`` for a DSN's scheme, or None."""
    scheme, sep, _ = dsn.partition(":")
    return _SCHEMES.get(scheme.lower()) if sep else None


class SqlParams(BaseModel):
    """Parameters of a ``sql`` task (see the module's documentation).

    :param dsn: where: ``env:NAME`` (from the environment), ``file:PATH``, or the DSN
    :param query: one SQL statement, with the driver's placeholders
    :param params: the values bound to the placeholders, in order
    :param expect: a condition that must hold on the result, else the task fails
    :param max_rows: the most rows kept in the output
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dsn: str = Field(min_length=1, repr=False)
    query: str = Field(min_length=1)
    params: list[Any] = Field(default_factory=list)
    expect: str | None = None
    max_rows: int = Field(100, ge=0, le=10_000)

    @field_validator("dsn")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value.startswith(("env:", "file:")) or has_template(value):
            return value
        if driver_of(value) is None:
            raise ValueError(
                "the DSN must start with postgresql://, sqlite:, mysql:// or mariadb:// "
                "(or be env:NAME or file:PATH)"
            )
        return value

    @field_validator("expect")
    @classmethod
    def _expect(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_template(condition_template(value))
            except TemplateProblem as exc:
                raise ValueError(f"expect {value!r} does not parse: {exc}") from exc
        return value

    @classmethod
    def template_problems(cls, params: Mapping[str, Any]) -> Iterator[ParamProblem]:
        """The statement and where it goes are fixed in the config: event data reaches
        the database only as bound ``params``."""
        for key in ("query", "dsn", "expect"):
            if has_template(params.get(key)):
                yield ParamProblem(
                    (key,),
                    f"{key} cannot be a template: pass values as params "
                    "(bound, never spliced into the SQL)",
                )


class SqlTask(Closing):
    """Run ``query`` with ``params`` in a transaction; see the module's documentation."""

    name: ClassVar[str] = "sql"
    Params: ClassVar[type[BaseModel]] = SqlParams

    def __init__(self) -> None:
        self._pg: Shared[str, asyncpg.Pool] = Shared("sql")
        self._mysql: Shared[str, aiomysql.Pool] = Shared("sql")

    async def execute(self, params: SqlParams, ctx: TaskContext) -> Any:
        """Run the statement and the check in one transaction.

        :return: ``{"rows", "row_count", "truncated", "affected"}``
        :raises PermanentTaskError: if the database refuses the statement, or ``expect``
            does not hold
        :raises TaskError: if the database cannot be reached, or the transaction lost a
            deadlock or a serialization conflict
        """
        dsn = _resolve(params.dsn)
        driver = driver_of(dsn)
        if driver is None:
            raise PermanentTaskError(
                "the DSN must start with postgresql://, sqlite:, mysql:// or mariadb://"
            )
        run = {"postgresql": self._postgresql, "sqlite": _sqlite, "mysql": self._mysql_run}
        return await run[driver](dsn, params)

    # -- PostgreSQL ----------------------------------------------------------------------

    async def _postgresql(self, dsn: str, params: SqlParams) -> Any:
        # imported when used: a daemon without sql tasks does not pay for the drivers
        import asyncpg

        pool = await self._pg_pool(dsn)
        try:
            async with pool.acquire() as conn, conn.transaction():
                statement = await conn.prepare(params.query)
                records = await statement.fetch(*params.params)
                names = [a.name for a in statement.get_attributes()]
                rows = [dict(zip(names, r.values(), strict=True)) for r in records]
                affected = _affected(statement.get_statusmsg())
                return _checked(params, rows[: params.max_rows + 1], affected)
        except (
            asyncpg.PostgresConnectionError,
            asyncpg.DeadlockDetectedError,
            asyncpg.SerializationError,
            asyncpg.InterfaceError,
            OSError,
        ) as exc:
            raise TaskError(f"PostgreSQL: {describe_error(exc)}") from exc
        except (asyncpg.PostgresError, asyncpg.DataError) as exc:
            raise PermanentTaskError(
                f"PostgreSQL refused the statement: {describe_error(exc)}"
            ) from exc

    async def _pg_pool(self, dsn: str) -> asyncpg.Pool:
        import asyncpg

        async def create() -> asyncpg.Pool:
            try:
                return await asyncpg.create_pool(dsn, min_size=0, max_size=10)
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
                raise TaskError(f"cannot connect to PostgreSQL: {describe_error(exc)}") from exc
            except asyncpg.PostgresError as exc:  # a database or role that does not exist
                raise PermanentTaskError(
                    f"cannot connect to PostgreSQL: {describe_error(exc)}"
                ) from exc

        return await self._pg.get(dsn, create)

    # -- MariaDB / MySQL -----------------------------------------------------------------

    async def _mysql_run(self, dsn: str, params: SqlParams) -> Any:
        import aiomysql
        import pymysql  # type: ignore[import-untyped]

        pool = await self._mysql_pool(dsn)
        try:
            async with pool.acquire() as conn:
                await conn.begin()
                try:
                    async with conn.cursor(aiomysql.DictCursor) as cursor:
                        await cursor.execute(params.query, params.params or None)
                        rows = list(await cursor.fetchmany(params.max_rows + 1))
                        affected = cursor.rowcount if cursor.description is None else None
                        output = _checked(params, rows, affected)
                    await conn.commit()
                    return output
                except BaseException:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT_S):
                        await conn.rollback()
                    raise
        except pymysql.err.OperationalError as exc:
            # lost connections, lock wait timeouts and deadlocks (1205, 1213)
            raise TaskError(f"MariaDB/MySQL: {describe_error(exc)}") from exc
        except pymysql.err.MySQLError as exc:
            raise PermanentTaskError(
                f"MariaDB/MySQL refused the statement: {describe_error(exc)}"
            ) from exc

    async def _mysql_pool(self, dsn: str) -> aiomysql.Pool:
        import aiomysql
        import pymysql

        async def create() -> aiomysql.Pool:
            url = urlsplit(dsn)
            try:
                return await aiomysql.create_pool(
                    host=url.hostname or "127.0.0.1",
                    port=url.port or 3306,
                    user=unquote(url.username or "root"),
                    password=unquote(url.password or ""),
                    db=unquote(url.path.lstrip("/")) or None,
                    autocommit=False,
                    minsize=0,
                    maxsize=10,
                    charset="utf8mb4",
                )
            except (OSError, pymysql.err.MySQLError) as exc:
                raise TaskError(f"cannot connect to MariaDB/MySQL: {describe_error(exc)}") from exc

        return await self._mysql.get(dsn, create)

    async def aclose(self) -> None:
        """Close every pool (bounded, also when cancelled)."""
        pg, mysql = self._pg.close(), self._mysql.close()
        with anyio.move_on_after(_CLOSE_TIMEOUT_S, shield=True):
            for pool in pg:
                await pool.close()
            for pool in mysql:
                pool.close()
                await pool.wait_closed()


# -- SQLite ------------------------------------------------------------------------------


async def _sqlite(dsn: str, params: SqlParams) -> Any:
    path = dsn.removeprefix("sqlite:")
    path = path.removeprefix("//")  # sqlite:///abs/path -> /abs/path
    if not path:
        raise PermanentTaskError("the SQLite DSN names no file (sqlite:///path/to/file.db)")
    try:
        async with aiosqlite.connect(path, isolation_level=None) as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                cursor = await db.execute(params.query, params.params)
                names = [d[0] for d in cursor.description or ()]
                fetched = await cursor.fetchmany(params.max_rows + 1) if names else []
                rows = [dict(zip(names, r, strict=True)) for r in fetched]
                affected = cursor.rowcount if not names and cursor.rowcount >= 0 else None
                output = _checked(params, rows, affected)
                await cursor.close()
                await db.commit()
                return output
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await db.rollback()
                raise
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise TaskError(f"SQLite: {describe_error(exc)}") from exc
        raise PermanentTaskError(f"SQLite refused the statement: {describe_error(exc)}") from exc
    except (sqlite3.Error, ValueError) as exc:
        raise PermanentTaskError(f"SQLite refused the statement: {describe_error(exc)}") from exc


# -- shared ------------------------------------------------------------------------------


def _checked(params: SqlParams, fetched: list[dict[str, Any]], affected: int | None) -> Any:
    """The output, once ``expect`` holds on it.

    :param fetched: up to ``max_rows + 1`` rows (one more tells the output was cut)
    :raises PermanentTaskError: if ``expect`` does not hold, or cannot be evaluated
    """
    binary: list[str] = []
    rows = [
        {str(k): db_value(v, binary, str(k)) for k, v in row.items()}
        for row in fetched[: params.max_rows]
    ]
    output: dict[str, Any] = {
        "rows": rows,
        "row_count": len(rows),
        "truncated": len(fetched) > params.max_rows,
        "affected": affected,
    }
    if binary:
        output["base64"] = sorted(set(binary))
    if params.expect is not None:
        context = {"rows": rows, "row_count": len(rows), "affected": affected}
        try:
            holds = condition_holds(params.expect, context)
        except TemplateProblem as exc:
            raise PermanentTaskError(f"expect {params.expect!r}: {exc}") from exc
        if not holds:
            shown = json.dumps(rows[0], ensure_ascii=False)[:_ROW_SHOWN_CHARS] if rows else None
            raise DataCheckFailed(
                f"expect {params.expect!r} does not hold: "
                + (f"first row {shown}" if shown else "no rows")
                + f" ({len(rows)} rows, {affected if affected is not None else 'none'} affected)"
            )
    return output


def _affected(status: str | None) -> int | None:
    """The row count of a command tag (``INSERT 0 3``, ``UPDATE 2``), for changes."""
    if not status:
        return None
    parts = status.split()
    if parts[0] in ("INSERT", "UPDATE", "DELETE", "MERGE"):
        return decimal(parts[-1])
    return None


def _resolve(value: str) -> str:
    """The DSN behind ``env:NAME``, ``file:PATH`` (relative to the daemon's working
    directory: task kinds are not told the config's folder) or the value itself, through
    the daemon's secrets, which remember it for redaction; a password in a DSN given as
    itself is remembered too."""
    try:
        dsn = resolve_secret(value, Path(), what="a sql task's dsn", literal_is_secret=False)
    except CuedError as exc:
        # the daemon's environment does not change while it runs: retrying cannot help
        raise PermanentTaskError(f"dsn: {exc}") from exc
    if password := urlsplit(dsn).password:
        mark_secret(dsn)
        mark_secret(unquote(password))
    return dsn
