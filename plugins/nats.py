"""The ``nats`` task kind: publish one message to a NATS JetStream subject, and wait for
the stream's acknowledgement.

Every message carries the task instance's idempotency key (the same on every attempt and
across restarts) as its ``Nats-Msg-Id`` header: JetStream drops a message whose id it has
seen within the stream's duplicate window (two minutes by default), so a retry after a
lost acknowledgement stores the message once. The output says whether it was such a
duplicate.

One connection per list of servers serves every task of the daemon: made when the first
task needs it and kept. :meth:`NatsPublishTask.aclose` closes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import nats
import nats.errors
import nats.js.errors
from pydantic import BaseModel, ConfigDict, Field

from cued.daemon.sdk import (
    CuedError,
    ParamProblem,
    PermanentTaskError,
    TaskError,
    describe_error,
    has_template,
    resolve_secret,
)

from ._brokers import encode_value, producer_span
from ._shared import Closing, Shared

if TYPE_CHECKING:
    from collections.abc import Iterator

    from nats.aio.client import Client

    from cued.daemon.sdk import TaskContext

__all__ = ["MSG_ID_HEADER", "NatsPublishParams", "NatsPublishTask"]

#: JetStream's de-duplication header; it carries the task's idempotency key.
MSG_ID_HEADER = "Nats-Msg-Id"
_CLOSE_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 5.0


class NatsPublishParams(BaseModel):
    """Parameters of a ``nats`` task.

    :param servers: ``nats://host:port`` URLs of the cluster's servers
    :param subject: the subject to publish to (a stream must capture it)
    :param value: the body: a string is sent as UTF-8, anything else as JSON
    :param headers: message headers; a ``Nats-Msg-Id`` given here replaces the
        idempotency key
    :param stream: if given, the server refuses the message unless this stream stores it
    :param token: ``env:NAME``, ``file:PATH`` or the value itself
    :param timeout: how long to wait for the stream's acknowledgement, seconds
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    servers: list[str] = Field(min_length=1)
    subject: str = Field(min_length=1)
    value: Any
    headers: dict[str, str] = Field(default_factory=dict)
    stream: str | None = None
    token: str | None = None
    timeout: float = Field(10.0, gt=0)

    @classmethod
    def template_problems(cls, params: dict[str, Any]) -> Iterator[ParamProblem]:
        """Event data must not choose the servers a task connects to."""
        if has_template(params.get("servers")):
            yield ParamProblem(("servers",), "the servers cannot be a template")
        if has_template(params.get("token")):
            yield ParamProblem(("token",), "the token cannot be a template")


class NatsPublishTask(Closing):
    """Publish ``value`` to ``subject``; succeed with ``{"stream", "sequence",
    "duplicate"}``."""

    name: ClassVar[str] = "nats"
    Params: ClassVar[type[BaseModel]] = NatsPublishParams

    def __init__(self) -> None:
        self._clients: Shared[tuple[tuple[str, ...], str | None], Client] = Shared("nats")

    async def execute(self, params: NatsPublishParams, ctx: TaskContext) -> Any:
        """Publish and wait for the stream's acknowledgement.

        :raises PermanentTaskError: if the value is not JSON-serialisable, or no stream
            captures the subject
        :raises TaskError: if the servers cannot be reached or do not acknowledge in time
        """
        body = encode_value(params.value)
        headers = {MSG_ID_HEADER: ctx.idempotency_key, **params.headers}
        client = await self._client(params)
        with producer_span("nats", "publish", params.subject, headers) as span:
            try:
                ack = await client.jetstream().publish(
                    params.subject,
                    body,
                    timeout=params.timeout,
                    stream=params.stream,
                    headers=headers,
                )
            except nats.js.errors.NoStreamResponseError as exc:
                raise PermanentTaskError(
                    f"no JetStream stream stores subject {params.subject!r}"
                ) from exc
            except nats.js.errors.BadRequestError as exc:
                raise PermanentTaskError(
                    f"the server refused the message for {params.subject!r}: {describe_error(exc)}"
                ) from exc
            except (nats.errors.Error, TimeoutError) as exc:
                raise TaskError(
                    f"publishing to {params.subject!r} at {params.servers!r} failed: "
                    f"{describe_error(exc)}"
                ) from exc
            span.set(**{"messaging.nats.stream": ack.stream, "messaging.nats.sequence": ack.seq})
        return {"stream": ack.stream, "sequence": ack.seq, "duplicate": bool(ack.duplicate)}

    async def _client(self, params: NatsPublishParams) -> Client:
        """The shared connection for these servers and token, made on first use.

        :raises TaskError: if it cannot be made (the next attempt tries again)
        """

        async def connect() -> Client:
            options: dict[str, Any] = {"servers": params.servers, "name": "cued"}
            if params.token is not None:
                try:
                    options["token"] = resolve_secret(params.token, _no_dir(), what="a NATS token")
                except CuedError as exc:
                    raise PermanentTaskError(str(exc)) from exc
            try:
                with anyio.fail_after(_CONNECT_TIMEOUT_S):
                    return await nats.connect(
                        **options,
                        connect_timeout=_CONNECT_TIMEOUT_S,
                        allow_reconnect=True,
                        max_reconnect_attempts=-1,
                    )
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                raise TaskError(
                    f"cannot connect to NATS at {params.servers!r}: {describe_error(exc)}"
                ) from exc

        return await self._clients.get((tuple(params.servers), params.token), connect)

    async def aclose(self) -> None:
        """Close every connection (bounded, also when cancelled)."""
        for client in self._clients.close():
            with anyio.move_on_after(_CLOSE_TIMEOUT_S, shield=True):
                await client.close()


def _no_dir() -> Any:
    """Task kinds are not told the config's folder: ``file:`` paths are taken as given
    (relative to the daemon's working directory)."""
    from pathlib import Path

    return Path()
