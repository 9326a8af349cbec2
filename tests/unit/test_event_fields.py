"""Which fields of ``event.data`` a trigger's expressions read (``cued triggers test``
names those no stored event has), and whether a payload has one."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.core.event_fields import data_paths, has_path, when_data_paths


@pytest.mark.parametrize(
    ("when", "paths"),
    [
        pytest.param("event.data.status == 'paid'", [("status",)], id="attribute"),
        pytest.param("event.data['order']['total'] > 3", [("order", "total")], id="items"),
        pytest.param(
            "event.data.a.b and event.data.c or event.data.a.b",
            [("a", "b"), ("c",)],
            id="each-once-longest-only",
        ),
        pytest.param("event.data.items[0].sku", [("items", "0", "sku")], id="list-index"),
        pytest.param("event.data[event.meta.key].x", [], id="computed-key-ends-the-path"),
        pytest.param("event.meta.topic == 'x' and event.source", [], id="not-data"),
        pytest.param("event.data | length > 0", [], id="the-whole-payload"),
        pytest.param(
            "event.data.get('a') or event.data.b.keys() | length",
            [("b",)],
            id="methods-are-not-fields",
        ),
        pytest.param(
            "event.data.kind is defined and event.data.n | int > 2",
            [("kind",), ("n",)],
            id="tests-and-filters",
        ),
    ],
)
def test_the_paths_a_when_reads(when, paths):
    assert when_data_paths(when) == paths


def test_the_paths_inputs_templates_read():
    inputs = {"name": "{{ event.data.user.name }}", "n": ["{{ event.data.n }}", 3], "k": "x"}
    assert data_paths(inputs) == [("user", "name"), ("n",)]


@pytest.mark.parametrize(
    ("data", "path", "has"),
    [
        ({"a": {"b": 1}}, ("a", "b"), True),
        ({"a": {"b": None}}, ("a", "b"), True),
        ({"a": {"b": 1}}, ("a", "c"), False),
        ({"a": [{"b": 1}]}, ("a", "0", "b"), True),
        ({"a": [{"b": 1}]}, ("a", "1", "b"), False),
        ("text", ("a",), False),
        ({"a": 1}, ("a", "b"), False),
    ],
)
def test_has_path(data, path, has):
    assert has_path(data, path) is has


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=10,
)


@given(raw=st.binary(max_size=200), path=st.lists(st.text(max_size=4), max_size=4))
def test_has_path_answers_on_any_payload(raw, path):
    """A stored payload is outside input: whatever it holds, an answer, never an error."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = raw.decode("utf-8", "replace")
    assert has_path(data, tuple(path)) in (True, False)


@given(data=_json, path=st.lists(st.text(max_size=3), max_size=4))
def test_has_path_on_any_json(data, path):
    assert has_path(data, tuple(path)) in (True, False)


@pytest.mark.parametrize(
    "part",
    [
        pytest.param("\u00b9", id="superscript-one-is-a-digit-to-isdigit"),
        pytest.param("\u0661", id="arabic-indic-one"),
        pytest.param("9" * 5000, id="more-digits-than-int-takes"),
        pytest.param("-1", id="negative"),
    ],
)
def test_a_part_that_is_no_ascii_index_is_no_path_into_a_list(part: str) -> None:
    assert has_path({"items": [1, 2]}, ("items", part)) is False
