"""What the daemon's HTTP front and control socket answer while it has no database.

The servers outlive a loss of the database (the daemon reconnects in place, see the
README, "State in PostgreSQL"): each serves a :class:`Switch`, which passes requests to
the daemon's app while the database is connected and to :func:`outage_app` while it is
not. So a sender is told to come back (``503`` with ``Retry-After``, a JSON body naming
the problem) instead of finding the port closed, and a load balancer's ``/readyz`` check
sends the traffic to the other daemons meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import JSONResponse

from cued.daemon.errors import StoreError
from cued.daemon.sdk.http_errors import error_response

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["OUTAGE_RETRY_AFTER_S", "Switch", "outage_app"]

OUTAGE_RETRY_AFTER_S = 5
"""What ``Retry-After`` says while the database is away: about when the daemon tries it
again, once the outage has lasted a few seconds."""


def _unreachable(problem: str) -> JSONResponse:
    return error_response(
        503,
        "database_unreachable",
        f"{problem}; nothing was recorded, retry in {OUTAGE_RETRY_AFTER_S}s",
        **{"Retry-After": str(OUTAGE_RETRY_AFTER_S)},
    )


def outage_app(problem: Callable[[], str]) -> ASGIApp:
    """Answers every request ``503`` with ``Retry-After`` and ``problem()`` in its body,
    except ``/healthz``: the process is up (``200``, the problem among its checks)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; a websocket is refused by returning unaccepted
        if scope["path"].rstrip("/") == "/healthz":
            body = {"status": "ok", "checks": {"store": f"error: {problem()}"}}
            await JSONResponse(body)(scope, receive, send)
            return
        await _unreachable(problem())(scope, receive, send)

    return app


class Switch:
    """An ASGI app that passes each request to :attr:`app`, which the daemon replaces as
    its database comes and goes. A request whose handler fails for want of the store
    before it answered (its commit's connection was lost) is answered ``503``, never
    ``500``: nothing of it was acknowledged, and the sender should try again."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            failed = _store_error(exc)
            if started or failed is None:
                raise
            await _unreachable(f"the store failed: {failed}")(scope, receive, send)


def _store_error(exc: BaseException) -> StoreError | None:
    """The :class:`StoreError` ``exc`` is, or that a task group's group of errors holds."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _store_error(inner)) is not None:
                return found
    return None
