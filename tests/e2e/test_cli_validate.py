"""``cued validate`` as a process: every problem of a file on stderr, one line each as
file:line: key path: what is wrong, and exit 2; a valid file in one line, and exit 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.config_files import VALID

CUED = Path(sys.executable).with_name("cued")


BAD = """\
[daemon]
max_runing_tasks = 3

[pipelines.p.tasks.a]
kind = "sleep"
needs = ["b"]

[pipelines.p.tasks.b]
kind = "sleep"
needs = ["a"]

[pipelines.p.tasks.c]
kind = "sleep"
timeout = "3 parsecs"
"""


def run_cued(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CUED), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_validate_reports_every_problem_and_exits_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD, encoding="utf-8")
    result = run_cued("--config", str(path), "validate", cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        (
            f"{path}:2: daemon.max_runing_tasks: unknown key 'max_runing_tasks'; "
            "did you mean 'max_running_tasks'?"
        ),
        (
            f"{path}:14: pipelines.p.tasks.c.timeout: '3 parsecs' is not a duration: write a "
            "number and a unit, e.g. '500ms', '30s', '15m', '2h' (got '3 parsecs')"
        ),
        f"{path}:6: pipelines.p.tasks.a.needs: cycle: a -> b -> a",
        f"cued: 3 problem(s) in {path}",
    ]
    assert all(re.match(rf"{re.escape(str(path))}:\d+: [\w.]+: \S", line) for line in lines[:-1])


def test_cli_validate_of_a_toml_syntax_error_exits_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[daemon\n", encoding="utf-8")
    result = run_cued("--config", str(path), "validate", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{path}:1: invalid TOML")


def test_cli_validate_of_a_valid_file_prints_one_line_and_exits_0(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(VALID, encoding="utf-8")
    result = run_cued("--config", str(path), "validate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == f"{path}: valid (2 pipelines, 5 tasks)\n"
    assert not (tmp_path / "state").exists()  # validating writes nothing
