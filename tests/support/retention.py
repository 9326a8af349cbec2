"""Retention: a config with a dedupe window and two users, and rows of runs and events
written with old timestamps (no test waits for anything to age)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cued.daemon.config import parse_config
from cued.daemon.core.ids import new_id, now
from cued.daemon.store import (
    ApprovalRow,
    AttemptRow,
    DecisionRow,
    EventRow,
    InstanceRow,
    RunRow,
)

if TYPE_CHECKING:
    from pathlib import Path

    from cued.daemon.config import Config
    from cued.daemon.store import Row

__all__ = ["CONFIG", "DAY", "NOW", "OLD", "RECENT", "config_of", "event_row", "run_rows"]


DAY = 86400.0
NOW = now()
OLD = NOW - 40 * DAY  # past every default age
RECENT = NOW - 2 * DAY  # within every default age (alerts: 7 days)

CONFIG = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
{daemon}
[sources.hook]
kind = "webhook"
path = "/hooks/orders"
[[triggers]]
name = "orders"
source = "hook"
pipeline = "p"
dedupe = "{{{{ event.data.id }}}}"
dedupe_window = "1h"
[pipelines.p.tasks.a]
kind = "sleep"
[auth.users.root]
token = "root-token"
roles = ["viewer", "operator"]
[auth.users.vera]
token = "vera-token"
roles = ["viewer"]
{retention}
"""


def config_of(tmp_path: Path, retention_table: str = "", daemon: str = "") -> Config:
    text = CONFIG.format(retention=retention_table, daemon=daemon)
    return parse_config(text, file=str(tmp_path / "config.toml"), base_dir=tmp_path)


def run_rows(
    ended_at: float | None, state: str = "succeeded", *, event_id: str | None = None
) -> list[Row]:
    """A run (ended at ``ended_at``, or not ended) with one row in each table of its own."""
    at = ended_at if ended_at is not None else OLD
    run_id = new_id()
    gate = "approved" if ended_at is not None else "waiting"
    return [
        RunRow(run_id, "p", state, {}, at - 60, at - 60, ended_at, None, event_id),
        InstanceRow(run_id, "a", "a", None, "succeeded", 1, None, at),
        AttemptRow(run_id, "a", 1, "succeeded", at - 60, at, None, '{"x": 1}'),
        ApprovalRow(run_id, "gate", 1, "ok?", (), 1, "reject", {}, at - 60, None, gate),
        DecisionRow(run_id, "gate", 1, "anna", "approve", None, None, at),
    ]


def event_row(received_at: float, *run_ids: str) -> EventRow:
    return EventRow(new_id(), "hook", received_at, "matched", {"id": 1}, {}, run_ids)
