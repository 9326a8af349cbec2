"""The ``llm`` task kind: one chat completion from an OpenAI-compatible endpoint.

An AI step is a task like any other: templated messages in, a JSON-serialisable output out,
the task's timeout and retries around it. What it adds:

* cost caps, per run and per day, checked before each call against what attempts recorded;
* usage and cost reported through ``ctx.meter`` (so the attempt row carries them), also
  when the answer then fails its schema: the tokens were paid for;
* 429 and 5xx answers retried inside the attempt, honouring ``Retry-After``;
* structured output: ``response_schema`` is sent as ``response_format`` and the answer is
  checked against it here too, since not every compatible server enforces it. A model is
  nondeterministic, so an answer that does not fit fails the attempt as retryable.

The answer is checked with the ``jsonschema`` library, as JSON Schema Draft 2020-12. The
schema itself is checked with the configuration, against the draft's metaschema and, so that
no check is skipped silently, stricter than JSON Schema on two points: a keyword the draft
does not define (a misspelt ``minLenght``) is refused, and so is a ``$ref`` that does not
resolve within the schema (nothing is fetched).
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
import httpx
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from cued.daemon.sdk import (
    ParamProblem,
    PermanentTaskError,
    TaskError,
    backoff_s,
    current_span,
    has_template,
    mark_secret,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    from referencing import Resource
    from referencing._core import Resolver  # documented, but not re-exported

    from cued.daemon.sdk import TaskContext

__all__ = ["LlmParams", "LlmTask", "Message"]

#: How much of an unexpected response's body, or of an answer, an error message quotes.
_ERROR_TEXT_CHARS = 500

#: How many of an answer's schema violations an error message lists, and how much of each.
_ERROR_COUNT = 10
_ERROR_VALUE_CHARS = 200

#: 4xx statuses that say "try again later": the task's own retries may mend them. (429 is
#: retried inside the attempt, with 5xx.)
_RETRYABLE_4XX = frozenset({408, 409})

#: Waits between calls when the server gives no ``Retry-After``: exponential from the
#: first, capped, with jitter (between half and all of it).
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 20.0

#: The longest ``Retry-After`` waited for inside an attempt. A longer one fails the
#: attempt instead: its retry waits without holding one of the daemon's task slots.
_MAX_RETRY_AFTER_S = 60.0

#: Only connecting has a timeout of its own; the task's timeout bounds the whole attempt
#: (a completion may well take minutes, far past the shared client's default).
_TIMEOUT = httpx.Timeout(None, connect=10.0)

#: What the ``name`` of a ``json_schema`` response format may hold (OpenAI's rule).
_SCHEMA_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class Message(BaseModel):
    """One chat message; a ``content`` that is not a string (a template that evaluates to
    an upstream task's whole output, say) is sent as JSON text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _json_unless_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        return json.dumps(value, ensure_ascii=False)


class LlmParams(BaseModel):
    """Parameters of an ``llm`` task.

    There is no timeout here: the engine applies the task's timeout to the whole attempt,
    waits between retried calls included.

    :param base_url: the API's root, such as ``https://api.openai.com/v1``; requests go to
        ``{base_url}/chat/completions``
    :param model: the model's name, as the server knows it
    :param messages: the conversation, ``{role, content}`` each; templates in them are
        rendered before the attempt
    :param api_key: ``env:NAME`` (read from the environment when the task runs),
        ``file:PATH`` (an absolute path, read when the task runs), or the key itself (keep
        that out of version control); sent as a Bearer token, never logged. Leave it out
        for a local server that wants none.
    :param temperature: sampling temperature; the server's default if not given
    :param max_tokens: a cap on the answer's tokens
    :param response_schema: a JSON Schema (Draft 2020-12) the answer must satisfy: sent as
        a strict ``json_schema`` response format, and the answer is parsed and checked
        against it; a keyword the draft does not define, or a ``$ref`` outside the schema,
        is refused with the configuration
    :param price_per_1k_input: price of 1000 prompt tokens, for the recorded cost
    :param price_per_1k_output: price of 1000 completion tokens
    :param max_cost_per_run: no call is made once the run's attempts have spent this much
    :param max_cost_per_day: no call is made once all attempts since midnight UTC have
        spent this much
    :param max_429_retries: how often a 429 or 5xx answer is retried within the attempt
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    base_url: str = Field(pattern=r"^https?://\S+$")
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    api_key: str | None = Field(default=None, min_length=1, repr=False)
    temperature: float | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    response_schema: dict[str, Any] | None = None
    price_per_1k_input: float = Field(default=0.0, ge=0)
    price_per_1k_output: float = Field(default=0.0, ge=0)
    max_cost_per_run: float | None = Field(default=None, ge=0)
    max_cost_per_day: float | None = Field(default=None, ge=0)
    max_429_retries: int = Field(default=5, ge=0)

    @classmethod
    def template_problems(cls, params: Mapping[str, Any]) -> Iterator[ParamProblem]:
        """A template in ``base_url`` or ``api_key``: refused. Event data choosing the
        server would have the key sent to it; choosing the key's variable or file would
        send any of the daemon's secrets to the server."""
        for key in ("base_url", "api_key"):
            if has_template(params.get(key)):
                yield ParamProblem(
                    (key,),
                    "must be written out, not a template: event data would choose "
                    + (
                        "where the api key is sent" if key == "base_url" else "which secret is sent"
                    ),
                )

    @field_validator("api_key")
    @classmethod
    def _check_key_source(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("env:") and not value[4:]:
            raise ValueError("'env:' needs the variable's name, as in 'env:OPENAI_API_KEY'")
        if value.startswith("file:") and not os.path.isabs(os.path.expanduser(value[5:])):
            # a task is not told where the configuration file is, so a relative path would
            # depend on the folder the daemon was started from
            raise ValueError(f"'file:' needs an absolute path, not {value[5:]!r}")
        return value

    @field_validator("response_schema")
    @classmethod
    def _check_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # a schema this kind cannot check is a configuration problem, which ``cued
        # validate`` reports, rather than a failure of every attempt
        if value is not None:
            try:
                text = json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"must hold only JSON values: {exc}") from exc
            _schema_validator(text)
        return value

    @property
    def answer_validator(self) -> Draft202012Validator | None:
        """What checks the answer, if ``response_schema`` is given."""
        if self.response_schema is None:
            return None
        return _schema_validator(json.dumps(self.response_schema))

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def request_body(self, schema_name: str) -> dict[str, Any]:
        """The chat completion request, as JSON."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [m.model_dump() for m in self.messages],
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.response_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": schema_name,
                    "schema": self.response_schema,
                    "strict": True,
                },
            }
        return body


class _Usage(BaseModel):
    """The part of a response's ``usage`` that is recorded (not the nested details)."""

    model_config = ConfigDict(extra="ignore")

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    total_tokens: int | None = Field(default=None, ge=0)


class LlmTask:
    """Ask a chat model; succeed with ``{"content", "json", "model", "usage", "cost",
    "finish_reason"}``.

    ``json`` is the parsed answer when ``response_schema`` is given (else ``None``), so a
    downstream task reads ``tasks.NAME.output.json.FIELD``. Every request carries the
    attempt's ``Idempotency-Key``, the same on each call and each retry.
    """

    name: ClassVar[str] = "llm"
    Params: ClassVar[type[BaseModel]] = LlmParams

    async def execute(self, params: LlmParams, ctx: TaskContext) -> dict[str, Any]:
        """Check the cost caps, call the endpoint, record what it cost, check the answer.

        :param params: the validated parameters
        :param ctx: the attempt's context
        :return: the answer and what it cost (see the class)
        :raises PermanentTaskError: if a cost cap is reached, the key cannot be found, or
            the server rejects the request with a 4xx other than 408, 409 and 429
        :raises TaskError: if the server cannot be reached, keeps answering 429 or 5xx,
            answers with something that is not a chat completion, or the answer does not
            fit ``response_schema``
        """
        await _check_caps(params, ctx)
        headers = {"Idempotency-Key": ctx.idempotency_key}
        if params.api_key is not None:
            headers["Authorization"] = f"Bearer {await _resolve_key(params.api_key)}"
        name = _schema_name(params.response_schema, ctx.task)
        response = await _call(params, ctx, params.request_body(name), headers)
        return _answer(params, ctx, response)


# -- the answer's schema ------------------------------------------------------------------

#: Keywords that describe and check nothing. Any other keyword Draft 2020-12 does not define
#: is refused, where JSON Schema would ignore it: a misspelt check must not pass silently.
_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$anchor",
        "$dynamicAnchor",
        "$vocabulary",
        "$comment",
        "$defs",
        "definitions",  # the older drafts' $defs, which "#/definitions/NAME" still reaches
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
    }
)
#: Keywords the validator checks, some through a neighbour: "then" and "else" with "if",
#: "minContains" and "maxContains" with "contains".
_KEYWORDS = _ANNOTATIONS | frozenset(
    {*Draft202012Validator.VALIDATORS, "then", "else", "minContains", "maxContains"}
)


@functools.lru_cache(maxsize=256)
def _schema_validator(schema_json: str) -> Draft202012Validator:
    """The validator of answers for a ``response_schema``, checked and built once per schema:
    templated parameters are validated again before each attempt.

    :raises ValueError: if the schema is not valid Draft 2020-12, uses a keyword the draft
        does not define, or holds a ``$ref`` that does not resolve within it
    """
    schema = json.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"{_at(exc.absolute_path)}: {exc.message}") from exc
    root = DRAFT202012.create_resource(schema)
    _check_subschemas(schema, root, Registry().resolver_with_root(root))
    # an empty registry: no $ref is fetched from the network, at this point or later
    return Draft202012Validator(schema, registry=Registry())


def _check_subschemas(schema: Any, resource: Resource[Any], resolver: Resolver[Any]) -> None:
    """Refuse, in ``resource`` and every schema within it, a keyword the draft does not
    define and a reference that does not resolve within ``schema``."""
    contents = resource.contents
    if isinstance(contents, dict):
        if unknown := sorted(set(contents) - _KEYWORDS):
            raise ValueError(
                f"{_at(_path_to(schema, contents))}: {unknown[0]!r} is not a keyword of "
                "JSON Schema Draft 2020-12, so it would check nothing"
            )
        for keyword in ("$ref", "$dynamicRef"):
            if isinstance(ref := contents.get(keyword), str):
                try:
                    resolver.lookup(ref)
                except Unresolvable as exc:
                    raise ValueError(
                        f"{_at(_path_to(schema, contents))}: {keyword!r} {ref!r} does not "
                        "resolve within the schema (nothing is fetched)"
                    ) from exc
    for sub in resource.subresources():
        _check_subschemas(schema, sub, resolver.in_subresource(sub))


def _path_to(value: Any, part: object) -> list[str | int] | None:
    """Where ``part`` (the very object) is within ``value``: ``["properties", "a"]``."""
    if value is part:
        return []
    inside: Iterable[tuple[str | int, Any]]
    if isinstance(value, dict):
        inside = value.items()
    elif isinstance(value, list):
        inside = enumerate(value)
    else:
        return None
    for key, item in inside:
        if (path := _path_to(item, part)) is not None:
            return [key, *path]
    return None


def _at(path: Sequence[str | int] | None) -> str:
    """``at '/properties/a'`` (a JSON pointer) or ``at the root``."""
    if not path:
        return "at the root"
    pointer = "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)
    return f"at {pointer!r}"


# -- calling --------------------------------------------------------------------------------


async def _check_caps(params: LlmParams, ctx: TaskContext) -> None:
    if params.max_cost_per_run is None and params.max_cost_per_day is None:
        return
    if ctx.spending is None:
        raise PermanentTaskError("a cost cap is set but this daemon keeps no record of costs")
    if params.max_cost_per_run is not None:
        spent = await ctx.spending.by_run(ctx.run_id)
        _enforce("this run", spent, "max_cost_per_run", params.max_cost_per_run)
    if params.max_cost_per_day is not None:
        spent = await ctx.spending.today()
        _enforce("today (since midnight UTC)", spent, "max_cost_per_day", params.max_cost_per_day)


def _enforce(who: str, spent: float, cap: str, limit: float) -> None:
    if spent >= limit:
        raise PermanentTaskError(
            f"cost cap reached: {who} spent {_money(spent)} of {cap} {_money(limit)}"
        )


async def _resolve_key(value: str) -> str:
    """The key behind ``env:NAME``, ``file:PATH`` or the value itself. Errors name where
    the key was looked for, never what was found."""
    if value.startswith("env:"):
        source = f"environment variable {value[4:]!r}"
        key = os.environ.get(value[4:])
        if key is None:
            # the daemon's environment does not change while it runs: retrying cannot help
            raise PermanentTaskError(f"api_key: {source} is not set")
    elif value.startswith("file:"):
        path = await anyio.Path(value[5:]).expanduser()
        source = f"file {str(path)!r}"
        try:
            key = await path.read_text()
        except OSError as exc:  # a secret being mounted or rotated: worth a retry
            raise TaskError(f"api_key: cannot read {source}: {exc.strerror}") from exc
    else:
        source, key = "the value given", value
    key = key.strip()
    if not key:
        raise PermanentTaskError(f"api_key: {source} is empty")
    mark_secret(key)  # an answer or an error that quotes it has it redacted
    return key


def _schema_name(schema: Mapping[str, Any] | None, task: str) -> str:
    title = schema.get("title") if schema else None
    name = _SCHEMA_NAME_UNSAFE.sub("_", title if isinstance(title, str) else task)[:64]
    return name or "answer"


async def _call(
    params: LlmParams, ctx: TaskContext, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    """POST the request, again after each 429 or 5xx, up to ``max_429_retries`` times."""
    url = params.url
    tries = params.max_429_retries + 1
    for number in range(1, tries + 1):
        try:
            response = await ctx.http.post(url, json=body, headers=headers, timeout=_TIMEOUT)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise PermanentTaskError(f"POST {url!r} cannot be sent: {exc}") from exc
        except httpx.HTTPError as exc:
            raise TaskError(f"POST {url!r} failed: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return response
        message = f"POST {url!r} answered {status}: {_server_message(response)!r}"
        if status != 429 and status < 500:
            if 400 <= status < 500 and status not in _RETRYABLE_4XX:
                raise PermanentTaskError(message)
            raise TaskError(message)
        if number == tries:
            raise TaskError(f"{message} (tried {tries} times)")
        wait_s = _retry_after_s(response.headers, datetime.now(UTC))
        if wait_s is None:
            wait_s = backoff_s(
                number, first_s=_BACKOFF_FIRST_S, max_s=_BACKOFF_MAX_S, rand=random.random()
            )
        elif wait_s > _MAX_RETRY_AFTER_S:
            raise TaskError(f"{message} (asked to retry after {wait_s:g}s)")
        ctx.log.info("llm_retrying", status=status, wait_s=round(wait_s, 3), retry=number)
        await anyio.sleep(wait_s)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _retry_after_s(headers: httpx.Headers, now: datetime) -> float | None:
    """How long the server asks to wait: ``retry-after-ms`` (OpenAI's), or ``Retry-After``
    in seconds or as an HTTP date; ``None`` if it says nothing usable."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return None if math.isnan(seconds) else max(seconds, 0.0)


def _server_message(response: httpx.Response) -> str:
    """The error's message, from OpenAI's ``{"error": {"message": ...}}`` or similar."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:_ERROR_TEXT_CHARS]
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        for key in ("message", "detail"):
            if isinstance(error.get(key), str):
                return str(error[key])[:_ERROR_TEXT_CHARS]
    if isinstance(error, str):
        return error[:_ERROR_TEXT_CHARS]
    return response.text[:_ERROR_TEXT_CHARS]


# -- the answer -----------------------------------------------------------------------------


def _answer(params: LlmParams, ctx: TaskContext, response: httpx.Response) -> dict[str, Any]:
    what = f"POST {params.url!r}"
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise TaskError(
            f"{what} answered {response.status_code} with no JSON object: "
            f"{response.text[:_ERROR_TEXT_CHARS]!r}"
        )
    # first record what was spent, whatever the rest of the answer is like
    usage, cost = _meter(params, ctx, data.get("usage"))
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise TaskError(f"{what} answered with no message in 'choices': {_clip(response.text)!r}")
    finish_reason = choice.get("finish_reason")
    content = message.get("content")
    if not isinstance(content, str):
        if refusal := message.get("refusal"):
            raise TaskError(f"the model refused: {refusal!r}")
        content = ""
    ctx.log.debug(
        "llm_answered", model=data.get("model"), finish_reason=finish_reason, usage=usage, cost=cost
    )
    parsed = None
    if (validator := params.answer_validator) is not None:
        parsed = _structured(validator, content, finish_reason)
    return {
        "content": content,
        "json": parsed,
        "model": data.get("model") or params.model,
        "usage": usage,
        "cost": cost,
        "finish_reason": finish_reason,
    }


def _meter(
    params: LlmParams, ctx: TaskContext, raw: Any
) -> tuple[dict[str, int] | None, float | None]:
    try:
        usage = _Usage.model_validate(raw) if raw is not None else None
    except ValidationError:
        usage = None
    if usage is None:
        if params.price_per_1k_input or params.price_per_1k_output:
            ctx.log.warning("llm_usage_missing", note="the server reported no usage: no cost")
        return None, None
    recorded = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": (
            usage.total_tokens
            if usage.total_tokens is not None
            else usage.prompt_tokens + usage.completion_tokens
        ),
    }
    cost = (
        usage.prompt_tokens / 1000 * params.price_per_1k_input
        + usage.completion_tokens / 1000 * params.price_per_1k_output
    )
    ctx.meter.add(cost, recorded)
    # on the attempt's span, in OpenTelemetry's names for AI calls (the runtime adds the
    # meter's totals as cued.cost and cued.usage.*)
    current_span().set(
        **{
            "gen_ai.request.model": params.model,
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "gen_ai.usage.cost": cost,
        }
    )
    ctx.log_line(
        "llm",
        f"tokens: {recorded['prompt_tokens']} prompt, {recorded['completion_tokens']} "
        f"completion, {recorded['total_tokens']} total; cost {cost:g}",
    )
    return recorded, cost


def _structured(validator: Draft202012Validator, content: str, finish_reason: Any) -> Any:
    cut = (
        " (finish_reason 'length': the answer was cut off at max_tokens)"
        if finish_reason == "length"
        else ""
    )
    try:
        parsed = json.loads(content)
    except ValueError as exc:
        raise TaskError(f"the answer is not JSON ({exc}){cut}: {_clip(content)!r}") from exc
    if problems := _answer_problems(validator, parsed):
        listed = "; ".join(problems[:_ERROR_COUNT])
        more = f" (and {len(problems) - _ERROR_COUNT} more)" if len(problems) > _ERROR_COUNT else ""
        raise TaskError(
            f"the answer does not match response_schema{cut}: {listed}{more}; "
            f"answer: {_clip(content)!r}"
        )
    return parsed


def _answer_problems(validator: Draft202012Validator, answer: Any) -> list[str]:
    """What is wrong with ``answer``, one violation each, named by where it is in the answer:
    ``lines.0.qty: 11 is greater than the maximum of 10``."""
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '(the answer)'}: "
        # a message quotes the value, which may be all of a large answer
        + _clip(error.message, _ERROR_VALUE_CHARS)
        for error in validator.iter_errors(answer)
    ]


def _clip(text: str, chars: int = _ERROR_TEXT_CHARS) -> str:
    return text if len(text) <= chars else text[:chars] + "..."


def _money(amount: float) -> str:
    """``0.0123``, not ``0.012300000000000002`` nor ``1.23e-05``."""
    return f"{amount:.10f}".rstrip("0").rstrip(".")
