"""
The exceptions cued raises, as a tree:

* CuedError
  x ConfigError          - the configuration is invalid (carries every problem found)
  x ConnectorError       - an event source cannot start or lost its connection for good
  x AlertDeliveryError   - an alert channel did not take an alert (it is tried again)
  x StoreError           - the durable store cannot be opened or is of an unknown version
    + Fenced             - this node's lease lapsed and its runs went to other nodes
    + DatabaseLost       - the daemon's connection to its PostgreSQL database was lost
  x DaemonUnavailable    - no daemon answers on the control socket
  x NotFound             - a run, pipeline or task named by the user does not exist
  x InvalidRequest       - a request names things that exist but asks what cannot be done
    + Conflict           - not now: the run or gate is in a state that does not allow it
  x Forbidden            - whoever asks may not do that (not an approver of the gate, say)
  x TaskError            - a task attempt failed (retried while retries are left)
    + TaskTimeout        - a task attempt ran past its timeout
    + PermanentTaskError - a task attempt failed in a way that retrying cannot mend
      + DataCheckFailed  - a task's data check found the data bad (an asset check)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AlertDeliveryError",
    "ConfigError",
    "ConfigProblem",
    "Conflict",
    "ConnectorError",
    "CuedError",
    "DaemonUnavailable",
    "DataCheckFailed",
    "DatabaseLost",
    "Fenced",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "PermanentTaskError",
    "StoreError",
    "TaskError",
    "TaskTimeout",
]


class CuedError(Exception):
    """Base class for all cued errors."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration file, and where it is; a ``warning`` leaves
    the configuration valid (something legal but likely dangerous)."""

    file: str
    line: int | None
    path: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.path}:" if self.path else ""
        level = " warning:" if self.warning else ""
        return f"{where}:{key}{level} {self.message}"


class ConfigError(CuedError):
    """The configuration is invalid; ``problems`` lists every problem found, not only the
    first, and ``warnings`` what was found besides that would not make it invalid."""

    def __init__(
        self, problems: list[ConfigProblem], warnings: list[ConfigProblem] | None = None
    ) -> None:
        self.problems = problems
        self.warnings = warnings or []
        lines = "\n".join(str(p) for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the configuration:\n{lines}")


class ConnectorError(CuedError):
    """An event source cannot start (a missing secret, an unreachable broker, ...)."""


class AlertDeliveryError(CuedError):
    """An alert channel did not take an alert (it is tried again later)."""


class StoreError(CuedError):
    """The durable store cannot be used."""


class Fenced(StoreError):
    """This node's lease lapsed (or another node took it over): it may write no more."""


class DatabaseLost(StoreError):
    """The daemon's connection to its PostgreSQL database was lost (the daemon reconnects)."""


class DaemonUnavailable(CuedError):
    """No daemon answers on the control socket."""


class NotFound(CuedError):
    """A run, pipeline or task named by the user does not exist."""


class InvalidRequest(CuedError):
    """A request cannot be done as asked (an undeclared input, say)."""


class Conflict(InvalidRequest):
    """A request that the state of a run or gate does not allow now (it is still running,
    has finished already, or was settled already): the same request may do later, or
    did earlier."""


class Forbidden(CuedError):
    """Whoever asks may not do that."""


class TaskError(CuedError):
    """A task attempt failed; it is retried while the task has retries left."""


class TaskTimeout(TaskError):
    """A task attempt ran past its timeout."""

    def __init__(self, task: str, timeout_s: float) -> None:
        super().__init__(f"Task {task!r} did not finish within {timeout_s:g}s")
        self.task = task
        self.timeout_s = timeout_s


class PermanentTaskError(TaskError):
    """A task attempt failed in a way that retrying cannot mend (bad parameters, say)."""


class DataCheckFailed(PermanentTaskError):
    """A task's data check found the data bad (a ``sql`` task's ``expect``): the task fails
    for good, and each asset it ``produces`` gets a version marked bad instead of a new one.

    Its text starts with :data:`PREFIX`, which is how the run, holding only an attempt's
    error text, tells such a failure.
    """

    PREFIX = "data check failed: "

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.PREFIX}{detail}")
