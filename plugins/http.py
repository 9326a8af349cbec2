"""The ``http`` task kind: send one HTTP request with the daemon's shared client.

Where a request goes is the configuration's to say, not the event data's: ``cued
validate`` refuses a template in the URL's scheme or host (it may give the path and
query) unless the task lists the hosts it may reach in ``allow_hosts``, which are then
checked before each request. What is kept of a response is at most ``max_output_bytes``
of its body: more is not even read.
"""

from __future__ import annotations

import codecs
import html
import ipaddress
import json
import re
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cued.daemon.sdk import ParamProblem, PermanentTaskError, TaskError, decimal, has_template

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from cued.daemon.sdk import TaskContext

__all__ = ["HttpParams", "HttpTask"]

#: How much of a response's body is kept by default: 1 MiB.
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024

#: A URL's scheme and authority, written out up to where its path, query or fragment
#: starts: what a URL must start with before its first template.
_LITERAL_ORIGIN = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*[/?#]")

#: How much of an unexpected response's body an error message quotes.
_ERROR_BODY_CHARS = 500

#: 4xx statuses that say "try again later" rather than "this request is wrong".
_RETRYABLE_4XX = frozenset({408, 425, 429})

_STATUS_CLASS = re.compile(r"^[1-5]xx$")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_HEADING = re.compile(r"<h1[^>]*>(.*?)</h1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_HIDDEN = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


class HttpParams(BaseModel):
    """Parameters of an ``http`` task.

    There is no timeout here: the engine applies the task's timeout to the whole attempt.

    :param method: the HTTP method, case-insensitive
    :param url: the absolute URL to request
    :param headers: request headers; an ``Idempotency-Key`` given here replaces the
        daemon's own
    :param json: a value to send as a JSON body (``json`` and ``body`` exclude each other)
    :param body: a text body, sent as UTF-8
    :param expected_status: the statuses that count as success; by default any 2xx
    :param allow_hosts: the hosts the request may go to, ``api.example.com``, an IP
        address, or ``*.example.com`` (any name below ``example.com``, not an address);
        checked, with the scheme (http or https), before each request; any port. With
        it, a template may choose the host.
    :param max_output_bytes: how much of the response's body is read and kept; the
        output of a longer one says ``"truncated": true``
    :param retry_on: the unexpected statuses worth another attempt (the task's
        ``retries``): codes (``404``) and classes (``"5xx"``); by default every one but a
        4xx other than 408, 425 and 429. Any other unexpected status fails the task for
        good. A request that
        got no answer (a network error, a timeout) is always worth another attempt.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = Field(default="GET", min_length=1)
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    # Stored as ``json_body`` because a field named ``json`` would shadow ``BaseModel.json``.
    json_body: Any = Field(default=None, alias="json")
    body: str | None = None
    expected_status: list[int] | None = Field(default=None, min_length=1)
    allow_hosts: list[str] | None = Field(default=None, min_length=1)
    max_output_bytes: int = Field(default=DEFAULT_MAX_OUTPUT_BYTES, ge=0)
    retry_on: list[int | str] | None = None

    @field_validator("retry_on")
    @classmethod
    def _check_retry_on(cls, value: list[int | str] | None) -> list[int | str] | None:
        if value is None:
            return None
        checked: list[int | str] = []
        for entry in value:
            text = str(entry).strip().lower()
            if (status := decimal(text, max_digits=3)) is not None and 100 <= status <= 599:
                checked.append(status)
            elif _STATUS_CLASS.match(text):
                checked.append(text)
            else:
                raise ValueError(
                    f"{entry!r} is not an HTTP status (429) or a class of them ('5xx')"
                )
        return checked

    def retries(self, status: int) -> bool:
        """Whether an unexpected ``status`` is worth another attempt."""
        if self.retry_on is None:  # a 4xx says the request is wrong, but "try later" ones
            return not (400 <= status < 500) or status in _RETRYABLE_4XX
        return any(
            status == entry if isinstance(entry, int) else str(status)[0] == entry[0]
            for entry in self.retry_on
        )

    @field_validator("allow_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_host_pattern(host) for host in value]

    @classmethod
    def template_problems(cls, params: Mapping[str, Any]) -> Iterator[ParamProblem]:
        """A template in the URL's scheme or host, without ``allow_hosts``: refused, since
        event data would choose where the request (and its headers) go."""
        url = params.get("url")
        if not isinstance(url, str) or not has_template(url):
            return
        if "allow_hosts" in params:
            return  # checked before each request
        starts = [i for i in (url.find("{{"), url.find("{%")) if i >= 0]
        if not _LITERAL_ORIGIN.match(url[: min(starts)]):
            yield ParamProblem(
                ("url",),
                "a template may not choose the URL's scheme or host (event data would "
                "choose where the request goes): write them out, as in "
                "'https://api.example.com/{{ ... }}', or list the hosts it may reach in "
                "allow_hosts",
            )

    @field_validator("method")
    @classmethod
    def _upper_method(cls, value: str) -> str:
        return value.upper()

    @field_validator("expected_status")
    @classmethod
    def _check_statuses(cls, value: list[int] | None) -> list[int] | None:
        for status in value or ():
            if not 100 <= status <= 599:
                raise ValueError(f"{status!r} is not an HTTP status code")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> HttpParams:
        if self.has_json and self.body is not None:
            raise ValueError("give either 'json' or 'body', not both")
        return self

    @property
    def has_json(self) -> bool:
        """Whether ``json`` was given, telling an explicit JSON ``null`` from no body."""
        return "json_body" in self.model_fields_set


class HttpTask:
    """Send one HTTP request and succeed with ``{"status": ..., "body": ...}``.

    The body is the parsed JSON when the response says it is JSON, else the text. A body
    longer than ``max_output_bytes`` is cut there, kept as text (cut JSON does not parse),
    and the output says so: ``"truncated": true`` and ``"content_length"`` (the
    response's ``Content-Length`` header, ``None`` if it had none). Every
    request carries the attempt's ``Idempotency-Key``, the same on each retry, so a service
    that deduplicates can tell a retry from a new request.
    """

    name: ClassVar[str] = "http"
    Params: ClassVar[type[BaseModel]] = HttpParams

    async def execute(self, params: HttpParams, ctx: TaskContext) -> Any:
        """Send the request described by ``params`` with ``ctx.http``.

        :param params: the validated parameters
        :param ctx: the attempt's context
        :return: ``{"status": <int>, "body": <parsed JSON or text>}``, with
            ``"truncated": true`` and ``"content_length"`` if the body was cut
        :raises PermanentTaskError: if the URL is unusable, or the response has an
            unexpected status not in ``retry_on`` (by default a 4xx other than 408, 425
            and 429)
        :raises TaskError: if the request fails on the network, or the response has an
            unexpected status in ``retry_on``
        """
        headers = httpx.Headers(params.headers)
        # Headers are case-insensitive, so this keeps a user's "idempotency-key" too.
        headers.setdefault("Idempotency-Key", ctx.idempotency_key)
        content: bytes | str | None = params.body
        if params.has_json:
            # Encoded here rather than with httpx's ``json=``, which sends no body at all
            # for ``None``: an explicit JSON null is a body too.
            content = json.dumps(
                params.json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
            headers.setdefault("Content-Type", "application/json")

        what = f"{params.method} {params.url!r}"
        started = anyio.current_time()
        try:
            url = httpx.URL(params.url)
            if params.allow_hosts is not None:
                _check_allowed(url, params.allow_hosts, what)
            async with ctx.http.stream(
                params.method, url, headers=headers, content=content
            ) as response:
                data, truncated = await _read(response, params.max_output_bytes)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise PermanentTaskError(f"{what} cannot be sent: {exc}") from exc
        except httpx.HTTPError as exc:
            ctx.log_line("http", f"{params.method} {_shown(url)} failed: {type(exc).__name__}")
            raise TaskError(f"{what} failed: {type(exc).__name__}: {exc}") from exc

        status = response.status_code
        took_ms = (anyio.current_time() - started) * 1000
        ctx.log_line("http", f"{params.method} {_shown(url)} {status} {took_ms:.0f} ms")
        if not _is_expected(status, params.expected_status):
            # enough of the body to find a page's title, and the characters quoted
            text = _text(response, data[: _ERROR_BODY_CHARS * 16], final=False)
            said = _gist(text, response.headers.get("content-type", ""))
            message = f"{what} answered with unexpected status {status}" + (
                f": {said}" if said else f" {response.reason_phrase}".rstrip()
            )
            if not params.retries(status):
                raise PermanentTaskError(message)
            raise TaskError(message)

        if truncated:
            # a cut JSON body does not parse: the text of what was kept, and a note
            return {
                "status": status,
                "body": _text(response, data, final=False),
                "truncated": True,
                "content_length": _content_length(response),
            }
        return {"status": status, "body": _parse_body(response, data, ctx)}


def _gist(text: str, content_type: str) -> str:
    """What an error response says, on one line and short: an HTML page's title (or first
    heading, or its text without tags), any other body with its whitespace run together,
    cut at :data:`_ERROR_BODY_CHARS` characters. An error is one line in ``cued show``,
    ``cued runs --failed`` and the run page, not a page of markup."""
    if "html" in content_type.lower() or text.lstrip()[:1] == "<":
        found = _TITLE.search(text) or _HEADING.search(text)
        text = found.group(1) if found else _HIDDEN.sub(" ", text)
        text = html.unescape(_TAG.sub(" ", text))
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_BODY_CHARS else text[: _ERROR_BODY_CHARS - 1] + "\u2026"


def _shown(url: httpx.URL) -> str:
    """The URL as a log line shows it: no user or password, no query (either may hold a
    token that is no secret the daemon resolved, so redaction would not catch it)."""
    shown = url.copy_with(username=None, password=None, query=None, fragment=None)
    return str(shown) + ("?…" if url.query else "")


def _is_expected(status: int, expected: list[int] | None) -> bool:
    if expected is None:
        return 200 <= status < 300
    return status in expected


def _host_pattern(host: str) -> str:
    """An ``allow_hosts`` entry, lower-cased, without brackets or a final dot.

    :raises ValueError: if it is not a host name, an IP address or ``*.domain``
    """
    pattern = host.strip().lower().rstrip(".")
    if pattern.startswith("[") and pattern.endswith("]"):
        pattern = pattern[1:-1]
    name = pattern.removeprefix("*.")
    if (
        not name
        or any(c in name for c in "/@?#*[] \t")
        or (":" in name and name.count(":") < 2)  # not IPv6: a port
    ):
        raise ValueError(
            f"{host!r} is not a host ('api.example.com', '*.example.com', an IP address; "
            "no scheme, port or path)"
        )
    return pattern


def _check_allowed(url: httpx.URL, allow_hosts: list[str], what: str) -> None:
    """:raises PermanentTaskError: if ``url`` is not http(s) to a host of ``allow_hosts``"""
    if url.scheme not in ("http", "https"):
        raise PermanentTaskError(
            f"{what} was not sent: its scheme {url.scheme!r} is not http or https"
        )
    host = url.host.lower().rstrip(".")
    # a wildcard is for names: "*.0.0.1" must not let through every address ending so
    named = not _is_ip_address(host)
    for pattern in allow_hosts:
        if host == pattern or (named and pattern.startswith("*.") and host.endswith(pattern[1:])):
            return
    raise PermanentTaskError(
        f"{what} was not sent: its host {host!r} is not in allow_hosts ({', '.join(allow_hosts)})"
    )


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _read(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """The body, up to ``limit`` bytes (decoded from its ``Content-Encoding``), and
    whether there was more; what is past the limit is never read."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            del data[limit:]
            return bytes(data), True
    return bytes(data), False


def _text(response: httpx.Response, data: bytes, *, final: bool = True) -> str:
    """``data`` decoded as the response's charset says (UTF-8 if it says none), bad bytes
    replaced; with ``final`` false, a character cut at the end is left out."""
    try:
        decoder = codecs.getincrementaldecoder(response.charset_encoding or "utf-8")
    except LookupError:  # a charset Python does not know
        decoder = codecs.getincrementaldecoder("utf-8")
    return decoder(errors="replace").decode(data, final=final)


def _content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _parse_body(response: httpx.Response, data: bytes, ctx: TaskContext) -> Any:
    media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        return _text(response, data)
    if not data:
        # A 204, say, often keeps its Content-Type but has no body.
        return None
    try:
        return json.loads(data)
    except ValueError:
        # A server mislabelling its body should not fail a request that succeeded;
        # downstream tasks still get what was sent.
        ctx.log.warning("http_body_not_json", status=response.status_code)
        return _text(response, data)
