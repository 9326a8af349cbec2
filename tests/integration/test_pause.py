"""Pausing a pipeline, against the whole daemon in the test's event loop over real HTTP:
events are still recorded while it is paused, its runs wait in the store (or are recorded
skipped, with ``when_paused = "skip"``) and start when it is resumed, as its
``max_active_runs`` allows; the pause outlives a restart; the API's answers."""

from __future__ import annotations

import itertools
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from cued.daemon.core.states import RunState
from tests.support.running import daemon_running, wait_finished
from tests.support.stores import keeping_state_in

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


CONFIG = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
shutdown_grace = "1s"

[auth.users.vera]
token = "vera-token"
roles = ["viewer"]
[auth.users.otto]
token = "otto-token"
roles = ["viewer", "operator"]

[sources.orders]
kind = "webhook"
path = "/hooks/orders"

[[triggers]]
source = "orders"
pipeline = "work"
inputs = { order = "{{ event.data.id }}" }

[[triggers]]
source = "orders"
pipeline = "drop"

[pipelines.work]
max_active_runs = 1
inputs = { order = "" }
[pipelines.work.tasks.hold]
kind = "shell"
# each run waits until the test lets it go: what runs at once is seen for sure
argv = ["sh", "-c", "while [ ! -e RELEASE ]; do sleep 0.02; done"]

[pipelines.drop]
when_paused = "skip"
[pipelines.drop.tasks.nap]
kind = "sleep"
"""

VERA = {"authorization": "Bearer vera-token"}
OTTO = {"authorization": "Bearer otto-token"}


@asynccontextmanager
async def running(config: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with daemon_running(config) as info:
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            yield info, client


def make(make_config, tmp_path):
    return make_config(CONFIG.replace("RELEASE", str(tmp_path / "release")))


async def post_event(client: httpx.AsyncClient, order: int) -> dict[str, Any]:
    answer = await client.post("/hooks/orders", json={"id": order})
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


async def runs_of(info: Any, pipeline: str) -> list[Any]:
    return sorted(
        await info.runner.store.list_runs(pipeline=pipeline, limit=100), key=lambda r: r.run_id
    )


async def test_a_paused_pipeline_records_events_and_its_runs_wait_until_resumed(
    make_config, tmp_path
):
    (tmp_path / "release").touch()
    async with running(make(make_config, tmp_path)) as (info, client):
        paused = await client.post("/api/v1/pipelines/work/pause", headers=OTTO)
        assert paused.status_code == 200, paused.text
        assert paused.json()["paused"] is True
        assert paused.json()["paused_by"] == "otto"
        answers = [await post_event(client, n) for n in (1, 2)]
        # the events are recorded and matched; their runs are recorded and wait
        assert [a["status"] for a in answers] == ["matched", "matched"]
        waiting = await runs_of(info, "work")
        assert [r.state for r in waiting] == ["queued", "queued"]
        assert [r.inputs["order"] for r in waiting] == [1, 2]
        assert all(r.started_at is None for r in waiting)
        assert not any(info.runner.is_active(r.run_id) for r in waiting)
        # a run triggered by hand waits too
        by_hand = await client.post("/api/v1/pipelines/work/runs", json={}, headers=OTTO)
        assert by_hand.json()["state"] == "queued"
        assert not info.runner.is_active(by_hand.json()["run_id"])
        listed = await client.get("/api/v1/pipelines/work", headers=VERA)
        assert listed.json()["paused"] is True

        resumed = await client.post("/api/v1/pipelines/work/resume", headers=OTTO)
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["paused"] is False
        assert resumed.json()["started"] == 3
        ids = [r.run_id for r in waiting] + [by_hand.json()["run_id"]]
        finished = await wait_finished(info, ids)
        assert [r.state for r in finished] == ["succeeded"] * 3
        # after the resume, events start runs at once again
        await post_event(client, 3)
        newest = (await runs_of(info, "work"))[-1]
        assert newest.inputs["order"] == 3
        (done,) = await wait_finished(info, [newest.run_id])
        assert done.state == "succeeded"


async def test_resuming_starts_the_waiting_runs_as_max_active_runs_allows(make_config, tmp_path):
    async with running(make(make_config, tmp_path)) as (info, client):
        await client.post("/api/v1/pipelines/work/pause", headers=OTTO)
        for n in range(3):
            await post_event(client, n)
        resumed = await client.post("/api/v1/pipelines/work/resume", headers=OTTO)
        assert resumed.json()["started"] == 3
        waiting = await runs_of(info, "work")
        # soon all three in memory (they are read back from the store by id, as they
        # waited there): one holds the pipeline's one slot, two wait in the backlog
        with anyio.fail_after(30):
            while True:
                active = all(info.runner.is_active(r.run_id) for r in waiting)
                if active and info.runner.backlog.depth == 2:
                    break
                await anyio.sleep(0.01)
        (tmp_path / "release").touch()
        finished = await wait_finished(info, [r.run_id for r in waiting])
        assert [r.state for r in finished] == ["succeeded"] * 3
        # one at a time: each started after the one before it had ended
        for before, after in itertools.pairwise(finished):
            assert before.ended_at is not None
            assert after.started_at is not None
            assert after.started_at >= before.ended_at


async def test_a_pause_outlives_a_restart_and_its_runs_wait_through_it(make_config, tmp_path):
    config = make(make_config, tmp_path)
    (tmp_path / "release").touch()
    async with running(config) as (info, client):
        await client.post("/api/v1/pipelines/work/pause", headers=OTTO)
        await post_event(client, 7)
        (work_run,) = [r.run_id for r in await runs_of(info, "work")]
    async with running(config) as (info, client):
        listed = {
            p["name"]: p for p in (await client.get("/api/v1/pipelines", headers=VERA)).json()
        }
        assert listed["work"]["paused"] is True
        assert listed["drop"]["paused"] is False
        row = await info.runner.store.get_run(work_run)
        assert row is not None
        assert row.state == RunState.QUEUED
        assert not info.runner.is_active(work_run)
        resumed = await client.post("/api/v1/pipelines/work/resume", headers=OTTO)
        assert resumed.json()["started"] == 1
        (done,) = await wait_finished(info, [work_run])
        assert done.state == "succeeded"
    async with running(config) as (info, client):
        listed = {
            p["name"]: p for p in (await client.get("/api/v1/pipelines", headers=VERA)).json()
        }
        assert listed["work"]["paused"] is False


async def test_with_when_paused_skip_runs_are_recorded_skipped_and_never_start(
    make_config, tmp_path
):
    async with running(make(make_config, tmp_path)) as (info, client):
        await client.post("/api/v1/pipelines/drop/pause", headers=OTTO)
        answer = await post_event(client, 1)
        (skipped,) = await runs_of(info, "drop")
        assert skipped.run_id in answer["runs"]
        assert skipped.state == "skipped"
        assert skipped.error == "skipped: pipeline 'drop' was paused"
        assert skipped.started_at is None
        assert skipped.ended_at is not None
        page = await client.get("/api/v1/runs", params={"state": "skipped"}, headers=VERA)
        assert [r["run_id"] for r in page.json()["items"]] == [skipped.run_id]
        resumed = await client.post("/api/v1/pipelines/drop/resume", headers=OTTO)
        assert resumed.json()["started"] == 0
        assert (await info.runner.store.get_run(skipped.run_id)).state == "skipped"
        # the event is recorded; the work pipeline, not paused, ran as usual
        event = await client.get(f"/api/v1/events/{answer['event_id']}", headers=VERA)
        assert event.json()["status"] == "matched"
        (tmp_path / "release").touch()


async def test_a_run_waiting_for_its_paused_pipeline_can_be_cancelled(make_config, tmp_path):
    async with running(make(make_config, tmp_path)) as (info, client):
        await client.post("/api/v1/pipelines/work/pause", headers=OTTO)
        await post_event(client, 1)
        (waiting,) = await runs_of(info, "work")
        cancelled = await client.post(f"/api/v1/runs/{waiting.run_id}/cancel", headers=OTTO)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "cancelled"
        resumed = await client.post("/api/v1/pipelines/work/resume", headers=OTTO)
        assert resumed.json()["started"] == 0
        assert not info.runner.is_active(waiting.run_id)
        (tmp_path / "release").touch()


async def test_pause_and_resume_answer_404_403_and_401_as_the_api_does(make_config, tmp_path):
    (tmp_path / "release").touch()
    async with running(make(make_config, tmp_path)) as (info, client):
        for verb in ("pause", "resume"):
            unknown = await client.post(f"/api/v1/pipelines/nope/{verb}", headers=OTTO)
            assert unknown.status_code == 404
            assert unknown.json()["error"]["message"].startswith("no pipeline 'nope'")
            viewer = await client.post(f"/api/v1/pipelines/work/{verb}", headers=VERA)
            assert viewer.status_code == 403
            anonymous = await client.post(f"/api/v1/pipelines/work/{verb}")
            assert anonymous.status_code == 401
        assert info.runner.paused == {}
        # twice is once: pausing a paused pipeline, resuming a running one, change nothing
        first = await client.post("/api/v1/pipelines/work/pause", headers=OTTO)
        again = await client.post("/api/v1/pipelines/work/pause", headers=OTTO)
        assert first.json()["paused_at"] == again.json()["paused_at"]
        await client.post("/api/v1/pipelines/work/resume", headers=OTTO)
        twice = await client.post("/api/v1/pipelines/work/resume", headers=OTTO)
        assert twice.status_code == 200
        assert twice.json() | {"started": None} == first.json() | {
            "paused": False,
            "paused_at": None,
            "paused_by": None,
            "started": None,
        }
