"""The ``llm`` task kind end to end: the real daemon, a fake chat completions server on
loopback, what it was sent, what the attempts recorded, and what downstream tasks saw."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from cued.daemon.errors import ConfigError
from cued.daemon.logs import configure_logging
from cued.plugins.llm import _answer_problems, _retry_after_s, _schema_validator
from tests.support import probes
from tests.support.fake_llm import FakeLlm, Reply
from tests.support.http_server import serve_app
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.running import daemon_running

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from cued.daemon.assembly import DaemonInfo
    from cued.daemon.config import Config
    from cued.daemon.store import AttemptRow, InstanceRow, RunRow

SECRET = "sk-test-5f1c9e0b7a2d4c68"

GREETING = {
    "type": "object",
    "title": "greeting",
    "properties": {
        "greeting": {"type": "string", "minLength": 1},
        "tone": {"enum": ["warm", "formal"]},
    },
    "required": ["greeting", "tone"],
    "additionalProperties": False,
}


def toml(value: Any) -> str:
    """``value`` as a one-line TOML value (inline tables may not span lines)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def task(name: str, **keys: Any) -> str:
    """A ``[pipelines.p.tasks.NAME]`` table; an ``llm`` task unless ``kind`` says else."""
    if keys.setdefault("kind", "llm") == "llm":
        keys.setdefault("model", "test-model")
        keys.setdefault("messages", [{"role": "user", "content": "Say hi"}])
    return f"[pipelines.p.tasks.{name}]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in keys.items())


def pipeline(*tasks: str, inputs: dict[str, Any] | None = None) -> str:
    head = f"inputs = {toml(inputs)}\n" if inputs else ""
    return '[http]\nlisten = "127.0.0.1:0"\n[pipelines.p]\n' + head + "\n".join(tasks)


@dataclass
class Outcome:
    """One finished run as recorded."""

    row: RunRow
    attempts: dict[str, list[AttemptRow]]
    instances: dict[str, InstanceRow]
    cost: float
    logs: list[tuple[str, str, str]]
    """(task, stream, line) of the run's live log"""


async def run(info: DaemonInfo) -> Outcome:
    with anyio.fail_after(10):
        run_id = (await info.runner.start_run("p")).run_id
        row = await info.runner.wait(run_id)
    store = info.runner.store
    attempts: dict[str, list[AttemptRow]] = {}
    for attempt in await store.get_attempts(run_id):
        attempts.setdefault(attempt.key, []).append(attempt)
    instances = {i.key: i for i in await store.get_instances(run_id)}
    logs = [(r.key, r.stream, r.line) for r in await store.get_log_lines(run_id)]
    return Outcome(row, attempts, instances, await store.costs(run_id=run_id), logs)


async def run_once(
    make_config: Callable[[str], Config], fake: FakeLlm, *tasks: str, **kwargs: Any
) -> Outcome:
    async with serve_app(fake.app) as base:
        config = make_config(pipeline(*tasks, **kwargs).replace("{base}", base))
        async with daemon_running(config) as info:
            return await run(info)


BASE = "{base}/v1"  # replaced by the fake server's address in run_once


async def test_templated_messages_reach_the_server_and_structured_output_flows_downstream(
    make_config,
):
    probe = probes.reset()
    fake = FakeLlm(Reply.tokens('{"greeting": "Bonjour Ada", "tone": "warm"}', 1200, 300))
    messages = [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Greet {{ tasks.who.output }} in {{ inputs.lang }}"},
    ]
    out = await run_once(
        make_config,
        fake,
        task("who", kind="python", function="tests.support.probes:record", args={"name": "Ada"}),
        task(
            "ask",
            needs=["who"],
            base_url=BASE,
            messages=messages,
            response_schema=GREETING,
            temperature=0.2,
            max_tokens=50,
            price_per_1k_input=0.5,
            price_per_1k_output=1.5,
        ),
        task(
            "use",
            kind="python",
            needs=["ask"],
            function="tests.support.probes:record",
            args={"name": "{{ tasks.ask.output.json.greeting }}"},
        ),
        inputs={"lang": "French"},
    )

    assert out.row.state == "succeeded"
    (request,) = fake.requests
    assert request.body == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "Greet Ada in French"},
        ],
        "temperature": 0.2,
        "max_tokens": 50,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "greeting", "schema": GREETING, "strict": True},
        },
    }
    assert request.headers["idempotency-key"] == f"{out.row.run_id}/ask"
    assert "authorization" not in request.headers
    assert probe.calls == ["Ada", "Bonjour Ada"]
    usage = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}
    (attempt,) = out.attempts["ask"]
    assert attempt.output == {
        "content": '{"greeting": "Bonjour Ada", "tone": "warm"}',
        "json": {"greeting": "Bonjour Ada", "tone": "warm"},
        "model": "test-model",
        "usage": usage,
        "cost": pytest.approx(1.2 * 0.5 + 0.3 * 1.5),
        "finish_reason": "stop",
    }
    assert attempt.usage == usage
    assert attempt.cost == pytest.approx(1.05)
    assert out.cost == pytest.approx(1.05)
    assert ("ask", "llm", "tokens: 1200 prompt, 300 completion, 1500 total; cost 1.05") in out.logs


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(
            '{"greeting": "", "tone": "rude", "extra": 1}',
            "the answer does not match response_schema: greeting: '' should be non-empty; "
            "tone: 'rude' is not one of ['warm', 'formal']; (the answer): Additional "
            "properties are not allowed ('extra' was unexpected)",
            id="invalid",
        ),
        pytest.param("Sure! Here is", "the answer is not JSON (Expecting value", id="not-json"),
    ],
)
async def test_structured_output_that_does_not_fit_fails_the_attempt_and_a_retry_can_succeed(
    make_config, answer, expected
):
    fake = FakeLlm(
        Reply.tokens(answer, 1000, 0),
        Reply.tokens('{"greeting": "hi", "tone": "formal"}', 2000, 1000),
    )
    out = await run_once(
        make_config,
        fake,
        task(
            "ask",
            base_url=BASE,
            response_schema=GREETING,
            price_per_1k_input=0.01,
            price_per_1k_output=0.03,
            retries=1,
            retry_backoff="10ms",
        ),
    )

    assert out.row.state == "succeeded"
    first, second = out.attempts["ask"]
    assert first.state == "failed"
    assert first.error is not None
    assert first.error.startswith(expected)
    assert second.state == "succeeded"
    assert second.output["json"] == {"greeting": "hi", "tone": "formal"}
    # the invalid answer was paid for, and is recorded with its attempt
    assert first.usage == {"prompt_tokens": 1000, "completion_tokens": 0, "total_tokens": 1000}
    assert first.cost == pytest.approx(0.01)
    assert second.cost == pytest.approx(0.02 + 0.03)
    assert out.cost == pytest.approx(0.06)
    assert len({r.headers["idempotency-key"] for r in fake.requests}) == 1


async def test_a_429_is_retried_within_the_attempt_after_retry_after(make_config):
    fake = FakeLlm(Reply(status=429, headers={"Retry-After": "0.2"}), Reply("fine"))
    out = await run_once(make_config, fake, task("ask", base_url=BASE))

    assert out.row.state == "succeeded"
    assert [a.state for a in out.attempts["ask"]] == ["succeeded"]
    assert out.attempts["ask"][0].output["content"] == "fine"
    first, second = fake.requests
    assert second.at - first.at >= 0.19
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]


async def test_a_500_is_retried_within_the_attempt_after_a_backoff(make_config):
    fake = FakeLlm(Reply(status=500), Reply("fine"))
    out = await run_once(make_config, fake, task("ask", base_url=BASE))

    assert out.row.state == "succeeded"
    assert [a.state for a in out.attempts["ask"]] == ["succeeded"]
    first, second = fake.requests
    assert second.at - first.at >= 0.2  # between half and all of the first 0.5 s backoff


async def test_after_max_429_retries_the_attempt_fails_and_the_task_retries(make_config):
    now = {"Retry-After": "0"}
    fake = FakeLlm(
        Reply(status=429, headers=now, error="slow down"),
        Reply(status=503, headers=now, error="overloaded"),
        Reply("fine"),
    )
    out = await run_once(
        make_config,
        fake,
        task("ask", base_url=BASE, max_429_retries=1, retries=1, retry_backoff="10ms"),
    )

    assert out.row.state == "succeeded"
    first, second = out.attempts["ask"]
    assert first.state == "failed"
    assert first.error == (f"POST {fake_url(fake)!r} answered 503: 'overloaded' (tried 2 times)")
    assert second.state == "succeeded"
    assert len(fake.requests) == 3


def fake_url(fake: FakeLlm) -> str:
    host = fake.requests[0].headers["host"]
    return f"http://{host}/v1/chat/completions"


async def test_a_400_fails_for_good_without_retrying(make_config):
    fake = FakeLlm(Reply(status=400, error="The model 'nope' does not exist"))
    out = await run_once(
        make_config, fake, task("ask", base_url=BASE, model="nope", retries=3, retry_backoff="10ms")
    )

    assert out.row.state == "failed"
    assert len(fake.requests) == 1
    (attempt,) = out.attempts["ask"]
    assert attempt.error == (
        f"POST {fake_url(fake)!r} answered 400: \"The model 'nope' does not exist\""
    )
    assert out.instances["ask"].state == "failed"
    assert attempt.cost is None


async def test_the_run_cost_cap_stops_the_second_call_of_a_run(make_config):
    fake = FakeLlm(default=Reply.tokens("ok", 20, 0))
    priced = {"base_url": BASE, "price_per_1k_input": 1.0, "max_cost_per_run": 0.01}
    out = await run_once(
        make_config,
        fake,
        task("first", **priced),
        task("second", needs=["first"], retries=2, retry_backoff="10ms", **priced),
    )

    assert out.row.state == "failed"
    assert [a.state for a in out.attempts["first"]] == ["succeeded"]
    (refused,) = out.attempts["second"]
    assert refused.error == "cost cap reached: this run spent 0.02 of max_cost_per_run 0.01"
    assert refused.cost is None
    assert len(fake.requests) == 1
    assert out.cost == pytest.approx(0.02)


async def test_the_daily_cost_cap_counts_every_run_of_the_day(make_config):
    fake = FakeLlm(default=Reply.tokens("ok", 0, 10))
    text = pipeline(task("ask", base_url=BASE, price_per_1k_output=2.0, max_cost_per_day=0.01))
    async with (
        serve_app(fake.app) as base,
        daemon_running(make_config(text.replace("{base}", base))) as info,
    ):
        spent = await run(info)
        refused = await run(info)

    assert spent.row.state == "succeeded"
    assert spent.cost == pytest.approx(0.02)
    assert refused.row.state == "failed"
    assert refused.attempts["ask"][0].error == (
        "cost cap reached: today (since midnight UTC) spent 0.02 of max_cost_per_day 0.01"
    )
    assert len(fake.requests) == 1


@pytest.fixture
def debug_logs() -> Iterator[None]:
    """Every level reaches the logs, so that a test can look through all of them."""
    configure_logging("debug", json=True)
    yield
    configure_logging("warning", json=True)


@pytest.mark.usefixtures("debug_logs")
@pytest.mark.parametrize("source", ["env", "file"])
async def test_the_api_key_is_sent_as_bearer_and_never_logged(
    make_config, monkeypatch, tmp_path, source
):
    monkeypatch.setenv("CUED_TEST_LLM_KEY", SECRET)
    (tmp_path / "key.txt").write_text(SECRET + "\n")
    api_key = "env:CUED_TEST_LLM_KEY" if source == "env" else f"file:{tmp_path / 'key.txt'}"
    fake = FakeLlm(
        Reply(status=429, headers={"Retry-After": "0"}),
        Reply("fine"),
        Reply(status=401, error="Incorrect API key provided: sk-test-****4c68"),
    )
    with capture_logs() as logs:
        out = await run_once(
            make_config,
            fake,
            task("ask", base_url=BASE, api_key=api_key),
            task("again", needs=["ask"], base_url=BASE, api_key=api_key),
        )

    assert out.attempts["ask"][0].state == "succeeded"
    assert out.attempts["again"][0].state == "failed"
    assert [r.headers["authorization"] for r in fake.requests] == [f"Bearer {SECRET}"] * 3
    events = {entry["event"] for entry in logs}
    assert {"llm_retrying", "llm_answered", "task_failed"} <= events
    assert SECRET not in repr(logs)


async def test_an_unset_key_variable_fails_for_good_without_calling(make_config):
    fake = FakeLlm()
    out = await run_once(
        make_config,
        fake,
        task("ask", base_url=BASE, api_key="env:CUED_TEST_UNSET_KEY", retries=2),
    )

    (attempt,) = out.attempts["ask"]
    assert attempt.error == "api_key: environment variable 'CUED_TEST_UNSET_KEY' is not set"
    assert fake.requests == []


# -- checked with the configuration --------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        pytest.param(
            {"response_schema": {"type": "object", "properties": {"a": {"minLenght": 1}}}},
            "response_schema: at '/properties/a': 'minLenght' is not a keyword of JSON Schema",
            id="unknown-keyword",
        ),
        pytest.param(
            {"response_schema": {"type": "object", "properties": {"a": {"oneOf": []}}}},
            "response_schema: at '/properties/a/oneOf': [] should be non-empty",
            id="invalid-schema",
        ),
        pytest.param(
            {"api_key": "file:secrets/key.txt"},
            "api_key: 'file:' needs an absolute path, not 'secrets/key.txt'",
            id="relative-key-file",
        ),
        pytest.param(
            {"messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role:",
            id="unknown-role",
        ),
    ],
)
def test_parameters_are_checked_with_the_configuration(make_config, keys, problem):
    with pytest.raises(ConfigError) as caught:
        make_config(pipeline(task("ask", base_url="http://127.0.0.1:1/v1", **keys)))
    assert f"pipelines.p.tasks.ask.{problem}" in str(caught.value)


# -- JSON Schema checked by the jsonschema library -------------------------------------------------------

ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "note": {"type": ["string", "null"]},
        "lines": {
            "type": "array",
            "minItems": 1,
            "items": {"$ref": "#/$defs/line"},
        },
        "status": {"const": "open"},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "meta": {"type": "object", "additionalProperties": {"type": "number"}},
    },
    "required": ["id", "lines"],
    "$defs": {
        "line": {
            "type": "object",
            "properties": {"sku": {"type": "string"}, "qty": {"type": "number", "maximum": 10}},
            "required": ["sku", "qty"],
            "additionalProperties": False,
        }
    },
}


@pytest.mark.parametrize(
    ("answer", "errors"),
    [
        pytest.param({"id": 1, "lines": [{"sku": "a", "qty": 2.5}]}, [], id="minimal"),
        pytest.param(
            {
                "id": 7,
                "note": None,
                "lines": [{"sku": "a", "qty": 2}],
                "status": "open",
                "code": "ABC",
                "meta": {"w": 1.5},
                "unknown": "allowed",
            },
            [],
            id="full",
        ),
        pytest.param(
            {"id": "7", "lines": []},
            ["id: '7' is not of type 'integer'", "lines: [] should be non-empty"],
            id="no-conversion",
        ),
        pytest.param(
            {"id": 0, "lines": [{"sku": "a", "qty": 11, "x": 1}], "status": "closed"},
            [
                "id: 0 is less than the minimum of 1",
                "lines.0.qty: 11 is greater than the maximum of 10",
                "lines.0: Additional properties are not allowed ('x' was unexpected)",
                "status: 'open' was expected",
            ],
            id="bounds-extra-const",
        ),
        pytest.param(
            {"id": True, "lines": [{"sku": "a", "qty": 1}], "code": "abcd", "meta": {"w": "1"}},
            [
                "id: True is not of type 'integer'",
                "code: 'abcd' does not match '^[A-Z]{3}$'",
                "meta.w: '1' is not of type 'number'",
            ],
            id="bool-pattern-map",
        ),
        pytest.param(
            {"lines": [{"sku": "a", "qty": 1}], "note": 3},
            [
                "note: 3 is not of type 'string', 'null'",
                "(the answer): 'id' is a required property",
            ],
            id="required-nullable",
        ),
        pytest.param(
            {"id": 2.0, "lines": [{"sku": "a", "qty": 1}]}, [], id="integral-float-is-integer"
        ),
        pytest.param(
            ["x" * 300],
            ["(the answer): ['" + "x" * 198 + "..."],
            id="long-value-clipped",
        ),
    ],
)
def test_answers_are_checked_as_json_schema_does(answer, errors):
    assert _answer_problems(_schema_validator(json.dumps(ORDER)), answer) == errors


#: A tree of any depth: a recursive ``$ref``.
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["name"],
        }
    },
    "$ref": "#/$defs/node",
}


@pytest.mark.parametrize(
    ("schema", "answer", "errors"),
    [
        pytest.param(
            TREE,
            {"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}]},
            [],
            id="recursive-ref",
        ),
        pytest.param(
            TREE,
            {"name": "a", "children": [{"name": "b", "children": [{"name": 3}]}]},
            ["children.0.children.0.name: 3 is not of type 'string'"],
            id="recursive-ref-deep-error",
        ),
        pytest.param(
            {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]},
            3,
            [
                (
                    "(the answer): 3 is valid under each of {'type': 'number', 'minimum': 0}, "
                    "{'type': 'integer'}"
                )
            ],
            id="one-of",
        ),
        pytest.param(
            {
                "type": "object",
                "properties": {"kind": {"enum": ["a", "b"]}},
                "patternProperties": {"^x-": {"type": "integer"}},
                "additionalProperties": {"type": "string"},
            },
            {"kind": "a", "x-n": "1", "other": 2},
            ["x-n: '1' is not of type 'integer'", "other: 2 is not of type 'string'"],
            id="pattern-and-additional-properties-beside-properties",
        ),
        pytest.param(
            {
                "if": {"properties": {"kind": {"const": "refund"}}},
                "then": {"required": ["amount"]},
            },
            {"kind": "refund"},
            ["(the answer): 'amount' is a required property"],
            id="if-then",
        ),
        pytest.param(
            {"type": "array", "contains": {"type": "integer"}, "minContains": 2},
            [1, "a"],
            [
                (
                    "(the answer): Too few items match the given schema (expected at least 2 but "
                    "only 1 matched)"
                )
            ],
            id="min-contains",
        ),
        pytest.param(
            {"type": "array", "prefixItems": [{"type": "string"}], "uniqueItems": True},
            ["a", 1, 1],
            ["(the answer): ['a', 1, 1] has non-unique elements"],
            id="prefix-items-unique",
        ),
    ],
)
def test_json_schema_beyond_the_old_hand_compiled_subset(schema, answer, errors):
    assert _answer_problems(_schema_validator(json.dumps(schema)), answer) == errors


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        pytest.param(
            {"items": {"maxItem": 3}},
            "at '/items': 'maxItem' is not a keyword of JSON Schema Draft 2020-12, so it "
            "would check nothing",
            id="unknown-keyword",
        ),
        pytest.param(
            {"properties": {"a/b": {"$ref": "https://x/s.json"}}},
            "at '/properties/a~1b': '$ref' 'https://x/s.json' does not resolve within the "
            "schema (nothing is fetched)",
            id="remote-ref",
        ),
        pytest.param(
            {"$defs": {"a": {"type": "string"}}, "items": {"$ref": "#/$defs/b"}},
            "at '/items': '$ref' '#/$defs/b' does not resolve within the schema",
            id="dangling-ref",
        ),
        pytest.param(
            {"type": "text"},
            "at '/type': 'text' is not valid under any of the given schemas",
            id="type",
        ),
        pytest.param({"pattern": "("}, "at '/pattern': '(' is not a 'regex'", id="regex"),
        pytest.param(
            {"minLength": -1}, "at '/minLength': -1 is less than the minimum of 0", id="bound"
        ),
    ],
)
def test_schemas_that_cannot_be_checked_are_refused(schema, problem):
    with pytest.raises(ValueError, match="^" + re.escape(problem)):
        _schema_validator(json.dumps(schema))


@pytest.mark.parametrize(
    ("headers", "wait_s"),
    [
        pytest.param({"Retry-After": "2"}, 2.0, id="seconds"),
        pytest.param({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0, id="http-date"),
        pytest.param({"Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0, id="date-past"),
        pytest.param({"retry-after-ms": "150", "Retry-After": "1"}, 0.15, id="openai-ms"),
        pytest.param({"Retry-After": "soon"}, None, id="unusable"),
        pytest.param({}, None, id="absent"),
    ],
)
def test_retry_after_in_seconds_or_as_a_date(headers, wait_s):
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    assert _retry_after_s(httpx.Headers(headers), now) == wait_s


async def test_an_ai_steps_tokens_and_cost_are_attributes_of_its_attempts_span(make_config):
    otlp = OtlpReceiver()
    fake = FakeLlm(default=Reply.tokens("ok", 1200, 300))
    priced = {"base_url": BASE, "price_per_1k_input": 1.0, "price_per_1k_output": 2.0}
    async with serve_app(otlp.app()) as endpoint:
        telemetry = f'[telemetry]\notlp_endpoint = "{endpoint}"\n'
        out = await run_once(
            lambda text: make_config(telemetry + text), fake, task("ask", **priced)
        )
        with anyio.fail_after(20):
            await otlp.until(lambda: len(otlp.named("task ask")) == 1)
    assert out.row.state == "succeeded"
    (attempt,) = otlp.named("task ask")
    assert attempt.attributes["gen_ai.request.model"] == "test-model"
    assert attempt.attributes["gen_ai.usage.input_tokens"] == 1200
    assert attempt.attributes["gen_ai.usage.output_tokens"] == 300
    assert attempt.attributes["gen_ai.usage.cost"] == pytest.approx(1.8)
    assert attempt.attributes["cued.cost"] == pytest.approx(1.8)
    assert attempt.attributes["cued.usage.total_tokens"] == 1500
    # the call itself is a span of its own, and the server was told the trace
    (call,) = otlp.named("HTTP POST")
    assert call.parent_span_id == attempt.span_id
    (received,) = fake.requests
    # (flags 03: sampled, and a trace id the daemon drew at random)
    assert received.headers["traceparent"] == f"00-{call.trace_id}-{call.span_id}-03"
