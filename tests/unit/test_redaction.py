"""Redaction: no secret the daemon resolved is stored or shown, whether a task prints it,
an error quotes it or a log line holds it. Here the registry and the log processor; a
running daemon in tests/e2e/test_no_secret_is_kept_or_logged.py."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cued.daemon.config import secrets as daemon_secrets
from cued.daemon.config.secrets import MIN_REDACTED_CHARS, REDACTED, SecretRegistry, resolve_secret
from cued.daemon.logs import redact_secrets
from tests.support.secret_values import fresh_secret


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings_in(k), *strings_in(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings_in(v)]
    return []


# -- the registry --------------------------------------------------------------------------

secret_values = st.text(min_size=MIN_REDACTED_CHARS, max_size=20)


@st.composite
def texts_with(draw: st.DrawFn, known: list[str]) -> str:
    """Arbitrary text with the secrets spliced in, whole or touching each other."""
    pieces = draw(st.lists(st.one_of(st.text(max_size=12), st.sampled_from(known)), max_size=8))
    return "".join(pieces)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), known=st.lists(secret_values, min_size=1, max_size=4))
def test_redact_leaves_no_secret_in_any_string(data: st.DataObject, known: list[str]) -> None:
    registry = SecretRegistry()
    remembered = [s for s in known if registry.remember(s)]
    assume(remembered)
    texts = st.deferred(lambda: texts_with(remembered))
    values = st.recursive(
        st.one_of(texts, st.integers(), st.none()),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)
        ),
        max_leaves=8,
    )
    value = data.draw(values)
    redacted = registry.redact(value)
    for text in strings_in(redacted):
        for secret in remembered:
            assert secret not in text


@settings(max_examples=200, deadline=None)
@given(secret=secret_values, text=st.text(max_size=40))
def test_text_that_holds_no_secret_comes_back_as_it_was(secret: str, text: str) -> None:
    registry = SecretRegistry()
    assume(registry.remember(secret) and secret not in text)
    assert registry.redact(text) is text
    nested = {"a": [text, (text, 3)], text: None}
    assert registry.redact(nested) is nested


def test_a_secret_quoted_by_repr_or_json_is_redacted_too() -> None:
    registry = SecretRegistry()
    secret = 'it\'s a "key"\\n\u00e9'
    registry.remember(secret)
    error = f"failed: {secret + chr(39) + chr(34)!r} and {json.dumps(secret)} and {secret!r}"
    assert registry.redact(error).count(REDACTED) == 3
    assert "key" not in registry.redact(error)


def test_short_values_and_the_marker_itself_are_not_remembered() -> None:
    registry = SecretRegistry()
    assert not registry.remember("a" * (MIN_REDACTED_CHARS - 1))
    assert not registry.remember("dacted][redac")  # made of the marker: never removable
    assert not registry
    assert registry.redact("aaaaa") == "aaaaa"


def test_resolve_secret_remembers_env_file_and_literal_secrets(tmp_path, monkeypatch) -> None:
    from_env, from_file, literal, header = (fresh_secret() for _ in range(4))
    monkeypatch.setenv("CUED_TEST_REDACT_ENV", from_env)
    (tmp_path / "secret.txt").write_text(from_file + "\n")
    assert resolve_secret("env:CUED_TEST_REDACT_ENV", tmp_path) == from_env
    assert resolve_secret("file:secret.txt", tmp_path) == from_file
    assert resolve_secret(literal, tmp_path) == literal
    # a header written out (application/json, say) is no secret
    assert resolve_secret(header, tmp_path, literal_is_secret=False) == header
    shown = daemon_secrets.redact(f"{from_env} {from_file} {literal} {header}")
    assert shown == f"{REDACTED} {REDACTED} {REDACTED} {header}"


def test_the_log_processor_redacts_values_nested_values_and_objects() -> None:
    secret = fresh_secret()
    daemon_secrets.remember(secret)
    line = redact_secrets(
        None,
        "warning",
        {
            "event": "task_failed",
            "error": f"boom: {secret}",
            "detail": {"argv": ["x", secret]},
            "exc": ValueError(secret),
            "count": 3,
        },
    )
    assert line["error"] == f"boom: {REDACTED}"
    assert line["detail"] == {"argv": ["x", REDACTED]}
    assert line["exc"] == f"ValueError('{REDACTED}')"
    assert line["count"] == 3
    assert secret not in json.dumps(line)
