"""What a new user meets first, as processes: a python function beside the config,
``validate`` and ``validate --strict``, a state file in a folder not made yet, and
``cued show | head``."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio

from cued.daemon.assembly import open_runner
from cued.daemon.config import load_config
from cued.daemon.runtime.intake import DaemonIntake
from cued.daemon.sdk.sources import Event
from tests.support.daemon import cued

if TYPE_CHECKING:
    from pathlib import Path

STEPS = """
def summarize(text, ctx=None):
    return {"summary": text.upper(), "attempt": ctx.attempt}
"""

CONFIG = """
[daemon]
state = "{state}"

[pipelines.digest]
inputs = {{ text = "hello" }}

[pipelines.digest.tasks.summarize]
kind = "python"
function = "{function}"
args = {{ text = "{{{{ inputs.text }}}}" }}
"""


def project(tmp_path: Path, function: str = "steps:summarize", state: str = "cued.db", extra=""):
    folder = tmp_path / "p"  # short: the control socket's path is bounded
    folder.mkdir()
    (folder / "steps.py").write_text(STEPS)
    config = folder / "config.toml"
    config.write_text(CONFIG.format(function=function, state=state) + extra)
    return config


def test_a_function_in_a_module_beside_the_config_runs(tmp_path):
    config = project(tmp_path)
    # run from elsewhere: the config's folder, not the working directory, finds steps.py
    result = cued(config, "trigger", "digest", "-i", "text=news")
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.split()[2]
    shown = cued(config, "show", run_id)
    assert '"summary": "NEWS"' in shown.stdout


def test_validate_names_a_function_its_module_does_not_define(tmp_path):
    config = project(tmp_path, function="steps:sumarize")
    result = cued(config, "validate")
    assert result.returncode == 2
    line = config.read_text().splitlines().index('function = "steps:sumarize"') + 1
    assert (
        f"{config}:{line}: pipelines.digest.tasks.summarize.function: module 'steps' "
        "(steps.py) defines no 'sumarize'; did you mean 'summarize'?"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_names_a_module_missing_beside_the_config(tmp_path):
    config = project(tmp_path, function="steps.sub:summarize")
    result = cued(config, "validate")
    assert result.returncode == 2
    assert "no module 'steps.sub' beside the config" in result.stderr


def test_strict_validate_imports_what_plain_validate_leaves_to_the_machine(tmp_path):
    extra = """
[sources.hook]
kind = "webhook"
path = "/hooks/x"
signature = "token"
secret = "env:CUED_TEST_UNSET_SECRET"

[pipelines.other]
[pipelines.other.tasks.t]
kind = "python"
function = "steps:summarize"
args = { txt = "x" }
"""
    config = project(tmp_path, function="stepz:summarize", extra=extra)
    plain = cued(config, "validate")
    assert plain.returncode == 0, plain.stderr  # CI without the machine's secrets passes

    strict = cued(config, "validate", "--strict")
    assert strict.returncode == 2
    lines = config.read_text().splitlines()
    function_line = lines.index('function = "stepz:summarize"') + 1
    secret_line = lines.index('secret = "env:CUED_TEST_UNSET_SECRET"') + 1
    args_line = lines.index('args = { txt = "x" }') + 1
    err = strict.stderr
    assert (
        f"{config}:{function_line}: pipelines.digest.tasks.summarize.function: Cannot import "
        "module 'stepz'"
    ) in err
    assert "(neither beside the config file nor installed)" in err
    assert (
        f"{config}:{secret_line}: sources.hook.secret: environment variable "
        "'CUED_TEST_UNSET_SECRET' is not set"
    ) in err
    assert f"{config}:{args_line}: pipelines.other.tasks.t.args: 'steps:summarize'" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 4  # three problems and the count


def test_strict_validate_passes_on_a_machine_that_has_it_all(tmp_path):
    config = project(tmp_path)
    result = cued(config, "validate", "--strict")
    assert result.returncode == 0, result.stderr
    assert "valid (1 pipelines, 1 tasks), and on this machine" in result.stdout


def test_a_state_file_in_a_folder_not_made_yet_gets_its_folder(tmp_path):
    config = project(tmp_path, state="v/l/cued.db")
    result = cued(config, "trigger", "digest")
    assert result.returncode == 0, result.stderr
    folder = config.parent / "v" / "l"
    assert (folder / "cued.db").is_file()
    assert folder.stat().st_mode & 0o077 == 0  # private, as the file is


def test_a_state_folder_that_cannot_be_made_is_one_line(tmp_path):
    config = project(tmp_path, state="b/cued.db")
    (config.parent / "b").write_text("a file where the folder would be")
    for command in (["trigger", "digest"], ["runs"]):
        result = cued(config, *command)
        assert result.returncode == 1
        assert result.stderr == (
            f"cued: error: cannot create the folder {str(config.parent / 'b')!r} of the "
            "state file: File exists\n"
        )


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    config = project(tmp_path)
    run_id = cued(config, "trigger", "digest").stdout.split()[2]
    # `cued show RUN | head -0`: the pipe's reader is gone before cued writes
    read, write = os.pipe()
    os.close(read)
    done = subprocess.run(
        [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "show", run_id],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=30,
        check=False,
    )
    os.close(write)
    assert done.stderr == ""
    assert done.returncode == 141


def test_events_full_shows_errors_whole(tmp_path):
    config = project(tmp_path, extra='\n[sources.hook]\nkind = "webhook"\npath = "/hook"\n')
    long_error = "body is not valid JSON: " + "e" * 300

    async def feed():
        async with open_runner(load_config(config)) as runner, anyio.create_task_group() as tg:
            intake = DaemonIntake(runner.config, runner.store, runner.backlog)
            await tg.start(intake.run, runner)
            await intake.record([Event("hook", "e-1", "x", error=long_error)])
            tg.cancel_scope.cancel()

    anyio.run(feed)
    cut = cued(config, "events")
    assert long_error not in cut.stdout
    assert "\u2026" in cut.stdout
    whole = cued(config, "events", "--full")
    assert whole.returncode == 0, whole.stderr
    assert long_error in whole.stdout
