"""A broker message's body as event data (one reading for Kafka, NATS and the others),
a NATS message as an event, and a database's values as JSON: whatever the bytes, never
an error, always data that can be stored and shown again."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg

from cued.connectors.nats import message_event
from cued.daemon.core.dbvalues import db_value
from cued.daemon.core.messages import message_value
from cued.daemon.core.untrusted import looks_like_json


@given(st.binary(max_size=2000) | st.none())
def test_any_body_is_json_text_base64_or_invalid_never_an_error(body):
    data, encoding, error = message_value(body)
    json.dumps(data, allow_nan=False)  # storable as it is
    assert encoding in {"json", "text", "base64", "none"}
    if error is not None:
        # only what claims to be JSON (opens { or [) and is not is invalid
        assert body is not None
        assert looks_like_json(body)
        assert encoding == "text"
    if encoding == "base64":
        assert body is not None
        with pytest.raises(UnicodeDecodeError):
            body.decode("utf-8")


@pytest.mark.parametrize(
    ("body", "data", "encoding", "invalid"),
    [
        pytest.param(b'{"a": 1}', {"a": 1}, "json", False, id="json"),
        pytest.param(b"{not json", "{not json", "text", True, id="broken-object"),
        pytest.param(b"[" * 100 + b"]" * 100, None, "text", True, id="too-deep"),
        pytest.param(b"NaN", "NaN", "text", False, id="nan-is-text"),
        pytest.param(b"hello", "hello", "text", False, id="text"),
        pytest.param(b"", "", "text", False, id="empty"),
        pytest.param(b"\xff\xfe", "//4=", "base64", False, id="not-utf8"),
        pytest.param(None, None, "none", False, id="no-body"),
    ],
)
def test_a_body_reads_as_documented(body, data, encoding, invalid):
    got, got_encoding, error = message_value(body)
    if data is not None or body is None:
        assert got == data
    assert got_encoding == encoding
    assert (error is not None) == invalid


HEADER_TEXT = st.text(max_size=50)
JS_REPLY = "$JS.ACK.ORDERS.cued.{delivered}.{seq}.{cseq}.1700000000000000000.0"


@given(
    body=st.binary(max_size=500),
    subject=st.text(min_size=1, max_size=50),
    headers=st.dictionaries(HEADER_TEXT, HEADER_TEXT, max_size=5),
    seq=st.integers(1, 2**63 - 1),
    delivered=st.integers(1, 1000),
)
def test_a_nats_message_of_any_bytes_becomes_an_event(body, subject, headers, seq, delivered):
    msg = Msg(
        _client=None,  # type: ignore[arg-type]
        subject=subject,
        reply=JS_REPLY.format(delivered=delivered, seq=seq, cseq=seq),
        data=body,
        headers=headers or None,
    )
    event = message_event("orders", msg, 0.0)
    assert event.event_id == f"orders:ORDERS:{seq}"  # what a redelivery repeats
    assert event.meta["delivered"] == delivered
    json.dumps([event.data, event.meta], allow_nan=False).encode("utf-8")  # valid UTF-8


DB_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary()
    | st.decimals()
    | st.datetimes()
    | st.dates()
    | st.times()
    | st.timedeltas()
    | st.uuids(),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=10,
)


@given(DB_VALUES)
def test_any_value_a_driver_reads_becomes_json(value):
    binary: list[str] = []
    json.dumps(db_value(value, binary, "c"), allow_nan=False)
    assert binary in ([], ["c"]) or set(binary) == {"c"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(decimal.Decimal("12.50"), 12.5, id="decimal"),
        pytest.param(decimal.Decimal(3), 3, id="whole-decimal"),
        pytest.param(decimal.Decimal("NaN"), "NaN", id="decimal-nan"),
        pytest.param(float("inf"), "inf", id="infinity"),
        pytest.param(datetime.timedelta(minutes=1), 60.0, id="interval"),
        pytest.param(datetime.date(2026, 1, 2), "2026-01-02", id="date"),
        pytest.param(uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001", id="uuid"),
        pytest.param(b"\xff\x00", "/wA=", id="bytes"),
    ],
)
def test_a_database_value_reads_as_documented(value, expected):
    assert db_value(value, [], "c") == expected
