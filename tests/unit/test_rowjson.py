"""The store's row JSON (orjson where it writes what ``json.dumps`` would, else
``json.dumps``): whatever a row holds reads back as it did with ``json.dumps`` alone."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.core.untrusted import stored
from cued.daemon.store.rowjson import dumps

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # past 64 bits too
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)
    | st.floats()  # NaN, the infinities, -0.0, subnormals
    | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324])
    | st.text()  # lone surrogates, "null", control characters, non-ASCII
    | st.sampled_from(["null", "\ud800", "\udfff x", "\u2028", "\x00"])
)
KEYS = st.text() | st.integers() | st.floats() | st.booleans() | st.none()
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(KEYS, inner, max_size=5)
    ),
    max_leaves=30,
)


def _read(text: str) -> str:
    """What the store reads back from ``text``, as comparable text (NaN equal to NaN)."""
    return json.dumps(json.loads(text))


@given(VALUES)
def test_any_value_reads_back_as_json_dumps_wrote_it(value: object) -> None:
    assert _read(dumps(value)) == _read(json.dumps(value))


@given(st.lists(VALUES, min_size=1, max_size=20))
def test_what_the_store_keeps_reads_back_as_before(values: list[object]) -> None:
    """Through a real SQLite column, and the store's own reading of it (``stored``)."""
    with sqlite3.connect(":memory:") as db:
        db.execute("CREATE TABLE t (i INTEGER, new TEXT, old TEXT)")
        db.executemany(
            "INSERT INTO t VALUES (?, ?, ?)",
            [(i, dumps(v), json.dumps(v)) for i, v in enumerate(values)],
        )
        for new, old in db.execute("SELECT new, old FROM t ORDER BY i"):
            assert json.dumps(stored(new)) == json.dumps(stored(old))


def test_nested_deeper_than_orjson_goes_is_written_as_before() -> None:
    value: object = [1]
    for _ in range(300):
        value = [value]
    assert dumps(value) == json.dumps(value)


def test_small_json_values_take_orjsons_text() -> None:
    assert dumps({"a": [1, 2.5, "é"], "b": True}) == '{"a":[1,2.5,"é"],"b":true}'


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(Point(1), id="dataclass"),
        pytest.param(datetime.datetime(2026, 1, 1), id="datetime"),
        pytest.param({"at": {1, 2}}, id="set"),
    ],
)
def test_what_json_dumps_refuses_is_refused_as_before(value: object) -> None:
    with pytest.raises(TypeError):
        json.dumps(value)
    with pytest.raises(TypeError):
        dumps(value)


def test_a_value_that_holds_itself_is_refused_as_before() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps(loop)
