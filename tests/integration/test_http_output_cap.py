"""An http task keeps at most ``max_output_bytes`` of a response's body, and reads little
more than that: a huge (or endless) answer neither fills the store nor the memory."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import pydantic
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from cued.plugins.http import HttpTask
from tests.support.http_server import serve_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

    from cued.daemon.sdk.kinds import TaskContext

CHUNK = b"x" * 65536
CHUNKS = 2000  # 128 MiB, far more than any socket buffers hold


class Endless:
    """A server on a loopback port that answers with a body of :data:`CHUNKS` chunks,
    written straight to the socket, so that it sees when the client stops reading: a
    write then fails (once the socket buffers are full) rather than being dropped."""

    def __init__(self) -> None:
        self.sent = 0
        self.stopped = anyio.Event()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive()
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(CHUNK) * CHUNKS}\r\n\r\n"
            )
            try:
                await stream.send(head.encode())
                for _ in range(CHUNKS):
                    await stream.send(CHUNK)
                    self.sent += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the client went away
            finally:
                self.stopped.set()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self.handle)
            yield f"http://127.0.0.1:{port}"
            tg.cancel_scope.cancel()


def app() -> Starlette:
    async def json_body(request: Request) -> Response:
        return Response(b'{"items": [' + b"1," * 5000 + b"1]}", media_type="application/json")

    async def small(request: Request) -> Response:
        return Response(b'{"ok": true}', media_type="application/json")

    async def accents(request: Request) -> Response:
        return Response("é" * 10, media_type="text/plain; charset=utf-8")

    async def failing(request: Request) -> Response:
        return Response(b"E" * 100_000, status_code=503)

    return Starlette(
        routes=[
            Route("/json", json_body),
            Route("/small", small),
            Route("/accents", accents),
            Route("/failing", failing),
        ]
    )


async def get(ctx: TaskContext, url: str, **params: Any) -> Any:
    return await HttpTask().execute(HttpTask.Params.model_validate({"url": url, **params}), ctx)


async def test_a_body_past_the_cap_is_cut_and_the_rest_is_never_read(ctx) -> None:
    endless = Endless()
    async with endless.serving() as base:
        with anyio.fail_after(20):
            output = await get(ctx, f"{base}/endless", max_output_bytes=100_000)
            await endless.stopped.wait()  # the server noticed that nobody reads
    assert output == {
        "status": 200,
        "body": "x" * 100_000,
        "truncated": True,
        "content_length": len(CHUNK) * CHUNKS,
    }
    assert endless.sent < CHUNKS


async def test_a_cut_json_body_is_kept_as_text_with_its_length(ctx) -> None:
    async with serve_app(app()) as base:
        output = await get(ctx, f"{base}/json", max_output_bytes=20)
    assert output == {
        "status": 200,
        "body": '{"items": [1,1,1,1,1',
        "truncated": True,
        "content_length": len('{"items": [') + 2 * 5000 + len("1]}"),
    }


async def test_a_body_within_the_cap_is_parsed_as_before(ctx) -> None:
    async with serve_app(app()) as base:
        output = await get(ctx, f"{base}/small", max_output_bytes=12)
    assert output == {"status": 200, "body": {"ok": True}}


async def test_a_cut_through_a_character_leaves_it_out(ctx) -> None:
    async with serve_app(app()) as base:
        output = await get(ctx, f"{base}/accents", max_output_bytes=5)  # "é" is two bytes
    assert output["body"] == "éé"
    assert output["truncated"] is True


async def test_an_unexpected_status_quotes_only_the_start_of_a_long_body(ctx) -> None:
    from cued.daemon.errors import TaskError

    async with serve_app(app()) as base:
        with pytest.raises(TaskError) as info:
            await get(ctx, f"{base}/failing", max_output_bytes=1_000_000)
    assert str(info.value).endswith(f"answered with unexpected status 503: {'E' * 499}\u2026")


def test_the_cap_defaults_to_a_mebibyte_and_cannot_be_negative() -> None:
    params = HttpTask.Params.model_validate({"url": "http://example.com/"})
    assert params.max_output_bytes == 1024 * 1024
    with pytest.raises(pydantic.ValidationError):
        HttpTask.Params.model_validate({"url": "http://example.com/", "max_output_bytes": -1})
