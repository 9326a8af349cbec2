"""The alerts runs raise: the outbox rows of ``task_failed``, ``approval_waiting``,
``run_failed``, ``run_succeeded`` and ``deadline_missed``.

Each method returns rows for the caller to commit in the same transaction as the change
the alert reports, so a crash cannot lose an alert; :meth:`RunAlerts.wake` then tells the
sender (:class:`~cued.daemon.runtime.alerts.Alerts`) that rows are committed. An alert's
key names its occurrence (rule, run, task, attempt), so its id is the same on every resend.
Without a sink (no ``[alerts]`` configured) every method returns no rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from cued.daemon.core.engine import RunState

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cued.daemon.store import Row, RunRow

__all__ = ["AlertSink", "RunAlerts"]

_RULE_OF_END = {RunState.FAILED: "run_failed", RunState.SUCCEEDED: "run_succeeded"}


class AlertSink(Protocol):
    """The outbox, as whoever raises alerts sees it."""

    def wants(self, rule: str) -> bool:
        """Whether a channel is configured for alerts of ``rule`` (nothing is built for
        one that none wants: a run's end asks this once per run)."""

    def rows(self, rule: str, key: str, payload: dict[str, Any]) -> Sequence[Row]:
        """Outbox rows for an alert of ``rule`` (one per channel that wants it). ``key``
        names the occurrence (rule, run, task, attempt) and makes the alert id, the same
        on every resend."""

    def wake(self) -> None:
        """New rows are committed: send them."""


class RunAlerts:
    """Builds the outbox rows of the alerts about runs.

    :param sink: the configured channels, or None when no alert is configured
    """

    def __init__(self, sink: AlertSink | None) -> None:
        self._sink = sink

    def task_failed(self, row: RunRow, task: str, attempt: int, error: str | None) -> list[Row]:
        """A task of ``row`` failed for good: no retry left, or none would help."""
        return self._rows("task_failed", row, task=task, attempt=attempt, error=error)

    def approval_waiting(self, row: RunRow, task: str, attempt: int, message: str) -> list[Row]:
        """An approval gate of ``row`` waits for a decision."""
        return self._rows("approval_waiting", row, task=task, attempt=attempt, message=message)

    def run_ended(self, row: RunRow, state: RunState, reruns: int, error: str | None) -> list[Row]:
        """``row`` ended in ``state`` (nothing is raised for a cancelled run).

        :param reruns: the sum of its instances' retry bases: each rerun raises it, so the
            end of a rerun run is an alert of its own, not a resend of the first end's
        """
        rule = _RULE_OF_END.get(state)
        if rule is None:
            return []
        occurrence = f"rerun{reruns}" if reruns else None
        return self._rows(rule, row, occurrence=occurrence, error=error)

    def deadline_missed(self, row: RunRow, task: str, at: float, message: str) -> list[Row]:
        """``row``, or its task ``task`` (if not empty), was unfinished at ``at``."""
        details = {"task": task} if task else {}
        return self._rows("deadline_missed", row, deadline_at=at, message=message, **details)

    def wake(self) -> None:
        """Rows of these alerts are committed: have them sent."""
        if self._sink is not None:
            self._sink.wake()

    def _rows(
        self, rule: str, row: RunRow, *, occurrence: str | None = None, **details: Any
    ) -> list[Row]:
        if self._sink is None or not self._sink.wants(rule):
            return []
        parts = [rule, row.run_id]
        if "task" in details:
            parts.append(str(details["task"]))
            if "attempt" in details:
                parts.append(str(details["attempt"]))
        if occurrence is not None:
            parts.append(occurrence)
        payload = {
            "rule": rule,
            "run_id": row.run_id,
            "pipeline": row.pipeline,
            "event_id": row.event_id,
            "inputs": row.inputs,
            **details,
        }
        return list(self._sink.rows(rule, ":".join(parts), payload))
