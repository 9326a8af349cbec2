"""Protocol fakes for tests of one source without a daemon: the parts of the Intake and
WebRoutes protocols that such a test does not exercise."""

from __future__ import annotations

from typing import Any


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
