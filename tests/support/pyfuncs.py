"""Functions for the ``python`` task kind to call in tests."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from cued.daemon.sdk.kinds import TaskContext


def add(a: int, b: int) -> int:
    return a + b


def which_thread() -> int:
    return threading.get_ident()


async def async_which_thread(delay_s: float = 0.0) -> int:
    await anyio.sleep(delay_s)
    return threading.get_ident()


def context_of(ctx: TaskContext, extra: str = "") -> dict[str, Any]:
    return {"key": ctx.idempotency_key, "attempt": ctx.attempt, "extra": extra}


async def async_context_of(*, ctx: TaskContext) -> str:
    return ctx.run_id


def not_serialisable() -> object:
    return object()


def fails() -> None:
    raise ValueError("the function failed")


NOT_A_FUNCTION = 42


#: Set by a test to let :func:`wait_for_release` return.
RELEASE = threading.Event()
#: Set by :func:`wait_for_release` as it returns.
RELEASED = threading.Event()


def wait_for_release() -> str:
    try:
        RELEASE.wait(10)
        return "released"
    finally:
        RELEASED.set()


def log_text(ctx: TaskContext, text: str) -> None:
    """Log ``text`` with the task's logger, at warning level (the tests' level)."""
    ctx.log.warning("task_says", text=text)
