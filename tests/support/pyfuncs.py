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


#: Met by the two concurrent attempts of the live-log test: each prints and logs, waits
#: for the other to have done so, then prints and logs again (their lines interleave).
TALK_BARRIER = threading.Barrier(2, timeout=20)


def talk(name: str) -> str:
    import logging
    import sys

    log = logging.getLogger(f"talker.{name}")
    print(f"{name} says one")  # noqa: T201 - what the test captures
    log.info("%s logs one", name)
    TALK_BARRIER.wait()
    sys.stderr.write(f"{name} warns")  # no newline: flushed when the call ends
    log.warning("%s logs two", name)
    TALK_BARRIER.wait()
    return name
