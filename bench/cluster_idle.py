"""What an idle cluster asks of its database: three daemons (``cued run`` on the example
config.toml, each in a folder of its own, all with ``state`` in one PostgreSQL database on
127.0.0.1:5432) with nothing to do, and the statements they send it.

Statements are counted in the server's log: before the daemons start, the cluster's
database is given ``log_statement = 'all'`` (``ALTER DATABASE``: its own sessions only,
and it goes with the database, dropped after), and every statement logged for it in a
window is counted (``statement:`` for a simple query, ``execute`` for a prepared one;
a ``BEGIN`` and a ``COMMIT`` count as statements), split into the lease renewals (the
heartbeat, ``UPDATE nodes SET renewed_at ...``) and the rest, which are listed. The log is
the file the server writes its stderr to (``--server-log``; Debian's default here).

Beside them, the server's count of transactions (``xact_commit + xact_rollback`` of
``pg_stat_database``) on the cluster's database, and on a floor database where three
connections send only a heartbeat of the same shape (an ``UPDATE`` of a row of their own
every third of 5 s). That count is not the daemons' statements: an idle session that
another database's catalog changes (any ``CREATE``/``DROP`` on the server) have left
behind is signalled to catch up, and does so in a transaction of its own, which the
server counts once the session next reports its statistics (after a statement that
touched a table: a heartbeat). On a shared server it moves with everyone else's work,
the floor's alike.

Once the three are up, the first ``--settle`` seconds are left out (a starting daemon
reads its state and prunes once); then ``--rounds`` windows of ``--seconds`` each. The
example's hourly schedule may tick in a window: that is one event and one run, as it
would be.

Run: ``.venv/bin/python -m bench.cluster_idle`` (default 3 windows of 60 s). Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

_ROOT = Path(__file__).resolve().parent.parent
_SERVER = "postgresql://postgres@127.0.0.1:5432"
_NODES = 3
_HEARTBEAT_S = 5 / 3  # a third of the default lease
_COUNT = (
    "SELECT datname, xact_commit + xact_rollback FROM pg_stat_database "
    "WHERE datname = ANY($1::text[])"
)
# a record of the log begins with log_line_prefix's time and pid; its statement may go
# on over the lines that follow
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[\d+\] ", re.MULTILINE)
_STATEMENT = re.compile(r"LOG:  (?:statement|execute [^:]*): (.*)", re.DOTALL)
_RENEWAL = "UPDATE nodes SET renewed_at"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(folder: Path, url: str) -> Path:
    text = (_ROOT / "config.toml").read_text()
    text = re.sub(r'listen = "127\.0\.0\.1:8080"', f'listen = "127.0.0.1:{_free_port()}"', text)
    text = text.replace('state = "cued.db"', f'state = "{url}"')
    text = text.replace('log_level = "info"', 'log_level = "warning"')
    (folder / "drop").mkdir()
    path = folder / "config.toml"
    path.write_text(text)
    return path


def statements(log: str, database: str) -> list[str]:
    """The statements the server logged for ``database`` in ``log``, whitespace folded."""
    found = []
    for record in _RECORD.split(log):
        head, _, rest = record.partition(" ")
        if not head.endswith(f"@{database}"):
            continue
        match = _STATEMENT.match(rest.lstrip())
        if match:
            found.append(" ".join(match.group(1).split()))
    return found


class _Log:
    """The server's log file, read from where it was last read up to its end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size

    def since(self) -> str:
        with self.path.open("rb") as file:
            file.seek(self.offset)
            text = file.read()
        self.offset += len(text)
        return text.decode(errors="replace")


async def _counts(admin: asyncpg.Connection, names: list[str]) -> dict[str, int]:
    # the server's cumulative statistics are flushed by each backend within a second
    await asyncio.sleep(1.5)
    return {name: int(n) for name, n in await admin.fetch(_COUNT, names)}


async def _heartbeats(url: str, stop: asyncio.Event) -> None:
    """The floor: three connections, each updating a row of its own every third of a
    5 s lease, as the nodes' renewals do."""
    beats = [await asyncpg.connect(url) for _ in range(_NODES)]
    try:
        await beats[0].execute("CREATE TABLE beats (n int PRIMARY KEY, at float8)")
        await beats[0].execute("INSERT INTO beats SELECT g, 0 FROM generate_series(0, 2) g")
        while not stop.is_set():
            for n, db in enumerate(beats):
                await db.execute("UPDATE beats SET at = extract(epoch FROM now()) WHERE n = $1", n)
            try:
                await asyncio.wait_for(stop.wait(), _HEARTBEAT_S)
            except TimeoutError:
                pass
    finally:
        for db in beats:
            await db.close()


async def _run(rounds: int, seconds: float, settle: float, server_log: Path) -> dict[str, object]:
    cluster, floor = f"cued_bench_{secrets.token_hex(4)}", f"cued_floor_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(f"{_SERVER}/postgres")
    for name in (cluster, floor):
        await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.execute(f"ALTER DATABASE \"{cluster}\" SET log_statement = 'all'")
    stop = asyncio.Event()
    beating = asyncio.ensure_future(_heartbeats(f"{_SERVER}/{floor}", stop))
    processes: list[subprocess.Popen[bytes]] = []
    windows: list[dict[str, float]] = []
    seen: collections.Counter[str] = collections.Counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in range(_NODES):
                folder = Path(tmp) / f"node{n}"
                folder.mkdir()
                config = _config(folder, f"{_SERVER}/{cluster}")
                processes.append(
                    subprocess.Popen(  # noqa: ASYNC220 - returns at once
                        [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "run"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                sock = folder / "postgresql.d" / "control.sock"
                deadline = time.monotonic() + 60
                while not sock.exists():
                    if time.monotonic() > deadline or processes[-1].poll() is not None:
                        raise RuntimeError(f"node {n} did not start")
                    await asyncio.sleep(0.05)
            await asyncio.sleep(settle)
            connections = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", cluster
            )
            log = _Log(server_log)
            for _ in range(rounds):
                before = await _counts(admin, [cluster, floor])
                log.since()
                started = time.monotonic()
                await asyncio.sleep(seconds)
                sent = statements(log.since(), cluster)
                took = time.monotonic() - started
                after = await _counts(admin, [cluster, floor])
                renewals = sum(s.startswith(_RENEWAL) for s in sent)
                seen.update(s[:70] for s in sent if not s.startswith(_RENEWAL))
                windows.append(
                    {
                        "statements": len(sent) / took,
                        "renewals": renewals / took,
                        "others": (len(sent) - renewals) / took,
                        "transactions": (after[cluster] - before[cluster]) / took,
                        "floor_transactions": (after[floor] - before[floor]) / took,
                    }
                )
            # autovacuum's work in the cluster's database, all tables (catalogs too)
            db = await asyncpg.connect(f"{_SERVER}/{cluster}")
            try:
                autovacuum = await db.fetchval(
                    "SELECT sum(autovacuum_count + autoanalyze_count) FROM pg_stat_all_tables"
                )
            finally:
                await db.close()
    finally:
        stop.set()
        await beating
        for process in processes:
            process.terminate()
            process.wait(60)
        for name in (cluster, floor):
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()

    def med(key: str) -> float:
        return round(statistics.median(w[key] for w in windows), 3)

    return {
        "nodes": _NODES,
        "seconds": seconds,
        "rounds": rounds,
        "connections": connections,
        "statements_per_s": med("statements"),
        "statements_per_s_per_node": round(med("statements") / _NODES, 3),
        "renewals_per_s_per_node": round(med("renewals") / _NODES, 3),
        "other_statements_per_s_per_node": round(med("others") / _NODES, 3),
        "other_statements": dict(seen.most_common(20)),
        "transactions_per_s": med("transactions"),
        "floor_heartbeat_only_transactions_per_s": med("floor_transactions"),
        "autovacuum_and_analyze_runs": int(autovacuum or 0),
        "windows": [{k: round(v, 3) for k, v in w.items()} for w in windows],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument(
        "--server-log",
        type=Path,
        default=Path("/var/log/postgresql/postgresql-15-main.log"),
        help="the file the server's log goes to (log_line_prefix '%%m [%%p] %%q%%u@%%d ')",
    )
    args = parser.parse_args()
    line = asyncio.run(_run(args.rounds, args.seconds, args.settle, args.server_log))
    sys.stdout.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
