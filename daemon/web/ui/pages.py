"""The web UI's routes: pages rendered on the server from the store, kept live by the API's
event stream, every action a call of the API from the browser.

```
/                     -> /ui/
/ui/login             a token; the browser posts it to POST /api/v1/session (a cookie)
/ui/                  overview: sources (rates, totals, backpressure), runs per state,
                      waiting approvals, the nodes sharing the state and what each owns,
                      pipelines with a trigger form
/ui/pipelines         pipelines: tasks, triggers, paused or not
/ui/pipelines/{name}  a pipeline, also one without a run: task graph, triggers, recent
                      runs, a trigger form with its inputs, pause / resume
/ui/runs              runs, filtered by pipeline and state, a page at a time (cursor),
                      each with the trigger and event that started it
/ui/runs/{id}         a run: task graph (SVG), timeline, attempts, gates, its event, assets,
                      its live log (appended to as `log` messages come)
/ui/approvals         gates waiting for a decision, with approve / reject
/ui/events            events with their payload and the runs they started
/ui/events/{id}       one event
/ui/static/{name}     the stylesheet, htmx and our script; gzipped once, cached for good
/ui/anything else     a 404 page (HTML, not the API's JSON)
anything else         the API
```

A page reads through :class:`cued.daemon.ops.queries.Queries`, as the API does. It is read
with the same cookie or bearer token the API takes (the caller is told by the API's own
:func:`cued.daemon.web.auth.caller_of`), and needs the ``viewer`` role. Each page has one
live region; when the browser hears of a change on ``GET /api/v1/stream`` it asks for that
region again (htmx sends ``HX-Request``, and the route then renders only the page's
``live`` block), so the page never depends on what a stream message carries.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from cued.daemon.core.assets import asset_of
from cued.daemon.core.states import TERMINAL_RUN_STATES
from cued.daemon.errors import InvalidRequest, NotFound
from cued.daemon.ops.queries import Queries, load, waits_for
from cued.daemon.web.auth import ApiError, Caller, caller_of
from cued.daemon.web.ui import draw

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from jinja2 import Template
    from starlette.requests import Request
    from starlette.types import ASGIApp, Receive, Scope, Send

    from cued.daemon.ops.cursors import Page
    from cued.daemon.ops.host import Daemon
    from cued.daemon.store import EventRow, RunRow
    from cued.daemon.web.auth import Users
    from cued.daemon.web.control import ControlAccess

__all__ = ["with_ui"]

_HERE = Path(__file__).resolve().parent
_PAGE_SIZE = 50
_MAX_ROWS = 100  # attempts and timeline rows shown on one run page (keeps it small)
_LOG_LINES = 1000  # live log lines rendered with a run page; its script fetches the rest
_STATES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled", "skipped")
_RECENT = 10  # latest runs on the overview
_T = TypeVar("_T")
# no inline script, nothing from elsewhere; inline style attributes place the timeline bars
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Vary": "HX-Request, Accept-Encoding",
}
_TYPES = {".css": "text/css", ".js": "text/javascript", ".txt": "text/plain"}


def with_ui(
    api: ASGIApp, daemon: Daemon, intake: Any, users: Users, access: ControlAccess
) -> ASGIApp:
    """The HTTP front's app: ``/`` and ``/ui/...`` are the UI, anything else ``api``.

    :param daemon: the running daemon (the runtime's runner), read through
        :mod:`cued.daemon.ops.queries`
    :param intake: whatever counts events per source in ``received`` (the daemon's intake)
    :param users: the tokens the API knows; the UI reads the same cookie and tokens
    :param access: with no users, the OS users who may use the UI (as for the API)
    """
    return _Front(api, _Ui(daemon, intake, users, access).app())


class _Front:
    def __init__(self, api: ASGIApp, ui: ASGIApp) -> None:
        self._api = api
        self._ui = ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path in ("/", "/ui") or path.startswith("/ui/")):
            await self._ui(scope, receive, send)
        else:
            await self._api(scope, receive, send)


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes
    etag: str
    media_type: str


def _assets() -> dict[str, _Asset]:
    assets = {}
    for path in sorted((_HERE / "static").iterdir()):
        if path.suffix in _TYPES:
            body = path.read_bytes()
            etag = hashlib.sha256(body).hexdigest()[:16]
            gzipped = gzip.compress(body, 9, mtime=0)
            assets[path.name] = _Asset(body, gzipped, etag, _TYPES[path.suffix])
    return assets


class _Rates:
    """Events per second per source over about the last minute, from the intake's running
    totals, sampled whenever a page asks (at most once a second)."""

    def __init__(self, window_s: float = 60.0) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def rates(self, totals: Mapping[str, int], at: float) -> dict[str, float | None]:
        samples = self._samples
        if not samples or at - samples[-1][0] >= 1.0:
            samples.append((at, dict(totals)))
        # keep one sample at least a window old, if there is one, and none older
        while len(samples) > 2 and at - samples[1][0] >= self._window_s:
            samples.popleft()
        first_at, first = samples[0]
        if at - first_at < 1.0 or at - first_at > 3 * self._window_s:
            if at - first_at > 3 * self._window_s:  # nobody looked for long: start again
                samples.clear()
                samples.append((at, dict(totals)))
            return dict.fromkeys(totals)
        return {s: (n - first.get(s, 0)) / (at - first_at) for s, n in totals.items()}


class _Ui:
    def __init__(self, daemon: Daemon, intake: Any, users: Users, access: ControlAccess) -> None:
        self.daemon = daemon
        self.queries = Queries.of(daemon)
        self.intake = intake
        self.users = users
        self.access = access
        self.assets = _assets()
        self.rates = _Rates()
        env = Environment(
            loader=FileSystemLoader(_HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.globals.update(static=self.static_url, nav=_NAV)
        env.filters.update(ts=_ts, dur=_dur, pretty=_pretty, money=_money, q=_q, s=_plural)
        env.globals["ui"] = env.get_template("_macros.html").module
        self.env = env

    def static_url(self, name: str) -> str:
        return f"/ui/static/{name}?v={self.assets[name].etag}"

    def app(self) -> ASGIApp:
        page = self.page
        return Starlette(
            routes=[
                Route("/", _to_ui),
                Route("/ui", _to_ui),
                Route("/ui/", page("overview.html", self.overview)),
                Route("/ui/login", self.login),
                Route("/ui/pipelines", page("pipelines.html", self.pipelines)),
                Route("/ui/pipelines/{name}", page("pipeline.html", self.pipeline)),
                Route("/ui/runs", page("runs.html", self.runs)),
                Route("/ui/runs/{run_id}", page("run.html", self.run)),
                Route("/ui/approvals", page("approvals.html", self.approvals)),
                Route("/ui/config", page("config.html", self.config_versions)),
                Route("/ui/events", page("events.html", self.events)),
                # event ids may hold "/" (a Kafka event's topic/partition/offset)
                Route("/ui/events/{event_id:path}", page("event.html", self.event)),
                Route("/ui/static/{name}", self.static),
                # last: any other /ui/ path is a page that does not exist, answered as one
                Route("/ui/{rest:path}", page("message.html", self.missing)),
            ],
            middleware=[Middleware(GZipMiddleware, minimum_size=1000, compresslevel=6)],
        )

    # -- who asks -----------------------------------------------------------------------

    def caller(self, request: Request) -> Caller | None:
        """Whoever the API would take the request's caller to be; ``None`` if it would
        answer 401 (no valid token or session: the page asks to log in).

        :raises ApiError: if the caller is refused otherwise (403)
        """
        try:
            return caller_of(request, self.users, self.access)
        except ApiError as exc:
            if exc.status == 401:
                return None
            raise

    def page(
        self,
        name: str,
        handler: Callable[[Request], Awaitable[dict[str, Any] | _NotFound]],
    ) -> Callable[[Request], Awaitable[Response]]:
        template = self.env.get_template(name)

        async def endpoint(request: Request) -> Response:
            try:
                caller = self.caller(request)
            except ApiError as exc:
                return self.render(
                    self.env.get_template("message.html"),
                    {"title": "Forbidden", "text": exc.message},
                    None,
                    status=exc.status,
                )
            fragment = request.headers.get("hx-request") == "true"
            if caller is None:
                login = "/ui/login?" + urlencode({"next": request.url.path})
                if fragment:  # htmx follows this header instead of swapping
                    return Response(status_code=401, headers={"HX-Redirect": login})
                return RedirectResponse(login, 303)
            if "viewer" not in caller.roles:
                return self.render(
                    self.env.get_template("message.html"),
                    {"title": "Forbidden", "text": f"{caller.name!r} lacks the 'viewer' role"},
                    caller,
                    status=403,
                )
            found = await handler(request)
            if isinstance(found, _NotFound):
                return self.render(
                    self.env.get_template("message.html"),
                    {"title": "Not found", "text": found.text, "active": ""},
                    caller,
                    status=404,
                )
            return self.render(template, found, caller, fragment=fragment)

        return endpoint

    def render(
        self,
        template: Template,
        context: dict[str, Any],
        caller: Caller | None,
        *,
        fragment: bool = False,
        status: int = 200,
    ) -> HTMLResponse:
        roles = caller.roles if caller is not None else frozenset()
        context = {
            "caller": caller,
            "can": {r: r in roles for r in ("viewer", "operator", "approver")},
            "login": bool(self.users.by_token),
            "active": "",
            **context,
        }
        if fragment and "live" in template.blocks:
            ctx = template.new_context(context)
            html = "".join(template.blocks["live"](ctx))
        else:
            html = template.render(context)
        return HTMLResponse(html, status, headers=_HEADERS)

    # -- pages --------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        target = request.query_params.get("next", "/ui/")
        if not target.startswith("/ui/") or target.startswith("//"):
            target = "/ui/"
        if not self.users.by_token:
            return RedirectResponse(target, 303)
        return self.render(
            self.env.get_template("login.html"), {"next": target, "active": ""}, None
        )

    async def overview(self, request: Request) -> dict[str, Any]:
        queries = self.queries
        totals: dict[str, int] = dict.fromkeys(queries.config.sources, 0)
        totals.update(getattr(self.intake, "received", {}))
        rates = self.rates.rates(totals, time.monotonic())
        kinds = {name: s.kind for name, s in queries.config.sources.items()}
        busy = load(self.daemon)
        sources = [
            {
                "name": name,
                "kind": kinds.get(name, "asset" if asset_of(name) is not None else "?"),
                "received": totals[name],
                "rate": rates.get(name),
            }
            for name in sorted(totals)
        ]
        counts = dict.fromkeys(_STATES, 0) | await queries.run_counts()
        paused = await queries.paused()
        pipelines = [
            {
                "name": name,
                "tasks": len(plan.tasks),
                "inputs": [_input_field(k, v) for k, v in plan.config.inputs.items()],
                "paused": name in paused,
            }
            for name, plan in sorted(queries.plans.items())
        ]
        return {
            "active": "/ui/",
            "sources": sources,
            "backlog": {
                "depth": busy.backlog,
                "high": busy.high_water,
                "low": busy.low_water,
                "saturated": busy.saturated,
            },
            "counts": counts,
            "states": _STATES,
            "recent": (await queries.runs_page(limit=_RECENT)).items,
            "waiting": await queries.waiting_count(),
            "running_tasks": busy.running_tasks,
            "pipelines": pipelines,
            "nodes": await queries.nodes(),
        }

    async def runs(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        pipeline = q.get("pipeline") or None
        state = q.get("state") or None
        before = q.get("before") or None
        page: Page[RunRow] = await _from_cursor(
            lambda cursor: self.queries.runs_page(
                limit=_PAGE_SIZE, pipeline=pipeline, state=state, cursor=cursor
            ),
            before,
        )
        query = {k: v for k, v in (("pipeline", pipeline), ("state", state)) if v}
        older = page.next_cursor
        return {
            "active": "/ui/runs",
            "runs": page.items,
            "started_by": await self.started_by(page.items),
            "pipeline": pipeline or "",
            "state": state or "",
            "pipelines": sorted(self.queries.plans),
            "states": _STATES,
            "newest": _url("/ui/runs", query) if before else None,
            "older": _url("/ui/runs", {**query, "before": older}) if older else None,
            "self_url": _url("/ui/runs", {**query, "before": before}),
            "now": time.time(),
        }

    async def started_by(self, runs: Sequence[RunRow]) -> dict[str, _StartedBy]:
        """What started each run (by run id): its event (if still kept) and the trigger
        of that event's source that starts the run's pipeline, when only one does."""
        events = await self.queries.started_by(runs)
        triggers = self.queries.config.triggers
        out = {}
        for run in runs:
            if run.event_id is None:
                continue
            event = events.get(run.event_id)
            names = [
                t.ref
                for t in triggers
                if event is not None and t.source == event.source and t.pipeline == run.pipeline
            ]
            out[run.run_id] = _StartedBy(
                run.event_id,
                event.source if event is not None else None,
                names[0] if len(names) == 1 else None,
            )
        return out

    async def pipelines(self, request: Request) -> dict[str, Any]:
        paused = await self.queries.paused()
        config = self.queries.config
        return {
            "active": "/ui/pipelines",
            "pipelines": [
                {
                    "name": name,
                    "tasks": len(plan.tasks),
                    "triggers": [t.ref for t in config.triggers if t.pipeline == name],
                    "pause": paused.get(name),
                    "when_paused": plan.config.when_paused,
                }
                for name, plan in sorted(self.queries.plans.items())
            ],
        }

    async def pipeline(self, request: Request) -> dict[str, Any] | _NotFound:
        name = request.path_params["name"]
        plan = self.queries.plans.get(name)
        if plan is None:
            return _NotFound(f"no pipeline {name!r}")
        needs = {task: t.config.needs for task, t in plan.tasks.items()}
        mapped = [task for task, t in plan.tasks.items() if t.config.map is not None]
        # no run to colour it: every task as it starts, pending
        graph = draw.task_graph(plan.order, needs, draw.summarise(plan.order, mapped, []))
        recent = (await self.queries.runs_page(limit=_RECENT, pipeline=name)).items
        waiting = await self.queries.runs_page(limit=_RECENT, pipeline=name, state="queued")
        return {
            "active": "/ui/pipelines",
            "name": name,
            "config": plan.config,
            "graph": graph,
            "tasks": [(task, plan.tasks[task].config) for task in plan.order],
            "triggers": [t for t in self.queries.config.triggers if t.pipeline == name],
            "inputs": [_input_field(k, v) for k, v in plan.config.inputs.items()],
            "pause": (await self.queries.paused()).get(name),
            "queued": len(waiting.items),
            "more_queued": waiting.next_cursor is not None,
            "recent": recent,
            "started_by": await self.started_by(recent),
            "self_url": f"/ui/pipelines/{quote(name, safe='')}",
            "now": time.time(),
        }

    async def missing(self, request: Request) -> _NotFound:
        return _NotFound(f"there is no page {request.url.path!r}")

    async def run(self, request: Request) -> dict[str, Any] | _NotFound:
        run_id = request.path_params["run_id"]
        detail = await self.queries.run_detail(run_id)
        if detail is None:
            return _NotFound(f"no run {run_id!r}")
        run, instances, attempts = detail.run, detail.instances, detail.attempts
        plan = self.queries.plans.get(run.pipeline)
        at = time.time()
        graph = None
        if plan is not None:
            needs = {name: t.config.needs for name, t in plan.tasks.items()}
            mapped = [name for name, t in plan.tasks.items() if t.config.map is not None]
            boxes = draw.summarise(plan.order, mapped, instances)
            graph = draw.task_graph(plan.order, needs, boxes)
        assets = [
            {
                "asset": p.asset,
                "task": p.task,
                "event_id": p.event.event_id,
                "runs": p.event.run_ids,
            }
            for p in detail.assets
        ]
        start = run.started_at or run.created_at
        end = run.ended_at if run.ended_at is not None else at
        timeline, span = draw.gantt(attempts[:_MAX_ROWS], start, end, now=at)
        by_key: dict[str, list[Any]] = {}
        for a in attempts[:_MAX_ROWS]:
            by_key.setdefault(a.key, []).append(a)
        finished = run.state in TERMINAL_RUN_STATES
        # the live log is outside the live region: a refresh of that (htmx) skips it,
        # and the page's script appends the lines that follow
        logs = None
        if request.headers.get("hx-request") != "true":
            logs = await self.queries.task_logs(run_id, limit=_LOG_LINES)
        # [retention] may have deleted the event while keeping the run
        event_kept = detail.event is not None
        return {
            "active": "/ui/runs",
            "run": run,
            "graph": graph,
            "instances": instances,
            "attempts": attempts[:_MAX_ROWS],
            "more_attempts": max(len(attempts) - _MAX_ROWS, 0),
            "timeline": timeline,
            "span": span,
            "gates": detail.gates,
            "waits": [(w, waits_for(w)) for w in detail.waits],
            "waiting_for": detail.waiting_for,
            "children": detail.children,
            "assets": assets,
            "cost": sum(a.cost or 0.0 for a in attempts),
            "has_cost": any(a.cost is not None for a in attempts),
            "duration": (end - start) if run.started_at else None,
            "finished": finished,
            "event_kept": event_kept,
            "can_retry": run.state in ("failed", "cancelled"),
            "now": at,
            "self_url": f"/ui/runs/{quote(run_id)}",
            "log_lines": logs.lines if logs else [],
            "logs_after": logs.after if logs else 0,
        }

    async def config_versions(self, request: Request) -> dict[str, Any]:
        """The configurations the daemon loaded: numbers, times and hashes (no text: a
        config may hold secrets; operators read it with `cued config show`)."""
        versions = await self.queries.config_versions(100)
        running = self.queries.config.file
        return {"active": "/ui/config", "versions": versions, "file": running}

    async def approvals(self, request: Request) -> dict[str, Any]:
        waiting = await self.queries.waiting_gates(limit=100)
        runs = {r.run_id: r for r in await self.queries.runs([g.gate.run_id for g in waiting])}
        gates = [
            {"gate": g.gate, "run": runs.get(g.gate.run_id), "decisions": g.decisions}
            for g in waiting
        ]
        return {"active": "/ui/approvals", "gates": gates, "now": time.time()}

    async def events(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        source = q.get("source") or None
        status = q.get("status") or None
        before = q.get("before") or None
        page: Page[EventRow] = await _from_cursor(
            lambda cursor: self.queries.events_page(
                limit=_PAGE_SIZE, source=source, status=status, cursor=cursor
            ),
            before,
        )
        query = {k: v for k, v in (("source", source), ("status", status)) if v}
        sources = sorted(
            set(self.queries.config.sources) | set(getattr(self.intake, "received", {}))
        )
        older = page.next_cursor
        return {
            "active": "/ui/events",
            "events": page.items,
            "source": source or "",
            "status": status or "",
            "sources": sources,
            "statuses": ("matched", "unmatched", "invalid", "held", "dropped"),
            "newest": _url("/ui/events", query) if before else None,
            "older": _url("/ui/events", {**query, "before": older}) if older else None,
            "self_url": _url("/ui/events", {**query, "before": q.get("before")}),
        }

    async def event(self, request: Request) -> dict[str, Any] | _NotFound:
        event_id = request.path_params["event_id"]
        try:
            e = await self.queries.event(event_id)
        except NotFound as exc:
            return _NotFound(str(exc))
        return {"active": "/ui/events", "e": e, "holds": await self.queries.event_holds(event_id)}

    async def static(self, request: Request) -> Response:
        asset = self.assets.get(request.path_params["name"])
        if asset is None:
            return Response("not found", 404, media_type="text/plain")
        headers = {
            "ETag": f'"{asset.etag}"',
            # the URL carries the content's hash (?v=), so it may be cached for good
            "Cache-Control": "public, max-age=31536000, immutable",
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == f'"{asset.etag}"':
            return Response(status_code=304, headers=headers)
        body = asset.body
        if "gzip" in request.headers.get("accept-encoding", ""):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=asset.media_type, headers=headers)


_NAV = (
    ("/ui/", "Overview"),
    ("/ui/pipelines", "Pipelines"),
    ("/ui/runs", "Runs"),
    ("/ui/approvals", "Approvals"),
    ("/ui/events", "Events"),
    ("/ui/config", "Config"),
)


@dataclass(frozen=True)
class _StartedBy:
    """What started a run: an event, of a source, through a trigger (if known)."""

    event_id: str
    source: str | None
    trigger: str | None


@dataclass(frozen=True)
class _NotFound:
    """What a page handler answers for a thing that does not exist (a 404 page)."""

    text: str


async def _from_cursor(read: Callable[[str | None], Awaitable[_T]], cursor: str | None) -> _T:
    """A page read from ``cursor``; the first page if ``cursor`` is not one a page gave
    (made up, or cut short): a link is no error of the daemon's."""
    if cursor is not None:
        try:
            return await read(cursor)
        except InvalidRequest:
            pass
    return await read(None)


async def _to_ui(request: Request) -> Response:
    return RedirectResponse("/ui/", 307)


def _url(path: str, query: Mapping[str, str | None]) -> str:
    given = {k: v for k, v in query.items() if v}
    return f"{path}?{urlencode(given)}" if given else path


@dataclass(frozen=True)
class _Field:
    name: str
    value: str
    json: bool


def _input_field(name: str, default: Any) -> _Field:
    # a string default is typed as it is; anything else is edited as JSON
    if isinstance(default, str):
        return _Field(name, default, json=False)
    return _Field(name, json.dumps(default), json=True)


# -- filters ------------------------------------------------------------------------------


def _ts(at: float | None) -> str:
    if at is None:
        return "\u2013"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _dur(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "\u2013"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} m"


def _pretty(value: Any, limit: int = 2000) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > limit:
        return f"{text[:limit]}\n\u2026 ({len(text) - limit:,} more characters)"
    return text


def _money(value: float | None) -> str:
    return "\u2013" if value is None else f"{value:.4f}"


def _plural(count: int) -> str:
    return "" if count == 1 else "s"


def _q(value: str) -> str:
    """A value as one URL path segment."""
    return quote(value, safe="")
