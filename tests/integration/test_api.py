"""The HTTP API over real HTTP, against the whole daemon in the test's event loop: every
endpoint, filters and cursor pages, lineage both ways, tokens and roles, the cookie session
with its CSRF header, the live stream, and the OpenAPI document checked by schemathesis
against the running daemon."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
import structlog

from cued.daemon.core.ids import id_at, new_id
from cued.daemon.store import ApprovalRow, AttemptRow, DecisionRow, EventRow, InstanceRow, RunRow
from cued.daemon.web.live import Live, publish_committed
from cued.daemon.web.schemas import (
    ApprovalUpdate,
    DecisionUpdate,
    EventSummary,
    RunUpdate,
    TaskUpdate,
)
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

[auth.users.vera]
token = "vera-token"
roles = ["viewer"]
[auth.users.otto]
token = "otto-token"
roles = ["operator"]
[auth.users.anna]
token = "anna-token"
roles = ["approver", "viewer"]
groups = ["ops"]
[auth.users.root]
token = "root-token"
roles = ["viewer", "operator", "approver"]

[sources.orders]
kind = "webhook"
path = "/hooks/orders"

[[triggers]]
source = "orders"
pipeline = "etl"
when = "event.data.total > 100"
inputs = { order = "{{ event.data.id }}" }

[[triggers]]
source = "asset:sales_table"
pipeline = "report"
inputs = { version = "{{ event.data.run_id }}" }

[[triggers]]
source = "asset:report_pdf"
pipeline = "publish"

[pipelines.etl]
inputs = { order = "" }
[pipelines.etl.tasks.extract]
kind = "python"
function = "tests.support.pyfuncs:add"
args = { a = 1, b = 2 }
[pipelines.etl.tasks.load]
kind = "sleep"
needs = ["extract"]
produces = ["sales_table"]

[pipelines.report]
inputs = { version = "" }
[pipelines.report.tasks.render]
kind = "sleep"
produces = ["report_pdf"]

[pipelines.publish.tasks.send]
kind = "sleep"

[pipelines.slow.tasks.wait]
kind = "sleep"
seconds = 60

[pipelines.broken.tasks.boom]
kind = "python"
function = "tests.support.pyfuncs:fails"
[pipelines.broken.tasks.after]
kind = "sleep"
needs = ["boom"]

[pipelines.gated.tasks.gate]
kind = "approval"
message = "Ship it?"
approvers = ["anna", "group:ops"]
"""

VERA, OTTO, ANNA, ROOT = "vera-token", "otto-token", "anna-token", "root-token"


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@asynccontextmanager
async def api(make_config, text: str = CONFIG) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The daemon, and an HTTP client on its address."""
    async with daemon_running(make_config(text)) as info:
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            yield info, client


def run_id_at(seconds: float) -> str:
    """A run id as made at ``seconds`` (ids sort by creation time)."""
    return id_at(seconds)[:10] + new_id()[10:]


# -- reading -----------------------------------------------------------------------------


async def test_pipelines_are_listed_with_their_tasks_inputs_and_triggers(make_config):
    async with api(make_config) as (_, client):
        listed = await client.get("/api/v1/pipelines", headers=auth(VERA))
        one = await client.get("/api/v1/pipelines/etl", headers=auth(VERA))
        missing = await client.get("/api/v1/pipelines/nope", headers=auth(VERA))
    assert listed.status_code == 200
    pipelines = {p["name"]: p for p in listed.json()}
    assert set(pipelines) == {"etl", "report", "publish", "slow", "broken", "gated"}
    etl = pipelines["etl"]
    assert etl == one.json()
    assert etl["inputs"] == {"order": ""}
    assert [(t["name"], t["kind"], t["needs"], t["produces"]) for t in etl["tasks"]] == [
        ("extract", "python", [], []),
        ("load", "sleep", ["extract"], ["sales_table"]),
    ]
    assert etl["triggers"] == [
        {
            "name": "orders->etl",
            "source": "orders",
            "when": "event.data.total > 100",
            "dedupe": None,
        }
    ]
    assert "args" not in json.dumps(etl["tasks"])  # a kind's parameters may hold secrets
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_a_run_shows_its_tasks_attempts_event_and_assets(make_config):
    async with api(make_config) as (info, client):
        hook = await client.post("/hooks/orders", json={"id": "o-1", "total": 500})
        assert hook.status_code == 202, hook.text
        (run_id,) = hook.json()["runs"]
        await wait_finished(info, [run_id])
        shown = await client.get(f"/api/v1/runs/{run_id}", headers=auth(VERA))
        event = await client.get(f"/api/v1/events/{hook.json()['event_id']}", headers=auth(VERA))
    assert shown.status_code == 200, shown.text
    run = shown.json()
    assert (run["pipeline"], run["state"], run["inputs"]) == ("etl", "succeeded", {"order": "o-1"})
    tasks = {t["key"]: t for t in run["tasks"]}
    assert [a["output"] for a in tasks["extract"]["attempts"]] == [3]
    assert tasks["load"]["attempts"][0]["state"] == "succeeded"
    assert run["event"]["event_id"] == hook.json()["event_id"]
    assert run["event"]["source"] == "orders"
    (asset,) = run["assets"]
    assert asset["asset"] == "sales_table"
    assert asset["event_id"] == f"asset:sales_table:{run_id}"
    assert len(asset["runs"]) == 1  # the report it started
    detail = event.json()
    assert detail["data"] == {"id": "o-1", "total": 500}
    assert [r["run_id"] for r in detail["runs"]] == [run_id]


async def test_runs_are_paged_by_cursor_newest_first_and_filtered(make_config):
    start = float(int(time.time()) - 10_000)  # whole seconds: exact bounds below
    rows = [
        RunRow(
            run_id_at(start + i * 10),
            ("etl", "report")[i % 2],
            ("succeeded", "failed", "cancelled")[i % 3],
            {"i": i},
            start + i * 10,
            start + i * 10,
            start + i * 10 + 1,
        )
        for i in range(120)
    ]
    async with api(make_config) as (info, client):
        await info.runner.store.submit(rows).wait()
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"limit": 50} | ({"cursor": cursor} if cursor else {})
            page = (await client.get("/api/v1/runs", params=params, headers=auth(VERA))).json()
            seen += [r["run_id"] for r in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert seen == sorted((r.run_id for r in rows), reverse=True)

        async def ids(**params: Any) -> list[str]:
            got = await client.get(
                "/api/v1/runs", params=params | {"limit": 500}, headers=auth(VERA)
            )
            assert got.status_code == 200, got.text
            return [r["run_id"] for r in got.json()["items"]]

        def expected(keep) -> list[str]:
            return sorted((r.run_id for r in rows if keep(r)), reverse=True)

        assert await ids(pipeline="report", state="failed") == expected(
            lambda r: r.pipeline == "report" and r.state == "failed"
        )
        assert await ids(state="cancelled") == expected(lambda r: r.state == "cancelled")
        # a time range, as seconds or ISO 8601
        after, before = start + 300, start + 600
        assert await ids(created_after=after, created_before=before) == expected(
            lambda r: after <= r.created_at < before
        )
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + 1000))
        assert await ids(created_after=iso) == expected(lambda r: r.created_at >= start + 1000)
        # a filter and a cursor together
        first = (
            await client.get(
                "/api/v1/runs", params={"pipeline": "etl", "limit": 7}, headers=auth(VERA)
            )
        ).json()
        rest = await ids(pipeline="etl", cursor=first["next_cursor"])
        assert [r["run_id"] for r in first["items"]] + rest == expected(
            lambda r: r.pipeline == "etl"
        )
        bad = await client.get("/api/v1/runs", params={"state": "sleeping"}, headers=auth(VERA))
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "invalid_request"


async def test_events_are_paged_filtered_and_show_their_data_and_runs(make_config):
    async with api(make_config) as (info, client):
        started = []
        for i in range(7):
            posted = await client.post("/hooks/orders", json={"id": f"o-{i}", "total": i * 50})
            started += posted.json()["runs"]
        await wait_finished(info, started)
        everything: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"limit": 3, "source": "orders"} | ({"cursor": cursor} if cursor else {})
            page = (await client.get("/api/v1/events", params=params, headers=auth(VERA))).json()
            everything += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        unmatched = (
            await client.get("/api/v1/events", params={"status": "unmatched"}, headers=auth(VERA))
        ).json()["items"]
        assets = (
            await client.get(
                "/api/v1/events", params={"source": "asset:sales_table"}, headers=auth(VERA)
            )
        ).json()["items"]
        bad_cursor = await client.get("/api/v1/events?cursor=zzz", headers=auth(VERA))
        missing = await client.get("/api/v1/events/orders:nope", headers=auth(VERA))
    assert len(everything) == 7
    assert len({e["event_id"] for e in everything}) == 7
    stamps = [(e["received_at"], e["event_id"]) for e in everything]
    assert stamps == sorted(stamps, reverse=True)
    assert "data" not in everything[0]  # a list is light; one event has its data
    assert {e["status"] for e in everything if e["run_ids"]} == {"matched"}
    assert len([e for e in everything if e["status"] == "matched"]) == 4  # totals over 100
    assert len(unmatched) == 3
    assert len(assets) == 4
    assert bad_cursor.status_code == 422
    assert missing.status_code == 404


async def test_lineage_goes_from_an_event_through_runs_and_assets_and_back(make_config):
    async with api(make_config) as (info, client):
        hook = (await client.post("/hooks/orders", json={"id": "o-9", "total": 900})).json()
        (etl_run,) = hook["runs"]
        await wait_finished(info, [etl_run])
        (sales,) = await info.runner.store.get_events([f"asset:sales_table:{etl_run}"])
        (report_run,) = sales.run_ids
        await wait_finished(info, [report_run])
        (pdf,) = await info.runner.store.get_events([f"asset:report_pdf:{report_run}"])
        (publish_run,) = pdf.run_ids
        await wait_finished(info, [publish_run])

        down = (
            await client.get(f"/api/v1/events/{hook['event_id']}/lineage", headers=auth(VERA))
        ).json()
        up = (await client.get(f"/api/v1/events/{pdf.event_id}/lineage", headers=auth(VERA))).json()
        assets = (await client.get("/api/v1/assets", headers=auth(VERA))).json()
        sales_table = (await client.get("/api/v1/assets/sales_table", headers=auth(VERA))).json()
        unknown = await client.get("/api/v1/assets/nothing", headers=auth(VERA))

    # event -> run -> tasks -> asset -> run -> asset -> run
    (etl,) = down["runs"]
    assert etl["run"]["run_id"] == etl_run
    assert [(t["key"], t["state"]) for t in etl["tasks"]] == [
        ("extract", "succeeded"),
        ("load", "succeeded"),
    ]
    (sales_asset,) = etl["assets"]
    assert sales_asset["asset"] == "sales_table"
    (report,) = sales_asset["runs"]
    assert report["run"]["run_id"] == report_run
    (pdf_asset,) = report["assets"]
    assert [r["run"]["run_id"] for r in pdf_asset["runs"]] == [publish_run]
    assert down["upstream"] == []
    assert not down["truncated"]
    # and back: the asset event <- report run <- asset event <- etl run <- webhook event
    assert [(s["asset"], s["run"]["run_id"], s["event"]["event_id"]) for s in up["upstream"]] == [
        ("report_pdf", report_run, sales.event_id),
        ("sales_table", etl_run, hook["event_id"]),
    ]
    assert [r["run"]["run_id"] for r in up["runs"]] == [publish_run]
    # assets: their latest version, and each version's producer and what it started
    by_name = {a["name"]: a for a in assets}
    assert by_name["sales_table"]["producers"] == ["etl.load"]
    assert by_name["sales_table"]["consumers"] == ["report"]
    assert by_name["sales_table"]["versions"] == 1
    assert by_name["sales_table"]["latest"]["run_id"] == etl_run
    (version,) = sales_table["versions"]
    assert version["run"]["run_id"] == etl_run
    assert version["task"] == "load"
    assert version["started_by"]["event_id"] == hook["event_id"]
    assert [r["run_id"] for r in version["runs"]] == [report_run]
    assert unknown.status_code == 404


async def test_waiting_gates_are_listed_with_their_decisions(make_config):
    async with api(make_config) as (info, client):
        run = (await client.post("/api/v1/pipelines/gated/runs", headers=auth(OTTO))).json()
        with anyio.fail_after(10):
            assert (await info.runner.wait(run["run_id"])).state == "waiting"
        waiting = (await client.get("/api/v1/approvals", headers=auth(VERA))).json()
        shown = (await client.get(f"/api/v1/runs/{run['run_id']}", headers=auth(VERA))).json()
        decided = await client.post(
            f"/api/v1/runs/{run['run_id']}/tasks/gate/reject",
            json={"comment": "not today"},
            headers=auth(ANNA),
        )
        await wait_finished(info, [run["run_id"]])
        after = (await client.get(f"/api/v1/runs/{run['run_id']}", headers=auth(VERA))).json()
    (gate,) = waiting
    assert (gate["run_id"], gate["key"], gate["state"]) == (run["run_id"], "gate", "waiting")
    assert gate["approvers"] == ["anna", "group:ops"]
    assert shown["approvals"][0]["message"] == "Ship it?"
    assert decided.status_code == 200, decided.text
    assert decided.json()["state"] == "rejected"
    assert [(d["who"], d["decision"], d["comment"]) for d in decided.json()["decisions"]] == [
        ("anna", "reject", "not today")
    ]
    assert after["state"] == "failed"
    assert after["approvals"][0]["decisions"][0]["who"] == "anna"


# -- acting ------------------------------------------------------------------------------


async def test_trigger_cancel_and_retry(make_config):
    async with api(make_config) as (info, client):
        created = await client.post(
            "/api/v1/pipelines/etl/runs", json={"inputs": {"order": "x"}}, headers=auth(OTTO)
        )
        waited = await client.post("/api/v1/pipelines/etl/runs?wait=true", headers=auth(OTTO))
        undeclared = await client.post(
            "/api/v1/pipelines/etl/runs", json={"inputs": {"nope": 1}}, headers=auth(OTTO)
        )
        typo = await client.post(
            "/api/v1/pipelines/etl/runs", json={"input": {}}, headers=auth(OTTO)
        )

        slow = (await client.post("/api/v1/pipelines/slow/runs", headers=auth(OTTO))).json()
        cancelled = await client.post(f"/api/v1/runs/{slow['run_id']}/cancel", headers=auth(OTTO))
        again = await client.post(f"/api/v1/runs/{slow['run_id']}/cancel", headers=auth(OTTO))

        broken = (
            await client.post("/api/v1/pipelines/broken/runs?wait=true", headers=auth(OTTO))
        ).json()
        retried = await client.post(
            f"/api/v1/runs/{broken['run_id']}/retry?wait=true", json={}, headers=auth(OTTO)
        )
        shown = (await client.get(f"/api/v1/runs/{broken['run_id']}", headers=auth(ROOT))).json()
        unknown = await client.post("/api/v1/runs/nope/retry", headers=auth(OTTO))
        await wait_finished(info, [created.json()["run_id"]])
    assert created.status_code == 201, created.text
    assert created.json()["state"] == "queued"
    assert created.json()["inputs"] == {"order": "x"}
    assert waited.json()["state"] == "succeeded"
    assert undeclared.status_code == 422
    assert "has no input 'nope'" in undeclared.json()["error"]["message"]
    assert typo.status_code == 400
    assert typo.json()["error"]["code"] == "invalid_body"
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert again.status_code == 409
    assert broken["state"] == "failed"
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"] == "failed"  # it fails again, but ran again
    boom = next(t for t in shown["tasks"] if t["key"] == "boom")
    assert [a["attempt"] for a in boom["attempts"]] == [1, 2]
    assert boom["attempts"][0]["error"] == "the function failed"
    assert unknown.status_code == 404


async def test_no_get_changes_state(make_config):
    """Every operation that acts is a POST: GET on it is refused, and starts nothing."""
    async with api(make_config) as (info, client):
        doc = (await client.get("/api/v1/openapi.json")).json()
        run = (await client.post("/api/v1/pipelines/publish/runs", headers=auth(ROOT))).json()
        await wait_finished(info, [run["run_id"]])
        before = len(await info.runner.store.list_runs(limit=1000))
        for path in (
            "/api/v1/pipelines/etl/runs",
            "/api/v1/pipelines/etl/pause",
            "/api/v1/pipelines/etl/resume",
            f"/api/v1/runs/{run['run_id']}/cancel",
            f"/api/v1/runs/{run['run_id']}/retry",
            f"/api/v1/runs/{run['run_id']}/tasks/gate/approve",
            f"/api/v1/runs/{run['run_id']}/tasks/gate/reject",
            "/api/v1/retention/prune",
            "/api/v1/config/reload",
            "/api/v1/sources/orders/backfill",
        ):
            answer = await client.get(path, headers=auth(ROOT))
            assert answer.status_code == 405, path
            assert answer.json()["error"]["code"] == "method_not_allowed"
        after = len(await info.runner.store.list_runs(limit=1000))
    assert before == after
    acting = {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if method not in ("get", "head")
    }
    assert all(method in ("post", "delete") for method, _ in acting)
    assert {path for method, path in acting if method == "post"} == {
        "/api/v1/pipelines/{pipeline}/runs",
        "/api/v1/pipelines/{pipeline}/pause",
        "/api/v1/pipelines/{pipeline}/resume",
        "/api/v1/runs/{run_id}/cancel",
        "/api/v1/runs/{run_id}/retry",
        "/api/v1/runs/{run_id}/tasks/{task}/approve",
        "/api/v1/runs/{run_id}/tasks/{task}/reject",
        "/api/v1/retention/prune",
        "/api/v1/config/reload",
        "/api/v1/events/replay",
        "/api/v1/sources/{source}/backfill",
        "/api/v1/session",
    }


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        pytest.param("GET", "/api/v1/nothing", None, 404, "not_found", id="unknown-path"),
        pytest.param("GET", "/api/v1/runs/nope", None, 404, "not_found", id="unknown-run"),
        pytest.param("GET", "/api/v1/runs?limit=0", None, 422, "invalid_request", id="limit"),
        pytest.param("GET", "/api/v1/runs?limit=x", None, 422, "invalid_request", id="not-int"),
        pytest.param(
            "GET", "/api/v1/runs?created_after=soon", None, 422, "invalid_request", id="time"
        ),
        pytest.param(
            "POST", "/api/v1/pipelines/etl/runs", b"{nope", 400, "invalid_body", id="not-json"
        ),
        pytest.param(
            "POST", "/api/v1/pipelines/etl/runs", b"[1]", 400, "invalid_body", id="not-object"
        ),
        pytest.param(
            "DELETE", "/api/v1/runs/x", None, 405, "method_not_allowed", id="other-method"
        ),
    ],
)
async def test_errors_are_json_with_a_code_and_a_message(
    make_config, method, path, body, status, code
):
    async with api(make_config) as (_, client):
        headers = auth(ROOT) | {"content-type": "application/json"}
        answer = await client.request(method, path, content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.json()) == {"error"}
    assert answer.json()["error"]["code"] == code
    assert answer.json()["error"]["message"]


# -- who may --------------------------------------------------------------------------------

# (method, path, body): one of each thing the API does; {run} is a finished run
ACTIONS = [
    ("GET", "/api/v1/pipelines", None),
    ("GET", "/api/v1/runs", None),
    ("GET", "/api/v1/runs/{run}", None),
    ("GET", "/api/v1/events", None),
    ("GET", "/api/v1/assets", None),
    ("GET", "/api/v1/approvals", None),
    ("GET", "/api/v1/stream", None),
    ("POST", "/api/v1/pipelines/publish/runs", {}),
    ("POST", "/api/v1/runs/{run}/retry", {"tasks": ["send"]}),
    ("POST", "/api/v1/runs/{run}/cancel", None),
    ("POST", "/api/v1/runs/{run}/tasks/send/approve", {}),
    ("POST", "/api/v1/runs/{run}/tasks/send/reject", {}),
]
ROLE_OF = {
    "GET": "viewer",
    "runs": "operator",
    "retry": "operator",
    "cancel": "operator",
    "approve": "approver",
    "reject": "approver",
}


def role_needed(method: str, path: str) -> str:
    return ROLE_OF["GET"] if method == "GET" else ROLE_OF[path.rsplit("/", 1)[1]]


async def test_each_action_refuses_callers_without_a_token_or_the_role(make_config):
    """A table: every action, with no token, a wrong one, a malformed header, and each
    user; 401 without a valid token, 403 without the role, else not refused."""
    callers = {
        "none": None,
        "wrong": "Bearer not-a-token",
        "malformed": "vera-token",
        "basic": "Basic dmVyYTp4",
        "vera": f"Bearer {VERA}",
        "otto": f"Bearer {OTTO}",
        "anna": f"Bearer {ANNA}",
    }
    roles = {"vera": {"viewer"}, "otto": {"operator"}, "anna": {"approver", "viewer"}}
    mismatches = []
    async with api(make_config) as (info, client):
        done = (
            await client.post("/api/v1/pipelines/publish/runs?wait=true", headers=auth(ROOT))
        ).json()
        for method, template, body in ACTIONS:
            path = template.format(run=done["run_id"])
            role = role_needed(method, path)
            for who, header in callers.items():
                headers = {"authorization": header} if header else {}
                expected = 401 if who not in roles else 403 if role not in roles[who] else None
                if method == "GET" and path.endswith("/stream") and expected is None:
                    continue  # a stream does not end: read in its own tests
                answer = await client.request(method, path, json=body, headers=headers)
                got = answer.status_code
                refused = got in (401, 403)
                if (expected is None and refused) or (expected is not None and got != expected):
                    mismatches.append((method, path, who, expected, got, answer.text[:120]))
                if got == 401:
                    assert answer.headers["www-authenticate"] == "Bearer"
                if refused:
                    assert answer.json()["error"]["code"] in ("unauthorized", "forbidden")
        after = await info.runner.store.list_runs(limit=100)
    assert mismatches == []
    # none of the refused requests started anything: the one run, and the allowed ones
    assert len(after) == 2  # the first, and otto's trigger (otto's retry reran the first)


async def test_metrics_and_health_need_no_token_but_everything_else_does(make_config):
    async with api(make_config) as (_, client):
        doc = (await client.get("/api/v1/openapi.json")).json()
        for path in ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"):
            assert (await client.get(path)).status_code == 200, path
        for path, item in doc["paths"].items():
            if "get" not in item or path in ("/healthz", "/readyz", "/metrics", "/api/v1/stream"):
                continue
            concrete = path.replace("{", "").replace("}", "")
            assert (await client.get(concrete)).status_code == 401, path


async def test_with_no_users_the_api_is_open_but_deciding_needs_a_token(make_config):
    text = CONFIG.split("[auth.users.vera]")[0] + "[sources" + CONFIG.split("[sources", 1)[1]
    async with api(make_config, text) as (info, client):
        listed = await client.get("/api/v1/runs")
        me = (await client.get("/api/v1/session")).json()
        triggered = await client.post("/api/v1/pipelines/gated/runs")
        run_id = triggered.json()["run_id"]
        with anyio.fail_after(10):
            await info.runner.wait(run_id)
        approve = await client.post(f"/api/v1/runs/{run_id}/tasks/gate/approve", json={})
        cross_site = await client.post(
            "/api/v1/pipelines/publish/runs", headers={"origin": "https://evil.example"}
        )
        fetch_meta = await client.post(
            "/api/v1/pipelines/publish/runs", headers={"sec-fetch-site": "cross-site"}
        )
        same_origin = await client.post(
            "/api/v1/pipelines/publish/runs", headers={"origin": str(client.base_url).rstrip("/")}
        )
        # DNS rebinding: a page of evil.example whose name now points at 127.0.0.1
        rebound = await client.get("/api/v1/runs", headers={"host": "evil.example:8080"})
    assert listed.status_code == 200
    assert rebound.status_code == 403
    assert rebound.json()["error"]["code"] == "host"
    # the OS user who opened the connection: the tests run as root
    assert me == {"name": "root", "roles": ["operator", "viewer"], "groups": [], "via": "open"}
    assert triggered.status_code == 201
    assert approve.status_code == 401
    assert cross_site.status_code == 403
    assert cross_site.json()["error"]["code"] == "cross_origin"
    assert fetch_meta.status_code == 403
    assert same_origin.status_code == 201


async def test_a_cookie_session_needs_the_csrf_header_to_act(make_config):
    async with api(make_config) as (_, client):
        wrong = await client.post("/api/v1/session", json={"token": "guess"})
        login = await client.post("/api/v1/session", json={"token": ROOT})
        set_cookies = login.headers.get_list("set-cookie")
        csrf = login.json()["csrf_token"]
        assert client.cookies["cued_csrf"] == csrf
        me = await client.get("/api/v1/session")
        read = await client.get("/api/v1/runs")
        no_header = await client.post("/api/v1/pipelines/publish/runs")
        bad_header = await client.post(
            "/api/v1/pipelines/publish/runs", headers={"x-csrf-token": "forged"}
        )
        good = await client.post("/api/v1/pipelines/publish/runs", headers={"x-csrf-token": csrf})
        # the header alone is no use without the cookie it must equal
        client.cookies.delete("cued_csrf")
        header_only = await client.post(
            "/api/v1/pipelines/publish/runs", headers={"x-csrf-token": csrf}
        )
        logout = await client.delete("/api/v1/session")
        client.cookies.clear()
        after = await client.get("/api/v1/runs")
    assert wrong.status_code == 401
    assert login.status_code == 200, login.text
    assert login.json()["name"] == "root"
    token_cookie = next(c for c in set_cookies if c.startswith("cued_token="))
    csrf_cookie = next(c for c in set_cookies if c.startswith("cued_csrf="))
    assert "httponly" in token_cookie.lower()
    assert "samesite=strict" in token_cookie.lower()
    assert "httponly" not in csrf_cookie.lower()
    assert me.json()["via"] == "cookie"
    assert read.status_code == 200
    assert no_header.status_code == 403
    assert no_header.json()["error"]["code"] == "csrf"
    assert bad_header.status_code == 403
    assert good.status_code == 201, good.text
    assert header_only.status_code == 403
    assert logout.status_code == 204
    assert any(c.startswith('cued_token=""') for c in logout.headers.get_list("set-cookie"))
    assert after.status_code == 401


async def test_the_control_socket_names_its_caller_by_their_os_user(make_config):
    from cued.daemon.assembly import control_socket_path

    me = pwd.getpwuid(os.geteuid()).pw_name
    config = make_config(CONFIG)
    async with daemon_running(config) as info:
        transport = httpx.AsyncHTTPTransport(uds=str(control_socket_path(config.state_path)))
        async with httpx.AsyncClient(transport=transport, base_url="http://cued") as client:
            run = await client.post("/api/v1/pipelines/gated/runs?wait=true", json={})
            url = f"/api/v1/runs/{run.json()['run_id']}/tasks/gate/approve"
            as_anna = await client.post(url, json={"who": "anna", "comment": "from the CLI"})
            as_me = await client.post(url, json={"who": me})
            me_seen = (await client.get("/api/v1/session")).json()
        decisions = await info.runner.store.get_decisions(run.json()["run_id"])
    assert run.json()["state"] == "waiting"
    # one OS user has one name: the approver 'anna' cannot be claimed over the socket
    assert as_anna.status_code == 403
    assert as_anna.json()["error"] == {
        "code": "who",
        "message": f"a decision is recorded under the name of whoever makes it, {me!r} "
        "(not 'anna')",
    }
    # and the OS user is not among the gate's approvers (anna, group:ops)
    assert as_me.status_code == 403
    assert f"{me!r} may not decide gate 'gate'" in as_me.json()["error"]["message"]
    assert decisions == []
    assert me_seen == {
        "name": me,
        "roles": ["approver", "operator", "viewer"],
        "groups": [],
        "via": "local",
    }


# -- live --------------------------------------------------------------------------------


async def sse(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any] | str]]:
    """(event type, data) of each message of a stream; comments as ("comment", text)."""
    kind, data = "message", []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield kind, json.loads("\n".join(data))
            kind, data = "message", []


MESSAGES = {"run": RunUpdate, "task": TaskUpdate, "event": EventSummary}


async def test_the_stream_carries_a_triggered_runs_updates_as_they_happen(make_config):
    async with api(make_config) as (_, client):
        with anyio.fail_after(10):
            async with client.stream("GET", "/api/v1/stream", headers=auth(VERA)) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                run = (
                    await client.post(
                        "/api/v1/pipelines/etl/runs",
                        json={"inputs": {"order": "live"}},
                        headers=auth(OTTO),
                    )
                ).json()
                runs: list[str] = []
                tasks: list[tuple[str, str]] = []
                events: list[str] = []
                async for kind, data in sse(stream):
                    if kind in MESSAGES:  # each message has the documented shape
                        assert isinstance(data, dict)
                        assert set(data) == set(MESSAGES[kind].model_fields), kind
                        MESSAGES[kind].model_validate(data)
                    if kind == "run" and data["run_id"] == run["run_id"]:
                        runs.append(data["state"])
                        assert "inputs" not in data
                    elif kind == "task" and data["run_id"] == run["run_id"]:
                        tasks.append((data["key"], data["state"]))
                    elif kind == "event":
                        events.append(data["event_id"])
                    if runs and runs[-1] == "succeeded" and events:
                        break
    assert runs[0] == "queued"
    assert "running" in runs
    assert ("extract", "succeeded") in tasks
    assert ("load", "succeeded") in tasks
    assert tasks.index(("extract", "succeeded")) < tasks.index(("load", "succeeded"))
    assert events[0] == f"asset:sales_table:{run['run_id']}"


async def test_an_idle_stream_sends_heartbeats_and_a_reconnect_is_told_to_reload(make_config):
    async with api(make_config) as (info, client):
        info.live.heartbeat_s = 0.05
        with anyio.fail_after(10):
            async with client.stream("GET", "/api/v1/stream", headers=auth(VERA)) as stream:
                async for kind, data in sse(stream):
                    if kind == "comment" and data == "keep-alive":
                        break
            headers = auth(VERA) | {"last-event-id": "41"}
            async with client.stream("GET", "/api/v1/stream", headers=headers) as stream:
                got = [m async for m in sse(stream)]
    assert [k for k, _ in got] == ["reset"]


async def test_a_slow_reader_of_the_stream_is_dropped_with_a_reset(make_config):
    """One reader keeps up, one reads nothing; once the slow one's socket and buffer are
    full it is dropped, and what it reads last is a reset; the other goes on."""
    pad = "x" * 65536
    async with api(make_config) as (info, client):
        info.live.buffer = 4
        received = 0
        got_one = anyio.Event()

        async def keep_up(stream: httpx.Response) -> None:
            nonlocal received
            async for kind, _ in sse(stream):
                if kind == "run":
                    received += 1
                    got_one.set()

        with anyio.fail_after(60):
            async with (
                client.stream("GET", "/api/v1/stream", headers=auth(VERA)) as fast,
                client.stream("GET", "/api/v1/stream", headers=auth(VERA)) as slow,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(keep_up, fast)
                while info.live.subscribers < 2:  # noqa: ASYNC110 - subscribed in the server
                    await anyio.sleep(0.01)
                sent = 0
                while info.live.subscribers == 2:
                    got_one = anyio.Event()
                    info.live.publish("run", {"n": sent, "pad": pad})
                    sent += 1
                    await got_one.wait()
                    assert sent < 2000, "the slow reader was never dropped"
                assert received == sent
                last = [kind async for kind, _ in sse(slow)][-1]
                tg.cancel_scope.cancel()
    assert last == "reset"


async def test_open_streams_end_when_the_daemon_stops(make_config):
    async with httpx.AsyncClient(timeout=10) as client:
        with anyio.fail_after(10):
            async with daemon_running(make_config(CONFIG)) as info:
                host, port = info.http_address
                request = client.build_request(
                    "GET", f"http://{host}:{port}/api/v1/stream", headers=auth(VERA)
                )
                stream = await client.send(request, stream=True)
                assert stream.status_code == 200
            rest = [line async for line in stream.aiter_lines()]
            await stream.aclose()
    assert rest[0] == "retry: 2000"


async def test_live_drops_a_subscriber_that_falls_behind():
    live = Live(buffer=3)
    with live.subscribe() as slow, live.subscribe(buffer=100) as roomy:
        for n in range(5):
            live.publish("run", {"n": n})
        assert slow.dropped
        reset = await slow.receive()
        with pytest.raises(anyio.EndOfStream):
            await slow.receive()
        assert [(await roomy.receive()).data["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
        live.close()
        with pytest.raises(anyio.EndOfStream):
            await roomy.receive()
    assert reset.kind == "reset"
    assert live.subscribers == 0


async def test_committed_rows_become_messages_of_the_documented_shapes():
    run_id = new_id()
    rows = [
        RunRow(run_id, "p", "running", {"secret": "input"}, 1.0, 2.0),
        InstanceRow(run_id, "t[0]", "t", 0, "succeeded", 1, None, 3.0),
        AttemptRow(run_id, "t[0]", 1, "succeeded", 2.0, 3.0),  # no message: see the run
        EventRow("e1", "orders", 4.0, "matched", {"big": "data"}, {"h": 1}, (run_id,)),
        ApprovalRow(
            run_id, "gate", 1, "Ship?", ("anna",), 1, "fail", {"p": 1}, 5.0, None, "waiting"
        ),
        DecisionRow(run_id, "gate", 1, "anna", "approve", {"p": 1}, "ok", 6.0),
    ]
    live = Live()
    with live.subscribe() as sub:
        publish_committed(live, 0.001, rows)
        live.close()
        got = [await sub.receive() for _ in range(5)]
        with pytest.raises(anyio.EndOfStream):
            await sub.receive()
    models = {
        "run": RunUpdate,
        "task": TaskUpdate,
        "event": EventSummary,
        "approval": ApprovalUpdate,
        "decision": DecisionUpdate,
    }
    assert [m.kind for m in got] == ["run", "task", "event", "approval", "decision"]
    for message in got:
        data = json.loads(message.sse.decode().split("data: ", 1)[1])
        assert models[message.kind].model_validate(data).model_dump() == data
    assert "inputs" not in got[0].data  # a stream is light: read the run for them
    assert "data" not in got[2].data
    assert [m.id for m in got] == sorted(m.id for m in got)


# -- the OpenAPI document ----------------------------------------------------------------


def fuzz(base_url: str, token: str, known: dict[str, str]) -> list[str]:
    """Check every operation of the OpenAPI document against the running daemon with
    schemathesis: generated requests (and the same with real ids in the path), and each
    answer must be no 5xx, a documented status and content type, and match its schema."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json", timeout=10)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    headers = {"authorization": f"Bearer {token}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/v1/stream":
            continue  # it answers forever; see the stream's own tests
        operations += 1
        names = {p.name for p in operation.path_parameters}
        fixed = {k: v for k, v in known.items() if k in names}
        passes = [(GenerationMode.POSITIVE, {})]
        if any(True for _ in operation.iter_parameters()) or len(operation.body):
            passes.append((GenerationMode.NEGATIVE, {}))  # invalid input: 4xx, never 5xx
        if fixed:
            passes.append((GenerationMode.POSITIVE, fixed))
        for mode, path_parameters in passes:

            @settings(
                max_examples=20,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(mode, path_parameters=path_parameters))
            def check(case: Any) -> None:
                case.call_and_validate(base_url=base_url, headers=headers, checks=checks)

            try:
                check()
            # schemathesis reports several distinct failures as a BaseExceptionGroup
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every operation is checked
                failures.append(f"{operation.label} {mode.value} {path_parameters}: {exc}")
    assert operations >= 19, operations
    return failures


async def test_the_openapi_document_holds_for_the_running_daemon(make_config):
    async with api(make_config) as (info, client):
        hook = (await client.post("/hooks/orders", json={"id": "o-1", "total": 500})).json()
        (run_id,) = hook["runs"]
        await wait_finished(info, [run_id])
        known = {
            "pipeline": "publish",
            "run_id": run_id,
            "task": "load",
            "event_id": hook["event_id"],
            "name": "sales_table",
        }
        base_url = str(client.base_url).rstrip("/")
        failures = await anyio.to_thread.run_sync(fuzz, base_url, ROOT, known)
    assert failures == [], "\n\n".join(failures)


async def test_the_openapi_document_describes_models_and_security(make_config):
    async with api(make_config) as (_, client):
        doc = (await client.get("/api/v1/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert {"Run", "RunPage", "RunDetail", "EventLineage", "AssetDetail", "ErrorResponse"} <= set(
        schemas
    )
    assert "HTTPValidationError" not in schemas  # our error shape, not FastAPI's
    assert set(doc["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyCookie"}
    runs = doc["paths"]["/api/v1/runs"]["get"]
    assert {p["name"] for p in runs["parameters"]} == {
        "pipeline",
        "state",
        "created_after",
        "created_before",
        "limit",
        "cursor",
    }
    assert runs["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }


async def test_tokens_are_read_from_the_environment_and_never_logged(make_config, monkeypatch):
    token = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("CUED_TEST_TOKEN", token)
    text = CONFIG.replace('token = "root-token"', 'token = "env:CUED_TEST_TOKEN"')
    with structlog.testing.capture_logs() as logs:
        async with api(make_config, text) as (_, client):
            ok = await client.get("/api/v1/runs", headers=auth(token))
            # a failing run logs a warning: the capture below is not empty
            await client.post("/api/v1/pipelines/broken/runs?wait=1", headers=auth(token))
            old = await client.get("/api/v1/runs", headers=auth(ROOT))
            await client.post("/api/v1/session", json={"token": token})
            await client.post("/api/v1/session", json={"token": token + "x"})
    assert ok.status_code == 200
    assert old.status_code == 401
    assert logs  # the daemon did log, just not the token
    assert token not in json.dumps(logs, default=str)
