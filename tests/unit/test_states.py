"""The states of task instances and runs, and which are final, defined once
(``cued.daemon.core.states``) for the engine, the runner, deadlines, retention and the UI."""

from __future__ import annotations

from cued.daemon.core.states import TERMINAL_RUN_STATES, TERMINAL_TASK_STATES, RunState, State
from cued.daemon.store import migrations, pruning


def test_terminal_states():
    assert {s.value for s in TERMINAL_TASK_STATES} == {
        "succeeded",
        "failed",
        "upstream_failed",
        "cancelled",
    }
    assert {s.value for s in TERMINAL_RUN_STATES} == {
        "succeeded",
        "failed",
        "cancelled",
        "skipped",
    }
    assert TERMINAL_TASK_STATES <= set(State)
    assert TERMINAL_RUN_STATES <= set(RunState)


def test_a_state_read_back_as_text_is_found():
    assert "failed" in TERMINAL_RUN_STATES
    assert "upstream_failed" in TERMINAL_TASK_STATES
    assert "running" not in TERMINAL_RUN_STATES


def test_retention_names_the_finished_runs_as_their_index_does():
    # SQLite uses the partial index runs_finished only for a WHERE written as the index's
    assert any(pruning._FINISHED in step for step in migrations.MIGRATIONS)
