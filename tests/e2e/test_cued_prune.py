"""``cued prune``: with ``--dry-run`` it prints what would go and deletes nothing; without, it
deletes it, on its own or through a running daemon."""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING

from cued.daemon.store.sqlite import open_store
from tests.support.daemon import Daemon, cued, query, wait_for
from tests.support.retention import CONFIG, OLD, RECENT, event_row, run_rows

if TYPE_CHECKING:
    from pathlib import Path


async def test_prune_dry_run_prints_what_would_go_and_deletes_nothing(tmp_path: Path) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text(CONFIG.format(retention="", daemon=""))
    state = tmp_path / "state.db"
    async with open_store(state) as store:
        await store.submit([*run_rows(OLD), *run_rows(RECENT), event_row(OLD)]).wait()

    dry = cued(config_path, "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    counts = counts_in(dry.stdout)
    assert (counts["runs"], counts["attempts"], counts["events"], counts["outbox"]) == (1, 1, 1, 0)
    assert "6 rows would go (dry run: nothing deleted)" in dry.stdout
    assert len(query(state, "SELECT * FROM runs")) == 2

    done = cued(config_path, "prune")
    assert done.returncode == 0, done.stderr
    assert "6 rows deleted" in done.stdout
    assert len(query(state, "SELECT * FROM runs")) == 1
    assert query(state, "SELECT count(*) FROM events") == [(0,)]


async def test_prune_goes_through_a_running_daemon(tmp_path: Path) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        CONFIG.format(retention="[retention]\nprune_every = '1h'", daemon='log_level = "debug"')
    )
    state = tmp_path / "state.db"
    daemon = Daemon(config_path, state)
    await daemon.start()
    try:
        # its own prune at start is done (and the next is an hour away): then old rows come
        await wait_for(lambda: '"event": "pruned"' in daemon.log.read_text())
        old = run_rows(OLD)[0]
        with sqlite3.connect(state, timeout=10) as db:
            db.execute(
                "INSERT INTO runs (run_id, pipeline, state, inputs, created_at, started_at, "
                "ended_at) VALUES (?, 'p', 'failed', '{}', ?, ?, ?)",
                (old.run_id, OLD, OLD, OLD),  # type: ignore[union-attr]
            )
        dry = cued(config_path, "prune", "--dry-run")
        assert counts_in(dry.stdout)["runs"] == 1, dry.stdout + dry.stderr
        done = cued(config_path, "prune")
        assert "1 rows deleted" in done.stdout, done.stdout + done.stderr
        assert query(state, "SELECT count(*) FROM runs") == [(0,)]
    finally:
        assert daemon.stop() == 0


def counts_in(output: str) -> dict[str, int]:
    """The TABLE/ROWS lines of ``cued prune``."""
    return {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", output, re.MULTILINE)
    }
