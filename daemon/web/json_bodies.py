"""JSON request bodies through :mod:`cued.daemon.core.untrusted` before the API reads them.

FastAPI parses a JSON body with ``json.loads``, which takes what cued must not keep: lone
surrogates (``"\\ud800"``: SQLite keeps them, and pydantic then cannot serialise the run,
so every list that shows it answers ``500``), values nested hundreds deep (past what
pydantic serialises), ``NaN`` and ``1e999`` (stored as ``Infinity``, which is no JSON).
:class:`CleanJsonBodies` parses such a body with :func:`~cued.daemon.core.untrusted.json_value`
first: a body it refuses is answered ``400`` with the daemon's JSON error body, and the
app gets the rest as the JSON of the cleaned value (lone surrogates escaped as text).

It reads the body whole: it belongs behind the cap on bodies
(:mod:`cued.daemon.web.body_limit`), as the framework it stands in front of does.
"""

from __future__ import annotations

import json
from email.message import Message as MimeMessage
from typing import TYPE_CHECKING

from cued.daemon.core import untrusted
from cued.daemon.sdk.http_errors import error_response

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CleanJsonBodies"]


class CleanJsonBodies:
    """An ASGI app: ``app`` with its JSON request bodies parsed by
    :func:`~cued.daemon.core.untrusted.json_value` before it reads them."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self._app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # gone before the body was in
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        if raw.strip():
            parsed = untrusted.json_value(raw)
            if parsed.error is not None:
                refused = error_response(400, "invalid_body", parsed.error)
                await refused(scope, receive, send)
                return
            raw = json.dumps(parsed.data, ensure_ascii=False).encode("utf-8")
            scope = {**scope, "headers": _with_length(scope["headers"], len(raw))}
        await self._app(scope, _replay(raw, receive), send)


def _is_json(scope: Scope) -> bool:
    """Whether FastAPI may read the body as JSON: it does when its type says JSON
    (``application/json``, ``application/*+json``), and, unless its
    ``strict_content_type`` (the default) is off, when it says nothing."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            mime = MimeMessage()
            mime["content-type"] = value.decode("latin-1")
            subtype = mime.get_content_subtype()
            return mime.get_content_maintype() == "application" and (
                subtype == "json" or subtype.endswith("+json")
            )
    return True


def _with_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    kept = [(n, v) for n, v in headers if n not in (b"content-length", b"transfer-encoding")]
    return [*kept, (b"content-length", str(length).encode("ascii"))]


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then what ``receive`` gives (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
