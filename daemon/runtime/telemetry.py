"""Telemetry: the daemon's tracer, set up from ``[telemetry]``, and its outgoing requests
traced.

:func:`open_tracing` gives the :class:`~cued.daemon.sdk.tracing.Tracing` that intake and
the runner make spans with: off without a ``[telemetry]`` table, and off (with one warning)
when the ``otel`` extra is not installed. Spans leave in batches from OpenTelemetry's own
thread, over OTLP/HTTP; what is still queued is sent when the daemon stops.

:class:`TracedTransport` is the shared HTTP client's transport when tracing is on: each
request a task attempt makes (an ``http`` task, an ``llm`` call) gets a client span, a
child of the attempt's, and carries that span's ``traceparent`` header, so the service
called continues the trace.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

import anyio
import httpx

from cued.daemon.logs import get_logger
from cued.daemon.sdk.tracing import Tracing, current_traceparent, outgoing_span

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from cued.daemon.config import TelemetryConfig

__all__ = ["TracedTransport", "open_tracing", "traces_endpoint"]

_DEFAULT_ENDPOINT = "http://localhost:4318"
_FLUSH_TIMEOUT_S = 10.0  # at shutdown: a collector that does not answer must not hold it up


def traces_endpoint(config: TelemetryConfig, environ: Mapping[str, str] = os.environ) -> str:
    """Where spans are sent: the table's ``otlp_endpoint``, else the standard variables
    (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` as it is, ``OTEL_EXPORTER_OTLP_ENDPOINT`` as a
    base), else the OTLP/HTTP default; a base gets ``/v1/traces``."""
    if config.otlp_endpoint is None and (full := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return full
    base = config.otlp_endpoint or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or _DEFAULT_ENDPOINT
    if base.rstrip("/").endswith("/v1/traces"):
        return base
    return base.rstrip("/") + "/v1/traces"


@asynccontextmanager
async def open_tracing(config: TelemetryConfig | None) -> AsyncIterator[Tracing]:
    """The daemon's tracing for the block's time; spans still queued are sent when it
    ends (for at most ten seconds)."""
    if config is None or not config.enabled:
        yield Tracing()
        return
    log = get_logger()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        log.warning(
            "telemetry_unavailable",
            reason=f"{exc}: install cued[otel] for traces",
            note="the daemon runs without them",
        )
        yield Tracing()
        return
    endpoint = traces_endpoint(config)
    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        shutdown_on_exit=False,  # shut down here, when the daemon stops, not at exit
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    log.info("telemetry_started", endpoint=endpoint, sample_ratio=config.sample_ratio)
    try:
        yield Tracing(provider.get_tracer("cued", _version()))
    finally:
        # the exporter blocks on the network: in a thread, bounded, and shielded so that
        # a daemon being cancelled still sends what its runs' last spans said
        with anyio.CancelScope(shield=True), anyio.move_on_after(_FLUSH_TIMEOUT_S):
            await anyio.to_thread.run_sync(provider.shutdown, abandon_on_cancel=True)


class TracedTransport(httpx.AsyncBaseTransport):
    """Traces the requests made inside a task attempt (see the module); others, and all
    when tracing is off, pass as they are.

    :param inner: the transport that sends
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        with outgoing_span(
            f"HTTP {request.method}",
            attributes={
                "http.request.method": request.method,
                # no user, password or query: they may hold a key
                "url.full": f"{url.scheme}://{url.netloc.decode().rpartition('@')[2]}{url.path}",
                "server.address": url.host,
                "server.port": url.port or (443 if url.scheme == "https" else 80),
            },
        ) as span:
            if span and "traceparent" not in request.headers:
                traceparent = current_traceparent()
                if traceparent is not None:
                    request.headers["traceparent"] = traceparent
            response = await self._inner.handle_async_request(request)
            span.set(**{"http.response.status_code": response.status_code})
            if response.status_code >= 400:
                span.fail(f"HTTP {response.status_code}")
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _version() -> str:
    try:
        return version("cued")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout not installed
        return "0"
