"""An OTLP/HTTP trace receiver, the collector's own protocol: ``POST /v1/traces`` with an
``ExportTraceServiceRequest`` in protobuf, decoded with opentelemetry-proto's classes and
answered as a collector answers. Serve it with
:func:`tests.support.http_server.serve_app`; every span it got is in :attr:`spans`."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["OtlpReceiver", "ReceivedSpan"]

# opentelemetry.proto.trace.v1.Span.SpanKind and Status.StatusCode, by number
_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUS = {0: "unset", 1: "ok", 2: "error"}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it; ids in hex, as a traceparent writes them."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str
    status: str
    attributes: dict[str, Any]
    service: str | None


@dataclass
class OtlpReceiver:
    """Records the spans of every export; :meth:`until` waits for a condition on them."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    exports: int = 0
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/traces", self._export, methods=["POST"])])

    async def _export(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if request.headers.get("content-type") != "application/x-protobuf":
            return Response(status_code=415)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(
                    ReceivedSpan(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex() or None,
                        kind=_KINDS.get(s.kind, str(s.kind)),
                        status=_STATUS.get(s.status.code, str(s.status.code)),
                        attributes=_attributes(s.attributes),
                        service=resource.get("service.name"),
                    )
                    for s in scope_spans.spans
                )
        self.exports += 1
        self._changed.set()
        self._changed = anyio.Event()
        return Response(
            ExportTraceServiceResponse().SerializeToString(),
            media_type="application/x-protobuf",
        )

    def named(self, prefix: str) -> list[ReceivedSpan]:
        """The spans whose name starts with ``prefix``."""
        return [s for s in self.spans if s.name.startswith(prefix)]

    async def until(self, predicate: Any) -> None:
        """Return once ``predicate()`` holds (bound it with ``fail_after``)."""
        while not predicate():
            await self._changed.wait()


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for pair in pairs:
        value = pair.value
        which = value.WhichOneof("value")
        found[pair.key] = getattr(value, which) if which else None
    return found
