"""A real HTTP server on a loopback port, for tests that need one."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
import uvicorn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from starlette.types import ASGIApp

__all__ = ["serve_app"]

#: How long the server may take to start listening before the test fails.
_STARTUP_TIMEOUT_S = 10.0

#: How long requests still in flight may take to finish once the server is asked to stop.
_SHUTDOWN_TIMEOUT_S = 2


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the test runner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would install SIGINT/SIGTERM handlers and re-raise the signals on exit:
        # inside a test process, pytest owns them.
        yield


@contextlib.asynccontextmanager
async def serve_app(app: ASGIApp) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 in the current event loop.

    Enter it in the test itself, not in an async fixture: pytest-asyncio sets a fixture up
    and tears it down in different tasks, and the task group serving the app must be left
    by the task that entered it.

    :param app: the ASGI application (a Starlette app, say)
    :return: the base URL, such as ``http://127.0.0.1:38513``, with no trailing slash
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        ws="none",
        log_level="warning",
        timeout_graceful_shutdown=_SHUTDOWN_TIMEOUT_S,
    )
    server = _Server(config)
    stopped = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        try:
            # uvicorn offers no event for "listening", so poll its flag.
            with anyio.fail_after(_STARTUP_TIMEOUT_S):
                while not server.started:
                    if stopped.is_set():
                        raise RuntimeError("The test HTTP server failed to start")
                    await anyio.sleep(0.005)
            host, port = server.servers[0].sockets[0].getsockname()[:2]
            yield f"http://{host}:{port}"
        finally:
            # Wait for a clean shutdown even when the test failed or was cancelled: an
            # exception reaching the task group would cancel uvicorn mid-way, leaving its
            # listening socket unclosed.
            server.should_exit = True
            with anyio.move_on_after(_SHUTDOWN_TIMEOUT_S + 1, shield=True):
                await stopped.wait()
