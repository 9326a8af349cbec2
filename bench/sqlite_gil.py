"""What the GIL does to a group commit: ``.venv/bin/python -m bench.sqlite_gil``.

One commit of the runs a Kafka flood writes at once (new runs queued, runs ended, runs
started: the store's own upsert and schema), timed two ways side by side: row by row
(``executemany``, which lets go of the GIL around each row's step and takes it back
after) and as one statement over the rows' JSON (``cued.daemon.store._sqlite_bulk``); each
alone, and with a thread beside it that runs Python all the time, as the event loop's
does under load. Medians of ``--rounds`` commits, wall time of the commit.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from cued.daemon.core.ids import new_id
from cued.daemon.store._sqlite_bulk import as_json, bulk_sql
from cued.daemon.store._sqlite_commit import _UPSERT_RUN, _floats, _params
from cued.daemon.store.migrations import MIGRATIONS
from cued.daemon.store.rows import RunRow


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    for number, script in enumerate(MIGRATIONS, start=1):
        db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")
    return db


def _commits(way: str, rounds: int, runs: int, busy: bool) -> list[float]:
    """Wall seconds of each commit, after a few to warm up."""
    bulk = bulk_sql(_UPSERT_RUN)
    floats = _floats(RunRow)
    stop = threading.Event()

    def spin() -> None:  # Python all the time, as a busy event loop
        n = 0
        while not stop.is_set():
            for i in range(1000):
                n += i

    with tempfile.TemporaryDirectory() as tmp:
        db = _open(Path(tmp) / "state.db")
        spinner = threading.Thread(target=spin, daemon=True)
        if busy:
            spinner.start()
        queued: list[RunRow] = []
        seconds: list[float] = []
        try:
            for i in range(rounds + 3):
                at = time.time()
                new = [
                    RunRow(new_id(), "p", "queued", {}, at, event_id=new_id()) for _ in range(runs)
                ]
                rows = [
                    *(RunRow(r.run_id, "p", "succeeded", {}, r.created_at, at, at) for r in queued),
                    *new,
                    *(
                        RunRow(r.run_id, "p", "running", {}, r.created_at, at)
                        for r in new[: runs // 2]
                    ),
                ]
                queued = new
                params = [_params(r) for r in rows]
                started = time.perf_counter()
                db.execute("BEGIN")
                if way == "executemany":
                    db.executemany(_UPSERT_RUN, params)
                else:
                    db.execute(bulk, (as_json(params, floats),))
                db.execute("COMMIT")
                if i >= 3:
                    seconds.append(time.perf_counter() - started)
        finally:
            stop.set()
            db.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=500, help="new runs per commit")
    args = parser.parse_args()
    rows = args.runs * 2 + args.runs // 2
    out = sys.stdout.write
    out(f"| commit of {rows} run rows | alone | with a busy Python thread |\n|---|---|---|\n")
    for way in ("executemany", "one statement"):
        alone = statistics.median(_commits(way, args.rounds, args.runs, busy=False))
        # fewer rounds beside the busy thread: row by row, each takes seconds
        busy = statistics.median(_commits(way, max(3, args.rounds // 5), args.runs, busy=True))
        out(f"| {way} | {alone * 1e3:.1f} ms | {busy * 1e3:.1f} ms |\n")
        sys.stderr.write(
            json.dumps({"way": way, "alone_ms": alone * 1e3, "busy_ms": busy * 1e3}) + "\n"
        )


if __name__ == "__main__":
    main()
