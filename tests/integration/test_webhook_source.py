"""Webhooks end to end: real HTTP on loopback into the real daemon."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket

import anyio
import httpx
import pytest

from cued.daemon.assembly import run_daemon
from cued.daemon.errors import ConnectorError
from tests.support import probes
from tests.support.raw_http import free_port
from tests.support.running import daemon_running, wait_finished
from tests.support.stores import keeping_state_in


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


SECRET = "s3cret"

CONFIG = """
[http]
listen = "127.0.0.1:0"

[sources.github]
kind = "webhook"
path = "/hooks/github"
signature = "github"
secret = "env:CUED_TEST_SECRET"

[sources.orders]
kind = "webhook"
path = "/hooks/orders"
max_body_bytes = 1000

[sources.plain]
kind = "webhook"
path = "/hooks/plain"
signature = "token"
secret = "file:token.txt"

[pipelines.push]
inputs = { repo = "", ref = "" }
[pipelines.push.tasks.build]
kind = "python"
function = "tests.support.probes:record"
args = { name = "{{ inputs.repo }}@{{ inputs.ref }}" }

[pipelines.order]
inputs = { order_id = 0 }
[pipelines.order.tasks.ship]
kind = "python"
function = "tests.support.probes:record"
args = { name = "order-{{ inputs.order_id }}" }

[[triggers]]
source = "github"
pipeline = "push"
when = "event.meta.headers['x-github-event'] == 'push'"
inputs = { repo = "{{ event.data.repository.full_name }}", ref = "{{ event.data.ref }}" }

[[triggers]]
source = "orders"
pipeline = "order"
when = "event.data.status == 'paid' and event.data.total > 100"
inputs = { order_id = "{{ event.data.id }}" }
dedupe = "{{ event.data.id }}"

[[triggers]]
source = "plain"
pipeline = "order"
inputs = { order_id = "{{ event.data.id }}" }
"""


@pytest.fixture
def config(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("CUED_TEST_SECRET", SECRET)
    (tmp_path / "token.txt").write_text("tok-123\n")
    return make_config(CONFIG)


def signed(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def base_url(info) -> str:
    host, port = info.http_address
    return f"http://{host}:{port}"


async def test_a_signed_push_is_accepted_once_committed_and_starts_its_run(config):
    probe = probes.reset()
    body = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "acme/app"}}).encode()
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        response = await client.post(
            "/hooks/github",
            content=body,
            headers={
                "content-type": "application/json",
                "x-github-event": "push",
                "x-github-delivery": "d-1",
                "x-hub-signature-256": signed(body),
            },
        )
        assert response.status_code == 202, response.text
        answer = response.json()
        assert answer["event_id"] == "github:d-1"
        assert answer["status"] == "matched"
        # committed before the answer: the event and its run are in the store already
        (event,) = await info.runner.store.list_events(source="github")
        assert event.run_ids == tuple(answer["runs"])
        (row,) = await wait_finished(info, answer["runs"])

        again = await client.post(
            "/hooks/github",
            content=body,
            headers={
                "x-github-event": "push",
                "x-github-delivery": "d-1",
                "x-hub-signature-256": signed(body),
            },
        )
        assert again.status_code == 200
        assert again.json() == {"event_id": "github:d-1", "status": "duplicate", "runs": []}
    assert row.state == "succeeded"
    assert row.event_id == "github:d-1"
    assert probe.calls == ["acme/app@refs/heads/main"]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        pytest.param({}, "missing signature header 'X-Hub-Signature-256'", id="missing"),
        pytest.param({"x-hub-signature-256": "sha256=00"}, "does not match the body", id="wrong"),
        pytest.param(
            {"x-hub-signature-256": signed(b"{}", "other")},
            "does not match the body",
            id="other-secret",
        ),
    ],
)
async def test_a_bad_signature_is_refused_with_401_and_not_recorded(config, headers, message):
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        response = await client.post(
            "/hooks/github", content=b"{}", headers={"x-github-event": "push", **headers}
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert message in response.json()["error"]["message"]
        assert await info.runner.store.list_events() == []


async def test_a_token_source_checks_the_bearer_token(config):
    probes.reset()
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        wrong = await client.post(
            "/hooks/plain", json={"id": 1}, headers={"authorization": "Bearer nope"}
        )
        right = await client.post(
            "/hooks/plain", json={"id": 1}, headers={"authorization": "Bearer tok-123"}
        )
        assert wrong.status_code == 401
        assert right.status_code == 202
        await wait_finished(info, right.json()["runs"])


async def test_filters_and_dedupe_decide_which_events_start_runs(config):
    probe = probes.reset()
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        answers = [
            (await client.post("/hooks/orders", json=order)).json()
            for order in [
                {"id": 1, "status": "paid", "total": 150},
                {"id": 2, "status": "open", "total": 150},
                {"id": 3, "status": "paid", "total": 50},
                {"id": 1, "status": "paid", "total": 150},  # the same order again
                {"id": 4, "status": "paid"},  # no total: `when` is false
            ]
        ]
        await wait_finished(info, [r for a in answers for r in a["runs"]])
        events = {e.event_id: e for e in await info.runner.store.list_events(source="orders")}
    assert [a["status"] for a in answers] == [
        "matched",
        "unmatched",
        "unmatched",
        "unmatched",
        "unmatched",
    ]
    assert probe.calls == ["order-1"]
    assert "duplicate of key '1' within its window" in (events[answers[3]["event_id"]].error or "")
    assert events[answers[4]["event_id"]].error is None  # a missing field is no error
    assert len(events) == 5, "every event is kept, matched or not"


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        pytest.param(
            b'{"id": ', {"content-type": "application/json"}, 400, "invalid_body", id="bad-json"
        ),
        pytest.param(b"x" * 1001, {}, 413, "body_too_large", id="too-large"),
        pytest.param(
            b'{"id": 1}',
            {"content-type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
            id="json-sent-as-a-form",
        ),
    ],
)
async def test_bad_bodies_get_their_documented_4xx(config, content, headers, status, code):
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        response = await client.post("/hooks/orders", content=content, headers=headers)
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
        events = await info.runner.store.list_events(source="orders")
    if status == 400:
        # kept and visible, not dropped
        (event,) = events
        assert event.status == "invalid"
        assert event.error.startswith("body is not valid JSON")
    elif status == 415:
        # curl -d's JSON: refused with what to fix, and kept, not stored as {} and "matched"
        (event,) = events
        assert event.status == "invalid"
        assert event.data == '{"id": 1}'
        assert "Content-Type: application/json" in response.json()["error"]["message"]
    else:
        assert events == []


async def test_an_oversized_chunked_body_is_refused_too(config):
    async def chunks():
        for _ in range(20):
            yield b"y" * 100

    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        response = await client.post("/hooks/orders", content=chunks())
        assert response.status_code == 413


async def test_other_methods_get_405(config):
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        response = await client.get("/hooks/orders")
        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"


async def test_a_saturated_backlog_answers_429_with_retry_after_and_loses_nothing(make_config):
    probe = probes.reset()
    config = make_config(
        """
[http]
listen = "127.0.0.1:0"
[daemon]
backlog_high_water = 3
backlog_low_water = 1
[sources.in]
kind = "webhook"
path = "/in"
[pipelines.slow]
max_active_runs = 1
inputs = { n = 0 }
[pipelines.slow.tasks.t]
kind = "python"
function = "tests.support.probes:record"
args = { name = "{{ inputs.n }}", until_released = true }
[[triggers]]
source = "in"
pipeline = "slow"
inputs = { n = "{{ event.data.n }}" }
"""
    )
    accepted, refused = [], 0
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        with anyio.fail_after(30):
            n = 0
            while len(accepted) < 12:
                response = await client.post("/in", json={"n": n})
                if response.status_code == 429:
                    # The runs are held until the backlog has refused once, however fast
                    # this machine drains them; then they go, and the client's retries get in.
                    probe.released.set()
                    refused += 1
                    assert response.headers["retry-after"] == "1"
                    await anyio.sleep(0.02)  # a client backing off
                    continue
                assert response.status_code == 202
                assert info.runner.backlog.depth <= 3, "the backlog grew past its high water mark"
                accepted.append(response.json())
                n += 1
            await wait_finished(info, [r for a in accepted for r in a["runs"]])
    assert refused > 0
    assert sorted(probe.calls) == list(range(12))


async def test_a_missing_secret_stops_the_daemon_with_a_clear_error(make_config, monkeypatch):
    monkeypatch.delenv("CUED_TEST_SECRET", raising=False)
    config = make_config(CONFIG.replace('secret = "file:token.txt"', 'secret = "x"'))
    with pytest.raises(BaseExceptionGroup) as caught:
        async with daemon_running(config):
            pass
    leaf = caught.value
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, ConnectorError)
    assert str(leaf) == "environment variable 'CUED_TEST_SECRET' (for a webhook secret) is not set"


async def test_a_run_that_produces_an_asset_triggers_its_consumers(make_config):
    probe = probes.reset()
    config = make_config(
        """
[http]
listen = "127.0.0.1:0"
[pipelines.make]
inputs = { day = "mon" }
[pipelines.make.tasks.write]
kind = "python"
function = "tests.support.probes:record"
args = { name = "table-{{ inputs.day }}" }
produces = ["sales_table"]
[pipelines.use]
inputs = { version = "" }
[pipelines.use.tasks.read]
kind = "python"
function = "tests.support.probes:record"
args = { name = "read {{ inputs.version }}" }
[[triggers]]
source = "asset:sales_table"
pipeline = "use"
inputs = { version = "{{ event.data.output }} from {{ event.data.run_id }}" }
"""
    )
    async with daemon_running(config) as info:
        with anyio.fail_after(20):
            run_id = (await info.runner.start_run("make", {"day": "tue"})).run_id
            await info.runner.wait(run_id)
            (event,) = await info.runner.store.list_events(source="asset:sales_table")
            (consumer,) = await wait_finished(info, list(event.run_ids))
    assert event.event_id == f"asset:sales_table:{run_id}"
    assert consumer.state == "succeeded"
    assert probe.calls == ["table-tue", f"read table-tue from {run_id}"]


async def test_a_webhook_path_answers_503_not_404_while_the_daemon_starts(make_config):
    port = free_port()
    with socket.socket() as closed:  # bound, never listened on: the Kafka source never starts
        closed.bind(("127.0.0.1", 0))
        config = make_config(
            f"""
[http]
listen = "127.0.0.1:{port}"
[sources.first]
kind = "kafka"
bootstrap = "127.0.0.1:{closed.getsockname()[1]}"
topics = ["t"]
group = "g"
connect_timeout = "120s"
[sources.orders]
kind = "webhook"
path = "/hooks/orders"
"""
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_daemon, config)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                with anyio.fail_after(20):
                    while True:
                        try:
                            answer = await client.post("/hooks/orders", json={"id": 1})
                            break
                        except httpx.ConnectError:  # not listening yet
                            await anyio.sleep(0.02)
                ready = await client.get("/readyz")
            tg.cancel_scope.cancel()
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    assert answer.json()["error"]["code"] == "unavailable"
    assert ready.status_code == 503


async def test_the_signature_headers_are_not_kept_with_the_event(config):
    body = b"{}"
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=base_url(info)) as client:
        answer = await client.post(
            "/hooks/github",
            content=body,
            headers={
                "x-github-event": "ping",
                "x-hub-signature-256": signed(body),
                "x-hub-signature": "sha1=00",
                "cookie": "a=b",
            },
        )
        assert answer.status_code == 202
        (event,) = await info.runner.store.list_events(source="github")
    assert event.meta["headers"]["x-github-event"] == "ping"
    assert not {"x-hub-signature-256", "x-hub-signature", "cookie"} & set(event.meta["headers"])
