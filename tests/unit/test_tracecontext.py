"""W3C trace context read from outside (webhook and Kafka headers), the ``[telemetry]``
table, and tracing when it is off."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.config import parse_config
from cued.daemon.config.models import TelemetryConfig
from cued.daemon.core.tracecontext import parse_traceparent
from cued.daemon.errors import ConfigError
from cued.daemon.runtime.telemetry import traces_endpoint
from cued.daemon.sdk import current_span, current_traceparent, outgoing_span
from cued.daemon.sdk.tracing import NO_SPAN, Tracing

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(VALID, VALID, id="valid"),
        pytest.param(VALID.encode(), VALID, id="bytes"),
        pytest.param(f" {VALID}\t", VALID, id="surrounding-blanks"),
        pytest.param(VALID.replace("-01", "-00"), VALID.replace("-01", "-00"), id="not-sampled"),
        pytest.param(f"cc{VALID[2:]}-what-comes-later", f"00{VALID[2:]}", id="later-version"),
        pytest.param(f"{VALID}-more", None, id="version-00-with-more"),
        pytest.param(f"ff{VALID[2:]}", None, id="version-ff"),
        pytest.param(VALID.upper(), None, id="upper-case"),
        pytest.param(f"00-{'0' * 32}-00f067aa0ba902b7-01", None, id="zero-trace"),
        pytest.param(f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01", None, id="zero-span"),
        pytest.param(VALID[:-1], None, id="short"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="none"),
        pytest.param(b"\xff" + VALID.encode(), None, id="not-ascii"),
        pytest.param(VALID + "-" + "x" * 1000, None, id="huge"),
    ],
)
def test_a_traceparent_is_read_as_the_spec_says(value, expected):
    assert parse_traceparent(value) == expected


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_header_value_parses_to_a_version_00_traceparent_or_to_none(value):
    found = parse_traceparent(value)
    assert found is None or (len(found) == 55 and parse_traceparent(found) == found)


def test_telemetry_is_off_without_the_table_and_checked_with_it():
    assert parse_config("").telemetry is None
    config = parse_config('[telemetry]\notlp_endpoint = "http://127.0.0.1:4318"\n')
    assert config.telemetry == TelemetryConfig(otlp_endpoint="http://127.0.0.1:4318")
    with pytest.raises(ConfigError) as caught:
        parse_config('[telemetry]\nsample_ratio = 2\notlp_endpont = "x"\n', file="c.toml")
    text = str(caught.value)
    assert "c.toml:2: telemetry.sample_ratio" in text
    assert "c.toml:3: telemetry.otlp_endpont" in text
    assert "otlp_endpoint" in text  # the suggestion


@pytest.mark.parametrize(
    ("configured", "environ", "expected"),
    [
        pytest.param(None, {}, "http://localhost:4318/v1/traces", id="default"),
        pytest.param("http://c:4318", {}, "http://c:4318/v1/traces", id="configured"),
        pytest.param("http://c:4318/", {}, "http://c:4318/v1/traces", id="trailing-slash"),
        pytest.param("http://c/v1/traces", {}, "http://c/v1/traces", id="full"),
        pytest.param(
            None,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://e:4318"},
            "http://e:4318/v1/traces",
            id="env-base",
        ),
        pytest.param(
            None,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://e:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x",
            },
            "http://t:1/x",
            id="env-traces-first",
        ),
        pytest.param(
            "http://c:4318",
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x"},
            "http://c:4318/v1/traces",
            id="config-over-env",
        ),
    ],
)
def test_where_spans_go(configured, environ, expected):
    assert traces_endpoint(TelemetryConfig(otlp_endpoint=configured), environ) == expected


def test_tracing_off_makes_no_spans_and_costs_nothing():
    tracing = Tracing()
    assert not tracing.enabled
    span = tracing.start("x", parent=VALID, attributes={"a": 1})
    assert span is NO_SPAN
    assert span.traceparent is None
    span.set(a=1)
    span.fail("no")
    span.end()
    with tracing.span("y") as inner, tracing.current(inner):
        assert current_span() is NO_SPAN
        assert current_traceparent() is None
    # outside an attempt, a plugin's call has no span either
    with outgoing_span("call") as call:
        assert call is NO_SPAN
