"""The environment of the programs the daemon starts: a small base and what the
configuration names, never the daemon's own (which holds the secrets ``env:`` names)."""

from __future__ import annotations

import json
import secrets
import sys
from typing import TYPE_CHECKING, Any

import httpx
import pydantic
import pytest

from cued.daemon.config.environment import BASE_NAMES, program_env
from cued.daemon.errors import ConfigError
from cued.plugins.shell import ShellTask
from tests.support.daemon import wait_for
from tests.support.kinds import task_context
from tests.support.running import daemon_running, wait_finished

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from cued.daemon.sdk.kinds import TaskContext

#: A program that prints its environment as JSON.
PRINT_ENV = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def context(http: httpx.AsyncClient, **extra: Any) -> TaskContext:
    return task_context(http, pipeline="p", task="t", idempotency_key="run-1/t", **extra)


async def env_of(http: httpx.AsyncClient, ctx_extra: dict[str, Any] | None = None, **params):
    task = ShellTask()
    output = await task.execute(
        ShellTask.Params.model_validate({"argv": PRINT_ENV, **params}),
        context(http, **(ctx_extra or {})),
    )
    env: dict[str, str] = json.loads(output["stdout"])
    return env


# -- shell tasks ---------------------------------------------------------------------------


async def test_a_shell_task_gets_the_base_not_the_daemons_environment(
    http_client, monkeypatch
) -> None:
    monkeypatch.setenv("CUED_TEST_HIDDEN", "hidden")
    monkeypatch.setenv("LC_CUED_TEST", "C")
    env = await env_of(http_client)
    assert "CUED_TEST_HIDDEN" not in env
    assert env["LC_CUED_TEST"] == "C"
    assert env["PATH"]
    cued = {k for k in env if k.startswith("CUED_")}
    assert cued == {
        "CUED_RUN_ID",
        "CUED_PIPELINE",
        "CUED_TASK",
        "CUED_ATTEMPT",
        "CUED_IDEMPOTENCY_KEY",
    }
    assert all(k in BASE_NAMES or k.startswith("LC_") for k in set(env) - cued), env


@pytest.mark.parametrize(
    "env",
    [
        pytest.param(["CUED_TEST_PASSED", "CUED_TEST_SET=fixed=value"], id="list"),
        pytest.param({"CUED_TEST_SET": "fixed=value"}, id="table"),
    ],
)
async def test_env_passes_named_variables_through_and_sets_values(
    http_client, monkeypatch, env
) -> None:
    monkeypatch.setenv("CUED_TEST_PASSED", "passed")
    monkeypatch.setenv("CUED_TEST_HIDDEN", "hidden")
    got = await env_of(http_client, env=env)
    assert got["CUED_TEST_SET"] == "fixed=value"
    assert got.get("CUED_TEST_PASSED") == ("passed" if isinstance(env, list) else None)
    assert "CUED_TEST_HIDDEN" not in got


async def test_a_name_that_is_not_set_is_left_out(http_client, monkeypatch) -> None:
    monkeypatch.delenv("CUED_TEST_UNSET", raising=False)
    assert "CUED_TEST_UNSET" not in await env_of(http_client, env=["CUED_TEST_UNSET"])


async def test_task_env_names_reach_every_task(http_client, monkeypatch) -> None:
    monkeypatch.setenv("CUED_TEST_EVERYWHERE", "yes")
    got = await env_of(http_client, {"pass_env": ("CUED_TEST_EVERYWHERE",)})
    assert got["CUED_TEST_EVERYWHERE"] == "yes"


@pytest.mark.parametrize(
    "env",
    [
        pytest.param(["1ABC"], id="digit-first"),
        pytest.param(["A B=c"], id="space"),
        pytest.param(["=value"], id="no-name"),
        pytest.param({"A-B": "c"}, id="table-key"),
        pytest.param({"A": 1}, id="table-value"),
        pytest.param("A", id="string"),
    ],
)
def test_env_rejects_what_is_not_names_and_values(env) -> None:
    with pytest.raises(pydantic.ValidationError):
        ShellTask.Params.model_validate({"argv": ["true"], "env": env})


def test_program_env_is_the_base_the_names_then_the_values() -> None:
    source = {"PATH": "/bin", "LC_TIME": "C", "TOKEN": "t", "OTHER": "o", "HOME": "/h"}
    env = program_env(["TOKEN", "MISSING"], [("HOME", "/elsewhere")], source=source)
    assert env == {"PATH": "/bin", "LC_TIME": "C", "TOKEN": "t", "HOME": "/elsewhere"}


# -- the daemon ----------------------------------------------------------------------------

DAEMON = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
task_env = ["CUED_TEST_EVERYWHERE"]

[sources.hooks]
kind = "webhook"
path = "/hooks/in"
signature = "token"
secret = "env:CUED_TEST_SECRET"

[pipelines.envs.tasks.plain]
kind = "shell"
command = "env"
[pipelines.envs.tasks.allowed]
kind = "shell"
command = "env"
env = ["CUED_TEST_VISIBLE"]
[pipelines.envs.tasks.fails]
kind = "shell"
argv = ["false"]

[alerts.script]
kind = "command"
argv = ["sh", "-c", "env > alert-env.txt.tmp && mv alert-env.txt.tmp alert-env.txt"]
env = ["CUED_TEST_VISIBLE"]
on = ["run_failed"]
"""


async def test_no_secret_of_the_daemons_environment_reaches_tasks_or_alert_commands(
    make_config, monkeypatch, tmp_path
) -> None:
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("CUED_TEST_SECRET", secret)
    monkeypatch.setenv("CUED_TEST_VISIBLE", "visible")
    monkeypatch.setenv("CUED_TEST_EVERYWHERE", "everywhere")
    async with daemon_running(make_config(DAEMON)) as info:
        row = await info.runner.start_run("envs")
        await wait_finished(info, [row.run_id])
        written = tmp_path / "alert-env.txt"
        await wait_for(written.exists)  # another process's effect
        found = await info.runner.store.run_state(row.run_id)
    assert found is not None
    outputs = found[2]
    plain, allowed = outputs["plain"]["stdout"], outputs["allowed"]["stdout"]
    alert = written.read_text()
    for printed in (plain, allowed, alert):
        # not even redacted: the variable is not there at all
        assert "CUED_TEST_SECRET" not in printed
        assert secret not in printed
    assert "CUED_TEST_VISIBLE=visible" in allowed.splitlines()
    assert "CUED_TEST_VISIBLE" not in plain
    assert "CUED_TEST_EVERYWHERE=everywhere" in plain.splitlines()
    assert "CUED_TEST_VISIBLE=visible" in alert.splitlines()
    assert "CUED_TEST_EVERYWHERE" not in alert  # task_env is for tasks
    assert "CUED_ALERT_ID=script:run_failed:" in alert


def test_task_env_and_an_alerts_env_must_be_names(make_config) -> None:
    text = DAEMON.replace(
        'task_env = ["CUED_TEST_EVERYWHERE"]', 'task_env = ["NOT A NAME"]'
    ).replace('env = ["CUED_TEST_VISIBLE"]\non', 'env = ["9LIVES"]\non')
    with pytest.raises(ConfigError) as info:
        make_config(text)
    paths = sorted(p.path for p in info.value.problems)
    assert paths == ["alerts.script.env", "daemon.task_env.0"]
