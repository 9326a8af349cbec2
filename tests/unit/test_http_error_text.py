"""What an ``http`` task's error says of the response's body: one short line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.plugins.http import _ERROR_BODY_CHARS, _gist


@given(st.text(max_size=4000), st.sampled_from(["", "text/html", "text/plain"]))
def test_any_body_is_one_short_line(text, content_type):
    said = _gist(text, content_type)
    assert "\n" not in said
    assert "\r" not in said
    assert len(said) <= _ERROR_BODY_CHARS


@pytest.mark.parametrize(
    ("body", "content_type", "said"),
    [
        pytest.param("<html><title> Oops\n</title></html>", "text/html", "Oops", id="title"),
        pytest.param("<html><body><h1>Not here</h1></body>", "", "Not here", id="heading"),
        pytest.param(
            "<div><script>x()</script>a &lt; b</div>", "text/html", "a < b", id="text-of-tags"
        ),
        pytest.param('{"error":\n  "nope"}', "application/json", '{"error": "nope"}', id="json"),
        pytest.param("line one\nline two", "text/plain", "line one line two", id="text"),
    ],
)
def test_what_a_body_says(body, content_type, said):
    assert _gist(body, content_type) == said
