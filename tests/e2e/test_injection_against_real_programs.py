"""Event data stays data against real programs: /bin/sh prints back what ``shell_quote``
quoted, a webhook body reaches a quoted command of a daemon as text, ``cued validate``
prints the warning, and an http task reaches only the allowed hosts of a real server."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from cued.daemon.core.templates import render
from cued.daemon.errors import PermanentTaskError
from cued.plugins.http import HttpTask
from tests.support.config_files import SHELL
from tests.support.daemon import cued
from tests.support.http_server import serve_app
from tests.support.running import daemon_running, wait_finished

if TYPE_CHECKING:
    from starlette.requests import Request

    from cued.daemon.sdk.kinds import TaskContext

#: What an argument of a program can hold: any text but NUL (surrogates do not encode).
arguments = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))


@settings(max_examples=60, deadline=None)
@given(text=arguments)
def test_shell_quote_makes_any_text_one_word_that_sh_prints_back(text: str) -> None:
    command = render("printf %s {{ x | shell_quote }}", {"x": text})
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, check=True)
    assert done.stdout == text.encode()


WEBHOOK = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"

[sources.hooks]
kind = "webhook"
path = "/hooks/in"
signature = "none"

[[triggers]]
source = "hooks"
pipeline = "echo"
inputs = { x = "{{ event.data.x }}" }

[pipelines.echo]
inputs = { x = "" }
[pipelines.echo.tasks.say]
kind = "shell"
command = "echo {{ inputs.x | shell_quote }}"
"""


async def test_a_webhook_body_given_to_a_quoted_command_is_printed_not_run(
    make_config, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("SECRET", "the-daemons-own")
    pwned = tmp_path / "pwned"
    body = f"$(touch {pwned}); echo INJECTED-$SECRET `touch {pwned}` ' \" \\"
    async with daemon_running(make_config(WEBHOOK)) as info:
        host, port = info.http_address
        async with httpx.AsyncClient(timeout=10) as client:
            hook = await client.post(f"http://{host}:{port}/hooks/in", json={"x": body})
        assert hook.status_code == 202, hook.text
        (run_id,) = hook.json()["runs"]
        (row,) = await wait_finished(info, [run_id])
        found = await info.runner.store.run_state(run_id)
    assert row.state == "succeeded", row.error
    assert found is not None
    assert found[2]["say"]["stdout"] == body + "\n"
    assert not pwned.exists()


def test_cued_validate_prints_the_warning_and_succeeds(tmp_path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(SHELL.format(command='"echo {{ inputs.x }}"'))
    done = cued(config, "validate")
    assert done.returncode == 0, done.stderr
    assert "valid (1 pipelines, 1 tasks, 1 warning(s))" in done.stdout
    assert f"{config}:5: pipelines.p.tasks.t.command: warning: " in done.stderr


def counting_app(hits: list[str]) -> Starlette:
    async def anything(request: Request) -> PlainTextResponse:
        hits.append(str(request.url))
        return PlainTextResponse("reached")

    return Starlette(routes=[Route("/{path:path}", anything, methods=["GET"])])


async def fetch(ctx: TaskContext, url: str, allow_hosts: list[str]) -> Any:
    params = HttpTask.Params.model_validate({"url": url, "allow_hosts": allow_hosts})
    return await HttpTask().execute(params, ctx)


@pytest.mark.parametrize(
    ("url", "allow_hosts", "words"),
    [
        pytest.param(
            "http://localhost:{port}/x",
            ["127.0.0.1"],
            "host 'localhost' is not in",
            id="other-name",
        ),
        pytest.param(
            "http://api.example.com@127.0.0.1:{port}/x",
            ["api.example.com"],
            "host '127.0.0.1' is not in",
            id="userinfo-trick",
        ),
        pytest.param(
            "http://127.0.0.1:{port}/x",
            ["*.0.0.1", "api.example.com"],
            "host '127.0.0.1' is not in allow_hosts (*.0.0.1, api.example.com)",
            id="a-wildcard-matches-no-address",
        ),
        pytest.param(
            "ftp://127.0.0.1:{port}/x", ["127.0.0.1"], "scheme 'ftp' is not http", id="scheme"
        ),
    ],
)
async def test_a_host_outside_allow_hosts_fails_the_task_before_any_request(
    ctx, url, allow_hosts, words
) -> None:
    hits: list[str] = []
    async with serve_app(counting_app(hits)) as base:
        port = httpx.URL(base).port
        with pytest.raises(PermanentTaskError, match="was not sent") as info:
            await fetch(ctx, url.format(port=port), allow_hosts)
        # the same server answers a request to a host that is allowed
        reached = await fetch(ctx, f"{base}/ok", ["127.0.0.1"])
    assert words in str(info.value)
    assert reached == {"status": 200, "body": "reached"}
    assert hits == [f"{base}/ok"]


async def test_a_templated_host_in_allow_hosts_is_reached_and_one_outside_is_not(
    make_config,
) -> None:
    hits: list[str] = []
    async with serve_app(counting_app(hits)) as base:
        port = httpx.URL(base).port
        config = make_config(
            f"""
[http]
listen = ""
[daemon]
state = "state.db"
[pipelines.get]
inputs = {{ host = "" }}
[pipelines.get.tasks.fetch]
kind = "http"
url = "http://{{{{ inputs.host }}}}:{port}/from-{{{{ inputs.host }}}}"
allow_hosts = ["127.0.0.1", "*.example.com"]
"""
        )
        async with daemon_running(config) as info:
            allowed = (await info.runner.start_run("get", {"host": "127.0.0.1"})).run_id
            refused = (await info.runner.start_run("get", {"host": "localhost"})).run_id
            ok, failed = await wait_finished(info, [allowed, refused])
    assert ok.state == "succeeded"
    assert failed.state == "failed"
    assert "host 'localhost' is not in allow_hosts (127.0.0.1, *.example.com)" in (
        failed.error or ""
    )
    assert hits == [f"{base}/from-127.0.0.1"]
