"""The ``sleep`` task kind: wait, then succeed with no output."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import anyio
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from cued.daemon.sdk import TaskContext

__all__ = ["SleepParams", "SleepTask"]


class SleepParams(BaseModel):
    """Parameters of a ``sleep`` task.

    :param seconds: how long to wait; 0 only yields to the event loop once
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class SleepTask:
    """Wait for ``seconds``, then succeed with ``None`` as output.

    With the default of 0 this is the no-op task of the throughput benchmark, so it does
    nothing beyond the one checkpoint: its cost is the daemon's per-task overhead.
    """

    name: ClassVar[str] = "sleep"
    Params: ClassVar[type[BaseModel]] = SleepParams

    async def execute(self, params: SleepParams, ctx: TaskContext) -> Any:
        """Sleep for ``params.seconds``.

        :param params: the validated parameters
        :param ctx: the attempt's context (unused)
        :return: ``None``
        """
        await anyio.sleep(params.seconds)
        return None
