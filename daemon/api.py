"""The daemon's one ASGI app: the control API under ``/api/v1`` (the CLI talks to it over
the control socket), later webhooks, the UI and metrics too.

Errors are JSON, ``{"error": {"code": ..., "message": ...}}``, with a 4xx status that
says whose fault it is.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from .errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    from starlette.requests import Request

    from .intake import DaemonIntake
    from .runner import Runner

__all__ = ["build_app", "error_response"]


def error_response(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status, headers=headers or None
    )


def build_app(runner: Runner, intake: DaemonIntake | None = None) -> Starlette:
    async def trigger(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError as exc:
            return error_response(400, "invalid_json", f"request body is not JSON: {exc}")
        inputs = body.get("inputs", {}) if isinstance(body, dict) else None
        if not isinstance(inputs, dict):
            return error_response(400, "invalid_inputs", "'inputs' must be a JSON object")
        try:
            run_id = await runner.submit(request.path_params["pipeline"], inputs)
        except NotFound as exc:
            return error_response(404, "not_found", str(exc))
        except InvalidRequest as exc:
            return error_response(422, "invalid_inputs", str(exc))
        if request.query_params.get("wait") in ("1", "true"):
            row = await runner.wait(run_id)
            return JSONResponse(_run(row), 201)
        return JSONResponse({"run_id": run_id}, 201)

    async def get_run(request: Request) -> JSONResponse:
        row = await runner.store.get_run(request.path_params["run_id"])
        if row is None:
            return error_response(404, "not_found", f"no run {request.path_params['run_id']!r}")
        return JSONResponse(_run(row))

    async def cancel(request: Request) -> JSONResponse:
        try:
            row = await runner.cancel(request.path_params["run_id"])
        except NotFound as exc:
            return error_response(404, "not_found", str(exc))
        return JSONResponse(_run(row))

    return Starlette(
        routes=[
            Route("/api/v1/pipelines/{pipeline}/runs", trigger, methods=["POST"]),
            Route("/api/v1/runs/{run_id}", get_run, methods=["GET"]),
            Route("/api/v1/runs/{run_id}/cancel", cancel, methods=["POST"]),
        ]
    )


def _run(row: Any) -> dict[str, Any]:
    return (
        {name: getattr(row, name) for name in row.__slots__}
        if hasattr(row, "__slots__")
        else asdict(row)
    )
