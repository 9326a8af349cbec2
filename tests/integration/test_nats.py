"""The ``nats`` source and task kind against the machine's NATS server with JetStream:
each test has a stream of its own, deleted after."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js.api import ConsumerConfig
from pydantic import ValidationError

from cued.connectors.nats import NatsConfig, NatsSource
from cued.daemon.core.messages import message_value
from cued.daemon.errors import ConnectorError, PermanentTaskError
from cued.daemon.sdk.sources import Receipt, SourceContext
from cued.plugins.nats import MSG_ID_HEADER, NatsPublishTask
from tests.support import probes
from tests.support.fakes import AcceptingIntake, NoRoutes
from tests.support.kafka_source import eventually
from tests.support.kinds import task_context
from tests.support.running import daemon_running
from tests.support.servers import NATS_URL, nats_stream, unique

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.assembly import DaemonInfo
    from cued.daemon.sdk.sources import Event
    from cued.daemon.store import EventRow, RunRow


def source_toml(name: str, stream: str, durable: str, extra: str = "") -> str:
    return (
        f'[sources.{name}]\nkind = "nats"\nservers = ["{NATS_URL}"]\nstream = "{stream}"\n'
        f'durable = "{durable}"\nfetch_wait = "200ms"\n{extra}\n'
    )


def daemon_toml(*parts: str, daemon: str = "") -> str:
    return (
        f'[daemon]\nlog_level = "warning"\n{daemon}\n[http]\nlisten = "127.0.0.1:0"\n'
        + "\n".join(parts)
    )


PROBE_PIPELINE = """
[pipelines.orders]
inputs = { order_id = "" }
[pipelines.orders.tasks.handle]
kind = "python"
function = "tests.support.probes:record"
args = { name = "{{ inputs.order_id }}" }
"""

TRIGGER = (
    '[[triggers]]\nsource = "shop"\npipeline = "orders"\n'
    'inputs = { order_id = "{{ event.data.id }}" }\n'
)


async def events_of(info: DaemonInfo, source: str) -> list[EventRow]:
    return await info.runner.store.list_events(limit=100_000, source=source)


async def finished_runs(info: DaemonInfo, pipeline: str, count: int) -> list[RunRow]:
    async def check() -> list[RunRow]:
        runs = await info.runner.store.list_runs(limit=100_000, pipeline=pipeline)
        done = [r for r in runs if r.state in ("succeeded", "failed", "cancelled")]
        assert len(runs) <= count, f"{len(runs)} runs of {pipeline!r}, expected {count}"
        return done if len(done) == count else []

    return list(await eventually(check))


async def consumer_state(client: Any, stream: str, durable: str) -> tuple[int, int]:
    """``(acknowledged up to, waiting for an ack)`` of a durable consumer."""
    info = await client.jetstream().consumer_info(stream, durable)
    return info.ack_floor.stream_seq, info.num_ack_pending


async def test_messages_start_runs_and_are_acknowledged_once_recorded(make_config):
    probe = probes.reset()
    async with nats_stream(["shop.>"]) as (client, stream):
        js = client.jetstream()
        durable = unique("cued")
        config = make_config(
            daemon_toml(PROBE_PIPELINE, source_toml("shop", stream, durable), TRIGGER)
        )
        await js.publish("shop.orders", b'{"id": "o1"}', headers={"trace": "t-1"})
        await js.publish("shop.orders", b'{"id": "o2"}')
        await js.publish("shop.orders", b"{not json")  # invalid: recorded, acknowledged
        await js.publish("shop.orders", b"\xff\xfe")  # not UTF-8: base64 text
        async with daemon_running(config) as info:
            runs = await finished_runs(info, "orders", 2)
            events = {e.event_id: e for e in await eventually(lambda: _all(info, "shop", 4))}
            await eventually(lambda: _equals(consumer_state(client, stream, durable), (4, 0)))
            host, port = info.http_address or ("", 0)
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as web:
                metrics = (await web.get("/metrics")).text
                overview = (await web.get("/ui/")).text

    assert sorted(probe.calls) == ["o1", "o2"]
    assert {r.state for r in runs} == {"succeeded"}
    assert sorted(events) == [f"shop:{stream}:{seq}" for seq in range(1, 5)]
    first = events[f"shop:{stream}:1"]
    assert first.status == "matched"
    assert first.meta["headers"] == {"trace": "t-1"}
    assert (first.meta["subject"], first.meta["sequence"]) == ("shop.orders", 1)
    invalid = events[f"shop:{stream}:3"]
    assert (invalid.status, invalid.data) == ("invalid", "{not json")
    assert "JSON" in (invalid.error or "")
    binary = events[f"shop:{stream}:4"]
    assert (binary.data, binary.meta["encoding"]) == ("//4=", "base64")
    # the generic path: metrics by source and status, the source on the overview page
    assert 'cued_events_total{source="shop",status="matched"} 2.0' in metrics
    assert 'cued_events_total{source="shop",status="invalid"} 1.0' in metrics
    assert "shop" in overview
    assert "nats" in overview


async def test_a_redelivery_starts_nothing_twice(make_config):
    """A message recorded but not acknowledged (the daemon died in between) comes again
    with the same id: intake knows it."""
    probe = probes.reset()
    async with nats_stream(["redo.>"]) as (client, stream):
        js = client.jetstream()
        durable = unique("cued")
        config = make_config(
            daemon_toml(
                PROBE_PIPELINE, source_toml("shop", stream, durable, 'ack_wait = "1s"'), TRIGGER
            )
        )
        await js.publish("redo.orders", b'{"id": "o1"}')
        async with daemon_running(config) as info:
            await finished_runs(info, "orders", 1)
        # the server forgets the acknowledgement: the consumer starts from the beginning
        await js.delete_consumer(stream, durable)
        async with daemon_running(config) as info:
            await eventually(lambda: _equals(consumer_state(client, stream, durable), (1, 0)))
            await finished_runs(info, "orders", 1)
            (event,) = await events_of(info, "shop")
    assert probe.calls == ["o1"]
    assert event.event_id == f"shop:{stream}:1"


GATE: anyio.Event | None = None
HELD: list[str] = []


async def held(order_id: str) -> None:
    """A task that waits for the test to open the gate."""
    HELD.append(order_id)
    assert GATE is not None
    await GATE.wait()


async def test_a_saturated_backlog_stops_fetching_until_it_drains(make_config):
    global GATE
    GATE = anyio.Event()
    HELD.clear()
    async with nats_stream(["busy.>"]) as (client, stream):
        js = client.jetstream()
        durable = unique("cued")
        config = make_config(
            daemon_toml(
                """
[pipelines.slow]
max_active_runs = 1
inputs = { order_id = "" }
[pipelines.slow.tasks.hold]
kind = "python"
function = "tests.integration.test_nats:held"
args = { order_id = "{{ inputs.order_id }}" }
""",
                source_toml("shop", stream, durable, "max_batch = 10"),
                '[[triggers]]\nsource = "shop"\npipeline = "slow"\n'
                'inputs = { order_id = "{{ event.data.id }}" }\n',
                daemon="backlog_high_water = 5\nbacklog_low_water = 2",
            )
        )
        for i in range(100):
            await js.publish("busy.orders", f'{{"id": "o{i}"}}'.encode())
        async with daemon_running(config) as info:
            backlog = info.runner.backlog
            await eventually(lambda: _true(backlog.saturated))
            taken = len(await events_of(info, "shop"))
            # saturated: nothing more is taken, however long the backlog stays full
            for _ in range(3):
                await anyio.sleep(0.5)
                assert len(await events_of(info, "shop")) == taken
                assert (await consumer_state(client, stream, durable)) == (taken, 0)
            assert backlog.saturated
            assert taken <= backlog.high_water + 10  # one batch past the mark at most
            GATE.set()
            runs = await finished_runs(info, "slow", 100)
            await eventually(lambda: _equals(consumer_state(client, stream, durable), (100, 0)))
    assert {r.state for r in runs} == {"succeeded"}
    assert sorted(HELD) == sorted(f"o{i}" for i in range(100))


async def test_a_stream_that_does_not_exist_fails_the_start_naming_it():
    intake = _Recording()
    source = NatsSource(
        NatsConfig(servers=[NATS_URL], stream="NO_SUCH_STREAM_X", durable="cued"),
        _context(intake),
    )
    with pytest.raises(ConnectorError, match="NO_SUCH_STREAM_X"):
        await source.run()


async def test_an_unreachable_server_fails_the_start_naming_it():
    source = NatsSource(
        NatsConfig(servers=["nats://127.0.0.1:1"], stream="S", durable="cued", connect_timeout=0.5),
        _context(_Recording()),
    )
    with pytest.raises(ConnectorError, match=r"nats://127\.0\.0\.1:1.*connect_timeout"):
        await source.run()


async def test_a_batch_that_cannot_be_recorded_is_not_acknowledged():
    async with nats_stream(["s.>"]) as (client, stream):
        await client.jetstream().publish("s.x", b"{}")
        durable = unique("cued")
        source = NatsSource(
            NatsConfig(servers=[NATS_URL], stream=stream, durable=durable), _context(_Failing())
        )
        with pytest.raises(Exception, match="disk full"):
            await source.run()
        assert await consumer_state(client, stream, durable) == (0, 1)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"stream": "A.B"}, id="dotted-stream"),
        pytest.param({"servers": []}, id="no-servers"),
        pytest.param({"user": "u"}, id="user-without-password"),
        pytest.param({"token": "t", "user": "u", "password": "p"}, id="token-and-user"),
        pytest.param({"deliver": "sometimes"}, id="deliver"),
    ],
)
def test_the_config_refuses_what_cannot_work(extra):
    with pytest.raises(ValidationError):
        NatsConfig.model_validate({"servers": [NATS_URL], "stream": "S", "durable": "d"} | extra)


# -- the nats task kind ---------------------------------------------------------------------


async def test_the_nats_task_publishes_once_whatever_the_retries():
    async with nats_stream(["out.>"]) as (client, stream), httpx.AsyncClient() as http:
        async with NatsPublishTask() as kind:
            params = NatsPublishTask.Params.model_validate(
                {"servers": [NATS_URL], "subject": "out.orders", "value": {"id": 1}}
            )
            ctx = task_context(http, idempotency_key="run-9:send")
            first = await kind.execute(params, ctx)
            again = await kind.execute(params, task_context(http, idempotency_key="run-9:send"))
            other = await kind.execute(params, task_context(http, idempotency_key="run-9:other"))
        js = client.jetstream()
        message = await js.get_msg(stream, 1)
        info = await js.stream_info(stream)
    assert first == {"stream": stream, "sequence": 1, "duplicate": False}
    assert again == {"stream": stream, "sequence": 1, "duplicate": True}
    assert other["sequence"] == 2
    assert info.state.messages == 2
    assert message.data == b'{"id":1}'
    assert (message.headers or {})[MSG_ID_HEADER] == "run-9:send"


async def test_the_nats_task_fails_for_good_when_no_stream_takes_the_subject():
    async with httpx.AsyncClient() as http, NatsPublishTask() as kind:
        params = NatsPublishTask.Params.model_validate(
            {"servers": [NATS_URL], "subject": unique("nowhere"), "value": "x", "timeout": 2}
        )
        with pytest.raises(PermanentTaskError, match="no JetStream stream"):
            await kind.execute(params, task_context(http))


async def test_a_task_publishes_to_a_stream_that_a_trigger_consumes(make_config):
    probe = probes.reset()
    async with nats_stream(["loop.>"]) as (_, stream):
        durable = unique("cued")
        config = make_config(
            daemon_toml(
                PROBE_PIPELINE,
                f"""
[pipelines.emit]
[pipelines.emit.tasks.send]
kind = "nats"
servers = ["{NATS_URL}"]
subject = "loop.orders"
value = {{ id = "from-a-task" }}
""",
                source_toml("shop", stream, durable),
                TRIGGER,
            )
        )
        async with daemon_running(config) as info:
            await info.runner.start_run("emit")
            await finished_runs(info, "orders", 1)
    assert probe.calls == ["from-a-task"]


# -- helpers ----------------------------------------------------------------------------


class _Recording(AcceptingIntake):
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def record(
        self,
        events: list[Event],
        *,
        cursor: str | None = None,
        acknowledge: Callable[[list[Receipt]], None] | None = None,
    ) -> list[Receipt]:
        self.events.extend(events)
        return [Receipt(e.event_id, "matched") for e in events]


class _Failing(_Recording):
    async def record(self, events, *, cursor=None, acknowledge=None):
        raise OSError("disk full")


def _context(intake: Any) -> SourceContext:
    return SourceContext("shop", intake, structlog.get_logger(), NoRoutes(), Path("."))


async def _all(info: DaemonInfo, source: str, count: int) -> list[EventRow]:
    events = await events_of(info, source)
    return events if len(events) == count else []


async def _equals(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def _true(value: bool) -> bool:
    return value


@settings(max_examples=15, deadline=None)
@given(bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_bodies_of_any_bytes_through_the_server_are_each_recorded_and_acknowledged(bodies):
    async def scenario() -> tuple[list[Event], tuple[int, int]]:
        async with nats_stream(["any.>"]) as (client, stream):
            for body in bodies:
                await client.jetstream().publish("any.x", body)
            intake = _Recording()
            durable = unique("cued")
            source = NatsSource(
                NatsConfig(servers=[NATS_URL], stream=stream, durable=durable, fetch_wait=0.1),
                _context(intake),
            )
            async with anyio.create_task_group() as tg:
                await tg.start(source.run)
                await eventually(lambda: _true(len(intake.events) == len(bodies)))
                state = await eventually(
                    lambda: _state_when(consumer_state(client, stream, durable), len(bodies))
                )
                tg.cancel_scope.cancel()
            return intake.events, state

    events, state = anyio.run(scenario)
    assert [e.meta["sequence"] for e in events] == list(range(1, len(bodies) + 1))
    for body, event in zip(bodies, events, strict=True):
        assert (event.data, event.meta["encoding"], event.error) == message_value(body)
    assert state == (len(bodies), 0)


async def _state_when(value: Any, acked: int) -> tuple[int, int] | None:
    state = await value
    return state if state == (acked, 0) else None


def publish_raw(subject: str, header_lines: bytes, payload: bytes) -> None:
    """Publish with headers as bytes, past any client's checks (the protocol's HPUB)."""
    headers = b"NATS/1.0\r\n" + header_lines + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", 4222), timeout=5) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"headers":true}\r\n')
        sock.sendall(
            b"HPUB %s %d %d\r\n" % (subject.encode(), len(headers), len(headers) + len(payload))
            + headers
            + payload
            + b"\r\nPING\r\n"
        )
        assert sock.recv(4096).endswith(b"PONG\r\n")


async def test_headers_of_any_bytes_are_recorded_and_acknowledged():
    async with nats_stream(["raw.>"]) as (client, stream):
        publish_raw("raw.a", b"X-Bad: \xff\xfe", b"one")
        publish_raw("raw.a", b"no colon \xff", b"two")
        publish_raw("raw.a", b"K\xff: v\r\ntraceparent: nonsense", b"three")
        intake = _Recording()
        durable = unique("cued")
        source = NatsSource(
            NatsConfig(servers=[NATS_URL], stream=stream, durable=durable, fetch_wait=0.1),
            _context(intake),
        )
        async with anyio.create_task_group() as tg:
            await tg.start(source.run)
            await eventually(lambda: _true(len(intake.events) == 3))
            state = await eventually(
                lambda: _state_when(consumer_state(client, stream, durable), 3)
            )
            tg.cancel_scope.cancel()
    assert [e.data for e in intake.events] == ["one", "two", "three"]
    assert state == (3, 0)
    for event in intake.events:
        json.dumps(event.meta).encode("utf-8")  # valid text, storable
        assert "traceparent" not in event.meta


async def test_several_subjects_are_filtered_or_refused_never_widened():
    """A server before 2.10 ignores several filter subjects: the consumer would take the
    whole stream. The source either gets the filter it asked for or refuses to start."""
    async with nats_stream(["many.>"]) as (client, stream):
        js = client.jetstream()
        for subject in ("many.a", "many.b", "many.other"):
            await js.publish(subject, subject.encode())
        intake = _Recording()
        config = NatsConfig(
            servers=[NATS_URL],
            stream=stream,
            durable=unique("cued"),
            subjects=["many.a", "many.b"],
            fetch_wait=0.1,
        )
        source = NatsSource(config, _context(intake))
        version = client.connected_server_version
        if (version.major, version.minor) < (2, 10):
            with pytest.raises(
                ConnectorError, match=r"several filter subjects need NATS server 2\.10"
            ):
                await source.run()
            return
        async with anyio.create_task_group() as tg:
            await tg.start(source.run)
            await eventually(lambda: _true(len(intake.events) == 2))
            await anyio.sleep(0.5)  # nothing more comes: many.other is not taken
            tg.cancel_scope.cancel()
        assert sorted(e.data for e in intake.events) == ["many.a", "many.b"]


async def test_an_existing_consumer_with_another_filter_is_refused_naming_both():
    async with nats_stream(["flt.>"]) as (client, stream):
        durable = unique("cued")
        await client.jetstream().add_consumer(
            stream, ConsumerConfig(durable_name=durable, filter_subject="flt.old")
        )
        source = NatsSource(
            NatsConfig(servers=[NATS_URL], stream=stream, durable=durable, subjects=["flt.new"]),
            _context(_Recording()),
        )
        with pytest.raises(
            ConnectorError, match=r"filters \['flt.old'\], not subjects \['flt.new'\]"
        ):
            await source.run()
