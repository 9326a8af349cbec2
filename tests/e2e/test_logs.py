"""Logs: JSON lines when not on a terminal, every line of a task with its run, pipeline,
task and attempt."""

from __future__ import annotations

import json

from tests.support.daemon import cued


def test_task_lines_are_json_with_run_pipeline_task_and_attempt(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        """
[daemon]
state = "state.db"
log_level = "debug"
[pipelines.p]
[pipelines.p.tasks.flaky]
kind = "shell"
argv = ["false"]
retries = 1
retry_backoff = "1ms"
"""
    )
    result = cued(config, "trigger", "p")
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    task_lines = [line for line in lines if line["event"].startswith("task_")]
    assert {line["event"] for line in task_lines} == {"task_started", "task_failed"}
    for line in task_lines:
        assert line["pipeline"] == "p"
        assert line["task"] == "flaky"
        assert line["run_id"]
        assert line["level"] in ("debug", "warning")
        assert "timestamp" in line
    assert sorted({line["attempt"] for line in task_lines}) == [1, 2]
