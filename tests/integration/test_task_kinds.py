"""The built-in task kinds (http, shell, python, sleep), run against real servers,
processes and modules."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import socket
import sys
import textwrap
import threading
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pydantic
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from cued.daemon.errors import PermanentTaskError, TaskError
from cued.daemon.sdk.kinds import TaskContext, TaskKind
from cued.plugins.http import HttpTask
from cued.plugins.python import PythonTask
from cued.plugins.shell import ShellTask
from cued.plugins.sleep import SleepTask
from tests.support import pyfuncs
from tests.support.http_server import serve_app

if TYPE_CHECKING:
    from pathlib import Path

    from starlette.requests import Request

PY = sys.executable

# --------------------------------------------------------------------------- fixtures


def _params(kind: Any, **values: Any) -> Any:
    # Through model_validate, as the daemon does with a task's parameters.
    return kind.Params.model_validate(values)


# --------------------------------------------------------------------------- all kinds


@pytest.mark.parametrize(
    ("kind", "valid"),
    [
        pytest.param(HttpTask, {"url": "http://127.0.0.1/"}, id="http"),
        pytest.param(ShellTask, {"argv": ["true"]}, id="shell"),
        pytest.param(PythonTask, {"function": "pkg.mod:func"}, id="python"),
        pytest.param(SleepTask, {}, id="sleep"),
    ],
)
def test_params_reject_an_unknown_key(kind: Any, valid: dict[str, Any]) -> None:
    kind.Params.model_validate(valid)
    with pytest.raises(pydantic.ValidationError, match="timeout"):
        kind.Params.model_validate({**valid, "timeout": 5})


@pytest.mark.parametrize("kind", [HttpTask, ShellTask, PythonTask, SleepTask])
def test_kinds_are_task_kinds_with_frozen_params(kind: Any) -> None:
    instance = kind()
    assert isinstance(instance, TaskKind)
    config = kind.Params.model_config
    assert config["frozen"] is True
    assert config["extra"] == "forbid"


def test_kinds_are_registered_under_their_names() -> None:
    found = {ep.name: ep.load() for ep in importlib.metadata.entry_points(group="cued.task_kinds")}
    assert {
        "http": HttpTask,
        "shell": ShellTask,
        "python": PythonTask,
        "sleep": SleepTask,
    }.items() <= found.items()
    assert all(kind.name == name for name, kind in found.items())


# --------------------------------------------------------------------------- http


def _app() -> Starlette:
    async def echo(request: Request) -> Response:
        return JSONResponse(
            {
                "method": request.method,
                "idempotency_keys": request.headers.getlist("idempotency-key"),
                "content_type": request.headers.get("content-type"),
                "body": (await request.body()).decode(),
            }
        )

    async def status(request: Request) -> Response:
        code = int(request.path_params["code"])
        body = request.query_params.get("body", f"status {code}")
        return PlainTextResponse(body, status_code=code)

    async def big_error(request: Request) -> Response:
        return PlainTextResponse("x" * 1000, status_code=500)

    async def html_error(request: Request) -> Response:
        page = (
            "<!DOCTYPE html>\n<html>\n<head>\n<style>body { color: red }</style>\n"
            "<title>502 Bad Gateway &amp; co</title>\n</head>\n<body>\n<h1>Bad</h1>\n"
            + "<p>filler</p>\n" * 500
            + "</body>\n</html>\n"
        )
        return Response(page, status_code=502, media_type="text/html")

    async def text(request: Request) -> Response:
        return PlainTextResponse("hello, world")

    async def problem(request: Request) -> Response:
        return Response('{"title": "teapot"}', media_type="application/problem+json")

    async def mislabelled(request: Request) -> Response:
        return Response("not json at all", media_type="application/json")

    async def no_content(request: Request) -> Response:
        return Response(status_code=204, headers={"content-type": "application/json"})

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["GET", "POST", "PUT", "DELETE"]),
            Route("/status/{code:int}", status, methods=["GET", "POST"]),
            Route("/big-error", big_error, methods=["POST"]),
            Route("/html-error", html_error),
            Route("/text", text),
            Route("/problem", problem),
            Route("/mislabelled", mislabelled),
            Route("/no-content", no_content),
        ]
    )


async def test_http_returns_status_and_parsed_json(ctx: TaskContext) -> None:
    async with serve_app(_app()) as base_url:
        output = await HttpTask().execute(_params(HttpTask, url=f"{base_url}/echo"), ctx)
        assert output["status"] == 200
        assert output["body"]["method"] == "GET"


async def test_http_parses_json_of_a_plus_json_media_type(ctx: TaskContext) -> None:
    async with serve_app(_app()) as base_url:
        output = await HttpTask().execute(_params(HttpTask, url=f"{base_url}/problem"), ctx)
        assert output == {"status": 200, "body": {"title": "teapot"}}


async def test_http_returns_text_of_a_non_json_response(ctx: TaskContext) -> None:
    async with serve_app(_app()) as base_url:
        output = await HttpTask().execute(_params(HttpTask, url=f"{base_url}/text"), ctx)
        assert output == {"status": 200, "body": "hello, world"}


async def test_http_falls_back_to_text_when_json_is_mislabelled(ctx: TaskContext) -> None:
    async with serve_app(_app()) as base_url:
        with capture_logs() as logs:
            output = await HttpTask().execute(_params(HttpTask, url=f"{base_url}/mislabelled"), ctx)
        assert output == {"status": 200, "body": "not json at all"}
        assert [entry["event"] for entry in logs] == ["http_body_not_json"]


async def test_http_returns_none_for_an_empty_json_response(ctx: TaskContext) -> None:
    async with serve_app(_app()) as base_url:
        output = await HttpTask().execute(_params(HttpTask, url=f"{base_url}/no-content"), ctx)
        assert output == {"status": 204, "body": None}


async def test_http_sends_same_idempotency_key_on_every_attempt(ctx: TaskContext) -> None:
    async with serve_app(_app()) as base_url:
        task = HttpTask()
        params = _params(HttpTask, method="POST", url=f"{base_url}/echo")
        first = await task.execute(params, ctx)
        second = await task.execute(params, dataclasses.replace(ctx, attempt=2))
        assert first["body"]["idempotency_keys"] == ["run-1:notify"]
        assert second["body"]["idempotency_keys"] == ["run-1:notify"]


async def test_http_keeps_an_idempotency_key_set_by_the_user(ctx: TaskContext) -> None:
    async with serve_app(_app()) as base_url:
        params = _params(
            HttpTask, url=f"{base_url}/echo", headers={"idempotency-key": "mine"}, method="put"
        )
        output = await HttpTask().execute(params, ctx)
        assert output["body"]["idempotency_keys"] == ["mine"]
        assert output["body"]["method"] == "PUT"


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        pytest.param({"order": 7, "name": "é"}, '{"order":7,"name":"é"}', id="object"),
        pytest.param(None, "null", id="explicit-null"),
    ],
)
async def test_http_sends_json_body(ctx: TaskContext, value: Any, sent: str) -> None:
    async with serve_app(_app()) as base_url:
        params = _params(HttpTask, method="POST", url=f"{base_url}/echo", json=value)
        output = await HttpTask().execute(params, ctx)
        assert output["body"]["body"] == sent
        assert output["body"]["content_type"] == "application/json"


async def test_http_sends_text_body(ctx: TaskContext) -> None:
    async with serve_app(_app()) as base_url:
        params = _params(
            HttpTask,
            method="POST",
            url=f"{base_url}/echo",
            body="a=1",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        output = await HttpTask().execute(params, ctx)
        assert output["body"]["body"] == "a=1"
        assert output["body"]["content_type"] == "application/x-www-form-urlencoded"


def test_http_params_reject_both_json_and_body() -> None:
    with pytest.raises(pydantic.ValidationError, match="either 'json' or 'body'"):
        _params(HttpTask, url="http://127.0.0.1/", json={}, body="x")


def test_http_params_reject_a_status_that_is_not_http() -> None:
    with pytest.raises(pydantic.ValidationError, match="not an HTTP status code"):
        _params(HttpTask, url="http://127.0.0.1/", expected_status=[200, 999])


async def test_http_accepts_a_listed_non_2xx_status(ctx: TaskContext) -> None:
    async with serve_app(_app()) as base_url:
        params = _params(HttpTask, url=f"{base_url}/status/404", expected_status=[404])
        output = await HttpTask().execute(params, ctx)
        assert output == {"status": 404, "body": "status 404"}


async def test_http_fails_retryably_on_a_2xx_not_listed(ctx: TaskContext) -> None:
    async with serve_app(_app()) as base_url:
        params = _params(HttpTask, url=f"{base_url}/status/200", expected_status=[201])
        with pytest.raises(TaskError, match="unexpected status 200") as info:
            await HttpTask().execute(params, ctx)
        assert not isinstance(info.value, PermanentTaskError)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_http_client_error_is_permanent(ctx: TaskContext, status: int) -> None:
    async with serve_app(_app()) as base_url:
        params = _params(HttpTask, url=f"{base_url}/status/{status}")
        with pytest.raises(PermanentTaskError, match=f"unexpected status {status}"):
            await HttpTask().execute(params, ctx)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503])
async def test_http_server_error_and_try_later_are_retryable(ctx: TaskContext, status: int) -> None:
    async with serve_app(_app()) as base_url:
        params = _params(HttpTask, url=f"{base_url}/status/{status}")
        with pytest.raises(TaskError, match=f"unexpected status {status}") as info:
            await HttpTask().execute(params, ctx)
        assert not isinstance(info.value, PermanentTaskError)


async def test_http_error_names_method_url_status_and_start_of_body(ctx: TaskContext) -> None:
    async with serve_app(_app()) as base_url:
        url = f"{base_url}/big-error"
        with pytest.raises(TaskError) as info:
            await HttpTask().execute(_params(HttpTask, method="POST", url=url), ctx)
        message = str(info.value)
        assert message.startswith(f"POST {url!r} answered with unexpected status 500: ")
        assert message.endswith("x" * 499 + "\u2026")  # one line, cut


async def test_an_html_error_page_is_its_title_on_one_line(ctx: TaskContext) -> None:
    async with serve_app(_app()) as base_url:
        url = f"{base_url}/html-error"
        with pytest.raises(TaskError) as info:
            await HttpTask().execute(_params(HttpTask, url=url), ctx)
    assert str(info.value) == (
        f"GET {url!r} answered with unexpected status 502: 502 Bad Gateway & co"
    )


@pytest.mark.parametrize(
    ("retry_on", "status", "retried"),
    [
        pytest.param(["4xx"], 404, True, id="class-4xx"),
        pytest.param([404], 404, True, id="code"),
        pytest.param(["404"], 404, True, id="code-as-text"),
        pytest.param([429], 503, False, id="5xx-not-listed"),
        pytest.param([], 500, False, id="none"),
        pytest.param(["5XX"], 503, True, id="class-any-case"),
    ],
)
async def test_retry_on_says_which_statuses_are_worth_another_attempt(
    ctx: TaskContext, retry_on: list[Any], status: int, retried: bool
) -> None:
    async with serve_app(_app()) as base_url:
        params = _params(HttpTask, url=f"{base_url}/status/{status}", retry_on=retry_on)
        with pytest.raises(TaskError) as info:
            await HttpTask().execute(params, ctx)
    assert isinstance(info.value, PermanentTaskError) is not retried


@pytest.mark.parametrize("entry", ["4xxx", "600", 99, "often"])
def test_retry_on_refuses_what_is_no_status(entry: Any) -> None:
    with pytest.raises(pydantic.ValidationError, match="is not an HTTP status"):
        _params(HttpTask, url="http://127.0.0.1/", retry_on=[entry])


async def test_http_network_error_is_retryable(ctx: TaskContext) -> None:
    # A port that was free a moment ago: nothing listens there.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(TaskError, match=r"GET '.*' failed: ConnectError") as info:
        await HttpTask().execute(_params(HttpTask, url=url), ctx)
    assert not isinstance(info.value, PermanentTaskError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/file", "no scheme at all"])
async def test_http_unusable_url_is_permanent(ctx: TaskContext, url: str) -> None:
    with pytest.raises(PermanentTaskError, match="cannot be sent"):
        await HttpTask().execute(_params(HttpTask, url=url), ctx)


# --------------------------------------------------------------------------- shell


def _py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process; a zombie awaiting its reaper counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def _wait_gone(*pids: int) -> None:
    # A signalled process takes a moment to die and be reaped by init; another process's
    # state offers no event to wait on, so poll.
    with anyio.fail_after(5):
        while any(_alive(pid) for pid in pids):  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def _wait_for_file(path: Path) -> str:
    # Written (atomically, by rename) by a child process: nothing to wait on but the file.
    file = anyio.Path(path)
    with anyio.fail_after(10):
        while not await file.exists():  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return await file.read_text()


async def test_shell_runs_argv_and_returns_exit_code_and_output(ctx: TaskContext) -> None:
    params = _params(
        ShellTask,
        argv=_py("""
            import sys
            print("to stdout")
            print("to stderr", file=sys.stderr)
        """),
    )
    output = await ShellTask().execute(params, ctx)
    assert output == {"exit_code": 0, "stdout": "to stdout\n", "stderr": "to stderr\n"}


async def test_shell_argv_is_not_run_through_a_shell(ctx: TaskContext) -> None:
    params = _params(ShellTask, argv=[*_py("import sys; print(sys.argv[1])"), "$HOME *;|"])
    output = await ShellTask().execute(params, ctx)
    assert output["stdout"] == "$HOME *;|\n"


async def test_shell_runs_command_through_the_shell(ctx: TaskContext) -> None:
    params = _params(
        ShellTask, command='echo "$CUED_WORD" | tr a-z A-Z', env={"CUED_WORD": "hello"}
    )
    output = await ShellTask().execute(params, ctx)
    assert output["stdout"] == "HELLO\n"


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="neither"),
        pytest.param({"argv": ["true"], "command": "true"}, id="both"),
        pytest.param({"argv": []}, id="empty-argv"),
    ],
)
def test_shell_params_need_exactly_one_of_argv_and_command(values: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        ShellTask.Params.model_validate(values)


async def test_shell_sets_env_and_runs_in_cwd(ctx: TaskContext, tmp_path: Path) -> None:
    params = _params(
        ShellTask,
        argv=_py("""
            import os
            print(os.environ["CUED_TEST_VAR"])
            print("PATH" in os.environ)
            print(os.getcwd())
        """),
        env={"CUED_TEST_VAR": "set by the task"},
        cwd=str(tmp_path),
    )
    output = await ShellTask().execute(params, ctx)
    var, has_path, cwd = output["stdout"].splitlines()
    assert var == "set by the task"
    assert has_path == "True"
    assert await anyio.Path(cwd).resolve() == await anyio.Path(tmp_path).resolve()


async def test_shell_gives_the_program_no_stdin(ctx: TaskContext) -> None:
    params = _params(ShellTask, argv=_py("import sys; print(repr(sys.stdin.read()))"))
    with anyio.fail_after(10):
        output = await ShellTask().execute(params, ctx)
    assert output["stdout"] == "''\n"


async def test_shell_keeps_only_a_bounded_tail_of_large_output(ctx: TaskContext) -> None:
    params = _params(
        ShellTask,
        argv=_py("""
            import sys
            for i in range(40_000):  # about 1.5 MB on each stream
                print(f"line {i:08d} " + "-" * 20)
                print(f"err {i:08d} " + "-" * 20, file=sys.stderr)
            print("END")
            print("ERR END", file=sys.stderr)
        """),
        output_tail_bytes=1000,
    )
    output = await ShellTask().execute(params, ctx)
    assert len(output["stdout"].encode()) == 1000
    assert output["stdout"].endswith("line 00039999 --------------------\nEND\n")
    assert len(output["stderr"].encode()) == 1000
    assert output["stderr"].endswith("ERR END\n")


async def test_shell_tail_does_not_start_with_half_a_character(ctx: TaskContext) -> None:
    params = _params(
        ShellTask,
        argv=_py("import sys; sys.stdout.write('é' * 5000)"),
        output_tail_bytes=1001,  # odd: the cut falls inside a two-byte character
    )
    output = await ShellTask().execute(params, ctx)
    assert output["stdout"] == "é" * 500


async def test_shell_non_zero_exit_names_program_code_and_last_stderr_lines(
    ctx: TaskContext,
) -> None:
    params = _params(
        ShellTask,
        argv=_py("""
            import sys
            for i in range(30):
                print(f"noise {i}", file=sys.stderr)
            print("the real reason", file=sys.stderr)
            sys.exit(3)
        """),
    )
    with pytest.raises(TaskError) as info:
        await ShellTask().execute(params, ctx)
    message = str(info.value)
    assert not isinstance(info.value, PermanentTaskError)
    assert message.startswith(f"Program {PY!r} exited with code 3:\n")
    assert message.endswith("noise 29\nthe real reason")
    assert "noise 20\n" not in message


async def test_shell_command_failure_names_the_command(ctx: TaskContext) -> None:
    params = _params(ShellTask, command="exit 4")
    with pytest.raises(TaskError, match=r"^Command 'exit 4' exited with code 4 \(stderr was empty"):
        await ShellTask().execute(params, ctx)


async def test_shell_program_killed_by_a_signal_says_which(ctx: TaskContext) -> None:
    params = _params(ShellTask, argv=_py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    with pytest.raises(TaskError, match="was killed by SIGKILL"):
        await ShellTask().execute(params, ctx)


async def test_shell_missing_executable_is_permanent(ctx: TaskContext) -> None:
    params = _params(ShellTask, argv=["cued-no-such-program", "--flag"])
    with pytest.raises(PermanentTaskError, match=r"^Program 'cued-no-such-program' was not found$"):
        await ShellTask().execute(params, ctx)


async def test_shell_missing_cwd_is_permanent(ctx: TaskContext, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    params = _params(ShellTask, argv=["true"], cwd=missing)
    with pytest.raises(PermanentTaskError, match=f"^Working directory {missing!r} cannot be used"):
        await ShellTask().execute(params, ctx)


async def test_shell_kills_program_and_its_children_when_cancelled(
    ctx: TaskContext, tmp_path: Path
) -> None:
    # The shell forks a Python child (the trailing `echo` keeps it from exec-ing), which
    # reports both pids and then sleeps far past the test.
    pids = tmp_path / "pids"
    child = tmp_path / "child.py"
    child.write_text(
        textwrap.dedent(f"""
            import os, time
            with open({str(pids)!r} + ".tmp", "w") as f:
                f.write(f"{{os.getppid()}} {{os.getpid()}}")
            os.replace({str(pids)!r} + ".tmp", {str(pids)!r})
            time.sleep(60)
        """)
    )
    params = _params(ShellTask, command=f"'{PY}' '{child}'; echo never")
    outcome: list[Any] = []

    async def run() -> None:
        outcome.append(await ShellTask().execute(params, ctx))

    with anyio.move_on_after(30) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            shell_pid, child_pid = map(int, (await _wait_for_file(pids)).split())
            assert _alive(shell_pid)
            assert _alive(child_pid)
            scope.cancel()

    assert outcome == []
    assert not _alive(shell_pid)  # reaped by the task before it returned
    await _wait_gone(child_pid)


async def test_shell_kills_a_program_that_ignores_sigterm_after_the_grace(
    ctx: TaskContext, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    params = _params(
        ShellTask,
        argv=_py(f"""
            import os, signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with open({str(ready)!r} + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace({str(ready)!r} + ".tmp", {str(ready)!r})
            time.sleep(60)
        """),
    )
    task = ShellTask()
    task.terminate_grace_s = 0.2

    async with anyio.create_task_group() as tg:
        tg.start_soon(task.execute, params, ctx)
        pid = int(await _wait_for_file(ready))
        started = anyio.current_time()
        tg.cancel_scope.cancel()

    elapsed = anyio.current_time() - started
    assert not _alive(pid)
    assert 0.2 <= elapsed < 30  # waited the grace, not the program's 60 s


# --------------------------------------------------------------------------- python


async def test_python_calls_sync_function_off_the_event_loop_thread(ctx: TaskContext) -> None:
    params = _params(PythonTask, function="tests.support.pyfuncs:which_thread")
    thread = await PythonTask().execute(params, ctx)
    assert thread != threading.get_ident()


async def test_python_awaits_async_function_on_the_event_loop(ctx: TaskContext) -> None:
    params = _params(PythonTask, function="tests.support.pyfuncs:async_which_thread")
    thread = await PythonTask().execute(params, ctx)
    assert thread == threading.get_ident()


async def test_python_passes_args_as_keywords(ctx: TaskContext) -> None:
    params = _params(PythonTask, function="tests.support.pyfuncs:add", args={"a": 2, "b": 40})
    assert await PythonTask().execute(params, ctx) == 42


async def test_python_passes_ctx_to_a_function_that_asks_for_it(ctx: TaskContext) -> None:
    task = PythonTask()
    sync = _params(PythonTask, function="tests.support.pyfuncs:context_of", args={"extra": "e"})
    assert await task.execute(sync, dataclasses.replace(ctx, attempt=3)) == {
        "key": "run-1:notify",
        "attempt": 3,
        "extra": "e",
    }
    async_ = _params(PythonTask, function="tests.support.pyfuncs:async_context_of")
    assert await task.execute(async_, ctx) == "run-1"


async def test_python_rejects_ctx_among_args_of_a_function_given_ctx(ctx: TaskContext) -> None:
    params = _params(PythonTask, function="tests.support.pyfuncs:context_of", args={"ctx": 1})
    with pytest.raises(PermanentTaskError, match="'ctx' cannot be one of its args"):
        await PythonTask().execute(params, ctx)


async def test_python_wrong_args_are_permanent(ctx: TaskContext) -> None:
    params = _params(PythonTask, function="tests.support.pyfuncs:add", args={"a": 1, "c": 2})
    with pytest.raises(PermanentTaskError, match=r"cannot be called with args \['a', 'c'\]"):
        await PythonTask().execute(params, ctx)


async def test_python_missing_module_is_permanent_and_named(ctx: TaskContext) -> None:
    params = _params(PythonTask, function="tests.support.no_such_module:run")
    with pytest.raises(
        PermanentTaskError,
        match=r"^Cannot import module 'tests\.support\.no_such_module' for function 'run'",
    ):
        await PythonTask().execute(params, ctx)


async def test_python_missing_function_is_permanent_and_named(ctx: TaskContext) -> None:
    params = _params(PythonTask, function="tests.support.pyfuncs:no_such_function")
    with pytest.raises(
        PermanentTaskError,
        match=r"^Module 'tests\.support\.pyfuncs' has no attribute 'no_such_function'$",
    ):
        await PythonTask().execute(params, ctx)


async def test_python_attribute_that_is_not_callable_is_permanent(ctx: TaskContext) -> None:
    params = _params(PythonTask, function="tests.support.pyfuncs:NOT_A_FUNCTION")
    with pytest.raises(PermanentTaskError, match="is a int, not a function"):
        await PythonTask().execute(params, ctx)


async def test_python_output_that_is_not_json_is_permanent(ctx: TaskContext) -> None:
    params = _params(PythonTask, function="tests.support.pyfuncs:not_serialisable")
    with pytest.raises(PermanentTaskError, match=r"not JSON-serialisable \(object\)"):
        await PythonTask().execute(params, ctx)


async def test_python_function_error_fails_the_attempt_as_raised(ctx: TaskContext) -> None:
    params = _params(PythonTask, function="tests.support.pyfuncs:fails")
    with pytest.raises(ValueError, match="the function failed"):
        await PythonTask().execute(params, ctx)


async def test_python_cancellation_does_not_wait_for_a_blocked_thread(ctx: TaskContext) -> None:
    pyfuncs.RELEASE.clear()
    pyfuncs.RELEASED.clear()
    params = _params(PythonTask, function="tests.support.pyfuncs:wait_for_release")
    try:
        with anyio.fail_after(5), anyio.move_on_after(0.1) as scope:
            await PythonTask().execute(params, ctx)
        assert scope.cancelled_caught
        assert not pyfuncs.RELEASED.is_set()
    finally:
        # Let the abandoned thread finish before the event loop closes.
        pyfuncs.RELEASE.set()
        await anyio.to_thread.run_sync(pyfuncs.RELEASED.wait, 5)


@pytest.mark.parametrize(
    "function",
    ["pkg.mod", "pkg.mod:", ":func", "pkg..mod:func", "pkg.mod:func()", "pkg/mod:func", ""],
)
def test_python_params_reject_a_malformed_function_path(function: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        _params(PythonTask, function=function)


def test_python_params_accept_a_method_path() -> None:
    assert _params(PythonTask, function="pkg.mod:Class.method").function == "pkg.mod:Class.method"


# --------------------------------------------------------------------------- sleep


async def test_sleep_zero_succeeds_with_no_output(ctx: TaskContext) -> None:
    assert await SleepTask().execute(_params(SleepTask), ctx) is None


async def test_sleep_waits_the_given_seconds(ctx: TaskContext) -> None:
    started = anyio.current_time()
    await SleepTask().execute(_params(SleepTask, seconds=0.05), ctx)
    assert anyio.current_time() - started >= 0.05


@pytest.mark.parametrize("seconds", [-1, float("inf"), float("nan"), "soon"])
def test_sleep_params_reject_a_bad_duration(seconds: Any) -> None:
    with pytest.raises(pydantic.ValidationError):
        _params(SleepTask, seconds=seconds)


class _Lines:
    """A LineWriter that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    def write(self, stream: str, text: str) -> None:
        self.got.append((stream, text))


async def test_http_writes_a_live_log_line_per_request_with_no_credentials(
    ctx: TaskContext,
) -> None:
    lines = _Lines()
    async with serve_app(_app()) as base_url:
        url = base_url.replace("http://", "http://user:pw@") + "/echo?token=abc"
        await HttpTask().execute(_params(HttpTask, url=url), dataclasses.replace(ctx, lines=lines))
    ((stream, line),) = lines.got
    assert stream == "http"
    assert re.fullmatch(rf"GET {re.escape(base_url)}/echo\?… 200 \d+ ms", line), line


async def test_shell_hands_on_each_line_of_stdout_and_stderr(ctx: TaskContext) -> None:
    lines = _Lines()
    params = _params(ShellTask, command="echo one; echo two >&2; printf 'three'")
    await ShellTask().execute(params, dataclasses.replace(ctx, lines=lines))
    assert sorted(lines.got) == [("stderr", "two"), ("stdout", "one"), ("stdout", "three")]
