"""Attacks a review of the hardening (issue 8) tried on a daemon in the test's own loop and
on the files source, each stated as what must hold:

- the API's own request bodies (a trigger's inputs) go through ``daemon/core/untrusted.py``:
  a lone surrogate or inputs nested deeper than pydantic serialises are answered 4xx or kept
  repaired, and ``GET /api/v1/runs`` stays readable for everyone;
- a file swapped for a link after it was listed does not reach ``processed/`` as a valid
  event.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
import structlog

from cued.connectors.files import FilesConfig, FilesSource
from cued.daemon.config import parse_config
from cued.daemon.sdk.sources import SourceContext
from tests.support.attacks import API
from tests.support.fakes import NoRoutes, SwappingIntake
from tests.support.running import daemon_running

if TYPE_CHECKING:
    from pathlib import Path


# -- the API: a trigger's inputs ---------------------------------------------------------


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param('{"name": "\\ud800"}', id="lone-surrogate"),
        pytest.param('{"name": ' + "[" * 900 + "]" * 900 + "}", id="nested-900-deep"),
    ],
)
async def test_a_trigger_with_hostile_inputs_is_no_5xx_and_leaves_the_runs_list_readable(
    tmp_path: Path, inputs: str
) -> None:
    config = parse_config(API, file=str(tmp_path / "config.toml"), base_dir=tmp_path)
    async with daemon_running(config) as info:
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            posted = await client.post(
                "/api/v1/pipelines/echo/runs",
                content=b'{"inputs": ' + inputs.encode() + b"}",
                headers={"content-type": "application/json"},
            )
            listed = await client.get("/api/v1/runs")
    # the run may be refused (4xx) or kept in a form that can be shown again; either
    # way the answer is no 5xx, and the list of runs stays readable for everyone
    assert (posted.status_code < 500, listed.status_code) == (True, 200), (
        posted.text,
        listed.text,
    )


# -- the files source --------------------------------------------------------------------


async def test_a_file_swapped_for_a_link_after_it_was_listed_is_not_moved_to_processed(
    tmp_path: Path,
) -> None:
    """A local user who may write the folder replaces a listed file by a link to a file
    only the daemon may read (``rename`` is atomic) while its event commits: the link must
    not land in processed/ as the file of a valid event (its run would read the target)."""
    landing = tmp_path / "landing"
    landing.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("root only")
    (landing / "a.csv").write_text("harmless")

    def swap() -> None:
        os.symlink(secret, landing / ".link")
        os.rename(landing / ".link", landing / "a.csv")

    intake = SwappingIntake(swap)
    ctx = SourceContext(
        source="landing",
        intake=intake,
        log=structlog.get_logger(),
        routes=NoRoutes(),
        base_dir=tmp_path,
    )
    source = FilesSource(FilesConfig(path="landing", stable_for=0), ctx)
    async with anyio.create_task_group() as tg:
        await tg.start(source.run)
        with anyio.fail_after(20):
            await intake.acknowledged.wait()
        tg.cancel_scope.cancel()
    moved = landing / "processed" / "a.csv"
    (event,) = intake.events
    assert not (moved.is_symlink() and event.error is None), (
        "a link was moved into processed/ as the file of a valid event"
    )
