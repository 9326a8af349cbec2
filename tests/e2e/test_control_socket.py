"""The control socket, the CLI's way into the daemon: only the daemon's own user, root and
the members of ``[daemon] control_group`` may use it, each named by their OS user, so a
decision on an approval gate carries the name of whoever made it.

Real daemons, real OS users: ``nobody``, and a user and group made for the test (the tests
run as root, which they need for that)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from cued.daemon.assembly import control_socket_path
from cued.daemon.errors import CuedError
from cued.daemon.web.control import ControlAccess, ControlGuard, PeerCredentials
from cued.daemon.web.server import serve_asgi
from tests.support.daemon import Daemon, cued, query, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

ME = pwd.getpwuid(os.geteuid()).pw_name
NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")

CONFIG = """
[daemon]
state = "state.db"
{daemon_extra}
[http]
listen = ""

[pipelines.hello.tasks.greet]
kind = "shell"
argv = ["echo", "hello"]

[pipelines.post.tasks.gate]
kind = "approval"
message = "Ship it?"
approvers = [{approvers}]
min_approvals = 2
"""


def write_config(folder: Path, *, daemon_extra: str = "", approvers: str = "") -> Path:
    config = folder / "config.toml"
    config.write_text(CONFIG.format(daemon_extra=daemon_extra, approvers=approvers))
    config.chmod(0o644)
    return config


def as_user(name: str) -> tuple[str, ...]:
    """Run the rest as OS user ``name``, with its groups."""
    gid = pwd.getpwnam(name).pw_gid
    return ("setpriv", f"--reuid={name}", f"--regid={gid}", "--init-groups")


# An HTTP request over a Unix socket with the standard library only, run as another user
_REQUEST = """
import http.client, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
conn = Unix("cued")
conn.request(sys.argv[2], sys.argv[3], body=sys.argv[4].encode() or None,
             headers={"content-type": "application/json"})
answer = conn.getresponse()
sys.stdout.write(f"{answer.status} {answer.read().decode()}")
"""


def request_as(
    run_as: Sequence[str], socket_path: Path, method: str, path: str, body: object = None
) -> subprocess.CompletedProcess[str]:
    """``METHOD path`` on the control socket, as another user; stdout is "STATUS BODY"."""
    data = json.dumps(body) if body is not None else ""
    return subprocess.run(
        [*run_as, sys.executable, "-c", _REQUEST, str(socket_path), method, path, data],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def answer_of(done: subprocess.CompletedProcess[str]) -> tuple[int, Any]:
    assert done.returncode == 0, done.stderr
    status, _, body = done.stdout.partition(" ")
    return int(status), json.loads(body)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def runs_in(state: Path) -> int:
    return int(query(state, "SELECT count(*) FROM runs")[0][0])


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every local user may enter. pytest's tmp_path is root's alone, which
    would keep other users from the socket for the wrong reason."""
    path = Path(tempfile.mkdtemp(prefix="cued-control-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def member() -> Iterator[tuple[str, str]]:
    """A throwaway OS user, and a throwaway group it belongs to (not its primary one):
    ``(user, group)``; both are removed afterwards."""
    suffix = secrets.token_hex(3)
    user, group = f"cuedu{suffix}", f"cuedg{suffix}"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(
            ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", group, user],
            check=True,
        )
        try:
            yield user, group
        finally:
            subprocess.run(["userdel", user], check=True)
    finally:
        subprocess.run(["groupdel", group], check=True)


# -- who may use it ---------------------------------------------------------------------


async def test_the_control_socket_is_private_to_the_daemons_user(shared_dir):
    config = write_config(shared_dir)
    daemon = Daemon(config, shared_dir / "state.db")
    await daemon.start()
    try:
        socket_path = control_socket_path(shared_dir / "state.db")
        folder = socket_path.parent
        assert socket_path == shared_dir / "state.db.d" / "control.sock"
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        assert mode_of(socket_path) == 0o600
        assert mode_of(folder) == 0o700
        assert (folder.stat().st_uid, socket_path.stat().st_uid) == (os.geteuid(), os.geteuid())
        me = answer_of(request_as((), socket_path, "GET", "/api/v1/session"))
        assert me == (
            200,
            {"name": ME, "roles": ["approver", "operator", "viewer"], "groups": [], "via": "local"},
        )
    finally:
        assert daemon.stop() == 0
    assert not socket_path.exists()


async def test_another_local_user_cannot_reach_the_control_socket(shared_dir):
    config = write_config(shared_dir)
    state = shared_dir / "state.db"
    daemon = Daemon(config, state)
    await daemon.start()
    try:
        socket_path = control_socket_path(state)
        trigger = cued(config, "trigger", "hello", run_as=NOBODY)
        raw = request_as(NOBODY, socket_path, "POST", "/api/v1/pipelines/hello/runs", {})
        runs = runs_in(state)
    finally:
        assert daemon.stop() == 0
    # refused, and not run "here" instead as if no daemon ran
    assert trigger.returncode == 1
    assert trigger.stderr == (
        f"cued: error: permission denied on the control socket {str(socket_path)!r}: only the "
        "daemon's own user, root and members of its [daemon] control_group may use it\n"
    )
    assert raw.returncode == 1
    assert "PermissionError" in raw.stderr
    assert runs == 0


async def test_the_peer_is_checked_even_when_the_socket_is_open_to_all(shared_dir):
    """The second lock: should the folder and socket be opened to everyone (by hand, by
    mistake), each connection's credentials still keep strangers out."""
    config = write_config(shared_dir)
    state = shared_dir / "state.db"
    daemon = Daemon(config, state)
    await daemon.start()
    try:
        socket_path = control_socket_path(state)
        socket_path.parent.chmod(0o755)
        socket_path.chmod(0o666)
        trigger = cued(config, "trigger", "hello", run_as=NOBODY)
        health = answer_of(request_as(NOBODY, socket_path, "GET", "/healthz"))
        mine = answer_of(request_as((), socket_path, "GET", "/healthz"))
        runs = runs_in(state)
    finally:
        assert daemon.stop() == 0
    refusal = (
        "OS user 'nobody' (uid 65534) may not use this daemon's control socket; only the "
        f"daemon's own user {ME!r} and root may (a [daemon] control_group can let a group in)"
    )
    assert trigger.returncode == 1
    assert trigger.stderr == f"cued: error: {refusal}\n"
    assert health == (403, {"error": {"code": "local_user", "message": refusal}})
    assert mine[0] == 200
    assert runs == 0


async def test_root_may_use_the_control_socket_of_a_daemon_run_by_another_user(shared_dir, member):
    user, _ = member
    shutil.chown(shared_dir, user)
    config = write_config(shared_dir)
    state = shared_dir / "state.db"
    daemon = Daemon(config, state, run_as=as_user(user))
    await daemon.start()
    try:
        socket_path = control_socket_path(state)
        owner = socket_path.stat().st_uid
        triggered = cued(config, "trigger", "hello", "--wait")
        me = answer_of(request_as((), socket_path, "GET", "/api/v1/session"))
        theirs = answer_of(request_as(as_user(user), socket_path, "GET", "/api/v1/session"))
        stranger = request_as(NOBODY, socket_path, "GET", "/api/v1/session")
    finally:
        assert daemon.stop() == 0
    assert owner == pwd.getpwnam(user).pw_uid
    assert triggered.returncode == 0, triggered.stderr
    assert "succeeded" in triggered.stdout
    assert (me[0], me[1]["name"]) == (200, "root")
    assert (theirs[0], theirs[1]["name"]) == (200, user)
    assert "PermissionError" in stranger.stderr


async def test_members_of_the_control_group_may_use_it_and_decide_under_their_own_name(
    shared_dir, member
):
    user, group = member
    config = write_config(
        shared_dir, daemon_extra=f'control_group = "{group}"', approvers=f'"{ME}", "{user}"'
    )
    state = shared_dir / "state.db"
    daemon = Daemon(config, state)
    await daemon.start()
    try:
        socket_path = control_socket_path(state)
        gid = grp.getgrnam(group).gr_gid
        folder = socket_path.parent.stat()
        sock = socket_path.stat()
        run_id = cued(config, "trigger", "post", run_as=as_user(user)).stdout.split()[2]
        await wait_for(lambda: query(state, "SELECT state FROM runs")[0][0] == "waiting")
        mine = cued(config, "approve", run_id, "gate", "-m", "first")
        mine_again = cued(config, "approve", run_id, "gate", "-m", "again")
        # the daemon's user cannot fill min_approvals by claiming the member's name
        claimed = answer_of(
            request_as(
                (),
                socket_path,
                "POST",
                f"/api/v1/runs/{run_id}/tasks/gate/approve",
                {"who": user},
            )
        )
        waiting = query(state, "SELECT state FROM approvals")[0][0]
        theirs = cued(config, "approve", run_id, "gate", "-m", "second", run_as=as_user(user))
        await wait_for(lambda: query(state, "SELECT state FROM runs")[0][0] == "succeeded")
        stranger = cued(config, "approve", run_id, "gate", run_as=NOBODY)
    finally:
        assert daemon.stop() == 0
    assert (folder.st_gid, stat.S_IMODE(folder.st_mode)) == (gid, 0o750)
    assert (sock.st_gid, stat.S_IMODE(sock.st_mode)) == (gid, 0o660)
    assert mine.returncode == 0, mine.stderr
    assert f"approved by {ME}; waiting for 2 approvals" in mine.stdout
    assert f"approved by {ME}; waiting for 2 approvals" in mine_again.stdout
    assert claimed[0] == 403
    assert claimed[1]["error"]["code"] == "who"
    assert waiting == "waiting"
    assert theirs.returncode == 0, theirs.stderr
    assert "approved" in theirs.stdout
    decided = query(state, "SELECT who, comment FROM decisions ORDER BY decided_at")
    assert decided == [(ME, "again"), (user, "second")]
    assert stranger.returncode == 1
    assert "permission denied on the control socket" in stranger.stderr


async def test_an_unknown_control_group_stops_the_daemon_with_a_clear_error(shared_dir):
    config = write_config(shared_dir, daemon_extra='control_group = "no-such-group-x"')
    done = cued(config, "run")
    assert done.returncode == 1
    assert done.stderr.endswith(
        "cued: error: no group 'no-such-group-x' on this system ([daemon] control_group)\n"
    )


def test_a_state_path_too_long_for_a_unix_socket_is_refused_and_says_why(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with pytest.raises(CuedError) as caught:
        control_socket_path(deep / "state.db")
    assert str(caught.value).startswith(
        f"the control socket {str(deep / 'state.db.d' / 'control.sock')!r} would be "
    )
    assert "a Unix socket's path may have at most 107: move the state file ([daemon] state)" in str(
        caught.value
    )


async def test_a_control_app_served_without_peer_credentials_refuses_everyone(tmp_path):
    """The guard fails closed: if the protocol ever stops handing over who connected,
    nobody gets in, the daemon's own user included."""

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = ControlGuard(Starlette(routes=[Route("/", hello)]), ControlAccess.of(None))
    answers = {}
    for name, protocol in (("plain", None), ("peer", PeerCredentials)):
        path = tmp_path / f"{name}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen()
        async with anyio.create_task_group() as tg:
            await tg.start(partial(serve_asgi, app, sockets=[sock], http=protocol))
            transport = httpx.AsyncHTTPTransport(uds=str(path))
            async with httpx.AsyncClient(transport=transport, base_url="http://cued") as client:
                answers[name] = await client.get("/")
            tg.cancel_scope.cancel()
    assert answers["plain"].status_code == 403
    assert (
        answers["plain"]
        .json()["error"]["message"]
        .startswith("the caller may not use this daemon's control socket")
    )
    assert (answers["peer"].status_code, answers["peer"].text) == (200, "hello")
