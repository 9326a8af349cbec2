"""A fresh clone's first ``make run`` installs the package quietly: the Makefile's own
install step, in a fresh copy of the repository, prints nothing but its commands."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: pip's notes on this machine's own pip configuration (index folders that do not exist
#: here): not the project's, and no user's machine prints them
_MACHINE_NOTE = "is ignored: it is neither a file nor a directory"


def test_the_first_install_prints_only_its_commands(tmp_path):
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    clone = tmp_path / "clone"
    for name in files:
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    made = subprocess.run(
        ["make", "--no-print-directory", f"PYTHON={sys.executable}", ".venv/.installed"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    commands = ("python", "/", ".venv/", "touch ", "PYTHONWARNINGS=")
    said = [
        line
        for line in (made.stdout + made.stderr).splitlines()
        if _MACHINE_NOTE not in line and not line.startswith(commands)
    ]
    assert said == [], "\n".join(said)
    assert (clone / ".venv" / "bin" / "cued").exists()
