"""The parsers of outside bytes: they never raise, and what they give is safe to keep."""

from __future__ import annotations

import base64
import json
import math
import os
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cued.daemon.core.untrusted import (
    MAX_DEPTH,
    MAX_FORM_FIELDS,
    MAX_ID_CHARS,
    Parsed,
    _decoded,
    bounded_id,
    clean,
    decimal,
    form,
    header_text,
    json_value,
    looks_like_json,
    os_name,
    page_cursor,
    page_position,
    stored,
    text,
    text_or_base64,
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


def _by_json_alone(raw: bytes) -> Parsed:
    """What :func:`json_value` gave before it read with orjson first (``json`` alone)."""
    return _decoded(raw, MAX_DEPTH)


_NUMBERS = (
    st.integers()  # past 64 bits too
    | st.integers(min_value=-(2**64), max_value=2**64).map(lambda n: n * 10)
    | st.floats(allow_nan=False, allow_infinity=False)
)
_DOCUMENTS = st.recursive(
    st.none() | st.booleans() | _NUMBERS | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)
_LAYOUTS = st.sampled_from([{}, {"indent": 1}, {"ensure_ascii": False}, {"separators": (",", ":")}])


@given(_DOCUMENTS, _LAYOUTS)
def test_a_document_reads_as_json_alone_reads_it(value: object, layout: dict[str, Any]) -> None:
    raw = json.dumps(value, **layout).encode()
    assert repr(json_value(raw)) == repr(_by_json_alone(raw))


_PIECES = st.sampled_from(
    [
        b"[",
        b"]",
        b"{",
        b"}",
        b",",
        b":",
        b'"',
        b"\\",
        b"\\u",
        b"d800",
        b"dc00",
        b"00e9",
        b" ",
        b"\n",
        b"\xef\xbb\xbf",
        b"\xff",
        b"1",
        b"-",
        b"0",
        b".",
        b"e",
        b"E",
        b"+",
        b"9" * 19,
        b"1e999",
        b"NaN",
        b"Infinity",
        b"true",
        b"null",
        b'"a"',
        b"\x00",
        b"\t",
    ]
)


@given(st.binary(max_size=300) | st.lists(_PIECES, max_size=40).map(b"".join))
def test_any_bytes_read_as_json_alone_reads_them(raw: bytes) -> None:
    assert repr(json_value(raw)) == repr(_by_json_alone(raw))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nests deeper", id="deep-array"),
        pytest.param(b'{"a":' * 900 + b"1" + b"}" * 900, "nests deeper", id="deep-object"),
        pytest.param(b"9" * 5000, "more digits", id="huge-integer"),
        pytest.param(b"NaN", "not a JSON value", id="nan"),
        pytest.param(b'{"x": -Infinity}', "not a JSON value", id="infinity"),
        pytest.param(b'{"x": [1e999]}', "too large for a float", id="float-overflow"),
        pytest.param(b"-1" + b"0" * 400 + b".5", "too large for a float", id="long-float"),
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


def test_clean_can_cut_what_nests_too_deep_instead() -> None:
    cut = clean({"a": [[1, 2]], "b": 1}, max_depth=2, cut=True)
    assert cut["b"] == 1
    (note,) = cut["a"]
    assert note.startswith("[1, 2]")
    assert "nests deeper than 2 levels" in note


# -- forms ------------------------------------------------------------------------------


@given(st.binary(max_size=1024))
def test_form_bodies_of_any_bytes_parse_or_give_an_error_never_raise(raw: bytes) -> None:
    parsed = form(raw)
    _storable(parsed.data)
    assert isinstance(parsed.data, dict if parsed.error is None else str)


def test_a_form_reads_percent_escapes_as_utf8_and_escapes_what_is_not() -> None:
    assert form(b"name=caf%C3%A9&raw=%FF&plus=a+b&bare=\xff&empty=").data == {
        "name": "caf\u00e9",
        "raw": "\\xff",
        "plus": "a b",
        "bare": "\\xff",
    }


def test_a_form_of_too_many_fields_is_refused() -> None:
    assert form(b"&".join([b"a=1"] * MAX_FORM_FIELDS)).error is None
    parsed = form(b"&".join([b"a=1"] * (MAX_FORM_FIELDS + 1)))
    assert parsed.error == f"form body has more than {MAX_FORM_FIELDS} fields"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b'  {"a": 1}', True, id="object"),
        pytest.param(b"\xef\xbb\xbf\n[1]", True, id="bom-array"),
        pytest.param(b"42", False, id="number"),
        pytest.param(b"", False, id="empty"),
        pytest.param(b"hello", False, id="text"),
    ],
)
def test_what_looks_like_json(raw: bytes, expected: bool) -> None:
    assert looks_like_json(raw) is expected


# -- what the store kept ----------------------------------------------------------------

_STORED_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=40,
)


@given(_STORED_VALUES)
def test_anything_the_store_kept_reads_back_safe_to_show(value: object) -> None:
    # an older daemon kept what json.loads gave: lone surrogates, NaN, deep values
    shown = stored(json.dumps(value))
    json.dumps(shown, ensure_ascii=False).encode("utf-8")
    if "\\ud" not in json.dumps(value).lower() and not _has_nan(value):
        assert shown == value


@example("[18446744073709551616]")  # past 64 bits: orjson would read a float
@example('{"n": -9223372036854775809, "x": NaN}')
@given(
    _DOCUMENTS.map(json.dumps)
    | st.lists(_PIECES, max_size=40).map(lambda ps: b"".join(ps).decode("utf-8", "replace"))
)
def test_a_stored_document_reads_as_json_alone_reads_it(doc: str) -> None:
    # orjson reads most of them: integers past 64 bits, NaN and lone surrogates not
    try:
        expected = json.loads(doc)
    except ValueError:
        assert isinstance(stored(doc), str)  # kept as text, with a note
        return
    if "\\ud" not in doc.lower():  # a lone surrogate comes back escaped
        assert repr(stored(doc)) == repr(expected)


def _has_nan(value: object) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return False


def test_a_stored_value_nested_900_deep_is_cut_with_a_note() -> None:
    doc = '{"a": ' * 900 + "1" + "}" * 900
    shown = stored(doc)
    inner = shown
    for _ in range(MAX_DEPTH):
        inner = inner["a"]
    assert isinstance(inner, str)
    assert inner.startswith('{"a": {"a": ')
    assert inner.endswith(f"(cut: nests deeper than {MAX_DEPTH} levels)")
    json.dumps(shown).encode("utf-8")


def test_a_stored_value_deeper_than_the_stack_keeps_its_start() -> None:
    shown = stored("[" * 100_000 + "]" * 100_000)
    assert isinstance(shown, str)
    assert shown.startswith("[[[")
    assert "nests deeper" in shown


def test_stored_lone_surrogates_are_escaped() -> None:
    assert stored('{"k\\udc80": ["\\ud800", "\\ud83d\\ude00"]}') == {
        "k\\udc80": ["\\ud800", "\U0001f600"]
    }
    assert stored(None) is None


# -- page cursors -----------------------------------------------------------------------


@given(st.floats(allow_nan=False, allow_infinity=False), st.text())
def test_a_page_cursor_reads_back_as_its_position(at: float, key: str) -> None:
    key = key.encode("utf-8", "backslashreplace").decode()  # ids are valid text
    assert page_position(page_cursor(at, key)) == (at, key)


@given(st.text(max_size=3000))
def test_any_text_is_a_page_position_or_none_never_raises(cursor: str) -> None:
    position = page_position(cursor)
    if position is not None:
        at, key = position
        assert math.isfinite(at)
        key.encode("utf-8")


def _b64(doc: bytes) -> str:
    return base64.urlsafe_b64encode(doc).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param(_b64(b"[" + b"9" * 400 + b', "e"]'), id="float-overflow"),
        pytest.param(_b64(b"[" + b"9" * 5000 + b', "e"]'), id="huge-integer"),
        pytest.param(_b64(b'[NaN, "e"]'), id="nan"),
        pytest.param(_b64(b'[1e999, "e"]'), id="infinite"),
        pytest.param(_b64(b'[true, "e"]'), id="bool"),
        pytest.param(_b64(b'[[[[1]]], "e"]'), id="nested"),
        pytest.param(_b64(b"[" * 5000 + b"]" * 5000), id="deep"),
        pytest.param(_b64(b'[1, "e", 3]'), id="three"),
        pytest.param(_b64(b'{"at": 1}'), id="object"),
        pytest.param(_b64(b"\xff\xfe"), id="not-utf8"),
        pytest.param("caf\u00e9", id="not-ascii"),
        pytest.param("abc", id="bad-padding"),
        pytest.param("", id="empty"),
        pytest.param("A" * 5000, id="long"),
    ],
)
def test_cursors_that_are_not_ours_have_no_position(cursor: str) -> None:
    assert page_position(cursor) is None


def test_a_lone_surrogate_in_a_cursor_comes_back_escaped() -> None:
    assert page_position(_b64(b'[1.5, "a\\ud800"]')) == (1.5, "a\\ud800")


# -- keys and headers kept as they came --------------------------------------------------


@given(st.binary(max_size=64))
def test_bytes_are_text_or_base64_and_come_back(raw: bytes) -> None:
    shown, is_base64 = text_or_base64(raw)
    assert (base64.b64decode(shown) if is_base64 else shown.encode("utf-8")) == raw


@given(st.text())
def test_decimal_is_a_number_exactly_when_the_text_is_few_ascii_digits(text: str) -> None:
    value = decimal(text)
    if text and len(text) <= 18 and all("0" <= c <= "9" for c in text):
        assert value == int(text)
    else:
        assert value is None


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("\u00b9", id="superscript-one-int-refuses"),
        pytest.param("\u0663", id="arabic-indic-three-int-reads-as-3"),
        pytest.param("9" * 5000, id="more-digits-than-int-takes"),
        pytest.param("", id="empty"),
        pytest.param("+1", id="signed"),
    ],
)
def test_decimal_refuses_what_isdigit_or_int_would_take(text: str) -> None:
    assert decimal(text) is None
