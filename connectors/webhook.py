"""``webhook`` source: HTTP requests to a path of the daemon's HTTP server become events.

The answer is ``202`` with the event id only once the event (and the runs it starts) is
committed. Refusals, each with a JSON body ``{"error": {"code", "message"}}``:

========  =====================================================================
status    when
========  =====================================================================
400       the body is not what it says it is: JSON that does not parse or nests
          deeper than 64 levels, a form of more than 1,000 fields (recorded:
          invalid, the body kept as escaped text)
401       the signature or token is missing or wrong (not recorded)
405       a method other than those configured
413       the body is larger than ``max_body_bytes`` (not recorded)
415       a body sent as a form (``application/x-www-form-urlencoded``) that opens
          ``{`` or ``[``: JSON text sent without its media type, as ``curl -d``
          does (recorded: invalid, the body kept as text)
429       the daemon is behind (backlog saturated); ``Retry-After`` says when to retry
503       the daemon is starting or stopping and the path is not served yet, or
          no longer; ``Retry-After`` says when to retry (not recorded)
========  =====================================================================

What an event holds (everything from the request goes through
:mod:`cued.daemon.core.untrusted`, so no body or header can fail the daemon):

* ``data``: the body parsed as JSON when its media type is ``application/json`` or
  ``*+json``, or when it has none and the body opens an object or an array; a form
  (``application/x-www-form-urlencoded``) as a dict of field to value; anything else as
  text, with bytes that are not UTF-8 escaped as ``\\xNN``. A form never opens with ``{``
  or ``[`` (a form encoder writes them ``%7B`` and ``%5B``): such a body is JSON sent
  under the wrong media type (``curl -d`` sends every body as a form), and guessing
  would hide the sender's mistake, while parsing it as a form keeps nothing of it (the
  whole body would be one field name without a value). It is refused with ``415``,
  which tells the sender what to fix, as Flask does for JSON sent as a form.
* ``meta``: ``path``, ``query``, and ``headers`` (as UTF-8 text, escaped where they are
  not), without ``Authorization``, ``Cookie`` and the header that carries the signature
  or token: events are shown to every viewer, and a signature with its body could be
  sent again; and ``traceparent``, the caller's W3C trace context, when it sent a valid
  one (the event's span and its runs' continue that trace).

A redelivery that carries the same delivery id (``id_header``; GitHub's
``X-GitHub-Delivery`` by default for ``signature = "github"``) is answered ``200`` with
status ``duplicate`` and starts nothing. Ids longer than 200 characters are shortened
to a prefix and a hash.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse

from cued.daemon.sdk import (
    Event,
    Parsed,
    bounded_id,
    decimal,
    decode_text,
    error_response,
    form_value,
    header_text,
    json_value,
    looks_like_json,
    new_id,
    now,
    parse_traceparent,
)

from ._secrets import source_secret

if TYPE_CHECKING:
    import anyio.abc
    from starlette.types import Receive, Scope, Send

    from cued.daemon.sdk import SourceContext

__all__ = ["WebhookConfig", "WebhookSource"]

_RETRY_AFTER_S = 1


class WebhookConfig(BaseModel):
    """Keys of a ``[sources.NAME]`` table with ``kind = "webhook"``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(pattern=r"^/[A-Za-z0-9._~/-]*$")
    signature: Literal["none", "github", "hmac-sha256", "token"] = "none"
    secret: str | None = None
    """The shared secret or token: ``env:NAME`` (from the environment), ``file:PATH``, or
    the value itself (keep that out of version control)."""
    header: str | None = None
    """``hmac-sha256``: the header with the hex digest (``sha256=`` prefix optional);
    ``token``: the header with the token (default ``Authorization``, ``Bearer `` optional)."""
    id_header: str | None = None
    """A header with a unique delivery id, used as the event id so redeliveries are
    recognised (default ``X-GitHub-Delivery`` with ``signature = "github"``)."""
    methods: tuple[str, ...] = ("POST",)
    max_body_bytes: int = Field(1024 * 1024, ge=1)

    @model_validator(mode="after")
    def _secret_when_signed(self) -> WebhookConfig:
        if self.signature != "none" and not self.secret:
            raise ValueError(f"signature {self.signature!r} needs a secret")
        if self.signature == "hmac-sha256" and not self.header:
            raise ValueError("signature 'hmac-sha256' needs the header that carries it")
        return self


class _TooLarge(Exception):
    pass


class WebhookSource:
    """Serves one webhook path on the daemon's HTTP server."""

    kind: ClassVar[str] = "webhook"
    Config: ClassVar[type[BaseModel]] = WebhookConfig

    def __init__(self, config: WebhookConfig, ctx: SourceContext) -> None:
        self.config = config
        self.ctx = ctx
        self._secret = (
            source_secret(config.secret, ctx.base_dir, "a webhook secret").encode()
            if config.secret
            else b""
        )
        self._id_header = config.id_header or (
            "X-GitHub-Delivery" if config.signature == "github" else None
        )
        self._unstored = frozenset(
            h.lower() for h in ("authorization", "cookie", *_signature_headers(config))
        )
        ctx.routes.reserve(config.path, max_body_bytes=config.max_body_bytes)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        import anyio

        self.ctx.routes.mount(self.config.path, self)
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            # stopping: requests to the path are answered 503 from now on (the path is
            # reserved), none half-recorded
            self.ctx.routes.unmount(self.config.path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._handle(Request(scope, receive))
        await response(scope, receive, send)

    async def _handle(self, request: Request) -> JSONResponse:
        if request.method not in self.config.methods:
            return error_response(
                405,
                "method_not_allowed",
                f"{self.config.path} takes {', '.join(self.config.methods)}",
            )
        if not self.ctx.intake.accepting():
            return error_response(
                429,
                "backpressure",
                "the daemon is behind; retry later",
                **{"Retry-After": str(_RETRY_AFTER_S)},
            )
        try:
            body = await self._body(request)
        except _TooLarge:
            return error_response(
                413, "body_too_large", f"the body is larger than {self.config.max_body_bytes} bytes"
            )
        if problem := self._check_signature(request, body):
            return error_response(401, "unauthorized", problem)
        parsed, media_problem = _parse(request.headers.get("content-type", ""), body)
        delivery = request.headers.get(self._id_header) if self._id_header else None
        event = Event(
            source=self.ctx.source,
            event_id=(
                f"{self.ctx.source}:{bounded_id(header_text(delivery))}" if delivery else new_id()
            ),
            data=parsed.data,
            meta={
                "path": request.url.path,
                "query": dict(request.query_params),
                "headers": {
                    k: header_text(v) for k, v in request.headers.items() if k not in self._unstored
                },
                # the caller's trace, which the event's span and its runs' continue
                **_trace(request.headers.get("traceparent")),
            },
            received_at=now(),
            error=parsed.error,
        )
        (receipt,) = await self.ctx.intake.record([event])
        if media_problem:
            return error_response(
                415,
                "unsupported_media_type",
                f"{parsed.error} (recorded as event {event.event_id})",
            )
        if parsed.error is not None:
            return error_response(
                400, "invalid_body", f"{parsed.error} (recorded as event {event.event_id})"
            )
        status = 200 if receipt.status == "duplicate" else 202
        return JSONResponse(
            {"event_id": receipt.event_id, "status": receipt.status, "runs": list(receipt.run_ids)},
            status,
        )

    async def _body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (decimal(declared, max_digits=30) or 0) > limit:
            raise _TooLarge
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_signature(self, request: Request, body: bytes) -> str | None:
        """What is wrong with the request's signature or token, if anything. Compared as
        bytes (the header's own, as sent): a header of any bytes is only wrong."""
        kind = self.config.signature
        if kind == "none":
            return None
        header = _signature_headers(self.config)[0]
        given = _header_bytes(request, header).strip()
        if kind == "token":
            given = given.removeprefix(b"Bearer ").strip()
            if not given:
                return f"missing token in header {header!r}"
            return None if hmac.compare_digest(given, self._secret) else "wrong token"
        given = given.removeprefix(b"sha256=")
        if not given:
            return f"missing signature header {header!r}"
        expected = hmac.new(self._secret, body, hashlib.sha256).hexdigest().encode()
        return (
            None
            if hmac.compare_digest(given.lower(), expected)
            else f"signature in {header!r} does not match the body"
        )


def _signature_headers(config: WebhookConfig) -> tuple[str, ...]:
    """The header that carries the signature or token (first), and any other that
    carries a signature of the body."""
    if config.signature == "token":
        return (config.header or "Authorization",)
    if config.signature == "github":
        return ("X-Hub-Signature-256", "X-Hub-Signature")  # GitHub sends a SHA-1 one too
    if config.signature == "hmac-sha256":
        return (config.header or "",)
    return ()


def _header_bytes(request: Request, name: str) -> bytes:
    # Starlette gives header values decoded as Latin-1: one character per byte as sent
    return request.headers.get(name, "").encode("latin-1")


_FORM = "application/x-www-form-urlencoded"


def _parse(content_type: str, body: bytes) -> tuple[Parsed, bool]:
    """The payload as data: JSON, a form as a dict, else text; never raises. The flag
    says the error is the body's media type (JSON text sent as a form), not its bytes."""
    media = content_type.split(";", 1)[0].strip().lower()
    if (
        media == "application/json"
        or media.endswith("+json")
        or (not media and looks_like_json(body))
    ):
        return json_value(body), False
    if media == _FORM:
        if looks_like_json(body):
            return Parsed(
                decode_text(body),
                f"the body is JSON but was sent as {_FORM} (curl -d does that): "
                "send it with Content-Type: application/json",
            ), True
        return form_value(body), False
    return Parsed(decode_text(body)), False


def _trace(header: str | None) -> dict[str, str]:
    """``meta.traceparent``: the caller's trace context, when it sent a valid one."""
    traceparent = parse_traceparent(header)
    return {} if traceparent is None else {"traceparent": traceparent}
