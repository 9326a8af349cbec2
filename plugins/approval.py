"""The ``approval`` task kind: a human gate. The run stops here until enough approvers
approve (or one rejects, or the timeout settles it), waiting in the store for as long as
it takes, across restarts.

Decide with ``cued approve RUN_ID TASK`` / ``cued reject RUN_ID TASK`` or over HTTP
(``POST /api/v1/runs/{run}/tasks/{task}/approve`` with a bearer token). The output, for
downstream tasks: ``{"decision": "approved" | "rejected" | "timed_out", "decided_by":
[...], "comment": ..., "payload": <as proposed, or as edited by the last approver>,
"message": ...}``. The task's ``timeout`` is how long to wait for a decision, and
``on_timeout`` what then happens (``fail`` by default). A rejection fails the task (downstream tasks are ``upstream_failed``,
but ``all_done`` ones run and can read the decision).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from cued.daemon.sdk import AwaitingDecision

if TYPE_CHECKING:
    from cued.daemon.sdk import TaskContext

__all__ = ["ApprovalParams", "ApprovalTask"]


class ApprovalParams(BaseModel):
    """Parameters of an ``approval`` task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message: str
    approvers: list[str] = Field(default_factory=list)
    """User names, or ``group:NAME`` (groups of ``[auth.users]``); empty: any approver."""
    min_approvals: int = Field(1, ge=1)
    # how long to wait is the task's own ``timeout`` (a common key of every task)
    on_timeout: Literal["approve", "reject", "fail"] = "fail"
    payload: Any = None
    """A proposal for the deciders, which they may edit (usually from an upstream task)."""


class ApprovalTask:
    """Ask for a decision; the runner keeps the instance waiting until it is made."""

    name: ClassVar[str] = "approval"
    Params: ClassVar[type[BaseModel]] = ApprovalParams

    async def execute(self, params: ApprovalParams, ctx: TaskContext) -> AwaitingDecision:
        return AwaitingDecision(
            message=params.message,
            approvers=tuple(params.approvers),
            min_approvals=params.min_approvals,
            on_timeout=params.on_timeout,
            payload=params.payload,
        )
