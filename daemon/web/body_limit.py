"""A cap on the size of request bodies, applied before anything reads them.

Frameworks read a body whole before the endpoint runs, and so before the endpoint's
dependencies check the token: without a cap in front, anyone who can reach the port can
make the daemon hold a body of any size. :func:`limit_body` answers ``413`` (with the
daemon's JSON error body) as soon as ``Content-Length`` says too much, or, for a body
sent without one, as soon as what arrived passes the cap. Nothing behind it reads past
the cap: it gets an error from ``receive`` instead, and whatever it answers then is
dropped (``413`` has been sent).

The rest of a refused body is read and discarded by the server (uvicorn) to keep the
connection usable, not kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cued.daemon.sdk.http_errors import error_response

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit", "limit_body"]


class _BodyCut(Exception):
    """What ``receive`` raises to an app once the body has passed the cap."""


class BodyLimit:
    """An ASGI app: ``app`` with request bodies capped at ``max_body_bytes``."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self._app = app
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await limit_body(self._app, self._max_body_bytes, scope, receive, send)


async def limit_body(
    app: ASGIApp, max_body_bytes: int, scope: Scope, receive: Receive, send: Send
) -> None:
    """Call ``app`` with the request's body capped at ``max_body_bytes``: past it, the
    answer is ``413`` (if ``app`` has not begun its own answer by then; else the
    connection is cut)."""
    if scope["type"] != "http":
        await app(scope, receive, send)
        return
    if _declared_length(scope) > max_body_bytes:
        await _too_large(scope, receive, send, max_body_bytes)
        return
    seen = 0
    started = answered = False

    async def capped_receive() -> Message:
        nonlocal seen, answered
        if answered:
            raise _BodyCut
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_body_bytes:
                if not started:
                    answered = True
                    await _too_large(scope, receive, send, max_body_bytes)
                raise _BodyCut
        return message

    async def tracked_send(message: Message) -> None:
        nonlocal started
        if answered:
            return  # the app's own answer to a body it could not have: 413 is sent
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, capped_receive, tracked_send)
    except _BodyCut:
        pass  # answered with 413 (or, with an answer begun, the server cuts it short)


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the server refuses such a request before it gets here
                return 0
    return 0


async def _too_large(scope: Scope, receive: Receive, send: Send, max_body_bytes: int) -> None:
    message = f"the body is larger than {max_body_bytes} bytes"
    await error_response(413, "body_too_large", message)(scope, receive, send)
