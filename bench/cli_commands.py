"""How long the ``cued`` commands that go through a running daemon take, as whole
processes: ``status``, ``trigger``, ``pause``, ``resume`` (and ``validate``, which checks
the whole file), for one install or several side by side.

Each install gets its own folder with the example ``config.toml`` (its HTTP front on a
free port) and its own daemon, started and its bytecode compiled first as
:mod:`bench.cli` does. In ``--rounds`` rounds, each command runs once per install, the
installs in turn and in reverse order every other round; the median wall time and the
median CPU time (user + system, of the command's process) are printed as a Markdown
table, with the CPU ratio of each install to the first.

    python -m bench.cli_commands --cued /tmp/before/.venv/bin/cued --cued .venv/bin/cued
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cli import EXAMPLE, compile_install, start_daemon, stop_daemon

COMMANDS = (
    ("status",),
    ("trigger", "hello"),
    ("pause", "hello"),
    ("resume", "hello"),
    ("validate",),
)


def _start(cued: Path, folder: Path) -> subprocess.Popen[bytes]:
    compile_install(cued)
    config = folder / "config.toml"
    config.write_text(re.sub(r'listen = "[^"]*"', 'listen = "127.0.0.1:0"', EXAMPLE.read_text()))
    (folder / "drop").mkdir()
    return start_daemon(cued, config, folder / "cued.db")


def _timed(cued: Path, folder: Path, command: tuple[str, ...]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [cued, "--config", folder / "config.toml", *command],
        capture_output=True,
        check=False,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{cued} {' '.join(command)}: {done.stderr.decode()}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cued", action="append", type=Path, help="a cued program (repeatable)")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    installs = [c.absolute() for c in args.cued or [Path(".venv/bin/cued")]]
    root = Path(tempfile.mkdtemp(prefix="cued-bench-cli-"))
    folders = {cued: root / str(n) for n, cued in enumerate(installs)}
    daemons = []
    try:
        for cued, folder in folders.items():
            folder.mkdir()
            daemons.append(_start(cued, folder))
        times: dict[tuple[tuple[str, ...], Path], list[tuple[float, float]]] = {}
        for round_ in range(args.rounds):
            order = installs if round_ % 2 == 0 else installs[::-1]
            for command in COMMANDS:
                for cued in order:
                    times.setdefault((command, cued), []).append(
                        _timed(cued, folders[cued], command)
                    )
    finally:
        for daemon in daemons:
            stop_daemon(daemon)
        shutil.rmtree(root, ignore_errors=True)
    lines = ["| command | install | wall (median) | CPU (median) | CPU / first install |"]
    lines.append("|---|---|---|---|---|")
    for command in COMMANDS:
        first = statistics.median(cpu for _, cpu in times[(command, installs[0])])
        for cued in installs:
            wall = statistics.median(w for w, _ in times[(command, cued)])
            cpu = statistics.median(c for _, c in times[(command, cued)])
            lines.append(
                f"| `cued {' '.join(command)}` | {cued} | {wall * 1000:.0f} ms "
                f"| {cpu * 1000:.0f} ms | {cpu / first:.2f}x |"
            )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
