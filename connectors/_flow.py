"""How a broker source holds back while the daemon's backlog is saturated.

A source that takes no message acknowledges none, so the broker (holding at most its
prefetch / receive maximum / batch unacknowledged) sends no more: the queue grows at the
broker, not in the daemon. Kafka pauses its partitions instead, and keeps polling to stay
in its group: it does not use this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from cued.daemon.sdk import SourceContext

__all__ = ["Backpressure"]

#: While paused, how often the source looks whether the backlog drained (it resumes at
#: once when it does; this bounds only how long a stop waits).
PAUSED_S = 1.0


class Backpressure:
    """Logs ``{prefix}_paused`` (with ``fields``) once when the backlog saturates and
    ``{prefix}_resumed`` once when it drains."""

    def __init__(self, ctx: SourceContext, prefix: str, **fields: Any) -> None:
        self._intake = ctx.intake
        self._log = ctx.log
        self._prefix = prefix
        self._fields = fields
        self._paused = False

    async def ready(self) -> bool:
        """Whether the source may take a batch now. When not, it has waited (at most
        :data:`PAUSED_S`) for the backlog to drain: ask again."""
        if not self._intake.accepting():
            if not self._paused:
                self._paused = True
                self._log.info(f"{self._prefix}_paused", **self._fields)
            with anyio.move_on_after(PAUSED_S):
                await self._intake.wait_accepting()
            return False
        if self._paused:
            self._paused = False
            self._log.info(f"{self._prefix}_resumed")
        return True
