"""A task kind's context outside a daemon, for tests that call ``execute`` directly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from cued.daemon.sdk.kinds import TaskContext

if TYPE_CHECKING:
    import httpx


def task_context(http: httpx.AsyncClient, **fields: Any) -> TaskContext:
    """The context of attempt 1 of task ``notify`` of run ``run-1`` of ``orders``;
    ``fields`` replace any of it, or add to it."""
    given: dict[str, Any] = {
        "run_id": "run-1",
        "pipeline": "orders",
        "task": "notify",
        "map_index": None,
        "attempt": 1,
        "idempotency_key": "run-1:notify",
        "log": structlog.get_logger(),
        "http": http,
    }
    return TaskContext(**(given | fields))
