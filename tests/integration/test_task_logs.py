"""Live task logs on a real SQLite file and a real daemon: lines seen while the task runs,
kept within their bound with a marker, redacted, read through ops, the API and the CLI,
and a python task's prints and records kept apart from a concurrent attempt's."""

from __future__ import annotations

import contextlib
import io
import sys
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from cued.daemon.cli import main
from cued.daemon.config import secrets
from cued.daemon.ops.queries import Queries
from cued.daemon.runtime.task_logs import MARKER_STREAM, TaskLogs
from cued.daemon.sdk import Meter, TaskContext
from cued.daemon.store import LogLineRow, PrunePolicy, RunRow
from cued.daemon.store.sqlite import open_store
from cued.plugins.python import PythonParams, PythonTask
from tests.support.running import daemon_running, wait_finished
from tests.support.secret_values import fresh_secret
from tests.support.stores import keeping_state_in, with_state

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from cued.daemon.assembly import DaemonInfo
    from cued.daemon.store import Row


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


def gated_config(tmp_path: Path) -> str:
    # the task prints, then waits for a file the test creates: the test sees the first
    # line while the task still runs, whatever the machine's speed
    gate = tmp_path / "go"
    return f"""
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
task_log_flush = "50ms"

[pipelines.p.tasks.talk]
kind = "shell"
command = "echo first; while [ ! -e {gate} ]; do sleep 0.01; done; echo second >&2"
"""


async def line_committed(info: DaemonInfo, text: str) -> None:
    """Return once a live log line ``text`` has been committed."""
    seen = anyio.Event()

    def listener(seconds: float, rows: Sequence[Row]) -> None:
        if any(isinstance(r, LogLineRow) and r.line == text for r in rows):
            seen.set()

    info.runner.store.on_commit(listener)
    await seen.wait()


async def test_a_shell_tasks_lines_are_seen_while_it_runs(make_config, tmp_path, store_at):
    text = gated_config(tmp_path)
    (tmp_path / "config.toml").write_text(with_state(text, store_at))  # for the CLI
    config = make_config(text)
    async with daemon_running(config) as info:
        queries = Queries(info.runner.store, config)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                seen = anyio.Event()

                async def wait_first() -> None:
                    await line_committed(info, "first")
                    seen.set()

                tg.start_soon(wait_first)
                await anyio.wait_all_tasks_blocked()
                run = await info.runner.start_run("p")
                await seen.wait()
            page = await queries.task_logs(run.run_id)
            assert not page.finished
            assert [(r.key, r.attempt, r.stream, r.line) for r in page.lines] == [
                ("talk", 1, "stdout", "first")
            ]
            (tmp_path / "go").touch()
            (done,) = await wait_finished(info, [run.run_id])
        assert done.state == "succeeded"
        after = await queries.task_logs(run.run_id, after=page.after)
        assert after.finished
        assert [(r.stream, r.line) for r in after.lines] == [("stderr", "second")]
        assert after.lines[0].seq > page.lines[0].seq

        # the API: all lines, one task's, after a seq; an unknown run is a 404
        host, port = info.http_address or ("", 0)
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            r = await client.get(f"/api/v1/runs/{run.run_id}/logs")
            assert r.status_code == 200
            body = r.json()
            assert body["finished"] is True
            assert [(x["stream"], x["line"]) for x in body["lines"]] == [
                ("stdout", "first"),
                ("stderr", "second"),
            ]
            r = await client.get(
                f"/api/v1/runs/{run.run_id}/logs",
                params={"task": "talk", "after": body["lines"][0]["seq"]},
            )
            assert [x["line"] for x in r.json()["lines"]] == ["second"]
            r = await client.get(f"/api/v1/runs/{run.run_id}/logs", params={"task": "other"})
            assert r.json()["lines"] == []
            r = await client.get("/api/v1/runs/nope/logs")
            assert r.status_code == 404
            assert "nope" in r.json()["error"]["message"]
            r = await client.get(f"/api/v1/runs/{run.run_id}/logs", params={"after": -1})
            assert r.status_code == 422

    # the CLI, with no daemon on the file; --follow of a finished run ends at once
    for follow in ([], ["--follow"]):
        out = await anyio.to_thread.run_sync(
            _cli, ["-c", str(tmp_path / "config.toml"), "logs", run.run_id, "talk", *follow]
        )
        assert [line.split(" ", 1)[1] for line in out.splitlines()] == [
            "talk#1 stdout: first",
            "talk#1 stderr: second",
        ]


def _cli(argv: list[str]) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue()


async def lines_of(store: Any, run_id: str) -> list[tuple[str, str]]:
    return [(r.stream, r.line) for r in await store.get_log_lines(run_id)]


async def test_an_attempt_keeps_its_latest_lines_and_says_how_many_went(tmp_path):
    async with open_store(tmp_path / "s.db") as store:
        logs = TaskLogs(store, max_lines=3, max_bytes=1000, flush_s=60)
        async with logs.attempt("r1", "t", 1) as lines:
            for n in range(5):
                lines.write("stdout", f"line {n}")
            logs.flush()  # some committed, then dropped by what follows
            for n in range(5, 8):
                lines.write("stdout", f"line {n}")
        assert await lines_of(store, "r1") == [
            (
                MARKER_STREAM,
                "[5 earlier lines dropped: an attempt keeps its last 3 lines and 1000 bytes]",
            ),
            ("stdout", "line 5"),
            ("stdout", "line 6"),
            ("stdout", "line 7"),
        ]
        # the next attempt numbers on after the first's lines, and has a bound of its own
        async with logs.attempt("r1", "t", 2) as lines:
            lines.write("stderr", "again\nand again")
        kept = await store.get_log_lines("r1", attempt=2)
        assert [(r.line, r.seq > 8) for r in kept] == [("again", True), ("and again", True)]
        assert len(await store.get_log_lines("r1", attempt=1)) == 4


async def test_an_attempt_keeps_at_most_its_bytes(tmp_path):
    async with open_store(tmp_path / "s.db") as store:
        logs = TaskLogs(store, max_lines=1000, max_bytes=25, flush_s=60)
        async with logs.attempt("r1", "t", 1) as lines:
            for n in range(10):
                lines.write("stdout", f"ten bytes{n}")
        rows = await store.get_log_lines("r1")
        assert rows[0].stream == MARKER_STREAM
        assert rows[0].line.startswith("[8 earlier lines dropped")
        assert [r.line for r in rows[1:]] == ["ten bytes8", "ten bytes9"]


async def test_lines_are_redacted_and_pruned_with_their_run(tmp_path):
    secret = fresh_secret()
    secrets.remember(secret)
    async with open_store(tmp_path / "s.db") as store:
        logs = TaskLogs(store, max_lines=10, max_bytes=1000, flush_s=60)
        async with logs.attempt("r1", "t", 1) as lines:
            lines.write("stdout", f"token={secret} ok")
        ((_stream, line),) = await lines_of(store, "r1")
        assert secret not in line
        assert line == f"token={secrets.REDACTED} ok"

        await store.submit([RunRow("r1", "p", "succeeded", {}, 1.0, 1.0, 2.0)]).wait()
        assert (await store.prunable(PrunePolicy(runs_before=10.0))).task_logs == 1
        pruned = await store.prune(PrunePolicy(runs_before=10.0))
        assert (pruned.runs, pruned.task_logs) == (1, 1)
        assert await lines_of(store, "r1") == []


class Lines:
    """A LineWriter that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    def write(self, stream: str, text: str) -> None:
        self.got.extend((stream, line) for line in text.splitlines())


async def test_two_concurrent_python_attempts_keep_their_own_prints_and_records():
    kind = PythonTask()

    async def attempt(name: str, lines: Lines) -> None:
        ctx = TaskContext(
            run_id="r",
            pipeline="p",
            task=name,
            map_index=None,
            attempt=1,
            idempotency_key=f"r/{name}",
            log=None,  # type: ignore[arg-type]
            http=None,  # type: ignore[arg-type]
            meter=Meter(),
            lines=lines,
        )
        params = PythonParams(function="tests.support.pyfuncs:talk", args={"name": name})
        assert await kind.execute(params, ctx) == name

    got = {"a": Lines(), "b": Lines()}
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for name, lines in got.items():
                tg.start_soon(attempt, name, lines)
    for name, lines in got.items():
        assert sorted(lines.got) == sorted(
            [
                ("stdout", f"{name} says one"),
                ("log", f"INFO talker.{name}: {name} logs one"),
                ("log", f"WARNING talker.{name}: {name} logs two"),
                ("stderr", f"{name} warns"),
            ]
        )
    # outside an attempt, prints go where they went before
    assert sys.stdout.write("") == 0


async def test_cued_logs_follow_prints_until_the_run_ends(make_config, tmp_path, store_at):
    text = gated_config(tmp_path)
    (tmp_path / "config.toml").write_text(with_state(text, store_at))
    config = make_config(text)
    async with daemon_running(config) as info, anyio.create_task_group() as tg:
        with anyio.fail_after(20):
            first = anyio.Event()

            async def wait_first() -> None:
                await line_committed(info, "first")
                first.set()

            tg.start_soon(wait_first)
            await anyio.wait_all_tasks_blocked()
            run = await info.runner.start_run("p")
            out: list[str] = []

            async def follow() -> None:
                argv = ["-c", str(tmp_path / "config.toml"), "logs", run.run_id, "--follow"]
                out.append(await anyio.to_thread.run_sync(_cli, argv))

            await first.wait()
            tg.start_soon(follow)
            # the run goes on (and ends) while cued logs --follow runs
            (tmp_path / "go").touch()
            await wait_finished(info, [run.run_id])
    (printed,) = out
    assert [line.split(" ", 1)[1] for line in printed.splitlines()] == [
        "talk#1 stdout: first",
        "talk#1 stderr: second",
    ]
