"""The ``sleep`` task kind: wait, then succeed.

``seconds`` sleeps in the attempt, holding its task slot (the no-op of the benchmarks at
0); a sleep of :data:`PARK_AFTER_S` or more, and one ``until`` a moment, is a durable timer
instead: the run waits in the store, holding no slot, and wakes once when the time comes,
across restarts (not restarted from zero).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cued.daemon.sdk import AwaitingTime, PermanentTaskError, as_moment, has_template, now

if TYPE_CHECKING:
    from cued.daemon.sdk import TaskContext

__all__ = ["PARK_AFTER_S", "SleepParams", "SleepTask"]

PARK_AFTER_S = 300.0
"""A ``seconds`` sleep this long or longer parks the run on a durable timer."""


class SleepParams(BaseModel):
    """Parameters of a ``sleep`` task.

    :param seconds: how long to wait; 0 only yields to the event loop once
    :param until: the moment to wake at: seconds since the epoch, or ISO 8601 (often a
        template: ``{{ tasks.pay.output.event.received_at | add_duration('1d') }}``)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    until: float | str | None = None

    @field_validator("until")
    @classmethod
    def _a_time(cls, until: float | str | None) -> float | str | None:
        if until is not None and not (isinstance(until, str) and has_template(until)):
            as_moment(until)  # raises what is wrong with it
        return until

    @model_validator(mode="after")
    def _one_of(self) -> SleepParams:
        if self.until is not None and self.seconds:
            raise ValueError("give seconds or until, not both")
        return self


class SleepTask:
    """Wait for ``seconds``, or until ``until``, then succeed.

    With the default of 0 this is the no-op task of the throughput benchmark, so it does
    nothing beyond the one checkpoint: its cost is the daemon's per-task overhead.
    """

    name: ClassVar[str] = "sleep"
    Params: ClassVar[type[BaseModel]] = SleepParams

    def runs_inline(self, params: SleepParams) -> bool:
        """Whether :meth:`execute` with ``params`` does no I/O (it yields to the event loop
        once at most): a sleep of 0, and one long enough to park on a durable timer."""
        return params.until is None and (params.seconds == 0 or params.seconds >= PARK_AFTER_S)

    async def execute(self, params: SleepParams, ctx: TaskContext) -> Any:
        """Sleep for ``params.seconds``, or park until ``params.until``.

        :param params: the validated parameters
        :param ctx: the attempt's context (unused)
        :return: ``None``, or what parks the run on a durable timer
        :raises PermanentTaskError: if ``until`` is not a time
        """
        if params.until is not None:
            try:
                return AwaitingTime(as_moment(params.until))
            except ValueError as exc:
                raise PermanentTaskError(f"until: {exc}") from exc
        if params.seconds >= PARK_AFTER_S:
            return AwaitingTime(now() + params.seconds)
        await anyio.sleep(params.seconds)
        return None
