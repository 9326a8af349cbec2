"""Records (rows, commands, events): immutable to the type checker, equal and hashable by
their fields, cheap to build (see :mod:`cued.daemon.core.records`)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
from mypy import api as mypy_api

from cued.daemon.core.engine import Start
from cued.daemon.sdk import Event
from cued.daemon.store import InstanceRow, RunRow

ROOT = Path(__file__).resolve().parents[2]


def _run(state: str = "queued") -> RunRow:
    return RunRow("r1", "p", state, {"x": [1, 2]}, 1.0)


def _instance(state: str = "queued") -> InstanceRow:
    return InstanceRow("r1", "a", "a", None, state, 0, None, 1.0)


def test_a_record_is_equal_to_and_hashes_as_one_with_the_same_fields() -> None:
    assert _run() == _run()
    assert _run() != _run("running")
    assert hash(_instance()) == hash(_instance())
    assert len({_instance(), _instance(), _instance("running")}) == 2


def test_a_record_is_changed_by_making_another() -> None:
    row = _run()
    running = dataclasses.replace(row, state="running", started_at=2.0)
    assert (row.state, row.started_at) == ("queued", None)
    assert (running.state, running.started_at, running.inputs) == ("running", 2.0, row.inputs)


def test_rows_commands_and_events_are_slotted_dataclasses() -> None:
    for cls in (RunRow, Start, Event):
        assert dataclasses.is_dataclass(cls)
        assert "__slots__" in vars(cls)
    assert not hasattr(_run(), "__dict__")
    assert RunRow.__slots__[:3] == ("run_id", "pipeline", "state")


@pytest.mark.slow
def test_the_type_checker_refuses_an_assignment_to_a_records_field(tmp_path: Path) -> None:
    # mypy reads cued's sources through a tree named as they install (as `make check` does)
    (tmp_path / "cued").mkdir()
    for folder in ("daemon", "connectors", "plugins"):
        (tmp_path / "cued" / folder).symlink_to(ROOT / folder)
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from cued.daemon.core.engine import Start
            from cued.daemon.sdk import Event
            from cued.daemon.store import RunRow

            def change(row: RunRow, start: Start, event: Event) -> None:
                row.state = "running"
                start.attempt = 2
                event.data = None
            """
        )
    )
    out, _, status = mypy_api.run(
        [
            "--strict",
            "--follow-imports=silent",
            "--no-incremental",
            "--config-file=",
            f"--cache-dir={tmp_path / 'cache'}",
            str(snippet),
        ]
    )
    assert status == 1, out
    for line, field in ((7, "state"), (8, "attempt"), (9, "data")):
        assert f'snippet.py:{line}: error: Property "{field}"' in out, out
    assert "read-only" in out
