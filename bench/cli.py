"""How long the ``cued`` command takes to answer, as a whole process: ``cued --help``,
``cued runs`` and ``cued show RUN``, beside a running daemon and with none, and the floor
in the same run: the interpreter starting (``python -c pass``) and a bare ``sqlite3`` read
of the same runs, printed.

The example ``config.toml`` is used as it is (its HTTP front on a free port), on a state
file with ``--populate`` runs of ``hello``, started through a daemon's control socket.
Every install's modules are compiled to bytecode first, as an installed program's are
(a checkout run with ``PYTHONDONTWRITEBYTECODE`` set compiles every module at each start).
The timing is hyperfine's (Debian package ``hyperfine``), in ``--rounds`` calls of
``--runs`` counted runs per command, the commands in turn and in reverse order every other
round; the median of all of a command's runs is quoted, and its CPU time (user + system,
which a busy machine stretches less than the wall).

    python -m bench.cli                                  # this venv's cued
    python -m bench.cli --cued /tmp/before/.venv/bin/cued --cued .venv/bin/cued

With several ``--cued``, each install's commands are timed in the same hyperfine call
(before and after side by side). Prints a Markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cued.daemon.assembly import control_socket_path

EXAMPLE = Path(__file__).resolve().parents[1] / "config.toml"

#: What ``cued runs`` reads, done with nothing but sqlite3: the floor of a read.
FLOOR_READ = """\
import sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
rows = db.execute(
    "SELECT run_id, pipeline, state, created_at, started_at, ended_at FROM runs"
    " ORDER BY created_at DESC, run_id DESC LIMIT 21"
).fetchall()
for row in rows[:20]:
    print("  ".join(map(str, row)))
"""


#: Prints the folders of cued's packages in the install that runs it.
_WHERE = """
import os, cued.daemon, cued.connectors, cued.plugins
for package in (cued.daemon, cued.connectors, cued.plugins):
    print(os.path.dirname(package.__file__))
"""


def compile_install(cued: Path) -> None:
    """Bytecode for the install behind ``cued`` (its own python), as pip leaves it."""
    python = cued.parent / "python"
    where = subprocess.run(
        [python, "-c", _WHERE], check=True, capture_output=True, text=True
    ).stdout.split()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([python, "-m", "compileall", "-q", *where], check=True, env=env)


def start_daemon(cued: Path, config: Path, state: Path) -> subprocess.Popen[bytes]:
    daemon = subprocess.Popen(
        [cued, "--config", config, "run"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    socket_path = control_socket_path(state)
    while not socket_path.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the daemon did not start")
        time.sleep(0.05)
    return daemon


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=60)


def _populate(state: Path, runs: int) -> str:
    """``runs`` runs of ``hello`` through the daemon, each waited for; the last one's id."""
    transport = httpx.HTTPTransport(uds=str(control_socket_path(state)))
    run_id = ""
    with httpx.Client(transport=transport, base_url="http://cued", timeout=60) as client:
        for i in range(runs):
            response = client.post(
                "/api/v1/pipelines/hello/runs?wait=true", json={"inputs": {"name": f"n{i}"}}
            )
            response.raise_for_status()
            run_id = response.json()["run_id"]
    return run_id


@dataclass
class Timed:
    """One command's runs: wall seconds of each, and CPU seconds (user + system) in all."""

    wall: list[float] = field(default_factory=list)
    cpu: float = 0.0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.wall) * 1000

    @property
    def cpu_ms(self) -> float:
        return self.cpu / len(self.wall) * 1000


def _hyperfine(
    commands: dict[str, list[str]], rounds: int, runs: int, warmup: int, out: Path
) -> dict[str, Timed]:
    """Each command's runs, by label: ``rounds`` hyperfine calls of ``runs`` runs each
    (after ``warmup``), the commands in turn and in the other order every other round,
    so that the machine's drift hits them all alike."""
    timed = {label: Timed() for label in commands}
    for n in range(rounds):
        order = list(commands) if n % 2 == 0 else list(reversed(commands))
        names = [arg for label in order for arg in ("-n", label)]
        lines = [subprocess.list2cmdline(commands[label]) for label in order]
        subprocess.run(
            [
                *("hyperfine", "-N", "--style", "basic", "-w", str(warmup), "-r", str(runs)),
                *("--export-json", str(out), *names, *lines),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for result in json.loads(out.read_text())["results"]:
            found = timed[result["command"]]
            found.wall.extend(result["times"])
            found.cpu += (result["user"] + result["system"]) * len(result["times"])
    return timed


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cued",
        action="append",
        type=Path,
        help="a cued command to time (repeatable; default: this venv's)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="hyperfine calls, interleaved")
    parser.add_argument("--runs", type=int, default=6, help="counted runs per command a round")
    parser.add_argument("--warmup", type=int, default=1, help="runs not counted, per round")
    parser.add_argument("--populate", type=int, default=50, help="runs in the state file")
    args = parser.parse_args()
    installs = [p.absolute() for p in args.cued or [Path(sys.executable).parent / "cued"]]
    for cued in installs:
        compile_install(cued)
    python = str(installs[0].parent / "python")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = folder / "config.toml"
        text = EXAMPLE.read_text(encoding="utf-8")
        config.write_text(re.sub(r'listen = "[^"]*"', 'listen = "127.0.0.1:0"', text))
        (folder / "drop").mkdir()
        state = folder / "cued.db"
        (folder / "floor_read.py").write_text(FLOOR_READ)
        daemon = start_daemon(installs[0], config, state)
        try:
            run_id = _populate(state, args.populate)
        except BaseException:
            stop_daemon(daemon)
            raise

        def commands() -> dict[str, list[str]]:
            timed: dict[str, list[str]] = {
                "floor: python -c pass": [python, "-c", "pass"],
                "floor: sqlite3 read of runs": [python, str(folder / "floor_read.py"), str(state)],
            }
            for n, cued in enumerate(installs):
                tag = f"[{n}] " if len(installs) > 1 else ""
                base = [str(cued), "--config", str(config)]
                timed[f"{tag}cued --help"] = [*base, "--help"]
                timed[f"{tag}cued runs"] = [*base, "runs"]
                timed[f"{tag}cued show RUN"] = [*base, "show", run_id]
            return timed

        try:
            beside = _hyperfine(commands(), args.rounds, args.runs, args.warmup, folder / "b.json")
        finally:
            stop_daemon(daemon)
        alone = _hyperfine(commands(), args.rounds, args.runs, args.warmup, folder / "a.json")
    runs = args.rounds * args.runs
    _say(f"wall: median of {runs} runs ({args.rounds} rounds); cpu: user + system, mean per run")
    for n, cued in enumerate(installs):
        if len(installs) > 1:
            _say(f"[{n}] {cued}")
    _say()
    _say("| command | daemon running: wall | cpu | no daemon: wall | cpu |")
    _say("|---|---|---|---|---|")
    for label, b in beside.items():
        a = alone[label]
        _say(
            f"| `{label}` | {b.median_ms:.0f} ms | {b.cpu_ms:.0f} ms "
            f"| {a.median_ms:.0f} ms | {a.cpu_ms:.0f} ms |"
        )
    figures = {
        where: {
            label: {"wall_median_ms": t.median_ms, "cpu_mean_ms": t.cpu_ms}
            for label, t in found.items()
        }
        for where, found in (("daemon_running", beside), ("no_daemon", alone))
    }
    _say(json.dumps({**figures, "runs": runs}))


if __name__ == "__main__":
    main()
