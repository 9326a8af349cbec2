"""Who calls the API, and what they may do: the API's context, bearer tokens and roles, the
session cookie with its CSRF check, and the session endpoints.

```
control socket            -> the OS user who connected (SO_PEERCRED), every role, no token;
                             only users daemon/control.py lets in get this far
Authorization: Bearer T   -> the user of [auth.users] whose token is T, else 401
cookie cued_token=T       -> the same; to change state also X-CSRF-Token == cookie cued_csrf
nothing                   -> 401; or, with no users configured, the OS user who opened
                             the loopback connection (viewer and operator; never
                             approver), if it is one daemon/control.py lets in (the
                             daemon's own user, root, [daemon] control_group), for
                             requests addressed to a loopback host only
                             (daemon/loopback.py), refused if a browser says another
                             site's page sent a request that changes state
the role the operation needs, missing -> 403
```
"""

# No `from __future__ import annotations` here: FastAPI reads the annotations of the
# dependencies and endpoints at run time.

import hmac
import os
import pwd
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel
from starlette.responses import Response

from cued.daemon.core.loopback import is_loopback_host
from cued.daemon.ops.host import Daemon, Reloading
from cued.daemon.ops.queries import Queries
from cued.daemon.ops.status import Supervised
from cued.daemon.runtime.metrics import Metrics
from cued.daemon.sdk.sources import Intake
from cued.daemon.web.control import ControlAccess, Peer, peer_of
from cued.daemon.web.control_path import os_user_name
from cued.daemon.web.live import Live
from cued.daemon.web.peers import tcp_client_uid
from cued.daemon.web.schemas import ErrorResponse, LoginBody, Session, SessionCreated
from cued.daemon.web.server import connection_memo

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "ERRORS",
    "SESSION_COOKIE",
    "Anyone",
    "ApiContext",
    "ApiError",
    "Approver",
    "Caller",
    "Ctx",
    "Operator",
    "Users",
    "Viewer",
    "caller_of",
    "json_response",
    "open_caller",
    "open_host",
    "session_routes",
]

SESSION_COOKIE = "cued_token"
CSRF_COOKIE = "cued_csrf"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def json_response(content: BaseModel | Sequence[BaseModel], status: int = 200) -> Response:
    """``content`` as JSON, serialised by pydantic-core: the models are built from store
    rows, so validating them again on the way out (FastAPI's default) would only cost."""
    if isinstance(content, BaseModel):
        body = content.model_dump_json()
    else:
        body = "[" + ",".join(m.model_dump_json() for m in content) + "]"
    return Response(body, status, media_type="application/json")


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "The request body is not what the operation takes"),
        (401, "No valid token"),
        (403, "The caller may not do this"),
        (404, "No such thing"),
        (409, "Not now: the run or gate is in a state that does not allow it"),
        (422, "A parameter is invalid, or the request cannot be done as asked"),
    )
}
"""The error answers every API operation documents (each is an :class:`ErrorResponse`)."""


class ApiError(Exception):
    """A request refused with ``status`` and an error body."""

    def __init__(self, status: int, code: str, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class Caller:
    """Who makes a request, and what they may do."""

    name: str
    roles: frozenset[str]
    groups: frozenset[str] = frozenset()
    via: str = "token"
    """token (a bearer header), cookie (a session), open (no users configured), local
    (the control socket)"""


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


_ALL_ROLES = frozenset({"viewer", "operator", "approver"})
_OPEN_ROLES = frozenset({"viewer", "operator"})


@dataclass(frozen=True)
class ApiContext:
    """What the endpoints work with (``app.state.cued``)."""

    daemon: Daemon
    """What the endpoints act on, through :mod:`cued.daemon.ops.commands`"""
    queries: Queries
    """What the endpoints read"""
    trusted: bool
    users: Users
    live: Live
    metrics: Metrics | None
    ready: Callable[[], bool]
    access: ControlAccess = field(default_factory=lambda: ControlAccess(os.geteuid()))
    """Who may use the open API (no users): the same OS users as the control socket"""
    reloader: Reloading | None = None
    """The daemon's reload (``None`` where there is none: ``404``)"""
    supervised: Supervised | None = None
    """The daemon's own life, for ``/api/v1/status`` (404 without it)"""
    intake: Intake | None = None
    """Where backfilled events are recorded (backfill answers ``404`` without it)"""


def _context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.cued
    return ctx


_bearer = HTTPBearer(auto_error=False, description="the token of a user of [auth.users]")
_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    description="set by POST /api/v1/session; a request that changes state must also send "
    f"{CSRF_HEADER}, equal to the cookie {CSRF_COOKIE}",
)


class _Need:
    """A dependency that answers who calls, and refuses those without ``role``."""

    def __init__(self, role: str | None, *, token_always: bool = False) -> None:
        self.role = role
        self.token_always = token_always

    async def __call__(
        self,
        request: Request,
        # read again by caller_of: declared here for the OpenAPI document's security
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        cookie: Annotated[str | None, Depends(_cookie)],
    ) -> Caller:
        ctx = _context(request)
        if ctx.trusted:
            return _local_caller(request)
        caller = caller_of(request, ctx.users, ctx.access, token_always=self.token_always)
        if self.role is not None and self.role not in caller.roles:
            raise ApiError(403, "forbidden", f"{caller.name!r} lacks the {self.role!r} role")
        return caller


Ctx = Annotated[ApiContext, Depends(_context)]
Viewer = Annotated[Caller, Depends(_Need("viewer"))]
Operator = Annotated[Caller, Depends(_Need("operator"))]
Approver = Annotated[Caller, Depends(_Need("approver", token_always=True))]
Anyone = Annotated[Caller, Depends(_Need(None))]


def _local_caller(request: Request) -> Caller:
    """The OS user at the other end of the control socket: every role, since only the
    daemon's own user, root and its control group get in (daemon/control.py)."""
    peer = peer_of(request.scope)
    if peer is None:  # not served with PeerCredentials: nobody is trusted blindly
        raise ApiError(403, "local_user", "the control socket cannot tell who is calling")
    return Caller(peer.name, _ALL_ROLES, via="local")


def open_caller(request: Request, access: ControlAccess) -> Caller:
    """The caller of an open API (no users configured): the OS user who opened the
    loopback connection, if ``access`` lets it use the control socket, for a request
    addressed to a loopback host and not sent by another site's page.

    Runs run as the daemon's user, so an open API lets in no one the control socket
    would refuse: another local user needs a token of ``[auth.users]``.

    :raises ApiError: 403 otherwise, or if the connection's owner cannot be told
    """
    _loopback_host(request)
    _same_origin(request)
    peer = _tcp_peer(request)
    if not access.allows(peer):
        raise ApiError(
            403,
            "local_user",
            f"with no [auth.users], only the OS users who may use the control socket may "
            f"use the API and UI, and OS user {peer.name!r} (uid {peer.uid}) may not: "
            f"{_ADD_USERS}",
        )
    return Caller(peer.name, _OPEN_ROLES, via="open")


def open_host(request: Request) -> None:
    """With no users configured, refuse a request not addressed to a loopback host (for
    what needs no caller: health, metrics, the OpenAPI document).

    :raises ApiError: 403 if so
    """
    ctx = _context(request)
    if not ctx.trusted and not ctx.users.by_token:
        _loopback_host(request)


_ADD_USERS = "give each user a token in [auth.users] of the daemon's configuration"


def _tcp_peer(request: Request) -> Peer:
    """The OS user at the other end of the request's loopback TCP connection, told by
    Linux's socket tables (daemon/loopback.py), once per connection.

    :raises ApiError: 403 if it cannot be told (fail closed)
    """
    # Linux takes ~5 ms to list each socket table, so a connection's owner is learnt once
    # and kept for its later requests (a keep-alive browser or script pays it once)
    memo = connection_memo(request.scope)
    if memo is not None and "uid" in memo:
        uid: int | None = memo["uid"]
    else:
        uid = None
        client, server = request.scope.get("client"), request.scope.get("server")
        if client and server and server[1] is not None:
            uid = tcp_client_uid((client[0], client[1]), (server[0], server[1]))
        if memo is not None and uid is not None:
            memo["uid"] = uid
    if uid is None:
        raise ApiError(
            403,
            "local_user",
            "with no [auth.users], the API and UI answer only the OS users who may use the "
            "control socket, and this connection's owner cannot be told (it is read from "
            f"/proc/net/tcp and /proc/net/tcp6, Linux): {_ADD_USERS}",
        )
    try:
        gid = pwd.getpwuid(uid).pw_gid  # the process's own group is not known over TCP
    except KeyError:
        gid = -1
    return Peer(pid=0, uid=uid, gid=gid, name=os_user_name(uid))


def _unauthorized(message: str = "a valid bearer token is needed") -> ApiError:
    return ApiError(401, "unauthorized", message, **{"WWW-Authenticate": "Bearer"})


def caller_of(
    request: Request, users: Users, access: ControlAccess, *, token_always: bool = False
) -> Caller:
    """Who makes a request over HTTP (not the control socket), for the API and the UI
    alike: the user of ``users`` whose token the bearer header or the session cookie
    holds (a cookie that changes state needs the CSRF header too); with no users (and
    unless ``token_always``), the open caller (:func:`open_caller`).

    :raises ApiError: 401 if no valid token is given, 403 if the open caller is refused
        or the CSRF header is missing
    """
    if not users.by_token and not token_always:
        return open_caller(request, access)
    if "authorization" in request.headers:
        # as fastapi.security.HTTPBearer reads it (the scheme the OpenAPI document names)
        scheme, token = get_authorization_scheme_param(request.headers["authorization"])
        found = users.find(token) if scheme.lower() == "bearer" and token else None
        if found is None:
            raise _unauthorized()
        return replace(found, via="token")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        found = users.find(cookie)
        if found is None:
            raise _unauthorized("the session is no longer valid: log in again")
        if request.method not in _SAFE_METHODS:
            _check_csrf(request)
        return replace(found, via="cookie")
    raise _unauthorized()


def _check_csrf(request: Request) -> None:
    sent = request.headers.get(CSRF_HEADER, "")
    expected = request.cookies.get(CSRF_COOKIE, "")
    if not (sent and expected and hmac.compare_digest(sent.encode(), expected.encode())):
        raise ApiError(
            403,
            "csrf",
            f"a request with the session cookie that changes state needs the header "
            f"{CSRF_HEADER} equal to the cookie {CSRF_COOKIE}",
        )


def _loopback_host(request: Request) -> None:
    """An open API answers only requests addressed to a loopback host: a page whose own
    host name an attacker points at 127.0.0.1 (DNS rebinding) is refused, since its
    requests carry that name."""
    host = request.headers.get("host", "")
    if not is_loopback_host(host):
        shown = host if len(host) <= 100 else host[:99] + "…"
        raise ApiError(
            403,
            "host",
            "with no [auth.users], the API and UI answer only requests addressed to "
            f"localhost, 127.0.0.1 or [::1], not to {shown!r}",
        )


def _same_origin(request: Request) -> None:
    """An open API (no users) still refuses what a browser says another site's page
    sent: a page must not trigger or cancel runs on the loopback daemon of its visitor."""
    if request.method in _SAFE_METHODS:
        return
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise ApiError(403, "cross_origin", "a request from another site's page is refused")
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise ApiError(403, "cross_origin", f"a request from {origin!r} is refused")


# -- the session endpoints ---------------------------------------------------------------

session_routes = APIRouter(prefix="/api/v1", tags=["session"], responses=ERRORS)


@session_routes.post("/session", response_model=SessionCreated)
async def log_in(body: LoginBody, request: Request, ctx: Ctx) -> Response:
    """Log in with a token: sets the HttpOnly cookie ``cued_token``, and ``cued_csrf``
    (readable: send it back as ``X-CSRF-Token`` with requests that change state)."""
    found = ctx.users.find(body.token)
    if found is None:
        raise _unauthorized("not a valid token")
    csrf = secrets.token_urlsafe(32)
    answer = json_response(
        SessionCreated(
            name=found.name,
            roles=sorted(found.roles),
            groups=sorted(found.groups),
            via="cookie",
            csrf_token=csrf,
        )
    )
    secure = request.url.scheme == "https"
    answer.set_cookie(
        SESSION_COOKIE, body.token, httponly=True, samesite="strict", secure=secure, path="/"
    )
    answer.set_cookie(CSRF_COOKIE, csrf, httponly=False, samesite="strict", secure=secure, path="/")
    return answer


@session_routes.get("/session", response_model=Session)
async def who_am_i(caller: Anyone) -> Response:
    """Who the request's token, session cookie (or the open API) stands for."""
    return json_response(
        Session(
            name=caller.name,
            roles=sorted(caller.roles),
            groups=sorted(caller.groups),
            via=caller.via,
        )
    )


@session_routes.delete("/session", status_code=204)
async def log_out() -> Response:
    """Log out: clears both cookies. Needs nothing: it only ends the caller's own session
    (and the cookies are SameSite=Strict, so another site cannot send them here)."""
    answer = Response(status_code=204)
    answer.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    answer.delete_cookie(CSRF_COOKIE, path="/", samesite="strict")
    return answer
