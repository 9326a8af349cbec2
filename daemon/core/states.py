"""The states of a task instance and of a run, and which of them are final.

One set of states for everyone (the engine, the runner, deadlines, retention, the UI), as
saq keeps ``TERMINAL_STATUSES`` beside its ``Status``: a state added here is final, or
not, everywhere at once.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TERMINAL_RUN_STATES", "TERMINAL_TASK_STATES", "RunState", "State"]


class State(StrEnum):
    """The state of one task instance."""

    PENDING = "pending"
    QUEUED = "queued"  # handed to the runner, waiting for a slot
    RUNNING = "running"
    UP_FOR_RETRY = "up_for_retry"
    WAITING = "waiting"  # for a decision (an approval gate): in the store, not in memory
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UPSTREAM_FAILED = "upstream_failed"
    CANCELLED = "cancelled"


class RunState(StrEnum):
    """The state of a run."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # nothing runs, a decision is awaited: parked in the store
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # its pipeline was paused with when_paused = "skip": never started


#: A task instance in one of these changes no more (until a retry from outside resets it).
TERMINAL_TASK_STATES: frozenset[State] = frozenset(
    {State.SUCCEEDED, State.FAILED, State.UPSTREAM_FAILED, State.CANCELLED}
)

#: A run in one of these has ended. The members are ``str`` too, so a state read back from
#: the store as text tests true against them: ``"failed" in TERMINAL_RUN_STATES``.
TERMINAL_RUN_STATES: frozenset[RunState] = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.SKIPPED}
)
