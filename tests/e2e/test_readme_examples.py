"""The README's examples, run as a user runs them: the quick start's commands and every
``curl`` line, extracted from README.md (and config.toml) and run with the real ``curl``
and ``cued`` against the daemon on the example config.

The only change made to a command is the port: tests run side by side, so the daemon
listens on a free port instead of 8080. ``.venv/bin/cued`` is this test's own ``cued``
(``.venv`` in the test's folder links to the running virtual environment).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import anyio
import httpx

from tests.support.daemon import Daemon
from tests.support.raw_http import free_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    """The commands of the paragraph after ``make run``: "Then, from another shell: ..."."""
    paragraph = README.split("Then, from another shell:", 1)[1].split("\n\n", 1)[0]
    return [c for c in re.findall(r"`([^`]+)`", paragraph) if c.startswith((".venv/", "curl "))]


def curl_lines(text: str) -> list[str]:
    """Every line of ``text`` that is a curl command (a comment's too), as written, without
    the comment after it (set off by two spaces)."""
    found = []
    for line in text.splitlines():
        line = line.strip().removeprefix("# ").strip()
        if line.startswith("curl "):
            found.append(re.sub(r"\s{2,}#.*$", "", line))
    return found


def on_port(command: str, port: int) -> str:
    assert "localhost:8080" in command, command
    return command.replace("localhost:8080", f"localhost:{port}")


def shell(command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def example_folder(tmp_path: Path, extra: str = "") -> tuple[Path, int]:
    """config.toml as shipped (on a free port), ``drop/`` as ``make run`` makes it, and
    ``.venv`` as ``make run`` leaves it."""
    port = free_port()
    text = (ROOT / "config.toml").read_text()
    assert 'listen = "127.0.0.1:8080"' in text
    (tmp_path / "config.toml").write_text(
        text.replace("127.0.0.1:8080", f"127.0.0.1:{port}") + extra
    )
    (tmp_path / "drop").mkdir()
    (tmp_path / ".venv").symlink_to(sys.prefix)
    return tmp_path, port


async def wait_run(client: httpx.AsyncClient, run_id: str) -> dict:
    with anyio.fail_after(30):
        while True:
            run = (await client.get(f"/api/v1/runs/{run_id}")).json()
            if run["state"] in ("succeeded", "failed", "cancelled"):
                return run
            await anyio.sleep(0.05)


async def wait_events(client: httpx.AsyncClient, source: str) -> list[dict]:
    with anyio.fail_after(30):
        while True:
            page = (await client.get("/api/v1/events", params={"source": source})).json()
            if page["items"]:
                return list(page["items"])
            await anyio.sleep(0.05)


def first_line_of_stream(command: str, cwd: Path, env: dict[str, str]) -> bytes:
    """The first line ``command`` prints (curl's bound ends it if nothing comes)."""
    with subprocess.Popen(
        ["bash", "-c", command + " -D - --max-time 30"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as streaming:
        assert streaming.stdout is not None
        line = streaming.stdout.readline()
        streaming.kill()
    return line


def test_the_readme_shows_the_commands_this_file_runs():
    commands = quick_start_commands()
    assert [c.split()[0] for c in commands] == [".venv/bin/cued", "curl"]
    # the example config's comment shows the same webhook call as the README
    assert curl_lines((ROOT / "config.toml").read_text()) == curl_lines(commands[1])
    assert len(curl_lines(README.split("## HTTP API and metrics", 1)[1])) == 3


async def test_the_quick_start_works_as_written(tmp_path):
    folder, port = example_folder(tmp_path)
    daemon = Daemon(folder / "config.toml", folder / "cued.db")
    await daemon.start()
    try:
        trigger, curl = quick_start_commands()
        out = await anyio.to_thread.run_sync(shell, trigger, folder)
        assert re.search(r"run \S+: succeeded", out), out

        answer = json.loads(await anyio.to_thread.run_sync(shell, on_port(curl, port), folder))
        assert answer["status"] == "matched"
        (run_id,) = answer["runs"]

        (folder / "drop" / "hello.txt").write_text("hi\n")

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            event = (await client.get(f"/api/v1/events/{answer['event_id']}")).json()
            assert event["data"] == {"name": "you"}
            run = await wait_run(client, run_id)
            assert run["state"] == "succeeded"
            assert run["inputs"]["name"] == "you"
            (dropped_event,) = await wait_events(client, "drop")
            assert dropped_event["status"] == "matched"
            (drop_run,) = dropped_event["run_ids"]
            assert (await wait_run(client, drop_run))["state"] == "succeeded"
    finally:
        assert daemon.stop() == 0


API_EXTRA = """
[pipelines.etl]
inputs = { day = "today" }
[pipelines.etl.tasks.extract]
kind = "sleep"
seconds = 0

[auth.users.reader]
token = "env:TOKEN"
roles = ["viewer", "operator"]
"""


async def test_the_api_curl_lines_work_as_written(tmp_path, monkeypatch):
    folder, port = example_folder(tmp_path, API_EXTRA)
    env = {"PATH": "/usr/bin:/bin", "TOKEN": "t0ken-for-the-readme"}
    monkeypatch.setenv("TOKEN", env["TOKEN"])  # the daemon's env:TOKEN
    daemon = Daemon(folder / "config.toml", folder / "cued.db")
    await daemon.start()
    try:
        lines = curl_lines(README.split("## HTTP API and metrics", 1)[1])
        listing, trigger, stream = (on_port(c, port) for c in lines)
        started = json.loads(await anyio.to_thread.run_sync(shell, trigger, folder, env))
        assert started["inputs"] == {"day": "2026-11-24"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {env['TOKEN']}"}
        ) as client:
            assert (await wait_run(client, started["run_id"]))["state"] == "succeeded"
        page = json.loads(await anyio.to_thread.run_sync(shell, listing, folder, env))
        assert page["items"] == []  # the filter holds: no failed etl run
        # the stream answers at once with its headers
        status_line = await anyio.to_thread.run_sync(first_line_of_stream, stream, folder, env)
        assert b" 200" in status_line
    finally:
        assert daemon.stop() == 0
