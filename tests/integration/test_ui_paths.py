"""Where a person lands: the daemon's start line names the UI's address, ``/`` leads to the
UI's overview, and a UI path that does not exist answers an HTML page, not the API's
JSON."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from structlog.testing import capture_logs

from tests.support.running import daemon_running

if TYPE_CHECKING:
    from collections.abc import Iterator

CONFIG = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"

[auth.users.vera]
token = "vera-token"
roles = ["viewer"]

[pipelines.hello.tasks.greet]
kind = "sleep"
"""
VERA = {"authorization": "Bearer vera-token"}


@contextlib.contextmanager
def info_logs() -> Iterator[list[dict[str, Any]]]:
    """The log entries at info level and above (the tests' own set-up keeps warnings)."""
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**before)


async def test_the_start_line_names_the_ui_and_its_paths_answer_pages(make_config):
    with info_logs() as logs:
        async with daemon_running(make_config(CONFIG)) as info:
            host, port = info.http_address
            base = f"http://{host}:{port}"
            async with httpx.AsyncClient(base_url=base) as client:
                root = await client.get("/", headers=VERA)
                missing = await client.get("/ui/no/such/page", headers=VERA)
                pipeline = await client.get("/ui/pipelines/nope", headers=VERA)
                anonymous = await client.get("/ui/no/such/page")
                api_missing = await client.get("/api/v1/nope", headers=VERA)
    (started,) = [entry for entry in logs if entry["event"] == "daemon_started"]
    assert started["ui"] == f"{base}/ui/"
    assert root.status_code == 307
    assert root.headers["location"] == "/ui/"
    for page, text in ((missing, "/ui/no/such/page"), (pipeline, "no pipeline &#39;nope&#39;")):
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
        assert "<h1>Not found</h1>" in page.text
        assert text in page.text
    assert anonymous.status_code == 303  # to log in first, as every page
    # the API keeps its JSON
    assert api_missing.status_code == 404
    assert api_missing.json()["error"]["code"] == "not_found"
