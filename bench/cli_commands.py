"""How long the ``cued`` commands that go through a running daemon take, as whole
processes: ``status``, ``trigger``, ``pause``, ``resume`` (and ``validate``, which checks
the whole file), for one install or several side by side.

Each install gets its own folder with the example ``config.toml`` (its HTTP front on a
free port) and its own daemon; bytecode is compiled for each first, as pip leaves an
installed program's. In ``--rounds`` rounds, each command runs once per install, the
installs in turn and in reverse order every other round; the median wall time and the
median CPU time (user + system, of the command's process) are printed as a Markdown
table, with the CPU ratio of each install to the first.

    python -m bench.cli_commands --cued /tmp/before/.venv/bin/cued --cued .venv/bin/cued
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "config.toml"
COMMANDS = (
    ("status",),
    ("trigger", "hello"),
    ("pause", "hello"),
    ("resume", "hello"),
    ("validate",),
)
#: The environment of every process: bytecode cached (these machines set
#: PYTHONDONTWRITEBYTECODE, which an installed program does not meet).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(cued: Path, folder: Path) -> subprocess.Popen[bytes]:
    python = cued.parent / "python"
    where = subprocess.run(
        [
            python,
            "-c",
            "import os, cued.daemon as d; print(os.path.dirname(os.path.dirname(d.__file__)))",
        ],
        check=True,
        capture_output=True,
        text=True,
        env=ENV,
    ).stdout.strip()
    subprocess.run([python, "-m", "compileall", "-q", where], check=False, env=ENV)
    text = EXAMPLE.read_text().replace("127.0.0.1:8080", f"127.0.0.1:{_free_port()}")
    (folder / "config.toml").write_text(text)
    (folder / "drop").mkdir()
    daemon = subprocess.Popen(
        [cued, "--config", folder / "config.toml", "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    deadline = time.monotonic() + 60
    while not (folder / "cued.db.d" / "control.sock").exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the daemon of {cued} did not start")
        time.sleep(0.05)
    return daemon


def _timed(cued: Path, folder: Path, command: tuple[str, ...]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [cued, "--config", folder / "config.toml", *command],
        capture_output=True,
        env=ENV,
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
            daemon.terminate()
            daemon.wait()
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
