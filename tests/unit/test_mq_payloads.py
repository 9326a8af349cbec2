"""What the ``mqtt``, ``amqp`` and ``redis_stream`` sources make of a message's bytes (any
bytes: none stops a source), how they name a redelivered message, and what ``cued
validate`` says of their settings."""

from __future__ import annotations

import json
from textwrap import dedent

import aiormq.abc
import paho.mqtt.client as paho
import pytest
from aio_pika.message import IncomingMessage
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pamqp import commands
from pamqp.header import ContentHeader

from cued.connectors import amqp, mqtt, redis_stream
from cued.connectors._payload import RedeliveryIds
from cued.daemon.config import parse_config
from cued.daemon.errors import ConfigError
from tests.support.fakes import AcceptingIntake

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def storable(value: object) -> None:
    """What the store does with data and meta: strict JSON."""
    json.dumps(value, allow_nan=False)


# -- the events of each source, over arbitrary bytes ---------------------------------------


@given(
    st.dictionaries(st.binary(max_size=20), st.binary(max_size=60), max_size=6),
    st.sampled_from([None, "data", "\xff"]),
)
def test_any_redis_entry_is_an_event(fields, field):
    event = redis_stream.entry_event("src", "s", b"1-0", fields, field, 0.0)
    storable(event.data)
    storable(event.meta)
    assert event.event_id == "src:s:1-0"  # the entry id: the same on every delivery
    if field is None:
        assert event.error is None
    elif field.encode() not in fields:
        assert "no field" in (event.error or "")


def test_a_redis_entry_keeps_its_other_fields_and_trace():
    event = redis_stream.entry_event(
        "src", "s", b"7-1", {b"data": b'{"a": 1}', b"traceparent": TRACEPARENT.encode()}, "data", 0
    )
    assert event.data == {"a": 1}
    assert event.meta["fields"] == {"traceparent": TRACEPARENT}
    assert event.meta["traceparent"] == TRACEPARENT


@given(
    topic=st.binary(min_size=1, max_size=40),
    body=st.binary(max_size=200),
    user=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=4),
    dup=st.booleans(),
)
def test_any_mqtt_message_is_an_event(topic, body, user, dup):
    message = paho.MQTTMessage(mid=9, topic=topic)
    message.payload = body
    message.qos, message.dup = 1, dup
    message.properties = Properties(PacketTypes.PUBLISH)
    if user:
        message.properties.UserProperty = user
    event = mqtt.message_event("src", "src:0:x", message, 0.0)
    storable(event.data)
    storable(event.meta)
    assert event.meta["dup"] is dup


def test_an_mqtt_message_carries_its_user_properties_and_trace():
    message = paho.MQTTMessage(mid=1, topic=b"plant/1/t")
    message.payload = b"21.5"
    message.properties = Properties(PacketTypes.PUBLISH)
    message.properties.UserProperty = [("traceparent", TRACEPARENT), ("site", "a")]
    event = mqtt.message_event("src", "src:0:x", message, 0.0)
    assert event.data == 21.5
    assert event.meta["topic"] == "plant/1/t"
    assert event.meta["user_properties"] == {"traceparent": TRACEPARENT, "site": "a"}
    assert event.meta["traceparent"] == TRACEPARENT


def amqp_message(body: bytes, headers: dict, redelivered: bool = False) -> IncomingMessage:
    delivered = aiormq.abc.DeliveredMessage(
        delivery=commands.Basic.Deliver(
            consumer_tag="t", delivery_tag=1, redelivered=redelivered, exchange="", routing_key="q"
        ),
        header=ContentHeader(properties=commands.Basic.Properties(headers=headers)),
        body=body,
        channel=None,
    )
    return IncomingMessage(delivered)


@given(
    body=st.binary(max_size=200),
    headers=st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.one_of(st.text(max_size=20), st.binary(max_size=20), st.integers(-(2**31), 2**31)),
        max_size=4,
    ),
)
def test_any_amqp_message_is_an_event(body, headers):
    event = amqp.message_event("src", "q", "src:0:x", amqp_message(body, headers), 0.0)
    storable(event.data)
    storable(event.meta)


def test_an_amqp_message_carries_its_headers_and_trace():
    message = amqp_message(b'{"x": 1}', {"traceparent": TRACEPARENT, "raw": b"\xff"}, True)
    event = amqp.message_event("src", "q", "src:0:x", message, 0.0)
    assert event.data == {"x": 1}
    assert event.meta["headers"] == {"traceparent": TRACEPARENT, "raw": "/w=="}
    assert event.meta["base64"] == ["headers.raw"]
    assert event.meta["redelivered"] is True
    assert event.meta["traceparent"] == TRACEPARENT


def test_the_amqp_digest_tells_messages_apart_by_content_and_properties():
    a = amqp.content_digest(amqp_message(b"x", {}))
    assert a == amqp.content_digest(amqp_message(b"x", {}, redelivered=True))
    assert a != amqp.content_digest(amqp_message(b"y", {}))
    assert a != amqp.content_digest(amqp_message(b"x", {"k": "v"}))


# -- ids of redelivered messages -----------------------------------------------------------


class Recorded(AcceptingIntake):
    def __init__(self, ids: set[str], cursor: str | None) -> None:
        self.ids, self.cursor_value = ids, cursor

    async def cursor(self, source: str) -> str | None:
        return self.cursor_value

    async def known(self, event_ids: list[str]) -> set[str]:
        return self.ids & set(event_ids)


async def test_new_messages_are_numbered_on_from_the_recorded_cursor():
    ids = RedeliveryIds("s", Recorded(set(), "41"), window=10)
    await ids.load()
    assert await ids.assign([("aa", False), ("bb", False)]) == ["s:41:aa", "s:42:bb"]
    assert ids.cursor == "43"


async def test_a_redelivery_takes_the_id_it_was_recorded_under():
    ids = RedeliveryIds("s", Recorded({"s:38:aa", "s:39:bb"}, "40"), window=10)
    await ids.load()
    got = await ids.assign([("aa", True), ("cc", True), ("bb", False)])
    # aa was recorded: the same id (a duplicate); cc was not; bb is not flagged: new
    assert got == ["s:38:aa", "s:40:cc", "s:41:bb"]


async def test_a_redelivery_is_looked_for_only_within_the_window():
    ids = RedeliveryIds("s", Recorded({"s:5:aa"}, "40"), window=10)
    await ids.load()
    assert await ids.assign([("aa", True)]) == ["s:40:aa"]


async def test_a_redelivery_recognised_again_after_another_crash_is_found_below_the_window():
    # recorded as 95; redelivered after a crash and recognised, its ack lost again in a
    # second crash while new messages went on: the floor in the cursor keeps 95 looked at
    ids = RedeliveryIds("s", Recorded({"s:95:aa"}, "100"), window=10)
    await ids.load()
    assert await ids.assign([("aa", True)]) == ["s:95:aa"]
    assert ids.cursor == "100:95"
    new = await ids.assign([(f"n{i}", False) for i in range(9)])
    assert new == [f"s:{100 + i}:n{i}" for i in range(9)]
    assert ids.cursor == "109:95"
    again = RedeliveryIds("s", Recorded({"s:95:aa"}, ids.cursor), window=10)
    await again.load()
    assert await again.assign([("aa", True)]) == ["s:95:aa"]  # 95 < 109 - 10


async def test_the_floor_goes_once_a_window_of_new_messages_followed_it():
    # the broker holds at most a window unacknowledged: the 95's ack has reached it
    ids = RedeliveryIds("s", Recorded({"s:95:aa"}, "100"), window=10)
    await ids.load()
    await ids.assign([("aa", True)])
    await ids.assign([(f"n{i}", False) for i in range(10)])
    assert ids.cursor == "110"


async def test_a_cursor_that_is_not_a_number_starts_at_zero():
    ids = RedeliveryIds("s", Recorded(set(), "٣"), window=10)
    await ids.load()
    assert await ids.assign([("aa", False)]) == ["s:0:aa"]


# -- cued validate -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "path", "words"),
    [
        (
            """\
            [sources.s]
            kind = "mqtt"
            broker = "mqtt://127.0.0.1:1883"
            topics = ["plant/#/t"]
            """,
            4,
            "sources.s.topics",
            ["'#' must be a whole level, and the last"],
        ),
        (
            """\
            [sources.s]
            kind = "mqtt"
            broker = "tcp://127.0.0.1:1883"
            topics = ["a"]
            """,
            3,
            "sources.s.broker",
            ["mqtt://HOST:PORT"],
        ),
        (
            """\
            [sources.s]
            kind = "mqtt"
            broker = "mqtt://h"
            topics = ["a"]
            qos = 2
            """,
            5,
            "sources.s.qos",
            ["0", "1"],
        ),
        (
            """\
            [sources.s]
            kind = "amqp"
            url = "http://127.0.0.1:5672/"
            queue = "q"
            """,
            3,
            "sources.s.url",
            ["amqp://"],
        ),
        (
            """\
            [sources.s]
            kind = "amqp"
            url = "amqp://h/"
            queue = "q"
            prefetch = 0
            """,
            5,
            "sources.s.prefetch",
            ["greater than or equal to 1"],
        ),
        (
            """\
            [sources.s]
            kind = "redis_stream"
            url = "redis://h"
            stream = "s"
            """,
            1,
            "sources.s.group",
            ["required"],
        ),
        (
            """\
            [sources.s]
            kind = "redis_stream"
            url = "redis://h"
            stream = "s"
            group = "g"
            claim_idle = "soon"
            """,
            6,
            "sources.s.claim_idle",
            ["not a duration"],
        ),
        (
            """\
            [pipelines.p.tasks.t]
            kind = "mqtt"
            broker = "mqtt://h"
            topic = "a/+"
            value = 1
            """,
            4,
            "pipelines.p.tasks.t.topic",
            ["may not hold '+'"],
        ),
    ],
    ids=[
        "mqtt-topic",
        "mqtt-scheme",
        "mqtt-qos",
        "amqp-scheme",
        "amqp-prefetch",
        "redis-group",
        "redis-duration",
        "mqtt-publish-topic",
    ],
)
def test_cued_validate_names_file_line_and_key(text, line, path, words):
    with pytest.raises(ConfigError) as info:
        parse_config(dedent(text), file="config.toml")
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.path) == ("config.toml", line, path), problem
    for word in words:
        assert word in problem.message, problem
