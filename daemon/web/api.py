"""The daemon's API under ``/api/v1`` (FastAPI; the OpenAPI document is at
``/api/v1/openapi.json``), with ``/healthz``, ``/readyz`` and ``/metrics`` beside it. The
CLI talks to it over the control socket, scripts and the web UI over HTTP. Every action of
the CLI is a call here.

```
GET  /api/v1/pipelines                        pipelines, their inputs, tasks, triggers
GET  /api/v1/pipelines/{pipeline}
POST /api/v1/pipelines/{pipeline}/runs        trigger (operator) {inputs}, ?wait=true
POST /api/v1/pipelines/{pipeline}/pause       (operator) new runs wait, or are skipped
POST /api/v1/pipelines/{pipeline}/resume      (operator) what waited starts
GET  /api/v1/runs                             ?pipeline&state&created_after&created_before
                                              &limit&cursor -> {items, next_cursor}
GET  /api/v1/runs/{run_id}                    tasks, attempts, gates, event, assets
POST /api/v1/runs/{run_id}/cancel             (operator)
POST /api/v1/runs/{run_id}/retry              (operator) {tasks, downstream}, ?wait=true
POST /api/v1/runs/{run_id}/tasks/{task}/approve, .../reject   (approver, always a token;
                                              recorded under the caller's own name)
GET  /api/v1/approvals                        gates waiting for a decision
GET  /api/v1/nodes                            the daemons sharing the state, what each owns
GET  /api/v1/events                           ?source&status&limit&cursor
GET  /api/v1/events/{event_id}                its data, and the runs it started
GET  /api/v1/events/{event_id}/lineage        upstream and downstream
POST /api/v1/events/replay                    (operator) stored events matched again
                                              against today's triggers {event_id | source,
                                              since, until, status; trigger, force}
POST /api/v1/sources/{source}/backfill        (operator) a schedule's ticks in [from, to)
                                              {from, to, concurrency}
GET  /api/v1/assets, /api/v1/assets/{name}    assets, their versions
GET  /api/v1/stream                           live updates (server-sent events)
GET  /api/v1/retention                        what [retention] lets go now (a dry run)
POST /api/v1/retention/prune                  (operator) delete it now
GET  /api/v1/config, POST /api/v1/config/reload, GET /api/v1/config/versions[/{version}],
GET  /api/v1/config/diff                      (operator) config versions, reload: config_api.py
POST|GET|DELETE /api/v1/session               log in (cookie), who am I, log out
GET  /api/v1/status                           version, uptime, sources and their state,
                                              backlog, active runs (`cued status`)
GET  /healthz, /readyz, /metrics              no token (with no users: to a loopback Host)
```

Every endpoint reads through :class:`cued.daemon.ops.queries.Queries` and acts through
:mod:`cued.daemon.ops.commands`, and turns what they answer into
:mod:`cued.daemon.web.schemas`. Who may call is :mod:`cued.daemon.web.auth`'s business.
Errors are JSON, ``{"error": {"code": ..., "message": ...}}``, with a 4xx status that says
whose fault it is: FastAPI's own (validation, unknown path, method) too; a cursor this API
did not give is ``422``, a run or gate whose state does not allow the request now
(:class:`~cued.daemon.errors.Conflict`) ``409``. No request changes state on GET. Bodies are capped before a request gets
here (``413``, :mod:`cued.daemon.web.body_limit`), JSON bodies go through
:mod:`cued.daemon.core.untrusted` before FastAPI reads them (``400`` if refused,
:mod:`cued.daemon.web.json_bodies`), and what the store gives back to show was repaired on
the way (:func:`cued.daemon.core.untrusted.stored`).
"""

# No `from __future__ import annotations` here: FastAPI reads the annotations of the
# endpoints at run time.

import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from cued.daemon.core.tracecontext import parse_traceparent
from cued.daemon.errors import (
    Conflict,
    CuedError,
    DatabaseLost,
    Fenced,
    Forbidden,
    InvalidRequest,
    NotFound,
    StoreError,
)
from cued.daemon.ops import commands
from cued.daemon.ops.backfill import backfill as backfill_source
from cued.daemon.ops.host import Daemon, Reloading
from cued.daemon.ops.queries import Queries
from cued.daemon.ops.replay import ReplayRequest, replay
from cued.daemon.ops.status import Supervised, daemon_status
from cued.daemon.runtime.metrics import CONTENT_TYPE, Metrics
from cued.daemon.sdk.http_errors import error_response
from cued.daemon.sdk.sources import Intake
from cued.daemon.web.auth import (
    ERRORS,
    ApiContext,
    ApiError,
    Approver,
    Caller,
    Ctx,
    Operator,
    Users,
    Viewer,
    json_response,
    open_host,
    session_routes,
)
from cued.daemon.web.config_api import config_routes
from cued.daemon.web.control import ControlAccess
from cued.daemon.web.json_bodies import CleanJsonBodies
from cued.daemon.web.live import EventStream, Live
from cued.daemon.web.schemas import (
    Approval,
    Asset,
    AssetDetail,
    BackfillBody,
    BackfillResult,
    DecideBody,
    ErrorResponse,
    EventDetail,
    EventLineage,
    EventPage,
    Health,
    LogPage,
    Node,
    Pipeline,
    PruneReport,
    ReplayBody,
    ReplayResult,
    RetryBody,
    Run,
    RunDetail,
    RunPage,
    Status,
    TriggerBody,
)

__all__ = ["Caller", "Users", "build_app"]

_MAX_LIMIT = 500
_MAX_LOG_LINES = 10_000
_MAX_SQL_INT = 2**63 - 1  # SQLite's largest integer: a larger one cannot be compared
_READY_TIMEOUT_S = 2.0

RunStateName = Literal[
    "queued", "running", "waiting", "succeeded", "failed", "cancelled", "skipped"
]
EventStatus = Literal["matched", "unmatched", "invalid", "held", "dropped"]
Limit = Annotated[int, Query(ge=1, le=_MAX_LIMIT, description="items per page")]
Cursor = Annotated[str | None, Query(description="next_cursor of the page before")]


def build_app(
    daemon: Daemon,
    *,
    trusted: bool,
    users: Users | None = None,
    live: Live | None = None,
    metrics: Metrics | None = None,
    ready: Callable[[], bool] = lambda: True,
    access: ControlAccess | None = None,
    reloader: Reloading | None = None,
    supervised: Supervised | None = None,
    intake: Intake | None = None,
) -> FastAPI:
    """The API app.

    :param daemon: the running daemon (the runtime's runner)
    :param trusted: for the control socket; else requests authenticate
    :param live: where ``/api/v1/stream`` reads from (a silent one if not given)
    :param metrics: served at ``/metrics`` (404 if not given)
    :param ready: whether the sources have started (for ``/readyz``)
    :param access: with no users, the OS users who may call (the daemon's own user and
        root if not given)
    :param reloader: the daemon's reload (``/api/v1/config`` answers ``404`` without one)
    :param supervised: the daemon's start and its sources, for ``/api/v1/status``
    :param intake: where backfilled events are recorded (backfill answers ``404`` without)
    """
    app = FastAPI(
        title="cued",
        summary="The API of the cued orchestration daemon",
        version="1",
        openapi_url=None,  # served by _ops, behind the open API's Host check
        docs_url=None,  # the docs pages load their scripts from the internet
        redoc_url=None,
    )
    app.state.cued = ApiContext(
        daemon,
        Queries.of(daemon),
        trusted,
        users or Users(),
        live or Live(),
        metrics,
        ready,
        access or ControlAccess(os.geteuid()),
        reloader,
        supervised,
        intake,
    )
    # JSON bodies through cued.daemon.core.untrusted before FastAPI parses them: json.loads
    # takes lone surrogates, depth and NaN that no run or answer can keep
    app.add_middleware(CleanJsonBodies)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(CuedError, _cued_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.include_router(_api)
    app.include_router(config_routes)
    app.include_router(session_routes)
    app.include_router(_ops)
    return app


_api = APIRouter(prefix="/api/v1", responses=ERRORS)
# with no users, answered only to a loopback Host: a page whose host name an attacker
# points at 127.0.0.1 (DNS rebinding) must not read them either
_ops = APIRouter(tags=["operations"], dependencies=[Depends(open_host)])


# -- errors ------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, **exc.headers)


async def _cued_error(request: Request, exc: Exception) -> Response:
    message = str(exc)
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", message)
    if isinstance(exc, Forbidden):
        return error_response(403, "forbidden", message)
    if isinstance(exc, Conflict):
        return error_response(409, "invalid_request", message)
    if isinstance(exc, InvalidRequest):
        return error_response(422, "invalid_request", message)
    if _database_away(exc):
        # (PostgreSQL) the daemon reconnects: asked again later, it answers
        return error_response(503, "store_unavailable", message, **{"Retry-After": "5"})
    return error_response(500, "error", message)


def _database_away(exc: BaseException | None) -> bool:
    """Whether ``exc`` comes of a database lost (or a node's lease), which the daemon
    reconnects to, not of a store that is broken."""
    while exc is not None:
        if isinstance(exc, DatabaseLost | Fenced):
            return True
        exc = exc.__cause__
    return False


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    message = "; ".join(
        ".".join(str(p) for p in e.get("loc", ())[1:] or e.get("loc", ())) + ": " + e["msg"]
        for e in errors[:5]
    )
    if any(e.get("loc", ("",))[0] == "body" for e in errors):
        return error_response(400, "invalid_body", f"invalid request body: {message}")
    return error_response(422, "invalid_request", message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(404, "not_found", f"no such path {request.url.path!r}")
    if exc.status_code == 405:
        return error_response(
            405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path!r}"
        )
    return error_response(exc.status_code, "http_error", str(exc.detail))


# -- pipelines and runs ------------------------------------------------------------------


@_api.get("/pipelines", response_model=list[Pipeline], tags=["pipelines"])
async def list_pipelines(ctx: Ctx, caller: Viewer) -> Response:
    """Every pipeline with its inputs (and their defaults), tasks and triggers."""
    config = ctx.queries.config
    paused = await ctx.queries.paused()
    return json_response(
        [Pipeline.of(n, p, config.triggers, paused.get(n)) for n, p in config.pipelines.items()]
    )


@_api.get("/pipelines/{pipeline}", response_model=Pipeline, tags=["pipelines"])
async def get_pipeline(pipeline: str, ctx: Ctx, caller: Viewer) -> Response:
    config = ctx.queries.config
    if pipeline not in config.pipelines:
        raise NotFound(f"no pipeline {pipeline!r}")
    pause = (await ctx.queries.paused()).get(pipeline)
    return json_response(Pipeline.of(pipeline, config.pipelines[pipeline], config.triggers, pause))


@_api.post("/pipelines/{pipeline}/pause", response_model=Pipeline, tags=["pipelines"])
async def pause(pipeline: str, ctx: Ctx, caller: Operator) -> Response:
    """Pause a pipeline (durably): runs that have started go on; new ones (from events or
    triggers) are recorded and wait, or are recorded as skipped, as its ``when_paused``
    says. Pausing a paused pipeline changes nothing."""
    state = await commands.pause(ctx.daemon, pipeline, who=caller.name)
    config = ctx.queries.config
    return json_response(
        Pipeline.of(pipeline, config.pipelines[pipeline], config.triggers, state.pause)
    )


@_api.post("/pipelines/{pipeline}/resume", response_model=Pipeline, tags=["pipelines"])
async def resume(pipeline: str, ctx: Ctx, caller: Operator) -> Response:
    """Resume a paused pipeline (durably) and start the runs that waited, oldest first, as
    its ``max_active_runs`` allows (``started`` says how many had waited)."""
    state = await commands.unpause(ctx.daemon, pipeline, who=caller.name)
    config = ctx.queries.config
    return json_response(
        Pipeline.of(
            pipeline, config.pipelines[pipeline], config.triggers, None, started=state.started
        )
    )


@_api.post(
    "/pipelines/{pipeline}/runs", status_code=201, response_model=Run, tags=["pipelines", "runs"]
)
async def trigger(
    pipeline: str,
    ctx: Ctx,
    caller: Operator,
    body: TriggerBody | None = None,
    wait: Annotated[bool, Query(description="answer once the run has finished")] = False,
    traceparent: Annotated[
        str | None, Header(description="W3C trace context: the run continues the caller's trace")
    ] = None,
) -> Response:
    """Start a run (recorded before the answer); inputs not given take their defaults."""
    row = await commands.trigger(
        ctx.daemon,
        pipeline,
        (body or TriggerBody()).inputs,
        wait=wait,
        traceparent=parse_traceparent(traceparent),
    )
    return json_response(Run.from_row(row), 201)


@_api.get("/runs", response_model=RunPage, tags=["runs"])
async def list_runs(
    ctx: Ctx,
    caller: Viewer,
    pipeline: str | None = None,
    state: RunStateName | None = None,
    created_after: Annotated[
        datetime | None, Query(description="ISO 8601, or seconds since the epoch")
    ] = None,
    created_before: Annotated[datetime | None, Query(description="the same")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """Runs, newest first, a page at a time (run ids sort by creation time)."""
    page = await ctx.queries.runs_page(
        limit=limit,
        pipeline=pipeline,
        state=state,
        created_after=_seconds(created_after),
        created_before=_seconds(created_before),
        cursor=cursor,
    )
    return json_response(RunPage.of(page))


@_api.get("/runs/{run_id}", response_model=RunDetail, tags=["runs"])
async def get_run(run_id: str, ctx: Ctx, caller: Viewer) -> Response:
    """A run with its task instances and their attempts (outputs, errors, costs), its
    approval gates and their decisions, the event that started it and the assets it
    produced."""
    detail = await ctx.queries.run_detail(run_id)
    if detail is None:
        raise NotFound(f"no run {run_id!r}")
    return json_response(RunDetail.of(detail))


@_api.get("/runs/{run_id}/logs", response_model=LogPage, tags=["runs"])
async def get_logs(
    run_id: str,
    ctx: Ctx,
    caller: Viewer,
    task: Annotated[
        str | None,
        Query(description="only this task's lines: an instance (name[i]) or all of a task's"),
    ] = None,
    attempt: Annotated[
        int | None, Query(ge=1, le=_MAX_SQL_INT, description="only this attempt's")
    ] = None,
    after: Annotated[
        int, Query(ge=0, le=_MAX_SQL_INT, description="only lines after this (a page's after)")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=_MAX_LOG_LINES, description="lines at most")] = 1000,
) -> Response:
    """A run's live log: lines its task attempts wrote (output, log records, requests),
    oldest first, from ``after`` on. Poll with the answer's ``after``, or listen to
    ``event: log`` on ``GET /api/v1/stream``, until ``finished``."""
    page = await ctx.queries.task_logs(run_id, task=task, attempt=attempt, after=after, limit=limit)
    return json_response(LogPage.of(page))


@_api.post("/runs/{run_id}/cancel", response_model=Run, tags=["runs"])
async def cancel(run_id: str, ctx: Ctx, caller: Operator) -> Response:
    """Cancel a run that runs or waits: its running tasks are cancelled."""
    return json_response(Run.from_row(await commands.cancel(ctx.daemon, run_id)))


@_api.post("/runs/{run_id}/retry", response_model=Run, tags=["runs"])
async def retry(
    run_id: str,
    ctx: Ctx,
    caller: Operator,
    body: RetryBody | None = None,
    wait: Annotated[bool, Query(description="answer once the run has finished")] = False,
) -> Response:
    """Run a finished run again from the point of failure, or from the named tasks."""
    body = body or RetryBody()
    row = await commands.rerun(ctx.daemon, run_id, tasks=body.tasks, downstream=body.downstream)
    if wait:
        row = await commands.wait(ctx.daemon, row.run_id)
    return json_response(Run.from_row(row))


# -- approvals ---------------------------------------------------------------------------


async def _decide(
    ctx: ApiContext,
    caller: Caller,
    run_id: str,
    task: str,
    body: DecideBody | None,
    *,
    approve: bool,
) -> Response:
    body = body or DecideBody()
    # one person, one name: else one person could fill min_approvals alone
    who = caller.name
    if body.who is not None and body.who != who:
        raise ApiError(
            403,
            "who",
            f"a decision is recorded under the name of whoever makes it, {who!r} "
            f"(not {body.who!r})",
        )
    gate = await commands.decide(
        ctx.daemon,
        run_id,
        task,
        who=who,
        approve=approve,
        comment=body.comment,
        payload=body.payload if "payload" in body.model_fields_set else commands.AS_PROPOSED,
        groups=caller.groups,
    )
    return json_response(Approval.of(gate.gate, gate.decisions))


@_api.post("/runs/{run_id}/tasks/{task}/approve", response_model=Approval, tags=["approvals"])
async def approve(
    run_id: str, task: str, ctx: Ctx, caller: Approver, body: DecideBody | None = None
) -> Response:
    """Approve a waiting gate (as an approver: always with a token)."""
    return await _decide(ctx, caller, run_id, task, body, approve=True)


@_api.post("/runs/{run_id}/tasks/{task}/reject", response_model=Approval, tags=["approvals"])
async def reject(
    run_id: str, task: str, ctx: Ctx, caller: Approver, body: DecideBody | None = None
) -> Response:
    """Reject a waiting gate: one rejection settles it."""
    return await _decide(ctx, caller, run_id, task, body, approve=False)


@_api.get("/approvals", response_model=list[Approval], tags=["approvals"])
async def list_approvals(ctx: Ctx, caller: Viewer, limit: Limit = 100) -> Response:
    """Gates waiting for a decision, oldest first, with the decisions made so far."""
    gates = await ctx.queries.waiting_gates(limit)
    return json_response([Approval.of(g.gate, g.decisions) for g in gates])


# -- nodes -------------------------------------------------------------------------------


@_api.get("/nodes", response_model=list[Node], tags=["nodes"])
async def list_nodes(ctx: Ctx, caller: Viewer) -> Response:
    """The daemons sharing the state (one on SQLite), by name, with the unfinished runs
    each owns."""
    return json_response([Node.from_row(row) for row in await ctx.queries.nodes()])


# -- events and lineage ------------------------------------------------------------------


@_api.post("/sources/{source}/backfill", response_model=BackfillResult, tags=["events"])
async def backfill(source: str, body: BackfillBody, ctx: Ctx, caller: Operator) -> Response:
    """Fire a schedule source's ticks in ``[from, to)`` as events, ``concurrency`` at a
    time (the next ones once their runs have ended); ticks recorded already (an earlier
    backfill, or the source itself) start nothing. Answers once all have ended."""
    if ctx.intake is None:
        raise NotFound("this API records no events (no intake)")
    report = await backfill_source(
        ctx.daemon, ctx.intake, source, body.from_, body.to, concurrency=body.concurrency
    )
    return json_response(
        BackfillResult(
            events=report.events,
            recorded=report.recorded,
            duplicates=report.duplicates,
            run_ids=report.run_ids,
            ended=report.ended,
        )
    )


@_api.get("/events", response_model=EventPage, tags=["events"])
async def list_events(
    ctx: Ctx,
    caller: Viewer,
    source: Annotated[str | None, Query(description="a source's name, or asset:NAME")] = None,
    status: EventStatus | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """Events, newest first, a page at a time (without their data: see one event)."""
    page = await ctx.queries.events_page(limit=limit, source=source, status=status, cursor=cursor)
    return json_response(EventPage.of(page))


@_api.post("/events/replay", response_model=ReplayResult, tags=["events"])
async def replay_events(body: ReplayBody, ctx: Ctx, caller: Operator) -> Response:
    """Match stored events again against today's triggers (or one of them): those not
    run for the event yet start (all, with ``force``), their runs linked to the event.
    Answers once they are recorded."""
    report = await replay(ctx.daemon, ReplayRequest(**body.model_dump()))
    return json_response(ReplayResult.of(report))


@_api.get("/events/{event_id:path}/lineage", response_model=EventLineage, tags=["events"])
async def event_lineage(event_id: str, ctx: Ctx, caller: Viewer) -> Response:
    """Where an event came from (for an asset event: the run that produced it, the event
    that started that run, and so on back) and what followed from it: the runs it
    started, their tasks, the assets they produced and the runs those started, onwards."""
    return json_response(EventLineage.of(await ctx.queries.lineage(event_id)))


@_api.get("/events/{event_id:path}", response_model=EventDetail, tags=["events"])
async def get_event(event_id: str, ctx: Ctx, caller: Viewer) -> Response:
    """An event with its data and meta, and the runs it started."""
    return json_response(EventDetail.of_detail(await ctx.queries.event_detail(event_id)))


# -- assets ------------------------------------------------------------------------------


@_api.get("/assets", response_model=list[Asset], tags=["assets"])
async def list_assets(ctx: Ctx, caller: Viewer) -> Response:
    """Every asset, configured or produced, with its latest version."""
    return json_response([Asset.of(a) for a in await ctx.queries.assets()])


@_api.get("/assets/{name}", response_model=AssetDetail, tags=["assets"])
async def get_asset(
    name: str, ctx: Ctx, caller: Viewer, limit: Limit = 50, cursor: Cursor = None
) -> Response:
    """An asset's versions, newest first: for each, the run that produced it and the event
    that started that run, and the runs this version started."""
    return json_response(AssetDetail.of(await ctx.queries.asset(name, limit=limit, cursor=cursor)))


# -- retention ---------------------------------------------------------------------------


@_api.get("/retention", response_model=PruneReport, tags=["retention"])
async def prunable(ctx: Ctx, caller: Viewer) -> Response:
    """What pruning would delete now, as ``[retention]`` says, deleting nothing."""
    report = await commands.prune(ctx.daemon, dry_run=True)
    return json_response(PruneReport.model_validate(report))


@_api.post("/retention/prune", response_model=PruneReport, tags=["retention"])
async def prune(ctx: Ctx, caller: Operator) -> Response:
    """Delete now what ``[retention]`` lets go (the daemon does it every ``prune_every``
    too), in small transactions that take turns with the daemon's other writes."""
    report = await commands.prune(ctx.daemon, dry_run=False)
    return json_response(PruneReport.model_validate(report))


# -- live updates ------------------------------------------------------------------------


@_api.get(
    "/stream",
    tags=["live"],
    response_class=Response,
    responses={
        200: {
            "description": "Server-sent events, each one JSON `data:` line, of type (`event:`) "
            "`run`, `task`, `event`, `approval`, `decision`, `log`, and a last `reset` for a reader "
            "that fell behind (or reconnected with Last-Event-ID): reload, then reconnect. "
            "A comment line every 15 s keeps the connection alive.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def stream(request: Request, ctx: Ctx, caller: Viewer) -> Response:
    """Live updates of runs, tasks, events and approval gates, as they are committed."""
    return EventStream(ctx.live, reset_first="last-event-id" in request.headers)


# -- health and metrics ------------------------------------------------------------------


@_api.get("/status", response_model=Status, tags=["operations"])
async def status(ctx: Ctx, caller: Viewer) -> Response:
    """How the daemon is: version, uptime, sources and their state, backlog, active runs."""
    if ctx.supervised is None:
        raise NotFound("this API is not served by a running daemon")
    return json_response(Status.of(daemon_status(ctx.daemon, ctx.supervised)))


@_ops.get("/healthz", response_model=Health)
async def healthz() -> Response:
    """The process is up."""
    return json_response(Health(status="ok", checks={}))


@_ops.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready: see the checks"}},
)
async def readyz(ctx: Ctx) -> Response:
    """Ready: the store is open and answers, and the sources have started."""
    checks = {}
    try:
        with anyio.fail_after(_READY_TIMEOUT_S):
            await ctx.queries.ping()
        checks["store"] = "ok"
    except (StoreError, TimeoutError) as exc:
        checks["store"] = f"error: {exc or 'no answer'}"
    checks["sources"] = "started" if ctx.ready() else "not started"
    ok = checks == {"store": "ok", "sources": "started"}
    answer = Health(status="ready" if ok else "not_ready", checks=checks)
    return json_response(answer, 200 if ok else 503)


@_ops.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus' text format", "content": {"text/plain": {}}},
        404: {"model": ErrorResponse, "description": "Metrics are not collected here"},
    },
)
async def metrics(ctx: Ctx) -> Response:
    """Prometheus metrics."""
    if ctx.metrics is None:
        raise NotFound("metrics are not collected here")
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)


@_ops.get("/api/v1/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> Response:
    """The OpenAPI document."""
    return JSONResponse(request.app.openapi())


# -- helpers -----------------------------------------------------------------------------


def _seconds(at: datetime | None) -> float | None:
    if at is None:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
