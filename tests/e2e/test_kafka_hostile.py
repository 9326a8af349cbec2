"""Hostile Kafka messages against a real broker (Tansu): values, keys and headers of any
bytes, values nested too deep to keep, header names aiokafka cannot read. Every message
is recorded once (as an event, or as an ``invalid`` one) and its offset committed; no
message stops the source, and none is met again after a restart."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cued.connectors.kafka import message_event
from cued.daemon.core.untrusted import json_value, looks_like_json
from tests.support import raw_http
from tests.support.daemon import Daemon, wait_until
from tests.support.kafka_broker import (
    committed_offsets,
    create_topics,
    produce_batch,
    unique_name,
)
from tests.support.kafka_source import daemon_toml, eventually, produce, record, source_toml
from tests.support.running import daemon_running

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cued.daemon.assembly import DaemonInfo
    from cued.daemon.store import EventRow
    from tests.support.kafka_broker import Broker

DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 900 + b"1" + b"}" * 900
HOSTILE_VALUES = [
    DEEP_ARRAY,
    DEEP_OBJECT,
    b' {"a": ',
    b"NaN",
    b"9" * 5000,
    b'["\\ud800", {"\\udfff": 1}]',
    b'{"a": "\xff"}',
    b"",
]


# -- one message, one event --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "data", "encoding", "error"),
    [
        pytest.param(DEEP_ARRAY, DEEP_ARRAY[:10_000].decode(), "text", "nests deeper", id="deep"),
        pytest.param(DEEP_OBJECT, DEEP_OBJECT.decode(), "text", "nests deeper", id="deep-object"),
        pytest.param(b' {"a": ', ' {"a": ', "text", "not valid JSON", id="broken-object"),
        pytest.param(b"NaN", "NaN", "text", None, id="nan-is-text"),
        pytest.param(b"9" * 5000, "9" * 5000, "text", None, id="huge-number-is-text"),
        pytest.param(b"hello {", "hello {", "text", None, id="text"),
        pytest.param(b'["\\ud800"]', ["\\ud800"], "json", None, id="lone-surrogate-escaped"),
        pytest.param(b"", "", "text", None, id="empty"),
        pytest.param(b"\xef\xbb\xbf[1]", [1], "json", None, id="bom"),
        pytest.param(
            b'{"a": "\xff"}',
            base64.b64encode(b'{"a": "\xff"}').decode(),
            "base64",
            None,
            id="not-utf8",
        ),
    ],
)
def test_a_value_is_json_text_or_invalid_as_documented(value, data, encoding, error):
    event = message_event("src", record(value), 0.0)
    assert event.meta["encoding"] == encoding
    assert event.data == data
    if error is None:
        assert event.error is None
    else:
        assert event.error is not None
        assert error in event.error


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _storable(value: object) -> None:
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


NAMES = st.text(st.characters(blacklist_categories=["Cs"]), max_size=10)


@given(
    value=st.none() | st.binary(max_size=512) | st.sampled_from(HOSTILE_VALUES),
    key=st.none() | st.binary(max_size=32),
    headers=st.lists(st.tuples(NAMES, st.none() | st.binary(max_size=16)), max_size=3),
)
def test_a_message_of_any_bytes_becomes_an_event_never_an_error(value, key, headers):
    event = message_event("src", record(value, key, headers), 0.0)
    _storable([event.data, event.meta])
    # the documented rule: only UTF-8 that opens an object or array, and is not JSON
    refused = (
        value is not None
        and _is_utf8(value)
        and looks_like_json(value)
        and json_value(value).error is not None
    )
    assert (event.error is not None) == refused
    if event.error is not None:
        assert event.meta["encoding"] == "text"


# -- in the daemon -----------------------------------------------------------------------


async def _events(info: DaemonInfo, source: str, count: int) -> list[EventRow] | None:
    found = await info.runner.store.list_events(limit=1000, source=source)
    return sorted(found, key=lambda e: e.meta["offset"]) if len(found) >= count else None


async def _committed(broker: Broker, group: str, topic: str, offset: int) -> bool:
    return await committed_offsets(broker.bootstrap, group, [(topic, 0)]) == {(topic, 0): offset}


def _base_url(info: DaemonInfo) -> str:
    host, port = info.http_address or ("", 0)
    return f"http://{host}:{port}"


async def test_values_that_cannot_be_kept_are_recorded_invalid_committed_and_shown(
    kafka, make_config
):
    topic, group = unique_name("hostile"), unique_name("cued")
    await create_topics(kafka.bootstrap, topic)
    values = [*HOSTILE_VALUES, b'{"n": 1}']
    await produce(kafka.bootstrap, topic, values)
    config = make_config(daemon_toml(source_toml("raw", kafka.bootstrap, [topic], group)))
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=_base_url(info)) as http:
        events = await eventually(lambda: _events(info, "raw", len(values)))
        await eventually(lambda: _committed(kafka, group, topic, len(values)))
        for event in events:
            one = await http.get(f"/api/v1/events/{event.event_id}")
            assert one.status_code == 200, one.text
        assert (await http.get("/ui/events")).status_code == 200
    assert [e.status for e in events] == [
        "invalid",  # nested 100,000 deep: once this stopped the daemon, at every start
        "invalid",
        "invalid",
        "unmatched",
        "unmatched",
        "unmatched",
        "unmatched",
        "unmatched",
        "unmatched",
    ]
    assert "nests deeper than 64 levels" in (events[0].error or "")


async def test_a_header_name_aiokafka_cannot_read_is_recorded_invalid_and_reading_goes_on(
    kafka, make_config
):
    topic, group = unique_name("names"), unique_name("cued")
    await create_topics(kafka.bootstrap, topic)
    await produce(kafka.bootstrap, topic, [{"n": 0}])
    # one batch: a message, one with a header name that is not UTF-8, one after it
    await produce_batch(
        kafka.bootstrap,
        topic,
        [(b'{"n": 1}', []), (b'{"n": 2}', [(b"bad\xff", b"v")]), (b'{"n": 3}', [])],
    )
    await produce(kafka.bootstrap, topic, [{"n": 4}])
    config = make_config(daemon_toml(source_toml("raw", kafka.bootstrap, [topic], group)))
    async with daemon_running(config) as info, httpx.AsyncClient(base_url=_base_url(info)) as http:
        events = await eventually(lambda: _events(info, "raw", 5))
        await eventually(lambda: _committed(kafka, group, topic, 5))
        for event in events:
            assert (await http.get(f"/api/v1/events/{event.event_id}")).status_code == 200
    assert [(e.meta["offset"], e.status, e.meta["encoding"]) for e in events] == [
        (0, "unmatched", "json"),
        (1, "unmatched", "json"),  # read one at a time, up to the one that cannot be
        (2, "invalid", "unreadable"),
        (3, "invalid", "unreadable"),  # aiokafka cannot get past it in its batch
        (4, "unmatched", "json"),
    ]
    assert [e.data for e in events if e.status != "invalid"] == [{"n": 0}, {"n": 1}, {"n": 4}]
    assert "aiokafka could not read the message" in (events[2].error or "")


# -- a daemon in a subprocess: any bytes, and restarts -----------------------------------


@dataclass
class KafkaDaemon:
    daemon: Daemon
    port: int
    topic: str
    group: str
    broker: Broker
    loop: asyncio.AbstractEventLoop
    producer: Any

    def produce(self, value: bytes | None, key: bytes | None) -> int:
        sent = self.loop.run_until_complete(
            self.producer.send_and_wait(self.topic, value, key=key, partition=0)
        )
        offset: int = sent.offset
        return offset

    def committed(self) -> int | None:
        found = self.loop.run_until_complete(
            committed_offsets(self.broker.bootstrap, self.group, [(self.topic, 0)])
        )
        return found.get((self.topic, 0))

    def event_answers(self, event_id: str) -> bool:
        return raw_http.request(self.port, "GET", f"/api/v1/events/{event_id}").status == 200


def _ready(port: int) -> bool:
    try:
        return raw_http.request(port, "GET", "/readyz").status == 200
    except OSError:
        return False


@pytest.fixture
def kafka_daemon(kafka, tmp_path) -> Iterator[KafkaDaemon]:
    topic, group = unique_name("any"), unique_name("cued")
    port = raw_http.free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nstate = "state.db"\nshutdown_grace = "1s"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
        + source_toml("raw", kafka.bootstrap, [topic], group)
    )
    daemon = Daemon(config, tmp_path / "state.db")

    async def start_producer() -> Any:
        await create_topics(kafka.bootstrap, topic)
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        return producer

    # the tests are not async (hypothesis drives them): the producer has a loop of its own
    loop = asyncio.new_event_loop()
    try:
        producer = loop.run_until_complete(start_producer())
        try:
            loop.run_until_complete(daemon.start())
            try:
                wait_until(lambda: _ready(port), what="the daemon to be ready")
                yield KafkaDaemon(daemon, port, topic, group, kafka, loop, producer)
            finally:
                assert daemon.stop() == 0, daemon.log.read_text()
        finally:
            loop.run_until_complete(producer.stop())
    finally:
        loop.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    value=st.none() | st.binary(max_size=1024) | st.sampled_from(HOSTILE_VALUES),
    key=st.none() | st.binary(max_size=64),
)
def test_messages_of_any_bytes_are_recorded_committed_and_read_back(kafka_daemon, value, key):
    assume(value is not None or key is not None)  # a message has one or the other
    offset = kafka_daemon.produce(value, key)
    event_id = f"raw:{kafka_daemon.topic}:0:{offset}"
    wait_until(lambda: kafka_daemon.event_answers(event_id), what=f"event {event_id}")
    event = raw_http.read_back(kafka_daemon.port, event_id, source="raw")
    expected = message_event("raw", record(value, key), 0.0)
    assert event["data"] == expected.data
    assert event["meta"]["encoding"] == expected.meta["encoding"]
    assert event["meta"]["key"] == expected.meta["key"]
    assert (event["status"] == "invalid") == (expected.error is not None)
    wait_until(lambda: (kafka_daemon.committed() or 0) > offset, what="the offset's commit")


def test_after_a_message_nested_too_deep_a_restart_does_not_meet_it_again(kafka_daemon):
    deep = kafka_daemon.produce(DEEP_ARRAY, None)
    after = kafka_daemon.produce(b'{"n": 1}', None)
    for offset in (deep, after):
        event_id = f"raw:{kafka_daemon.topic}:0:{offset}"
        wait_until(lambda e=event_id: kafka_daemon.event_answers(e), what=f"event {event_id}")
    wait_until(lambda: kafka_daemon.committed() == after + 1, what="the commit past both")
    deep_event = raw_http.read_back(
        kafka_daemon.port, f"raw:{kafka_daemon.topic}:0:{deep}", source="raw"
    )
    assert deep_event["status"] == "invalid"

    kafka_daemon.daemon.kill9()
    log_before = kafka_daemon.daemon.log.read_text()
    kafka_daemon.loop.run_until_complete(kafka_daemon.daemon.start())
    wait_until(lambda: _ready(kafka_daemon.port), what="the restarted daemon to be ready")
    later = kafka_daemon.produce(b'{"n": 2}', None)
    wait_until(
        lambda: kafka_daemon.event_answers(f"raw:{kafka_daemon.topic}:0:{later}"),
        what="a message after the restart",
    )
    wait_until(lambda: kafka_daemon.committed() == later + 1, what="its commit")
    page = raw_http.request(kafka_daemon.port, "GET", "/api/v1/events?source=raw").json()
    assert sorted(item["status"] for item in page["items"]) == ["invalid", "unmatched", "unmatched"]
    restarted_log = kafka_daemon.daemon.log.read_text()[len(log_before) :]
    assert "Traceback" not in restarted_log, restarted_log
