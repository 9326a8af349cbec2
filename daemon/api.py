"""The daemon's API under ``/api/v1``: the CLI talks to it over the control socket, scripts
over HTTP. Every action of the CLI is a call here.

Who may call: on the control socket (a Unix socket beside the state file, reachable only
by whoever may read the state file), anyone; on the HTTP listener, a bearer token of
``[auth.users]`` with the right role — ``viewer`` reads, ``operator`` triggers, retries and
cancels, ``approver`` decides gates. With no users configured, the HTTP API is open on
its (loopback by default) address, except deciding gates, which always needs a token.

Errors are JSON, ``{"error": {"code": ..., "message": ...}}``, with a 4xx status that
says whose fault it is. No request changes state on GET.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import approvals, repair
from .errors import CuedError, Forbidden, InvalidRequest, NotFound

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.requests import Request

    from .runner import Runner

__all__ = ["Caller", "Users", "build_app", "error_response"]


def error_response(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status, headers=headers or None
    )


@dataclass(frozen=True)
class Caller:
    """Who makes a request, and what they may do."""

    name: str
    roles: frozenset[str]
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Users:
    """Bearer tokens (resolved) of ``[auth.users]``."""

    by_token: dict[str, Caller] = field(default_factory=dict)

    def find(self, token: str) -> Caller | None:
        # compare every token in constant time: which one matched must not leak by timing
        found = None
        for known, caller in self.by_token.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = caller
        return found


_TRUSTED = Caller("local", frozenset({"viewer", "operator", "approver"}))

if TYPE_CHECKING:
    Handler = Callable[[Request, Caller], Awaitable[JSONResponse]]


def build_app(runner: Runner, *, trusted: bool, users: Users | None = None) -> Starlette:
    """The API app; ``trusted`` for the control socket, else requests authenticate."""
    users = users or Users()

    def guarded(
        role: str, handler: Handler, *, token_always: bool = False
    ) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def endpoint(request: Request) -> JSONResponse:
            caller = _TRUSTED
            if not trusted and (users.by_token or token_always):
                scheme, _, token = request.headers.get("authorization", "").partition(" ")
                found = users.find(token.strip()) if scheme.lower() == "bearer" and token else None
                if found is None:
                    return error_response(
                        401,
                        "unauthorized",
                        "a valid bearer token is needed",
                        **{"WWW-Authenticate": "Bearer"},
                    )
                if role not in found.roles:
                    return error_response(
                        403, "forbidden", f"{found.name!r} lacks the {role!r} role"
                    )
                caller = found
            try:
                return await handler(request, caller)
            except NotFound as exc:
                return error_response(404, "not_found", str(exc))
            except Forbidden as exc:
                return error_response(403, "forbidden", str(exc))
            except InvalidRequest as exc:
                return error_response(
                    409 if "already" in str(exc) or "not finished" in str(exc) else 422,
                    "invalid_request",
                    str(exc),
                )
            except _BadBody as exc:
                return error_response(400, "invalid_body", str(exc))
            except CuedError as exc:
                return error_response(500, "error", str(exc))

        return endpoint

    async def trigger(request: Request, caller: Caller) -> JSONResponse:
        body = await _body(request)
        inputs = body.get("inputs", {})
        if not isinstance(inputs, dict):
            raise _BadBody("'inputs' must be a JSON object")
        run_id = await runner.submit(request.path_params["pipeline"], inputs)
        if request.query_params.get("wait") in ("1", "true"):
            return JSONResponse(_row(await runner.wait(run_id)), 201)
        return JSONResponse({"run_id": run_id}, 201)

    async def get_run(request: Request, caller: Caller) -> JSONResponse:
        row = await runner.store.get_run(request.path_params["run_id"])
        if row is None:
            raise NotFound(f"no run {request.path_params['run_id']!r}")
        return JSONResponse(_row(row))

    async def cancel(request: Request, caller: Caller) -> JSONResponse:
        return JSONResponse(_row(await repair.cancel(runner, request.path_params["run_id"])))

    async def retry(request: Request, caller: Caller) -> JSONResponse:
        body = await _body(request)
        tasks = body.get("tasks", [])
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise _BadBody("'tasks' must be a list of task names")
        row = await repair.rerun(
            runner,
            request.path_params["run_id"],
            tasks=tasks,
            downstream=bool(body.get("downstream", True)),
        )
        if request.query_params.get("wait") in ("1", "true"):
            row = await runner.wait(row.run_id)
        return JSONResponse(_row(row))

    def decision(approve: bool) -> Handler:
        async def decide(request: Request, caller: Caller) -> JSONResponse:
            body = await _body(request)
            who = caller.name
            if trusted and isinstance(body.get("who"), str):
                who = body["who"]  # the CLI says who its user is
            extra = {"payload": body["payload"]} if "payload" in body else {}
            gate = await approvals.decide(
                runner,
                request.path_params["run_id"],
                request.path_params["task"],
                who=who,
                approve=approve,
                comment=body.get("comment"),
                groups=caller.groups | runner.groups_of(who),
                **extra,
            )
            return JSONResponse(_row(gate))

        return decide

    async def list_approvals(request: Request, caller: Caller) -> JSONResponse:
        return JSONResponse([_row(g) for g in await runner.store.list_approvals()])

    return Starlette(
        routes=[
            Route(
                "/api/v1/pipelines/{pipeline}/runs", guarded("operator", trigger), methods=["POST"]
            ),
            Route("/api/v1/runs/{run_id}", guarded("viewer", get_run), methods=["GET"]),
            Route("/api/v1/runs/{run_id}/cancel", guarded("operator", cancel), methods=["POST"]),
            Route("/api/v1/runs/{run_id}/retry", guarded("operator", retry), methods=["POST"]),
            Route(
                "/api/v1/runs/{run_id}/tasks/{task}/approve",
                guarded("approver", decision(True), token_always=True),
                methods=["POST"],
            ),
            Route(
                "/api/v1/runs/{run_id}/tasks/{task}/reject",
                guarded("approver", decision(False), token_always=True),
                methods=["POST"],
            ),
            Route("/api/v1/approvals", guarded("viewer", list_approvals), methods=["GET"]),
        ]
    )


class _BadBody(Exception):
    pass


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except json.JSONDecodeError as exc:
        raise _BadBody(f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _BadBody("request body must be a JSON object")
    return body


def _row(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__slots__}
