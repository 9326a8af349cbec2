"""A chat completions server that speaks the OpenAI protocol, answering from a script.

No real model can run in the tests; this one records every request (with the loop time it
arrived at) and answers each with the next scripted :class:`Reply`, then with ``default``.
Serve it with :func:`tests.support.http_server.serve_app`; its API root is ``{base}/v1``.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["FakeLlm", "Received", "Reply"]


def _usage(prompt: int = 10, completion: int = 5) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a completion when ``status`` is 200, else an error.

    :param content: the assistant message's content
    :param usage: the ``usage`` object, or ``None`` to send none
    :param status: the HTTP status
    :param headers: extra response headers (``Retry-After``, say)
    :param error: the error message sent with a status other than 200
    :param finish_reason: the choice's ``finish_reason``
    """

    content: str | None = "ok"
    usage: dict[str, int] | None = field(default_factory=_usage)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error: str = "scripted error"
    finish_reason: str = "stop"

    @classmethod
    def tokens(cls, content: str, prompt: int, completion: int) -> Reply:
        return cls(content, _usage(prompt, completion))


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    at: float
    """``anyio.current_time()`` on arrival (the server runs in the test's event loop)."""
    headers: dict[str, str]
    """Lower-case names."""
    body: Any


class FakeLlm:
    """The server's state: what to answer next and what was asked."""

    def __init__(self, *replies: Reply, default: Reply | None = None) -> None:
        self.replies: deque[Reply] = deque(replies)
        self.default = default or Reply()
        self.requests: list[Received] = []
        self._ids = itertools.count(1)
        self.app = Starlette(
            routes=[Route("/v1/chat/completions", self._complete, methods=["POST"])]
        )

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order."""
        self.replies.extend(replies)

    async def _complete(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append(
            Received(anyio.current_time(), {k.lower(): v for k, v in request.headers.items()}, body)
        )
        reply = self.replies.popleft() if self.replies else self.default
        if reply.status != 200:
            error = {"message": reply.error, "type": "scripted", "code": None}
            return JSONResponse({"error": error}, reply.status, headers=reply.headers)
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content},
                    "finish_reason": reply.finish_reason,
                }
            ],
        }
        if reply.usage is not None:
            answer["usage"] = reply.usage
        return JSONResponse(answer, headers=reply.headers)
