"""The HTTP front on its own, over real HTTP: reserved paths answer 503 until a source
mounts them and after it unmounts them, and request bodies are capped before any app
reads them."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from cued.daemon.web.body_limit import BodyLimit
from cued.daemon.web.front import RETRY_AFTER_S, WebFront
from cued.daemon.web.server import PerConnection, connection_memo, serve_asgi
from tests.support.http_server import serve_app

if TYPE_CHECKING:
    from starlette.requests import Request

CAP = 1000


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"app": request.app.state.name, "size": len(body)})


def app(name: str) -> Starlette:
    made = Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST"])])
    made.state.name = name
    return made


def front() -> WebFront:
    return WebFront(app("api"), max_body_bytes=CAP)


async def test_a_reserved_path_answers_503_until_mounted_and_after_unmounted():
    web = front()
    web.reserve("/hooks/a", max_body_bytes=CAP)
    async with serve_app(web) as url, httpx.AsyncClient(base_url=url) as client:
        starting = await client.post("/hooks/a", json={})
        web.mount("/hooks/a", app("hook"))
        serving = await client.post("/hooks/a/", json={})
        web.unmount("/hooks/a")
        stopping = await client.post("/hooks/a", json={})
        elsewhere = await client.post("/hooks/b", json={})
    for answer in (starting, stopping):
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == str(RETRY_AFTER_S)
        assert answer.json()["error"]["code"] == "unavailable"
        assert "/hooks/a is not served at the moment" in answer.json()["error"]["message"]
    assert serving.json()["app"] == "hook"
    assert elsewhere.json()["app"] == "api", "a path nobody reserved is the API's"


async def test_a_path_handed_over_at_a_reload_waits_for_its_new_source_instead_of_503():
    web = front()
    web.reserve("/hooks/a", max_body_bytes=CAP)
    web.mount("/hooks/a", app("old"))
    async with serve_app(web) as url, httpx.AsyncClient(base_url=url) as client:
        web.hand_over("/hooks/a")
        web.unmount("/hooks/a")  # the old source stopped
        web.release("/hooks/a")
        web.reserve("/hooks/a", max_body_bytes=CAP)  # the new one is made
        answers: list[httpx.Response] = []

        async def post() -> None:
            answers.append(await client.post("/hooks/a", json={}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(post)
            # the request has reached the front and waits (a real socket: no task is
            # blocked until it is there, so wait for the front to hold it)
            with anyio.fail_after(10):
                while not web._handovers["/hooks/a"].statistics().tasks_waiting:  # noqa: ASYNC110 - a request over a real socket: nothing signals its arrival
                    await anyio.sleep(0.005)
            web.mount("/hooks/a", app("new"))  # the new source started
        web.hand_over("/hooks/a")
        web.unmount("/hooks/a")
        web.settle()  # the reload ended without a new source: answered as it is now
        settled = await client.post("/hooks/a", json={})
    assert [a.json()["app"] for a in answers] == ["new"]
    assert settled.status_code == 503


async def test_a_released_path_is_the_apis_again():
    web = front()
    web.reserve("/hooks/a", max_body_bytes=CAP)
    web.mount("/hooks/a", app("hook"))
    web.release("/hooks/a")  # its source was removed at a reload
    async with serve_app(web) as url, httpx.AsyncClient(base_url=url) as client:
        gone = await client.post("/hooks/a", json={})
    assert gone.json()["app"] == "api"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_cap_is_413_before_the_app_has_it(chunked):
    async def body(size: int):
        for _ in range(size // 100):
            yield b"x" * 100

    async with serve_app(front()) as url, httpx.AsyncClient(base_url=url) as client:
        over = b"x" * (CAP + 100)
        answer = await client.post("/api/v1/x", content=body(len(over)) if chunked else over)
        within = await client.post("/api/v1/x", content=b"x" * CAP)
    assert answer.status_code == 413
    assert answer.json() == {
        "error": {"code": "body_too_large", "message": f"the body is larger than {CAP} bytes"}
    }
    assert within.json() == {"app": "api", "size": CAP}


async def test_a_reserved_path_takes_bodies_up_to_its_own_larger_cap():
    web = front()
    web.reserve("/hooks/big", max_body_bytes=5 * CAP)
    web.mount("/hooks/big", app("hook"))
    async with serve_app(web) as url, httpx.AsyncClient(base_url=url) as client:
        big = await client.post("/hooks/big", content=b"x" * (3 * CAP))
        too_big = await client.post("/hooks/big", content=b"x" * (5 * CAP + 1))
        api = await client.post("/api/v1/x", content=b"x" * (3 * CAP))
    assert big.json() == {"app": "hook", "size": 3 * CAP}
    assert too_big.status_code == 413
    assert api.status_code == 413


async def test_the_body_limit_wraps_any_app():
    async with (
        serve_app(BodyLimit(app("control"), CAP)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        over = await client.post("/api/v1/x", content=b"x" * (CAP + 1))
        within = await client.post("/api/v1/x", content=b"x" * CAP)
    assert over.status_code == 413
    assert within.json() == {"app": "control", "size": CAP}


@pytest.mark.parametrize("path", ["/", "/api/v1/hook", "/ui/hook", "/ui", "/metrics", "/healthz"])
def test_the_daemons_own_paths_cannot_be_reserved_or_mounted(path):
    web = front()
    with pytest.raises(ValueError, match="is the daemon's own"):
        web.reserve(path, max_body_bytes=CAP)
    with pytest.raises(ValueError, match="is the daemon's own"):
        web.mount(path, app("hook"))


def test_two_sources_cannot_serve_one_path():
    web = front()
    web.reserve("/hooks/a", max_body_bytes=CAP)
    with pytest.raises(ValueError, match="two sources serve the path '/hooks/a'"):
        web.reserve("hooks/a/", max_body_bytes=CAP)
    web.mount("/hooks/a", app("one"))
    with pytest.raises(ValueError, match="two sources serve the path '/hooks/a'"):
        web.mount("/hooks/a", app("two"))


async def test_requests_of_one_connection_share_its_memo_and_no_other_connection_does():
    async def app(scope, receive, send):
        memo = connection_memo(scope)
        assert memo is not None
        memo["requests"] = memo.get("requests", 0) + 1
        body = str(memo["requests"]).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: serve_asgi(
            app, sockets=[sock], http=PerConnection, grace_s=1, task_status=task_status
        ))  # fmt: skip
        async with httpx.AsyncClient(base_url=base) as one, httpx.AsyncClient(base_url=base) as two:
            counts = [(await one.get("/")).text for _ in range(3)]
            other = (await two.get("/")).text
        tg.cancel_scope.cancel()
    assert counts == ["1", "2", "3"]  # one connection, one memo
    assert other == "1"  # a connection of its own starts afresh
