"""A run's row as its state changes keeps everything else it was created with: the row is
built field by field (it is, twice per run, on the hot path), so a field added to
``RunRow`` later must not be dropped on the way (a run's config version once was)."""

from __future__ import annotations

import dataclasses

from cued.daemon.runtime.instance_rows import run_row
from cued.daemon.store import RunRow


def test_a_state_change_keeps_every_other_field_of_the_run():
    created = RunRow(
        "r-1", "etl", "queued", {"n": 1}, 10.0, None, None, None, "e-1", "00-a-b-01", 7,
        "customer-9", 1, 8, "r-0", "ship", 2,
    )  # fmt: skip
    assert all(getattr(created, f.name) is not None for f in dataclasses.fields(RunRow)
               if f.name not in ("started_at", "ended_at", "error"))  # fmt: skip
    assert run_row(created, "running", 11.0) == dataclasses.replace(
        created, state="running", started_at=11.0
    )
    assert run_row(created, "failed", 11.0, 12.0, "boom") == dataclasses.replace(
        created, state="failed", started_at=11.0, ended_at=12.0, error="boom"
    )
