"""Hostile HTTP against a real daemon in a subprocess: bodies, headers, query strings and
cursors of any bytes, made byte by byte on a socket (httpx will not send every header
value). Whatever comes, the answer is 2xx or 4xx with a JSON error body, never 5xx; what
is recorded reads back through the API and the UI; and the daemon still answers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import re
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote_from_bytes

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cued.daemon.assembly import control_socket_path
from cued.daemon.core.untrusted import bounded_id, header_text, page_cursor
from tests.support import raw_http
from tests.support.daemon import Daemon, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

TOKEN = b"Bearer ada-token"
MAX_BODY = 1024 * 1024

CONFIG = """
[http]
listen = "127.0.0.1:{port}"

[daemon]
state = "state.db"
shutdown_grace = "{grace}"

[auth.users.ada]
token = "ada-token"
roles = ["viewer", "operator"]

[sources.any]
kind = "webhook"
path = "/hooks/any"
id_header = "X-Delivery"

[sources.token]
kind = "webhook"
path = "/hooks/token"
signature = "token"
header = "X-Token"
secret = "tok-123"
id_header = "X-Delivery"

[sources.hmac]
kind = "webhook"
path = "/hooks/hmac"
signature = "hmac-sha256"
header = "X-Sig"
secret = "s3cret"

[pipelines.p]
inputs = {{ n = 0 }}
[pipelines.p.tasks.t]
kind = "shell"
command = "{command}"

[[triggers]]
source = "any"
pipeline = "p"
when = "event.data.n > 1"
inputs = {{ n = "{{{{ event.data.n }}}}" }}
"""


@dataclass
class Running:
    daemon: Daemon
    port: int
    state: Path

    @property
    def pid(self) -> int:
        assert self.daemon.process is not None
        return self.daemon.process.pid


def start_daemon(folder: Path, *, grace: str = "1s", command: str = "true") -> Running:
    """``cued run`` in a subprocess on a port of its own; returns once it is ready (its
    sources started)."""
    port = raw_http.free_port()
    config = folder / "config.toml"
    config.write_text(CONFIG.format(port=port, grace=grace, command=command))
    daemon = Daemon(config, folder / "state.db")
    asyncio.run(daemon.start())
    running = Running(daemon, port, folder / "state.db")
    wait_until(lambda: _ready(running), what="the daemon to be ready")
    return running


def _ready(running: Running) -> bool:
    try:
        return raw_http.request(running.port, "GET", "/readyz").status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Running]:
    running = start_daemon(tmp_path_factory.mktemp("hostile"))
    try:
        yield running
    finally:
        assert running.daemon.stop() == 0, running.daemon.log.read_text()


def still_answers(running: Running) -> None:
    assert raw_http.request(running.port, "GET", "/healthz").status == 200


def get(running: Running, target: str) -> raw_http.RawResponse:
    return raw_http.request(running.port, "GET", target, headers=[(b"Authorization", TOKEN)])


def read_back(running: Running, event_id: str, *, source: str) -> dict:
    event: dict = raw_http.read_back(running.port, event_id, source=source, token=b"ada-token")
    return event


# -- webhook bodies ----------------------------------------------------------------------

HOSTILE_BODIES = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 900 + b"1" + b"}" * 900,
    b'{"n": ' + b"9" * 5000 + b"}",
    b'{"n": NaN}',
    b'{"n": 1e999}',
    b'["\\ud800", {"\\udfff": "\\ud83d\\ude00"}]',
    b'{"a": "\xff\xfe"}',
    b"\xef\xbb\xbf" + b'{"n": 2}',
    b"a=1&a=%FF&b=%ED%A0%80&" + b"&".join([b"x=1"] * 1200),
    b"\x00\x01\x02",
]
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/cloudevents+json",
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/octet-stream",
    ]
) | st.text(st.characters(blacklist_categories=["Cc", "Cs"]), max_size=40)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=2048) | st.sampled_from(HOSTILE_BODIES), content_type=CONTENT_TYPES)
def test_any_webhook_body_is_recorded_or_refused_never_a_failure(daemon, body, content_type):
    headers = [] if content_type is None else [(b"Content-Type", content_type.encode())]
    answer = raw_http.request(daemon.port, "POST", "/hooks/any", headers=headers, body=body)
    # 415: JSON sent as a form (a form encoder escapes what opens it)
    refusals = {400: "invalid_body", 415: "unsupported_media_type"}
    assert answer.status == 202 or answer.status in refusals, answer
    if answer.status == 202:
        event_id = answer.json()["event_id"]
    else:
        assert answer.is_json_error(), answer
        message = answer.json()["error"]["message"]
        assert answer.json()["error"]["code"] == refusals[answer.status]
        (event_id,) = re.findall(r"\(recorded as event (\S+)\)$", message)
    event = read_back(daemon, event_id, source="any")
    assert (event["status"] == "invalid") == (answer.status in refusals)
    still_answers(daemon)


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        pytest.param(HOSTILE_BODIES[0], "application/json", "nests deeper", id="deep-array"),
        pytest.param(HOSTILE_BODIES[1], None, "nests deeper", id="deep-object-sniffed"),
        pytest.param(HOSTILE_BODIES[2], "application/json", "more digits", id="huge-integer"),
        pytest.param(HOSTILE_BODIES[3], "application/json", "not a JSON value", id="nan"),
        pytest.param(HOSTILE_BODIES[6], "application/json", "not UTF-8", id="not-utf8"),
        pytest.param(
            HOSTILE_BODIES[8], "application/x-www-form-urlencoded", "1000 fields", id="form"
        ),
    ],
)
def test_a_body_that_cannot_be_kept_is_recorded_invalid_and_answered_400(
    daemon, body, content_type, error
):
    headers = [] if content_type is None else [(b"Content-Type", content_type.encode())]
    answer = raw_http.request(daemon.port, "POST", "/hooks/any", headers=headers, body=body)
    assert answer.status == 400, answer
    assert error in answer.json()["error"]["message"]
    (event_id,) = re.findall(r"recorded as event (\S+)\)$", answer.json()["error"]["message"])
    event = read_back(daemon, event_id, source="any")
    assert event["status"] == "invalid"
    assert error in event["error"]
    assert isinstance(event["data"], str), "the body, as escaped text"


@pytest.mark.parametrize(
    ("body", "content_type", "data"),
    [
        pytest.param(
            b'["\\ud800", "\\ud83d\\ude00"]',
            "application/json",
            ["\\ud800", "\U0001f600"],
            id="json",
        ),
        pytest.param(
            b"a=1&b=caf%C3%A9&c=%FF",
            "application/x-www-form-urlencoded",
            {"a": "1", "b": "caf\u00e9", "c": "\\xff"},
            id="form",
        ),
        pytest.param(b"ok \xff", "text/plain", "ok \\xff", id="text"),
        pytest.param(b' {"n": 0}', None, {"n": 0}, id="sniffed-json"),
    ],
)
def test_a_body_becomes_data_by_its_media_type(daemon, body, content_type, data):
    headers = [] if content_type is None else [(b"Content-Type", content_type.encode())]
    answer = raw_http.request(daemon.port, "POST", "/hooks/any", headers=headers, body=body)
    assert answer.status == 202, answer
    assert read_back(daemon, answer.json()["event_id"], source="any")["data"] == data


# -- headers -----------------------------------------------------------------------------

# What HTTP lets a header value hold (other control characters get the server's own 400)
_VALUE_BYTES = bytes([9, *range(32, 256)])
HEADER_VALUES = st.binary(max_size=300).map(
    lambda raw: bytes(_VALUE_BYTES[b % len(_VALUE_BYTES)] for b in raw)
)


def sent_as(value: bytes) -> str:
    """What the daemon keeps of a header value sent as ``value``."""
    return header_text(value.strip(b" \t").decode("latin-1"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=HEADER_VALUES, delivery=HEADER_VALUES)
def test_header_values_of_any_bytes_are_kept_as_text_and_the_token_is_not(daemon, value, delivery):
    headers = [
        (b"X-Token", b"tok-123"),
        (b"X-Anything", value),
        (b"X-Delivery", delivery),
        (b"Cookie", b"session=secret"),
    ]
    answer = raw_http.request(daemon.port, "POST", "/hooks/token", headers=headers, body=b"{}")
    assert answer.status in (200, 202), answer  # 200: a delivery id sent before
    event_id = answer.json()["event_id"]
    if sent_as(delivery):
        assert event_id == f"token:{bounded_id(sent_as(delivery))}"
    event = read_back(daemon, event_id, source="token")
    kept = event["meta"]["headers"]
    assert "x-token" not in kept
    assert "cookie" not in kept
    if answer.status == 202:
        assert kept["x-anything"] == sent_as(value)
    still_answers(daemon)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=HEADER_VALUES)
def test_a_signature_or_token_of_any_bytes_is_only_wrong(daemon, value):
    assume(value.strip(b" \t").removeprefix(b"Bearer ").strip() != b"tok-123")
    for path, header in (("/hooks/token", b"X-Token"), ("/hooks/hmac", b"X-Sig")):
        answer = raw_http.request(
            daemon.port, "POST", path, headers=[(header, value)], body=b'{"n": 1}'
        )
        assert answer.status == 401, answer
        assert answer.is_json_error()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("sha256=\u00e9".encode(), id="utf8"),
        pytest.param(b"sha256=\xff\xfe", id="latin1"),
        pytest.param(b"SHA256=AB", id="upper"),
    ],
)
def test_a_non_ascii_signature_is_401_not_500(daemon, value):
    answer = raw_http.request(
        daemon.port, "POST", "/hooks/hmac", headers=[(b"X-Sig", value)], body=b"{}"
    )
    assert answer.status == 401, answer
    assert "does not match the body" in answer.json()["error"]["message"]


def test_a_right_hmac_signature_is_accepted_and_not_kept(daemon):
    body = b'{"n": 1}'
    digest = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest().upper()
    answer = raw_http.request(
        daemon.port,
        "POST",
        "/hooks/hmac",
        headers=[(b"X-Sig", f"sha256={digest}".encode())],
        body=body,
    )
    assert answer.status == 202, answer
    event = read_back(daemon, answer.json()["event_id"], source="hmac")
    assert "x-sig" not in event["meta"]["headers"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.binary(max_size=100).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"")))
def test_a_header_of_any_bytes_is_kept_as_text_or_refused_by_the_server(daemon, value):
    answer = raw_http.request(
        daemon.port, "POST", "/hooks/any", headers=[(b"X-Anything", value)], body=b"{}"
    )
    if answer.status == 400:  # control characters: the server's own answer (not JSON)
        assert re.search(rb"[\x00-\x08\x0a-\x1f]", value), answer
    else:
        assert answer.status == 202, answer
        event = read_back(daemon, answer.json()["event_id"], source="any")
        assert event["meta"]["headers"]["x-anything"] == sent_as(value)
    still_answers(daemon)


# -- query strings and cursors -----------------------------------------------------------

HOSTILE_CURSORS = [
    b"[" + b"9" * 400 + b', "e"]',
    b"[" + b"9" * 5000 + b', "e"]',
    b'[NaN, "e"]',
    b'[1e999, "e"]',
    b'[[[[1]]], "e"]',
    b"[" * 5000 + b"]" * 5000,
    b'[1, "\\ud800"]',
    b'[true, "e"]',
]
CURSORS = (
    st.sampled_from(HOSTILE_CURSORS).map(lambda d: base64.urlsafe_b64encode(d).rstrip(b"="))
    | st.binary(max_size=64).map(lambda d: base64.urlsafe_b64encode(d).rstrip(b"="))
    | st.builds(
        lambda at, key: page_cursor(at, key.encode("utf-8", "backslashreplace").decode()).encode(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    | st.binary(max_size=100)
)
QUERIES = {
    "/api/v1/events": ["source", "status", "limit", "cursor"],
    "/api/v1/runs": ["pipeline", "state", "created_after", "created_before", "limit", "cursor"],
    "/api/v1/assets/sales": ["limit", "cursor"],
    "/ui/events": ["source", "status", "before"],
    "/ui/runs": ["pipeline", "state", "before"],
}


@st.composite
def queries(draw) -> str:
    path = draw(st.sampled_from(sorted(QUERIES)))
    names = draw(st.lists(st.sampled_from(QUERIES[path]), max_size=4))
    values = [draw(CURSORS if n in ("cursor", "before") else st.binary(max_size=60)) for n in names]
    query = "&".join(
        f"{n}={quote_from_bytes(v, safe='')}" for n, v in zip(names, values, strict=True)
    )
    return f"{path}?{query}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=queries())
def test_any_query_string_is_answered_200_or_a_json_4xx(daemon, target):
    answer = get(daemon, target)
    if target.startswith("/ui/"):
        assert answer.status == 200, answer
    else:
        assert answer.status in (200, 404, 422), answer
        if answer.status != 200:
            assert answer.is_json_error(), answer


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_id=st.binary(max_size=100))
def test_any_event_id_is_found_or_404(daemon, event_id):
    quoted = quote_from_bytes(event_id, safe="")
    for target in (f"/api/v1/events/{quoted}", f"/api/v1/events/{quoted}/lineage"):
        answer = get(daemon, target)
        assert answer.status in (200, 404), answer
        if answer.status == 404:
            assert answer.is_json_error()
    assert get(daemon, f"/ui/events/{quoted}").status in (200, 404)


def test_the_ui_pages_events_with_the_cursor_it_gives(daemon):
    for n in range(60):
        body = json.dumps({"page": n}).encode()
        assert raw_http.request(daemon.port, "POST", "/hooks/any", body=body).status == 202
    first = get(daemon, "/ui/events?source=any")
    (older,) = re.findall(rb'<a href="([^"]+)" rel="next">', first.body)
    second = get(daemon, older.replace(b"&amp;", b"&").decode())
    assert second.status == 200
    shown = [re.findall(rb'data-event="([^"]+)"', page.body) for page in (first, second)]
    assert len(shown[0]) == 50
    assert shown[1]
    assert not set(shown[0]) & set(shown[1]), "the second page goes on where the first ended"


@pytest.mark.parametrize("cursor", HOSTILE_CURSORS)
def test_a_crafted_events_cursor_is_422(daemon, cursor):
    encoded = base64.urlsafe_b64encode(cursor).rstrip(b"=").decode()
    answer = get(daemon, f"/api/v1/events?cursor={encoded}")
    if cursor == b'[1, "\\ud800"]':
        assert answer.status == 200  # a position, of no event: the page after it
    else:
        assert answer.status == 422, answer
        assert answer.json()["error"]["message"].startswith("cursor ")


# -- what an older daemon kept -----------------------------------------------------------


def test_events_an_older_daemon_kept_unrepaired_read_back(daemon):
    """Before the untrusted module, a body's lone surrogates and values nested ~900 deep
    were kept as they came; every page showing them failed."""
    deep = '{"a": ' * 900 + "1" + "}" * 900
    rows = [
        ("old:deep", deep, json.dumps({"headers": {"x": "ok"}})),
        ("old:surrogates", '["\\ud800", {"\\udc80k": "v"}]', '{"headers": {"x": "\\udfff"}}'),
        ("old:meta-deep", "null", '{"headers": ' + deep + "}"),
    ]
    with sqlite3.connect(daemon.state, timeout=10) as db:
        db.executemany(
            "INSERT INTO events VALUES (?, 'old', ?, 'unmatched', ?, ?, '[]', NULL)",
            [(event_id, time.time() + 3600, data, meta) for event_id, data, meta in rows],
        )
    for event_id, _, _ in rows:
        read_back(daemon, event_id, source="old")
    surrogates = get(daemon, "/api/v1/events/old%3Asurrogates").json()
    assert surrogates["data"] == ["\\ud800", {"\\udc80k": "v"}]
    assert surrogates["meta"]["headers"] == {"x": "\\udfff"}
    deep_data = get(daemon, "/api/v1/events/old%3Adeep").json()["data"]
    for _ in range(64):
        deep_data = deep_data["a"]
    assert deep_data.endswith("(cut: nests deeper than 64 levels)")
    assert get(daemon, "/ui/events").status == 200, "the first page of everyone's events"


def test_runs_an_older_daemon_kept_unrepaired_read_back(daemon):
    """Before API bodies went through the untrusted module, a trigger's lone surrogates and
    values nested ~900 deep were kept as they came; every list showing the run failed."""
    deep = '{"a": ' * 900 + "1" + "}" * 900
    at = time.time() + 3600
    with sqlite3.connect(daemon.state, timeout=10) as db:
        db.executemany(
            "INSERT INTO runs (run_id, pipeline, state, inputs, created_at, started_at, ended_at) "
            "VALUES (?, 'p', 'succeeded', ?, ?, ?, ?)",
            [
                ("r-old-surrogate", '{"n": "\\ud800"}', at, at, at),
                ("r-old-deep", '{"n": ' + deep + "}", at, at, at),
                ("r-old-nan", '{"n": NaN}', at, at, at),
            ],
        )
        db.execute(
            "INSERT INTO task_instances VALUES ('r-old-deep', 't', 't', NULL, 'succeeded', 1, "
            "NULL, ?, 0)",
            (at,),
        )
        db.execute(
            "INSERT INTO attempts VALUES ('r-old-deep', 't', 1, 'succeeded', ?, ?, NULL, ?, "
            "NULL, NULL)",
            (at, at, '["\\udfff", ' + deep + "]"),
        )
        db.execute(
            "INSERT INTO approvals VALUES ('r-old-deep', 't', 1, 'ok?', '[\"ada\"]', 1, "
            "'reject', ?, ?, NULL, 'approved', ?)",
            (deep, at, at),
        )
        db.execute(
            "INSERT INTO decisions VALUES ('r-old-deep', 't', 1, 'ada', 'approve', ?, 'fine', ?)",
            ('{"k": "\\udc80"}', at),
        )
    listed = get(daemon, "/api/v1/runs?pipeline=p")
    assert listed.status == 200, listed
    inputs = {run["run_id"]: run["inputs"] for run in listed.json()["items"]}
    assert inputs["r-old-surrogate"] == {"n": "\\ud800"}
    assert inputs["r-old-nan"] == {"n": None}
    deep_input = inputs["r-old-deep"]["n"]
    for _ in range(63):
        deep_input = deep_input["a"]
    assert deep_input.endswith("(cut: nests deeper than 64 levels)")
    detail = get(daemon, "/api/v1/runs/r-old-deep")
    assert detail.status == 200, detail
    assert detail.json()["tasks"][0]["attempts"][0]["output"][0] == "\\udfff"
    assert detail.json()["approvals"][0]["decisions"][0]["payload"] == {"k": "\\udc80"}
    assert get(daemon, "/ui/runs").status == 200, "the first page of everyone's runs"


# -- API request bodies -----------------------------------------------------------------

HOSTILE_INPUTS = [
    pytest.param(b'"\\ud800"', 201, "\\ud800", id="lone-surrogate"),
    pytest.param(b'{"\\udc80": ["\\ud83d\\ude00"]}', 201, {"\\udc80": ["\U0001f600"]}, id="key"),
    pytest.param(b"[" * 900 + b"]" * 900, 400, "nests deeper than 64 levels", id="deep"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, 400, "nests deeper", id="deeper-than-stack"),
    pytest.param(b"NaN", 400, "NaN is not a JSON value", id="nan"),
    pytest.param(b"-Infinity", 400, "-Infinity is not a JSON value", id="infinity"),
    pytest.param(b"1e999", 400, "too large for a float", id="float-overflow"),
    pytest.param(b"9" * 5000, 400, "more digits", id="huge-integer"),
    pytest.param(b'"\xff"', 400, "not UTF-8", id="not-utf8"),
]


@pytest.mark.parametrize(("value", "status", "kept"), HOSTILE_INPUTS)
def test_a_trigger_keeps_its_inputs_repaired_or_refuses_them_with_a_json_400(
    daemon, value, status, kept
):
    headers = [(b"Authorization", TOKEN), (b"Content-Type", b"application/json")]
    answer = raw_http.request(
        daemon.port,
        "POST",
        "/api/v1/pipelines/p/runs",
        headers=headers,
        body=b'{"inputs": {"n": ' + value + b"}}",
    )
    assert answer.status == status, answer
    if status == 400:
        assert answer.json()["error"]["code"] == "invalid_body"
        assert kept in answer.json()["error"]["message"]
    else:
        run = get(daemon, f"/api/v1/runs/{answer.json()['run_id']}").json()
        assert run["inputs"] == {"n": kept}
    assert get(daemon, "/api/v1/runs").status == 200


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/runs/r-none/retry",
        "/api/v1/runs/r-none/tasks/t/approve",
        "/api/v1/runs/r-none/tasks/t/reject",
        "/api/v1/session",
    ],
)
def test_every_api_body_is_refused_with_a_json_400_when_it_cannot_be_kept(daemon, target):
    bodies = [b'{"comment": "\\ud800", "x": NaN}', b"[" * 900]
    for body, content_type in itertools.product(bodies, [b"application/json", None]):
        headers = [(b"Authorization", TOKEN)]
        if content_type is not None:  # read as JSON too (by FastAPI if not strict)
            headers.append((b"Content-Type", content_type))
        answer = raw_http.request(daemon.port, "POST", target, headers=headers, body=body)
        assert answer.status == 400, answer
        assert answer.json()["error"]["code"] == "invalid_body"


# -- bodies too large, before any token is checked -------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    chunk = b"x" * size
    for _ in range(total // size):
        yield chunk


def test_a_150_mb_body_with_a_wrong_token_is_413_early_and_the_daemon_does_not_grow(daemon):
    headers = [(b"Authorization", b"Bearer wrong"), (b"Content-Type", b"application/json")]
    # once, so what the first such request allocates for good is not counted below
    raw_http.send_streaming(
        daemon.port,
        "POST",
        "/api/v1/pipelines/p/runs",
        headers=headers,
        chunks=chunks(4 * MAX_BODY),
        chunked=True,
    )
    before = rss_bytes(daemon.pid)
    answer, sent = raw_http.send_streaming(
        daemon.port,
        "POST",
        "/api/v1/pipelines/p/runs",
        headers=headers,
        chunks=chunks(150 * MAX_BODY),
        chunked=True,
    )
    grown = rss_bytes(daemon.pid) - before
    assert answer is not None
    assert answer.status == 413, answer
    assert answer.is_json_error()
    assert sent < 150 * MAX_BODY // 2, "answered long before the body was sent"
    assert grown < MAX_BODY + 8 * 1024 * 1024, f"the daemon grew by {grown} bytes"
    still_answers(daemon)


@pytest.mark.parametrize(
    "path", ["/api/v1/pipelines/p/runs", "/ui/events", "/hooks/any", "/nowhere"]
)
def test_a_declared_length_over_the_cap_is_413_before_any_of_the_body_is_sent(daemon, path):
    # the head alone: an answer that waited for the body would never come
    answer = raw_http.head_only(
        daemon.port, "POST", path, [(b"Content-Length", str(150 * MAX_BODY).encode())]
    )
    assert answer.status == 413, answer
    assert answer.json()["error"]["code"] == "body_too_large"


def test_the_control_socket_caps_bodies_too(daemon):
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(control_socket_path(daemon.state))),
        base_url="http://cued",
    ) as client:
        answer = client.post("/api/v1/pipelines/p/runs", content=b" " * (MAX_BODY + 1))
        small = client.post("/api/v1/pipelines/p/runs", json={"inputs": {"n": 0}})
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "body_too_large"
    assert small.status_code == 201


# -- restart ---------------------------------------------------------------------------


def test_after_hostile_bodies_a_killed_daemon_starts_again_cleanly(tmp_path):
    running = start_daemon(tmp_path)
    recorded = []
    try:
        for body in HOSTILE_BODIES:
            answer = raw_http.request(running.port, "POST", "/hooks/any", body=body)
            assert answer.status in (202, 400)
            recorded.append(answer)
    finally:
        running.daemon.kill9()
    asyncio.run(running.daemon.start())
    try:
        wait_until(lambda: _ready(running), what="the restarted daemon to be ready")
        page = get(running, "/api/v1/events?source=any&limit=500").json()
        assert len(page["items"]) == len(HOSTILE_BODIES)
        for item in page["items"]:
            read_back(running, item["event_id"], source="any")
    finally:
        assert running.daemon.stop() == 0


# -- stopping ----------------------------------------------------------------------------


def test_while_the_daemon_drains_after_sigterm_a_webhook_answers_503_not_404(tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    running = start_daemon(
        tmp_path,
        grace="60s",
        command=f"touch {started}; while [ ! -f {release} ]; do sleep 0.02; done",
    )
    json_type = [(b"Content-Type", b"application/json")]
    try:
        first = raw_http.request(
            running.port, "POST", "/hooks/any", headers=json_type, body=b'{"n": 2}'
        )
        assert first.json()["runs"], first
        wait_until(started.exists, what="the task to start")  # it holds the drain open
        assert running.daemon.process is not None
        running.daemon.process.send_signal(signal.SIGTERM)
        answers: list[raw_http.RawResponse] = []

        def refused() -> bool:
            answers.append(
                raw_http.request(running.port, "POST", "/hooks/any", headers=json_type, body=b"{}")
            )
            return answers[-1].status != 202

        wait_until(refused, what="the webhook to stop taking events")
        last = answers[-1]
        assert last.status == 503, last
        assert last.headers[b"retry-after"] == b"2"
        assert last.json()["error"]["code"] == "unavailable"
        assert get(running, "/api/v1/events?source=any").status == 200, "the API still answers"
    finally:
        release.touch()
        assert running.daemon.stop() == 0
