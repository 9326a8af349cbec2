"""The ``wait_event`` task kind: the run stops here until an event of a source comes for
which ``match`` holds, waiting in the store (no slot held, nothing in memory), across
restarts.

```toml
[pipelines.checkout.tasks.payment]
kind = "wait_event"
source = "payments"
match = "event.data.order_id == inputs.order_id"
lookback = "10m"        # an event recorded up to 10 minutes before the wait counts too
timeout = "1h"          # the task's own timeout: how long to wait
on_timeout = "fail"     # or "succeed"
```

The output, for downstream tasks: ``{"event": {"id", "source", "data", "meta",
"received_at"}}``; after a timeout with ``on_timeout = "succeed"``, ``{"event": null,
"timed_out": true}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from cued.daemon.sdk import AwaitingEvent, Duration

if TYPE_CHECKING:
    from cued.daemon.sdk import TaskContext

__all__ = ["WaitEventParams", "WaitEventTask"]


class WaitEventParams(BaseModel):
    """Parameters of a ``wait_event`` task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(min_length=1)
    match: str | None = None
    """An expression in the trigger ``when`` language over ``event`` and the task's
    ``inputs``, ``tasks``, ``run``, ``item``; none: any event of the source."""
    lookback: Duration = 0.0
    # how long to wait is the task's own ``timeout`` (a common key of every task)
    on_timeout: Literal["fail", "succeed"] = "fail"


class WaitEventTask:
    """Wait for an event; the runner keeps the instance waiting until one comes."""

    name: ClassVar[str] = "wait_event"
    Params: ClassVar[type[BaseModel]] = WaitEventParams

    async def execute(self, params: WaitEventParams, ctx: TaskContext) -> AwaitingEvent:
        return AwaitingEvent(
            source=params.source,
            match=params.match,
            lookback_s=params.lookback,
            on_timeout=params.on_timeout,
        )
