"""Many rows in one statement (their JSON array unpacked by SQLite): whatever the rows hold,
the table ends as ``executemany`` leaves it, and upserts apply row after row alike."""

from __future__ import annotations

import math
import sqlite3
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.store import EventRow, RunRow, _sqlite_commit
from cued.daemon.store._sqlite_bulk import (
    BULK_CHUNK,
    BULK_FROM,
    BULK_MAX_BYTES,
    as_json,
    bulk_sql,
    put_rows,
)
from cued.daemon.store._sqlite_commit import _UPSERT_RUN, _rows_of

# what a row's parameters hold: text (control characters, NUL, "null", non-ASCII),
# integers (past 53 bits), finite floats (-0.0, subnormals, the largest), None, booleans
PLAIN = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([-0.0, 1e308, 5e-324, 1733000000.123456])
    | st.text(st.characters(exclude_categories=["Cs"]))
    | st.sampled_from(["null", "\x00", "a\x00b", "\\u0000", "\u2028", "\U0001f600", "\\", '"'])
)
# and what no row should hold but sqlite3 binds or refuses all the same: NaN, the
# infinities, integers past 64 bits, lone surrogates, bytes
ANY = (
    PLAIN
    | st.floats()
    | st.sampled_from([math.nan, math.inf, -math.inf, 2**63, 2**64, -(2**64)])
    | st.text()
    | st.sampled_from(["\ud800", "x\udfff"])
    | st.binary(max_size=8)
)

_TABLE = "CREATE TABLE t (k INTEGER PRIMARY KEY, a, b REAL, c TEXT)"
_INSERT = "INSERT INTO t VALUES (?, ?, ?, ?)"
_UPSERT = """INSERT INTO t VALUES (?, ?, ?, ?)
ON CONFLICT (k) DO UPDATE SET a = excluded.a, c = t.c || excluded.c WHERE excluded.b > t.b"""


def _table(rows: list[tuple[Any, ...]], sql: str, *, bulk: bool) -> list[tuple[Any, ...]]:
    """The table after ``rows`` went in by ``put_rows`` (``bulk``) or by ``executemany``,
    each value with its SQLite type (so 1 and 1.0 differ) and text as its bytes, or the
    error sqlite3 raised."""
    with sqlite3.connect(":memory:") as db:
        db.text_factory = bytes
        db.execute(_TABLE)
        try:
            if bulk:
                # in chunks of three: a row meets its like in an earlier chunk, and chunks
                # that go as JSON sit between chunks that go row by row
                put_rows(db, sql, rows, floats=(1, 2, 3), least=1, chunk=3)
            else:
                db.executemany(sql, rows)
        except (sqlite3.Error, UnicodeEncodeError, OverflowError) as exc:
            return [("refused", type(exc).__name__)]
        return db.execute(
            "SELECT k, a, typeof(a), b, typeof(b), c, typeof(c) FROM t ORDER BY k"
        ).fetchall()


@pytest.mark.parametrize("sql", [_INSERT, _UPSERT], ids=["insert", "upsert"])
@pytest.mark.parametrize("values", [PLAIN, ANY], ids=["plain", "any"])
@given(data=st.data())
def test_rows_of_any_values_end_as_executemany_leaves_them(
    sql: str, values: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    rows = data.draw(
        st.lists(
            # few keys: a row comes again in one statement, as an upsert then finds it
            st.tuples(st.integers(min_value=0, max_value=5), values, values, values),
            max_size=12,
        )
    )
    assert bulk_sql(sql) is not None
    # SQLite keeps no NaN (it stores NULL): the tables compare as plain values
    assert _table(rows, sql, bulk=True) == _table(rows, sql, bulk=False)


@pytest.mark.parametrize(
    ("rows", "statements"),
    [(BULK_FROM, 1), (BULK_FROM - 1, BULK_FROM - 1), (2 * BULK_CHUNK + 1, 3)],
)
def test_many_rows_go_in_one_statement_few_row_by_row(rows: int, statements: int) -> None:
    ran: list[str] = []
    with sqlite3.connect(":memory:") as db:
        db.execute(_TABLE)
        db.set_trace_callback(ran.append)
        put_rows(db, _INSERT, [(k, "x", 1.5, "y") for k in range(rows)], (2,))
        db.set_trace_callback(None)
        assert db.execute("SELECT count(*) FROM t").fetchone() == (rows,)
    inserts = [sql for sql in ran if sql.startswith("INSERT")]
    assert len(inserts) == statements


def test_rows_too_big_for_one_json_text_go_row_by_row() -> None:
    body = "x" * (BULK_MAX_BYTES // 4)
    assert as_json([(1, body)] * 3, floats=()) is not None
    assert as_json([(1, body)] * 5, floats=()) is None


def test_values_json_would_change_go_through_executemany() -> None:
    """Each of these would come back otherwise from SQLite's JSON: not sent that way."""
    for value in ("a\x00b", 2**63, math.inf, -math.inf, math.nan, b"\x01", "\ud800"):
        assert as_json([(1, value), (2, "x")], floats=(1,)) is None, value


def test_plain_values_go_as_one_json_array() -> None:
    text = as_json([("run-1", 1.5, None, 3, True), ("run-2", 0.0, "é", -4, False)], floats=(1,))
    assert text == '[["run-1",1.5,null,3,true],["run-2",0.0,"é",-4,false]]'


def test_only_inserts_of_one_row_of_values_have_a_bulk_form() -> None:
    assert bulk_sql("DELETE FROM t WHERE k = ?") is None
    assert bulk_sql("UPDATE t SET a = ? WHERE k = ?") is None
    bulk = bulk_sql(_UPSERT)
    assert bulk is not None
    assert "json_each(?)" in bulk
    assert "ON CONFLICT (k)" in bulk
    assert bulk.count("json_extract") == 4


def test_the_store_writes_its_usual_rows_in_one_statement_per_table() -> None:
    """Not the fallback by accident: every statement of a commit that puts rows (each an
    ``INSERT`` of the commit's module) has its one-statement form, and the rows of runs and
    events go as JSON."""
    inserts = [
        sql
        for sql in vars(_sqlite_commit).values()
        if isinstance(sql, str) and sql.lstrip().startswith("INSERT")
    ]
    assert len(inserts) >= 16
    assert [sql for sql in inserts if bulk_sql(sql) is None] == []
    runs = [RunRow(f"r{i}", "p", "queued", {"n": i}, 1733000000.5 + i) for i in range(3)]
    events = [
        EventRow(f"e{i}", "s", 1733000000.25, "matched", {"x": None}, {}, (f"r{i}",))
        for i in range(3)
    ]
    for statement in (_rows_of(_UPSERT_RUN, runs), _rows_of(_UPSERT_RUN, events)):
        assert statement.floats
        assert as_json(statement.params, statement.floats) is not None
