"""Traces end to end: a webhook with a caller's ``traceparent`` into the real daemon, spans
out over OTLP/HTTP to a receiver on loopback that decodes them with the collector's own
protobuf classes, and the http task's request carrying the trace on to a loopback server."""

from __future__ import annotations

import sys

import anyio
import httpx
from structlog.testing import capture_logs

from cued.daemon.core.tracecontext import parse_traceparent
from tests.support.http_server import serve_app
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.running import daemon_running, runs_of_event, wait_finished
from tests.support.webhook_receiver import Receiver

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"

PIPELINE = """
[http]
listen = "127.0.0.1:0"

[sources.orders]
kind = "webhook"
path = "/hooks/orders"

[pipelines.ship]
inputs = {{ order = 0 }}
[pipelines.ship.tasks.notify]
kind = "http"
method = "post"
url = "{target}/shipped"
json = {{ order = "{{{{ inputs.order }}}}" }}
timeout = "20s"

[[triggers]]
source = "orders"
pipeline = "ship"
inputs = {{ order = "{{{{ event.data.id }}}}" }}
"""

TELEMETRY = """
[telemetry]
otlp_endpoint = "{endpoint}"
service_name = "cued-test"
"""


async def post_order(info, headers: dict[str, str] | None = None) -> list[str]:
    host, port = info.http_address
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"http://{host}:{port}/hooks/orders", json={"id": 7}, headers=headers or {}
        )
    assert answer.status_code == 202, answer.text
    return await runs_of_event(info, answer.json()["event_id"])


def one(spans: list[ReceivedSpan]) -> ReceivedSpan:
    assert len(spans) == 1, spans
    return spans[0]


async def test_a_webhooks_traceparent_is_continued_by_the_event_run_attempt_and_request(
    make_config,
):
    otlp, target = OtlpReceiver(), Receiver()
    async with serve_app(otlp.app()) as endpoint, serve_app(target.app) as target_url:
        config = make_config(
            PIPELINE.format(target=target_url) + TELEMETRY.format(endpoint=endpoint)
        )
        async with daemon_running(config) as info:
            run_ids = await post_order(info, {"traceparent": CALLER})
            (run,) = await wait_finished(info, run_ids)
            assert run.state == "succeeded"
            assert run.traceparent is not None
            assert run.traceparent.split("-")[1] == CALLER_TRACE
        # the daemon has stopped: what it had queued is sent
        with anyio.fail_after(20):
            await otlp.until(lambda: len(otlp.spans) >= 4)

    event = one(otlp.named("event orders"))
    run_span = one(otlp.named("run ship"))
    attempt = one(otlp.named("task notify"))
    call = one(otlp.named("HTTP POST"))
    # every span is in the caller's trace, each the child of the one before
    assert {s.trace_id for s in otlp.spans} == {CALLER_TRACE}
    assert event.parent_span_id == CALLER_SPAN
    assert event.kind == "consumer"
    assert event.attributes["cued.event.status"] == "matched"
    assert run_span.parent_span_id == event.span_id
    assert run.traceparent == f"00-{CALLER_TRACE}-{event.span_id}-01"
    assert run_span.attributes["cued.run.id"] == run.run_id
    assert run_span.attributes["cued.run.state"] == "succeeded"
    assert run_span.attributes["cued.resumed"] is False
    assert attempt.parent_span_id == run_span.span_id
    assert attempt.attributes["cued.attempt.state"] == "succeeded"
    assert attempt.attributes["cued.attempt"] == 1
    assert call.parent_span_id == attempt.span_id
    assert call.kind == "client"
    assert call.attributes["http.response.status_code"] == 200
    assert call.attributes["url.full"] == f"{target_url}/shipped"
    assert {s.service for s in otlp.spans} == {"cued-test"}
    # the service called continues the trace from the request's span
    (hit,) = target.hits
    assert hit.headers["traceparent"] == f"00-{CALLER_TRACE}-{call.span_id}-01"


async def test_an_event_without_a_traceparent_starts_a_trace_of_its_own(make_config):
    otlp, target = OtlpReceiver(), Receiver()
    async with serve_app(otlp.app()) as endpoint, serve_app(target.app) as target_url:
        config = make_config(
            PIPELINE.format(target=target_url) + TELEMETRY.format(endpoint=endpoint)
        )
        async with daemon_running(config) as info:
            # not a valid traceparent (all-zero trace id): ignored, not an error
            run_ids = await post_order(info, {"traceparent": f"00-{'0' * 32}-{CALLER_SPAN}-01"})
            await wait_finished(info, run_ids)
        with anyio.fail_after(20):
            await otlp.until(lambda: len(otlp.spans) >= 4)
    event = one(otlp.named("event orders"))
    assert event.parent_span_id is None
    assert len({s.trace_id for s in otlp.spans}) == 1
    assert parse_traceparent(target.hits[0].headers["traceparent"]) is not None


async def test_a_run_resumed_after_a_restart_stays_in_its_trace(make_config):
    otlp, target = OtlpReceiver(), Receiver(status={"/shipped": "hang"})
    async with serve_app(otlp.app()) as endpoint, serve_app(target.app) as target_url:
        config = make_config(
            PIPELINE.format(target=target_url) + TELEMETRY.format(endpoint=endpoint)
        )
        async with daemon_running(config) as info:
            (run_id,) = await post_order(info, {"traceparent": CALLER})
            with anyio.fail_after(20):
                await target.until(lambda: target.hanging == 1)
        # stopped mid-attempt: the attempt is interrupted, the run resumes on restart
        target.status["/shipped"] = 200
        target.release.set()
        async with daemon_running(config) as info:
            (run,) = await wait_finished(info, [run_id])
            assert run.state == "succeeded"
        with anyio.fail_after(20):
            await otlp.until(lambda: len(otlp.named("HTTP POST")) >= 2)

    event = one(otlp.named("event orders"))
    first, second = sorted(otlp.named("run ship"), key=lambda s: s.attributes["cued.resumed"])
    assert {s.trace_id for s in otlp.spans} == {CALLER_TRACE}
    # both times the run was driven hang from its event's span, kept in the run's row
    assert first.parent_span_id == second.parent_span_id == event.span_id
    assert first.attributes["cued.run.state"] == "running"
    assert second.attributes["cued.resumed"] is True
    assert second.attributes["cued.run.state"] == "succeeded"
    attempts = {s.attributes["cued.attempt.state"]: s for s in otlp.named("task notify")}
    assert attempts["interrupted"].parent_span_id == first.span_id
    assert attempts["succeeded"].parent_span_id == second.span_id


async def test_a_triggered_run_keeps_the_trace_it_began_in(make_config):
    otlp, target = OtlpReceiver(), Receiver()
    async with serve_app(otlp.app()) as endpoint, serve_app(target.app) as target_url:
        config = make_config(
            PIPELINE.format(target=target_url) + TELEMETRY.format(endpoint=endpoint)
        )
        async with daemon_running(config) as info:
            row = await info.runner.start_run("ship", {"order": 1})
            (run,) = await wait_finished(info, [row.run_id])
        with anyio.fail_after(20):
            await otlp.until(lambda: len(otlp.spans) >= 4)
    trigger = one(otlp.named("trigger ship"))
    run_span = one(otlp.named("run ship"))
    assert trigger.parent_span_id is None
    assert run_span.parent_span_id == trigger.span_id
    assert run.traceparent is not None
    assert run.traceparent.startswith(f"00-{trigger.trace_id}-{trigger.span_id}-")


async def test_a_run_triggered_through_the_api_continues_the_callers_trace(make_config):
    otlp, target = OtlpReceiver(), Receiver()
    async with serve_app(otlp.app()) as endpoint, serve_app(target.app) as target_url:
        config = make_config(
            PIPELINE.format(target=target_url) + TELEMETRY.format(endpoint=endpoint)
        )
        async with daemon_running(config) as info:
            host, port = info.http_address
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                answer = await client.post(
                    "/api/v1/pipelines/ship/runs",
                    json={"inputs": {"order": 7}},
                    headers={"traceparent": CALLER},
                )
            assert answer.status_code == 201, answer.text
            (run,) = await wait_finished(info, [answer.json()["run_id"]])
        with anyio.fail_after(20):
            await otlp.until(lambda: len(otlp.spans) >= 4)
    trigger = one(otlp.named("trigger ship"))
    assert (trigger.trace_id, trigger.parent_span_id) == (CALLER_TRACE, CALLER_SPAN)
    assert one(otlp.named("run ship")).parent_span_id == trigger.span_id
    assert run.traceparent is not None
    assert run.traceparent.startswith(f"00-{CALLER_TRACE}-{trigger.span_id}-")


async def test_with_telemetry_off_nothing_is_sent_and_no_traceparent_added(
    make_config, monkeypatch
):
    otlp, target = OtlpReceiver(), Receiver()
    async with serve_app(otlp.app()) as endpoint, serve_app(target.app) as target_url:
        # the standard variable alone does not turn traces on: [telemetry] does
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        config = make_config(PIPELINE.format(target=target_url))
        async with daemon_running(config) as info:
            run_ids = await post_order(info, {"traceparent": CALLER})
            (run,) = await wait_finished(info, run_ids)
    assert run.state == "succeeded"
    assert otlp.exports == 0
    assert "traceparent" not in target.hits[0].headers
    # kept all the same: a later daemon with traces on continues the caller's trace
    assert run.traceparent == CALLER


async def test_with_the_extra_missing_the_daemon_warns_and_runs_on(make_config, monkeypatch):
    # what an install without cued[otel] looks like to the import: no exporter module
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    otlp, target = OtlpReceiver(), Receiver()
    async with serve_app(otlp.app()) as endpoint, serve_app(target.app) as target_url:
        config = make_config(
            PIPELINE.format(target=target_url) + TELEMETRY.format(endpoint=endpoint)
        )
        with capture_logs() as logs:
            async with daemon_running(config) as info:
                run_ids = await post_order(info, {"traceparent": CALLER})
                (run,) = await wait_finished(info, run_ids)
    assert run.state == "succeeded"
    assert otlp.exports == 0
    assert "traceparent" not in target.hits[0].headers
    (warning,) = [e for e in logs if e["event"] == "telemetry_unavailable"]
    assert "cued[otel]" in warning["reason"]


async def test_a_sample_ratio_of_zero_sends_no_new_trace(make_config):
    otlp, target = OtlpReceiver(), Receiver()
    async with serve_app(otlp.app()) as endpoint, serve_app(target.app) as target_url:
        config = make_config(
            PIPELINE.format(target=target_url)
            + TELEMETRY.format(endpoint=endpoint)
            + "sample_ratio = 0.0\n"
        )
        async with daemon_running(config) as info:
            run_ids = await post_order(info)
            (run,) = await wait_finished(info, run_ids)
    assert run.state == "succeeded"
    assert otlp.spans == []
    # still propagated, with the sampled flag off: the callee records nothing either
    flags = target.hits[0].headers["traceparent"].rsplit("-", 1)[1]
    assert int(flags, 16) & 0x01 == 0


async def test_a_run_an_asset_starts_continues_the_producing_runs_trace(make_config):
    otlp, target = OtlpReceiver(), Receiver()
    async with serve_app(otlp.app()) as endpoint, serve_app(target.app) as target_url:
        config = make_config(
            PIPELINE.format(target=target_url).replace(
                'timeout = "20s"', 'timeout = "20s"\nproduces = ["shipments"]'
            )
            + """
[pipelines.report.tasks.count]
kind = "sleep"
seconds = 0

[[triggers]]
source = "asset:shipments"
pipeline = "report"
"""
            + TELEMETRY.format(endpoint=endpoint)
        )
        reported = anyio.Event()
        async with daemon_running(config) as info:
            info.runner.on_run_finished(lambda row: row.pipeline == "report" and reported.set())
            (ship,) = await wait_finished(info, await post_order(info, {"traceparent": CALLER}))
            with anyio.fail_after(20):
                await reported.wait()
        with anyio.fail_after(20):
            await otlp.until(lambda: len(otlp.named("run report")) == 1)
    assert ship.state == "succeeded"
    assert {s.trace_id for s in otlp.spans} == {CALLER_TRACE}
    asset_event = one(otlp.named("event asset:shipments"))
    assert asset_event.parent_span_id == one(otlp.named("run ship")).span_id
    assert one(otlp.named("run report")).parent_span_id == asset_event.span_id
