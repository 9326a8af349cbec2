"""The alerts runs raise (daemon/runtime/run_alerts.py): keys that name the occurrence,
payloads that say what happened, and nothing without a sink or for a cancelled run."""

from __future__ import annotations

from typing import Any

import pytest

from cued.daemon.core.engine import RunState
from cued.daemon.runtime.run_alerts import RunAlerts
from cued.daemon.store import RunRow


class _Sink:
    """An outbox that keeps what it is asked for: (rule, key, payload) per alert."""

    def __init__(self, wanted: set[str] | None = None) -> None:
        self.asked: list[tuple[str, str, dict[str, Any]]] = []
        self.woken = 0
        self.wanted = wanted
        """The rules a channel is configured for (None: every rule)."""

    def wants(self, rule: str) -> bool:
        return self.wanted is None or rule in self.wanted

    def rows(self, rule: str, key: str, payload: dict[str, Any]) -> list[Any]:
        self.asked.append((rule, key, payload))
        return [("row", key)]

    def wake(self) -> None:
        self.woken += 1


RUN = RunRow("r1", "etl", "running", {"day": "mon"}, 1.0, event_id="e1")
BASE = {"run_id": "r1", "pipeline": "etl", "event_id": "e1", "inputs": {"day": "mon"}}


def test_task_failed_is_keyed_by_run_task_and_attempt():
    sink = _Sink()
    rows = RunAlerts(sink).task_failed(RUN, "load[2]", 3, "boom")
    assert rows == [("row", "task_failed:r1:load[2]:3")]
    ((rule, _, payload),) = sink.asked
    assert rule == "task_failed"
    assert payload == {
        "rule": "task_failed",
        **BASE,
        "task": "load[2]",
        "attempt": 3,
        "error": "boom",
    }


def test_an_alert_no_channel_wants_is_not_built():
    sink = _Sink(wanted={"run_failed"})
    alerts = RunAlerts(sink)
    assert alerts.run_ended(RUN, RunState.SUCCEEDED, 0, None) == []
    assert alerts.task_failed(RUN, "load", 1, "boom") == []
    assert sink.asked == []
    assert alerts.run_ended(RUN, RunState.FAILED, 0, "load: boom") == [("row", "run_failed:r1")]


def test_approval_waiting_carries_the_gates_message():
    sink = _Sink()
    RunAlerts(sink).approval_waiting(RUN, "gate", 1, "ship it?")
    ((rule, key, payload),) = sink.asked
    assert (rule, key) == ("approval_waiting", "approval_waiting:r1:gate:1")
    assert payload["message"] == "ship it?"


@pytest.mark.parametrize(
    ("state", "reruns", "expected"),
    [
        pytest.param(RunState.FAILED, 0, ("run_failed", "run_failed:r1"), id="failed"),
        pytest.param(RunState.SUCCEEDED, 0, ("run_succeeded", "run_succeeded:r1"), id="succeeded"),
        pytest.param(
            RunState.FAILED, 2, ("run_failed", "run_failed:r1:rerun2"), id="rerun-is-its-own"
        ),
    ],
)
def test_a_runs_end_is_keyed_by_run_and_rerun(state, reruns, expected):
    sink = _Sink()
    RunAlerts(sink).run_ended(RUN, state, reruns, "a: boom")
    ((rule, key, payload),) = sink.asked
    assert (rule, key) == expected
    assert payload == {"rule": rule, **BASE, "error": "a: boom"}


def test_a_cancelled_run_raises_nothing():
    sink = _Sink()
    assert RunAlerts(sink).run_ended(RUN, RunState.CANCELLED, 0, None) == []
    assert sink.asked == []


def test_deadline_missed_of_a_run_and_of_a_task():
    sink = _Sink()
    alerts = RunAlerts(sink)
    alerts.deadline_missed(RUN, "", 9.0, "run r1 (etl) missed its deadline")
    alerts.deadline_missed(RUN, "load", 9.0, "task 'load' of run r1 (etl) missed its deadline")
    (_, run_key, run_payload), (_, task_key, task_payload) = sink.asked
    assert run_key == "deadline_missed:r1"
    assert "task" not in run_payload
    assert run_payload["deadline_at"] == 9.0
    assert task_key == "deadline_missed:r1:load"
    assert task_payload["task"] == "load"


def test_without_a_sink_no_rows_and_no_wake():
    alerts = RunAlerts(None)
    assert alerts.task_failed(RUN, "a", 1, "boom") == []
    assert alerts.run_ended(RUN, RunState.FAILED, 0, "boom") == []
    alerts.wake()  # nothing to wake: must not fail


def test_wake_tells_the_sink():
    sink = _Sink()
    RunAlerts(sink).wake()
    assert sink.woken == 1
