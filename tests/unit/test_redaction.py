"""Redaction: no secret the daemon resolved is stored or shown, whether a task prints it,
an error quotes it or a log line holds it."""

from __future__ import annotations

import json
import secrets
from typing import Any

import anyio
import httpx
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cued.daemon.config import secrets as daemon_secrets
from cued.daemon.config.secrets import MIN_REDACTED_CHARS, REDACTED, SecretRegistry, resolve_secret
from cued.daemon.logs import redact_secrets
from tests.support.daemon import Daemon, cued, query, wait_for
from tests.support.running import daemon_running, wait_finished


def fresh_secret() -> str:
    """A value no other test uses: the daemon's registry lives as long as the process."""
    return "s3cr3t-" + secrets.token_hex(8)


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


# -- the daemon ----------------------------------------------------------------------------

PIPELINE = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"

[auth.users.vera]
token = "vera-viewer-token"
roles = ["viewer"]

[sources.hooks]
kind = "webhook"
path = "/hooks/in"
signature = "token"
secret = "env:CUED_TEST_SECRET"

[pipelines.leak]
inputs = { x = "" }
[pipelines.leak.tasks.show]
kind = "shell"
command = 'printf "the value: %s\\n" "$X"'
env = ["X={{ inputs.x }}"]
[pipelines.leak.tasks.fail]
kind = "shell"
command = 'printf "cannot use %s\\n" "$X" >&2; exit 3'
env = ["X={{ inputs.x }}"]
[pipelines.leak.tasks.say]
kind = "python"
function = "tests.support.pyfuncs:log_text"
args = { text = "it is {{ inputs.x }}" }

[alerts.loud]
kind = "command"
argv = ["sh", "-c", "echo \\"no: $CUED_TEST_SECRET\\" >&2; exit 1"]
env = ["CUED_TEST_SECRET"]
on = ["run_failed"]
max_attempts = 1
"""


async def test_a_secret_printed_by_a_task_or_an_alert_is_redacted_where_it_is_kept(
    make_config, monkeypatch, tmp_path
) -> None:
    secret = fresh_secret()
    monkeypatch.setenv("CUED_TEST_SECRET", secret)
    async with daemon_running(make_config(PIPELINE)) as info:
        host, port = info.http_address
        base = f"http://{host}:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            row = await info.runner.submit_run("leak", {"x": secret})
            await wait_finished(info, [row.run_id])
            shown = await client.get(
                f"/api/v1/runs/{row.run_id}", headers={"authorization": "Bearer vera-viewer-token"}
            )
            # given up (next_at: never) after its one try: a program of its own, and a commit
            await wait_for(
                lambda: query(tmp_path / "state.db", "SELECT 1 FROM outbox WHERE next_at > 1e11")
            )
    assert shown.status_code == 200, shown.text
    run = shown.json()
    tasks = {t["key"]: t for t in run["tasks"]}
    (show,) = tasks["show"]["attempts"]
    (fail,) = tasks["fail"]["attempts"]
    assert show["output"]["stdout"] == f"the value: {REDACTED}\n"
    assert fail["error"].endswith(f"exited with code 3:\ncannot use {REDACTED}")
    assert secret not in json.dumps([run["tasks"], run["error"]])
    # the inputs are kept as they were given: they are the caller's own data
    assert run["inputs"] == {"x": secret}
    ((alert_error,),) = query(tmp_path / "state.db", "SELECT last_error FROM outbox")
    assert alert_error == f"program 'sh' exited with code 1: no: {REDACTED}"


async def test_the_daemons_log_lines_hold_no_secret(tmp_path) -> None:
    """A real ``cued run``: its JSON log lines, a task failure quoting the secret among them."""
    secret = fresh_secret()
    config = tmp_path / "config.toml"
    (tmp_path / "hook.secret").write_text(secret)
    config.write_text(
        PIPELINE.replace('listen = "127.0.0.1:0"', 'listen = ""').replace(
            '"env:CUED_TEST_SECRET"', '"file:hook.secret"'
        )
    )
    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    try:
        with anyio.fail_after(30):
            result = await anyio.to_thread.run_sync(
                lambda: cued(config, "trigger", "leak", "-i", f"x={secret}", "--wait")
            )
    finally:
        daemon.stop()
    assert "failed" in result.stdout + result.stderr
    log = daemon.log.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    (failed,) = [line for line in lines if line["event"] == "task_failed"]
    assert failed["error"].endswith(f"cannot use {REDACTED}")
    (said,) = [line for line in lines if line["event"] == "task_says"]
    assert said["text"] == f"it is {REDACTED}"
    assert secret not in log
    assert secret not in result.stdout + result.stderr
    (error,) = query(tmp_path / "state.db", "SELECT error FROM attempts WHERE error IS NOT NULL")
    assert secret not in error[0]
