"""Alerts as the tests receive them: a real SMTP server, the outbox rows of a state file, and
pipelines that fail and succeed for the alerts to report."""

from __future__ import annotations

import asyncio
import email
import email.policy
from typing import TYPE_CHECKING, Any

import anyio
from aiosmtpd.controller import Controller

from tests.support.daemon import query

if TYPE_CHECKING:
    from email.message import EmailMessage


__all__ = ["PIPELINES", "Mailbox", "outbox"]


class Mailbox:
    """A real SMTP server on 127.0.0.1 (aiosmtpd's Controller, in a thread of its own)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=port)
        self._loop = asyncio.get_running_loop()
        self._changed = anyio.Event()

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd calls it so
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        # the server's own thread: hand the message to the test's loop without waiting
        self._loop.call_soon_threadsafe(
            self._add, envelope.mail_from, list(envelope.rcpt_tos), message
        )
        return "250 OK"

    def _add(self, sender: str, to: list[str], message: EmailMessage) -> None:
        self.messages.append((sender, to, message))
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, count: int) -> None:
        while len(self.messages) < count:
            await self._changed.wait()

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self.controller.start)

    async def stop(self) -> None:
        await anyio.to_thread.run_sync(self.controller.stop)


def outbox(state) -> dict[str, dict[str, Any]]:
    """The outbox rows in the state file, by alert id."""
    rows = query(
        state, "SELECT alert_id, channel, rule, sent_at, attempts, last_error, next_at FROM outbox"
    )
    names = ("channel", "rule", "sent_at", "attempts", "last_error", "next_at")
    return {r[0]: dict(zip(names, r[1:], strict=True)) for r in rows}


PIPELINES = """
[http]
listen = "127.0.0.1:0"

[daemon]
state = "state.db"

[pipelines.bad.tasks.flaky]
kind = "python"
function = "tests.support.pyfuncs:fails"
retries = 1
retry_backoff = "10ms"

[pipelines.good.tasks.ok]
kind = "python"
function = "tests.support.pyfuncs:add"
args = { a = 1, b = 2 }

[pipelines.other.tasks.ok]
kind = "python"
function = "tests.support.pyfuncs:add"
args = { a = 1, b = 2 }
"""
