"""Many rows in one SQLite statement: the rows as one JSON array, unpacked by ``json_each``.

Why: ``executemany`` steps its statement once per row, and Python's ``sqlite3`` lets go of
the GIL around every step and takes it back after. The writer's thread then waits for the
GIL once per row while the event loop's thread runs Python (up to the switch interval,
5 ms, each time): a group commit of 3,000 rows took ~100 ms in the Kafka benchmark, and
spent half of it waiting; with a busy thread beside it, 30 ms of inserts took seconds. One
``INSERT ... SELECT ... FROM json_each(?)`` is one step: the GIL is let go once, and SQLite
does the whole table's rows on the other core.

The JSON text must read back as exactly the values ``executemany`` would bind, or the rows
go through ``executemany`` as before (:func:`as_json` says None). orjson writes them, and
SQLite's JSON reads them back as they were but for these, which fall back:

* a string holding U+0000 (SQLite's JSON cuts the text there);
* an integer beyond 53 bits (orjson's strict integers: SQLite reads one past 63 bits as
  a float, where ``sqlite3`` refuses it; those within are exact but rare here);
* a float that is not finite (orjson writes ``null``; SQLite stores an infinity, and a
  ``NaN`` as NULL);
* anything orjson does not write as ``sqlite3`` binds it: bytes, strings with lone
  surrogates (which ``sqlite3`` refuses as before).

Only from :data:`BULK_FROM` rows on: SQLite reading the JSON costs ~1 µs of CPU more per
row than binding (~3 µs for a statement of two rows) and makes the commit longer, which
a run's next task waits for. Where a statement has hundreds of rows (a flood's group
commits) the GIL comes back hundreds of times, and one statement pays; below that it did
not (BENCHMARKS.md, "One statement per table": at 32 rows the core workload lost 9 %).

``tests/unit/test_sqlite_bulk.py`` writes arbitrary rows both ways and compares the tables.
"""

from __future__ import annotations

import math
import re
import sqlite3
from functools import cache, partial
from itertools import chain
from operator import is_not, itemgetter
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["BULK_CHUNK", "BULK_FROM", "BULK_MAX_BYTES", "as_json", "bulk_sql", "put_rows"]

BULK_FROM = 256
"""Statements of fewer rows go by ``executemany`` (see the module)."""

BULK_CHUNK = 256
"""Rows per statement: the JSON text is a copy of its rows' values, made one chunk at a
time (a whole flood's commit at once added ~2 MB to the peak RSS of ``bench.kafka``'s
100,000 waiting runs; in chunks of 256, 0.3 MB)."""

BULK_MAX_BYTES = 4 << 20
"""Rows whose JSON is longer go by ``executemany``: the JSON is a copy of every value, and
rows that large (big event bodies) are few per commit, so their GIL round trips are too."""

_is_not_none = partial(is_not, None)

_VALUES = re.compile(r"\bVALUES \(((?:\?, )*\?)\)")


def _json_works() -> bool:
    """Whether this SQLite has its JSON functions (built in since 3.38, an extension
    every common build had long before)."""
    db = sqlite3.connect(":memory:")
    try:
        got = db.execute("SELECT json_extract(value, '$[0]') FROM json_each('[[1]]')").fetchall()
    except sqlite3.Error:
        return False
    finally:
        db.close()
    return bool(got == [(1,)])


_JSON_WORKS = _json_works()


@cache  # a handful of statements, each asked for at every commit
def bulk_sql(sql: str) -> str | None:
    """``sql``, an ``INSERT ... VALUES (?, ...) [ON CONFLICT ...]`` of one row, as a
    statement over every row of a JSON array (the one parameter); None for any other
    statement, or if this SQLite has no JSON functions."""
    found = _VALUES.search(sql)
    if not _JSON_WORKS or found is None or not sql.lstrip().startswith("INSERT"):
        return None
    columns = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(found.group(1).count("?")))
    # "WHERE true": an upsert after a SELECT needs a WHERE (SQLite's parser, see "upsert")
    select = f"SELECT {columns} FROM json_each(?) WHERE true"
    return sql[: found.start()] + select + sql[found.end() :]


def as_json(params: Sequence[tuple[Any, ...]], floats: tuple[int, ...]) -> str | None:
    """``params`` (rows of parameters) as a JSON array that SQLite's JSON reads back as
    exactly these values, or None if it would not (see the module).

    :param floats: where a row may hold a float (others are not looked at)
    """
    try:
        text = orjson.dumps(params, option=orjson.OPT_STRICT_INTEGER)
    except TypeError:  # orjson.JSONEncodeError is one
        return None
    # a NUL (or an escaped one inside a JSON field's text: rare, and safe to send apart)
    if len(text) > BULK_MAX_BYTES or b"\\u0000" in text:
        return None
    if b"null" in text and floats and not _finite(params, floats):
        return None  # orjson wrote a NaN or an infinity as null
    return text.decode()


def _finite(params: Sequence[tuple[Any, ...]], floats: tuple[int, ...]) -> bool:
    """Whether no row of ``params`` holds a NaN or an infinity where it may hold a float
    (False also for finite floats near the largest, whose sum is not finite)."""
    values: Iterable[Any] = map(itemgetter(*floats), params)
    if len(floats) > 1:
        values = chain.from_iterable(values)
    try:  # the sum of the numbers, in C: a NaN or an infinity makes it not finite
        return math.isfinite(sum(filter(_is_not_none, values)))
    except TypeError:  # something else than a number where a float may be: one by one
        return not any(
            type(row[i]) is float and not math.isfinite(row[i]) for row in params for i in floats
        )


def put_rows(
    conn: sqlite3.Connection,
    sql: str,
    params: Sequence[tuple[Any, ...]],
    floats: tuple[int, ...],
    *,
    least: int = BULK_FROM,
    chunk: int = BULK_CHUNK,
) -> None:
    """Run ``sql`` for each row of ``params``: if they are ``least`` rows or more, as its
    :func:`bulk_sql` over ``chunk`` rows at a time where it can, else by ``executemany``."""
    bulk = bulk_sql(sql)
    if bulk is None or len(params) < least:
        conn.executemany(sql, params)
        return
    for at in range(0, len(params), chunk):  # in order: a later row wins as before
        rows = params[at : at + chunk]
        text = as_json(rows, floats)
        if text is None:
            conn.executemany(sql, rows)
        else:
            conn.execute(bulk, (text,))
