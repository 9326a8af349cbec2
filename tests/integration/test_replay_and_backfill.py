"""Replay and backfill against the whole daemon in the test's event loop, over real HTTP:
an event taken by a webhook on loopback is replayed after a trigger was added (the new
trigger's run starts, linked to the event; a second replay starts nothing; ``force``
starts again); events chosen by source, span and status; the operator role; a schedule's
ticks in a span fired once however often the span is backfilled. On both stores."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support.kafka_broker import (
    committed_offsets,
    create_topics,
    started_producer,
    unique_name,
)
from tests.support.kafka_source import source_toml
from tests.support.running import daemon_running, wait_finished
from tests.support.stores import keeping_state_in

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


BASE = """
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

[sources.yearly]
kind = "schedule"
cron = "0 0 1 1 *"
catchup = "none"

[[triggers]]
source = "orders"
pipeline = "first"
when = "event.data.kind == 'order'"
inputs = { order = "{{ event.data.id }}" }

[[triggers]]
source = "yearly"
pipeline = "first"
inputs = { order = "{{ event.data.tick_utc }}" }

[pipelines.first]
inputs = { order = "" }
[pipelines.first.tasks.nap]
kind = "sleep"

[pipelines.second]
inputs = { order = "" }
[pipelines.second.tasks.nap]
kind = "sleep"
"""

ADDED = """
[[triggers]]
name = "added"
source = "orders"
pipeline = "second"
inputs = { order = "{{ event.data.id }}" }
"""

VERA = {"authorization": "Bearer vera-token"}
OTTO = {"authorization": "Bearer otto-token"}


@asynccontextmanager
async def running(config: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with daemon_running(config) as info:
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30) as client:
            yield info, client


async def test_a_replay_starts_a_trigger_added_since_once_and_again_with_force(make_config):
    async with running(make_config(BASE)) as (info, client):
        sent = await client.post("/hooks/orders", json={"kind": "order", "id": "o-1"})
        assert sent.status_code == 202, sent.text
        event_id = sent.json()["event_id"]
        (original,) = sent.json()["runs"]
        await wait_finished(info, [original])

    # the daemon comes back with a trigger more: only that one starts on a replay
    async with running(make_config(BASE + ADDED)) as (info, client):
        body = {"event_id": event_id}
        viewer = await client.post("/api/v1/events/replay", json=body, headers=VERA)
        assert viewer.status_code == 403
        anonymous = await client.post("/api/v1/events/replay", json=body)
        assert anonymous.status_code == 401

        first = await client.post("/api/v1/events/replay", json=body, headers=OTTO)
        assert first.status_code == 200, first.text
        answer = first.json()
        assert (answer["tried"], answer["runs_started"], answer["duplicates"]) == (1, 1, 0)
        (event,) = answer["events"]
        assert event["outcome"] == "started"
        assert event["skipped"] == [
            "trigger 'orders->first': pipeline 'first' ran for this event already"
        ]
        (replayed,) = event["run_ids"]
        (row,) = await wait_finished(info, [replayed])
        assert (row.pipeline, row.state, row.inputs) == ("second", "succeeded", {"order": "o-1"})

        # lineage: the run names the event, the event lists both runs
        detail = (await client.get(f"/api/v1/runs/{replayed}", headers=VERA)).json()
        assert detail["event"]["event_id"] == event_id
        shown = (await client.get(f"/api/v1/events/{event_id}", headers=VERA)).json()
        assert {r["run_id"] for r in shown["runs"]} == {original, replayed}

        again = (await client.post("/api/v1/events/replay", json=body, headers=OTTO)).json()
        assert (again["tried"], again["runs_started"], again["duplicates"]) == (1, 0, 1)
        assert again["events"][0]["outcome"] == "duplicate"

        forced = await client.post(
            "/api/v1/events/replay", json={**body, "force": True}, headers=OTTO
        )
        assert forced.json()["runs_started"] == 2
        ended = await wait_finished(info, forced.json()["events"][0]["run_ids"])
        assert sorted(r.pipeline for r in ended) == ["first", "second"]
        assert {r.event_id for r in ended} == {event_id}


async def test_a_replay_chooses_events_by_source_span_and_status(make_config):
    async with running(make_config(BASE)) as (info, client):
        order = await client.post("/hooks/orders", json={"kind": "order", "id": "o-2"})
        other = await client.post("/hooks/orders", json={"kind": "refund", "id": "r-1"})
        assert other.json()["status"] == "unmatched"
        await wait_finished(info, order.json()["runs"])

        def replay(**body: Any):
            return client.post("/api/v1/events/replay", json=body, headers=OTTO)

        # the refund matched nothing then; today's "first" still does not take it
        unmatched = (await replay(source="orders", status="unmatched", since="-1h")).json()
        assert [e["event_id"] for e in unmatched["events"]] == [other.json()["event_id"]]
        assert (unmatched["tried"], unmatched["unmatched"], unmatched["runs_started"]) == (1, 1, 0)
        both = (await replay(source="orders", since="-1h", until="now")).json()
        assert [e["event_id"] for e in both["events"]] == [
            order.json()["event_id"],
            other.json()["event_id"],
        ]
        assert (both["duplicates"], both["unmatched"]) == (1, 1)
        none = (await replay(source="orders", until="2001-01-01T00:00:00Z")).json()
        assert none["tried"] == 0

        bad_status = await replay(source="orders", status="lost")
        assert bad_status.status_code == 400
        assert "status" in bad_status.json()["error"]["message"]
        bad_time = await replay(source="orders", since="yesterday")
        assert bad_time.status_code == 422
        assert bad_time.json()["error"]["message"].startswith(
            "--since 'yesterday' is not a time: give ISO 8601"
        )
        empty = await replay(source="orders", since="-1h", until="-2h")
        assert empty.status_code == 422
        assert "the span is empty" in empty.json()["error"]["message"]
        nothing = await replay()
        assert nothing.status_code == 422
        assert nothing.json()["error"]["message"].startswith("choose the events to replay")
        both_ways = await replay(event_id=order.json()["event_id"], source="orders")
        assert both_ways.status_code == 422
        missing = await replay(event_id="no-such-event")
        assert missing.status_code == 404
        unknown = await replay(trigger="nope")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["message"].startswith("no trigger 'nope'")


async def test_a_backfill_fires_the_ticks_of_its_span_once(make_config):
    async with running(make_config(BASE)) as (info, client):
        body = {"from": "2020-01-01T00:00:00Z", "to": "2024-01-01T00:00:00Z", "concurrency": 3}
        viewer = await client.post("/api/v1/sources/yearly/backfill", json=body, headers=VERA)
        assert viewer.status_code == 403

        first = await client.post("/api/v1/sources/yearly/backfill", json=body, headers=OTTO)
        assert first.status_code == 200, first.text
        answer = first.json()
        # [from, to): 2024-01-01 is the end, not a tick of the span
        assert (answer["events"], answer["recorded"], answer["duplicates"]) == (4, 4, 0)
        assert answer["ended"] == {"succeeded": 4}
        runs = await info.runner.store.get_runs(answer["run_ids"])
        assert sorted(r.event_id or "" for r in runs) == [
            f"yearly:{year}-01-01T00:00:00Z" for year in (2020, 2021, 2022, 2023)
        ]
        assert sorted(r.inputs["order"] for r in runs) == [
            f"{year}-01-01T00:00:00Z" for year in (2020, 2021, 2022, 2023)
        ]

        again = (
            await client.post(
                "/api/v1/sources/yearly/backfill",
                json={**body, "from": "2019-06-01T00:00:00Z"},
                headers=OTTO,
            )
        ).json()
        assert (again["events"], again["recorded"], again["duplicates"]) == (4, 0, 4)
        assert again["run_ids"] == []

        def backfill(source: str, **changes: Any):
            return client.post(
                f"/api/v1/sources/{source}/backfill", json=body | changes, headers=OTTO
            )

        webhook = await backfill("orders")
        assert webhook.status_code == 422
        assert "cannot backfill" in webhook.json()["error"]["message"]
        assert (await backfill("nope")).status_code == 404
        future = await backfill("yearly", to="2999-01-01T00:00:00Z")
        assert future.status_code == 422
        assert "is in the future" in future.json()["error"]["message"]
        backwards = await backfill("yearly", to="2019-01-01T00:00:00Z")
        assert "the span is empty" in backwards.json()["error"]["message"]
        too_many = await backfill("yearly", concurrency=0)
        assert too_many.status_code == 422
        assert (await backfill("yearly", **{"from": "soon"})).status_code == 422


async def test_a_kafka_backfill_reads_the_span_by_itself_and_leaves_the_group_alone(
    make_config, kafka
):
    topic, group = unique_name("backfill"), unique_name("backfill-group")
    await create_topics(kafka.bootstrap, topic, partitions=2)
    at = {
        year: int(datetime(year, 1, 1, tzinfo=UTC).timestamp() * 1000) for year in range(2019, 2026)
    }
    async with started_producer(kafka.bootstrap) as producer:
        for partition, year in [(0, 2020), (0, 2021), (0, 2025), (1, 2019), (1, 2022), (1, 2023)]:
            await producer.send_and_wait(
                topic,
                json.dumps({"year": year}).encode(),
                partition=partition,
                timestamp_ms=at[year],
            )
    # "latest": the live source takes none of what was there before it joined
    source = source_toml("stream", kafka.bootstrap, [topic], group, 'auto_offset_reset = "latest"')
    trigger = '[[triggers]]\nsource = "stream"\npipeline = "first"\ninputs = { order = "{{ event.data.year }}" }\n'
    async with running(make_config(BASE + source + trigger)) as (info, client):
        body = {"from": "2020-01-01T00:00:00Z", "to": "2023-01-01T00:00:00Z", "concurrency": 2}
        first = await client.post("/api/v1/sources/stream/backfill", json=body, headers=OTTO)
        assert first.status_code == 200, first.text
        answer = first.json()
        assert (answer["events"], answer["recorded"], answer["duplicates"]) == (3, 3, 0)
        runs = await info.runner.store.get_runs(answer["run_ids"])
        assert sorted(r.inputs["order"] for r in runs) == [2020, 2021, 2022]
        assert sorted(r.event_id or "" for r in runs) == [
            f"stream:{topic}:0:0",
            f"stream:{topic}:0:1",
            f"stream:{topic}:1:1",
        ]
        again = (
            await client.post("/api/v1/sources/stream/backfill", json=body, headers=OTTO)
        ).json()
        assert (again["recorded"], again["duplicates"], again["run_ids"]) == (0, 3, [])
    assert await committed_offsets(kafka.bootstrap, group, [(topic, 0), (topic, 1)]) == {}
