"""The ``pipeline`` task kind: run another pipeline (a child run), wait for it, and take
its outputs.

```toml
[pipelines.checkout.tasks.ship]
kind = "pipeline"
pipeline = "shipping"
inputs = { order = "{{ inputs.order_id }}" }
```

The child run is recorded with the attempt's wait, in one transaction: one child per
attempt, never two, across crashes and restarts. The instance waits in the store (no task
slot, no memory once nothing else of its run runs) until the child ends. Its output is
``{"run_id": ..., "state": "succeeded", "outputs": {TASK: OUTPUT, ...}}``, the outputs of
the child's task instances (``tasks.ship.output.outputs.label``). A child that fails (or is
cancelled) fails the instance; a retry of the instance (``retries``) starts a new child.
Cancelling the parent run cancels its children. ``cued validate`` checks that the pipeline
exists, that it declares the inputs given, and that no pipelines call each other in a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from cued.daemon.sdk import AwaitingRun

if TYPE_CHECKING:
    from cued.daemon.sdk import TaskContext

__all__ = ["PipelineParams", "PipelineTask"]


class PipelineParams(BaseModel):
    """Parameters of a ``pipeline`` task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline: str = Field(min_length=1)
    """The pipeline the child run runs (not a template: checked by ``cued validate``)."""
    inputs: dict[str, Any] = Field(default_factory=dict)
    """The child's inputs: templates over the parent's ``inputs`` and upstream ``tasks``."""


class PipelineTask:
    """Start a child run; the runner keeps the instance waiting until the child ends."""

    name: ClassVar[str] = "pipeline"
    Params: ClassVar[type[BaseModel]] = PipelineParams

    async def execute(self, params: PipelineParams, ctx: TaskContext) -> AwaitingRun:
        return AwaitingRun(params.pipeline, dict(params.inputs))
