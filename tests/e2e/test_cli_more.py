"""The ``cued`` command as a new user meets it, as real processes: global options after
the command, ``cued init``, ``cued triggers test``, a run's progress under ``trigger
--wait``, and colour on a terminal only (a pseudo-terminal here), plain when piped."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from typing import TYPE_CHECKING

from cued.daemon.assembly import open_state
from cued.daemon.config import load_config
from cued.daemon.store import EventRow
from tests.support.daemon import Daemon

if TYPE_CHECKING:
    from pathlib import Path

CONFIG = """
[http]
listen = "127.0.0.1:0"

[daemon]
state = "state.db"
log_level = "warning"

[pipelines.hello]
inputs = { name = "world" }
[pipelines.hello.tasks.greet]
kind = "shell"
argv = ["echo", "hello {{ inputs.name }}"]
[pipelines.hello.tasks.after]
kind = "shell"
needs = ["greet"]
argv = ["true"]

[sources.hook]
kind = "webhook"
path = "/hook"

[[triggers]]
name = "named"
source = "hook"
pipeline = "hello"
when = "event.data.go and event.data.nmae is not defined"
inputs = { name = "{{ event.data.name }}" }
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def cued_after(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    """``cued ARGS``, the options where the user puts them (not before the command)."""
    return subprocess.run(
        [sys.executable, "-m", "cued.daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=env,
    )


def in_terminal(*args: str, env: dict[str, str]) -> str:
    """``cued ARGS`` on a pseudo-terminal (stdout and stderr): all it wrote there."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "cued.daemon.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    out = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the last writer closed its end
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert process.wait(60) == 0, out.decode(errors="replace")
    return out.decode()


def terminal_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    return env | {"TERM": "xterm-256color", "COLUMNS": "200"} | more


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    return config


def test_global_options_after_the_command(tmp_path):
    config = str(write_config(tmp_path))
    valid = cued_after("validate", "--config", config)
    assert valid.returncode == 0, valid.stderr
    assert valid.stdout == f"{config}: valid (1 pipelines, 2 tasks)\n"
    assert cued_after("validate", "-c", config).stdout == valid.stdout
    # after the command it wins over the one before it (the last one given)
    assert cued_after("-c", "nope.toml", "validate", "-c", config).returncode == 0
    triggered = cued_after("trigger", "hello", "--config", config, "-i", "name=after")
    assert triggered.returncode == 0, triggered.stderr
    assert "succeeded" in triggered.stdout
    listed = cued_after("runs", "--config", config)
    assert "hello" in listed.stdout
    tried = cued_after("triggers", "test", "named", "--config", config)
    assert tried.returncode == 0, tried.stderr


async def test_init_writes_a_config_that_validates_and_runs(tmp_path):
    made = cued_after("init", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    config = tmp_path / "config.toml"
    assert (tmp_path / "drop").is_dir()
    assert config.read_text().startswith("# A starter configuration for cued")
    valid = cued_after("validate", cwd=tmp_path)
    assert valid.returncode == 0, valid.stderr
    assert valid.stdout == "config.toml: valid (1 pipelines, 2 tasks)\n"

    again = cued_after("init", cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr == "cued: error: 'config.toml' exists already: not overwritten\n"
    other = cued_after("init", "sub/cued.toml", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert (tmp_path / "sub" / "drop").is_dir()

    # as written but the port, which another test may hold
    text = config.read_text()
    assert 'listen = "127.0.0.1:8080"' in text
    config.write_text(text.replace("127.0.0.1:8080", "127.0.0.1:0"))
    daemon = Daemon(config, tmp_path / "cued.db")
    await daemon.start()
    try:
        result = cued_after("trigger", "hello", "--wait", "-i", "name=init", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(r"run \S+: succeeded\n", result.stdout), result.stdout
    finally:
        assert daemon.stop() == 0


async def test_trigger_wait_shows_tasks_as_they_start_and_end(tmp_path):
    config = write_config(tmp_path)
    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    try:
        piped = cued_after("trigger", "hello", "--wait", "--config", str(config))
        assert piped.returncode == 0, piped.stderr
        # stdout: how the run ended, one line, as it always was
        assert re.fullmatch(r"run \S+: succeeded\n", piped.stdout), piped.stdout
        lines = [re.sub(r"in \d+ms$|in [\d.]+s$", "in T", x) for x in piped.stderr.splitlines()]
        assert lines == [
            "task greet started",
            "task greet succeeded in T",
            "task after started",
            "task after succeeded in T",
        ]
        shown = in_terminal("trigger", "hello", "--wait", "-c", str(config), env=terminal_env())
        plain = ANSI.sub("", shown)
        assert "✓ greet succeeded in" in plain
        assert "✓ after succeeded in" in plain
        assert re.search(r"run \S+: succeeded", plain)
    finally:
        assert daemon.stop() == 0


def test_trigger_wait_here_without_a_daemon_shows_tasks_too(tmp_path):
    config = write_config(tmp_path)
    result = cued_after("trigger", "hello", "--wait", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "task greet started\n" in result.stderr
    assert "task after succeeded in " in result.stderr


def test_tables_in_colour_on_a_terminal_only(tmp_path):
    config = write_config(tmp_path)
    assert cued_after("trigger", "hello", "-c", str(config)).returncode == 0
    piped = cued_after("runs", "-c", str(config))
    assert not ANSI.search(piped.stdout)
    assert piped.stdout.splitlines()[0].split() == [
        "RUN",
        "PIPELINE",
        "STATE",
        "CREATED",
        "DURATION",
    ]

    coloured = in_terminal("runs", "-c", str(config), env=terminal_env())
    assert ANSI.search(coloured), coloured
    assert "succeeded" in ANSI.sub("", coloured)
    # NO_COLOR (https://no-color.org): the table as it is piped
    plain = in_terminal("runs", "-c", str(config), env=terminal_env(NO_COLOR="1"))
    assert not ANSI.search(plain)
    assert plain.replace("\r\n", "\n") == piped.stdout


async def test_triggers_test_shows_what_would_match_and_names_a_misspelt_field(tmp_path):
    config = write_config(tmp_path)
    events = [
        EventRow("e-1", "hook", 1_700_000_000.0, "matched", {"go": True, "name": "ann"}, {}),
        EventRow("e-2", "hook", 1_700_000_001.0, "unmatched", {"go": False, "name": "bo"}, {}),
    ]
    async with open_state(load_config(config)) as state:
        await state.store.submit(events).wait()
    result = cued_after("triggers", "test", "named", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "trigger 1: named (hook -> hello)\n"
        "  when    event.data.go and event.data.nmae is not defined\n"
        '  inputs  {"name": "{{ event.data.name }}"}\n'
        "\n"
        "EVENT  RECEIVED             WOULD     INPUTS / ERROR\n"
        "e-2    2023-11-14 22:13:21  no match\n"
        'e-1    2023-11-14 22:13:20  matches   {"name": "ann"}\n'
        "\n"
        "1 of 2 events would match (nothing was started)\n"
    )
    assert result.stderr == (
        "cued: warning: when reads event.data.nmae, which none of these events has "
        "(a misspelt field?)\n"
    )
    one = cued_after("triggers", "test", "1", "--event", "e-2", "-c", str(config))
    assert "0 of 1 events would match" in one.stdout
    unknown = cued_after("triggers", "test", "nope", "-c", str(config))
    assert unknown.returncode == 1
    assert unknown.stderr == "cued: error: no trigger 'nope' (known: 1: named)\n"
