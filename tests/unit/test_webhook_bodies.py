"""How a webhook reads a body by its media type (pure: no server)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.connectors.webhook import _parse

FORM = "application/x-www-form-urlencoded"


@given(
    st.sampled_from(["", FORM, "application/json", "text/plain", f"{FORM}; charset=utf-8"]),
    st.binary(max_size=1024),
)
def test_any_body_of_any_media_type_parses_or_gives_an_error_never_raises(media, raw):
    parsed, media_problem = _parse(media, raw)
    json.dumps(parsed.data, ensure_ascii=False, allow_nan=False).encode("utf-8")
    assert not media_problem or parsed.error is not None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"name": "you"}', id="curl-d-object"),
        pytest.param(b" [1, 2]", id="array-after-space"),
        pytest.param(b"\xef\xbb\xbf{", id="bom"),
    ],
)
def test_json_text_sent_as_a_form_is_a_media_type_problem_with_the_fix(body):
    parsed, media_problem = _parse(FORM, body)
    assert media_problem
    assert "Content-Type: application/json" in (parsed.error or "")


def test_a_real_form_is_still_a_dict():
    parsed, media_problem = _parse(FORM, b"name=you&x=%7B1%7D")
    assert (parsed.data, parsed.error, media_problem) == ({"name": "you", "x": "{1}"}, None, False)


def test_json_with_its_media_type_is_data():
    parsed, media_problem = _parse("application/json", b'{"name": "you"}')
    assert (parsed.data, media_problem) == ({"name": "you"}, False)
