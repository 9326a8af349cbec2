"""The parsers of outside bytes: they never raise, and what they give is safe to keep."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.untrusted import (
    MAX_DEPTH,
    MAX_ID_CHARS,
    bounded_id,
    clean,
    header_text,
    json_value,
    os_name,
    text,
)


def _storable(value: object) -> None:
    """What the store, the API (pydantic) and UTF-8 responses need of a value."""
    encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    encoded.encode("utf-8")  # no lone surrogates


@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_give_an_error_never_raise(raw: bytes) -> None:
    parsed = json_value(raw)
    _storable(parsed.data)
    if parsed.error is not None:
        assert isinstance(parsed.data, str)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), st.lists, max_leaves=30))
def test_json_documents_come_back_as_they_were(value: object) -> None:
    assert json_value(json.dumps(value).encode()).data == value


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nests deeper", id="deep-array"),
        pytest.param(b'{"a":' * 900 + b"1" + b"}" * 900, "nests deeper", id="deep-object"),
        pytest.param(b"9" * 5000, "more digits", id="huge-integer"),
        pytest.param(b"NaN", "not a JSON value", id="nan"),
        pytest.param(b'{"x": -Infinity}', "not a JSON value", id="infinity"),
        pytest.param(b'{"a": "\xff"}', "not UTF-8", id="not-utf8"),
        pytest.param(b"{oops", "not valid JSON", id="syntax"),
    ],
)
def test_what_cannot_be_kept_is_refused_with_a_reason(body: bytes, error: str) -> None:
    parsed = json_value(body)
    assert parsed.error is not None
    assert error in parsed.error
    _storable(parsed.data)


def test_depth_up_to_the_limit_is_kept() -> None:
    body = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert json_value(body).error is None
    assert json_value(b"[" + body + b"]").error is not None


def test_lone_surrogates_are_escaped_pairs_are_kept() -> None:
    parsed = json_value(b'{"\\udc80k": ["\\ud800", "\\ud83d\\ude00"]}')
    assert parsed.error is None
    assert parsed.data == {"\\udc80k": ["\\ud800", "\U0001f600"]}


def test_empty_body_is_null_and_a_bom_is_allowed() -> None:
    assert json_value(b"  ").data is None
    assert json_value(b'\xef\xbb\xbf{"a": 1}').data == {"a": 1}


@given(st.binary(max_size=64))
def test_os_names_of_any_bytes_become_text(raw: bytes) -> None:
    name = os.fsdecode(raw)
    shown, valid = os_name(name)
    shown.encode("utf-8")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        assert not valid
    else:
        assert valid
        assert shown == name


@given(st.binary(max_size=256))
def test_header_values_of_any_bytes_become_text(raw: bytes) -> None:
    header_text(raw.decode("latin-1")).encode("utf-8")


def test_a_utf8_header_reads_as_utf8() -> None:
    assert header_text("é".encode().decode("latin-1")) == "é"


@given(st.text(max_size=500))
def test_ids_are_bounded_and_stable(value: str) -> None:
    bounded = bounded_id(value)
    bounded.encode("utf-8")
    assert len(bounded) <= MAX_ID_CHARS
    assert bounded == bounded_id(value)


def test_long_ids_that_differ_stay_apart() -> None:
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert bounded_id(a) != bounded_id(b)


def test_text_escapes_what_is_not_utf8() -> None:
    assert text(b"ok \xff") == "ok \\xff"


def test_clean_refuses_too_deep() -> None:
    with pytest.raises(ValueError, match="nests deeper"):
        clean([[[1]]], max_depth=2)
