"""Protocol fakes for tests of one source without a daemon: the parts of the Intake and
WebRoutes protocols that such a test does not exercise."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from cued.daemon.sdk.sources import Receipt

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.sdk.sources import Event


class AcceptingIntake:
    """Always accepting, no cursor, nothing recorded before: subclasses add ``record``."""

    async def cursor(self, source: str) -> str | None:
        return None

    async def known(self, event_ids: list[str]) -> set[str]:
        return set()

    def accepting(self) -> bool:
        return True

    async def wait_accepting(self) -> None:
        return None


class NoRoutes:
    """The web routes of a source that serves no HTTP: any use of them is a test failure."""

    def reserve(self, path: str, *, max_body_bytes: int) -> None:
        raise AssertionError("this source serves no HTTP")

    def mount(self, path: str, app: Any) -> None:
        raise AssertionError("this source serves no HTTP")

    def unmount(self, path: str) -> None:
        raise AssertionError("this source serves no HTTP")


class SwappingIntake(AcceptingIntake):
    """Records every event as matched; before acknowledging (the file is moved then), it
    calls ``meanwhile``: what a local user can do while the transaction commits."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        self.meanwhile = meanwhile
        self.events: list[Event] = []
        self.acknowledged = anyio.Event()

    async def record(
        self,
        events: list[Event],
        *,
        cursor: str | None = None,
        acknowledge: Callable[[list[Receipt]], None] | None = None,
    ) -> list[Receipt]:
        self.events.extend(events)
        self.meanwhile()
        receipts = [
            Receipt(e.event_id, "invalid" if e.error else "matched", error=e.error) for e in events
        ]
        if acknowledge is not None:
            acknowledge(receipts)
        self.acknowledged.set()
        return receipts
