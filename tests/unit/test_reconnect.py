"""The parts of reconnecting in place that need no database: which failures are a lost
database, what the servers answer meanwhile, and what systemd is told."""

from __future__ import annotations

import anyio
import asyncpg
import httpx
import pytest
from starlette.responses import JSONResponse

from cued.daemon.config import parse_config
from cued.daemon.errors import DatabaseLost, Fenced, StoreError
from cued.daemon.runtime.reconnect import RECONNECT_MAX_S, DatabaseLink
from cued.daemon.service.notify import Notifier
from cued.daemon.service.watchdog import keep_alive
from cued.daemon.store.postgresql import lost_database
from cued.daemon.web.outage import OUTAGE_RETRY_AFTER_S, Switch, outage_app
from tests.support.flood import until
from tests.support.systemd import NotifySocket


def _caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("failure", "lost"),
    [
        pytest.param(DatabaseLost("gone"), DatabaseLost, id="lost"),
        pytest.param(Fenced("adopted"), Fenced, id="fenced"),
        pytest.param(
            ExceptionGroup("tg", [ValueError("x"), ExceptionGroup("inner", [Fenced("late")])]),
            Fenced,
            id="fenced-deep-in-groups",
        ),
        pytest.param(
            ExceptionGroup("tg", [_caused(StoreError("w"), DatabaseLost("cut")), Fenced("lapsed")]),
            Fenced,
            id="the-lease-lost-is-why-the-connection-was-cut",
        ),
        pytest.param(
            _caused(StoreError("cannot write"), DatabaseLost("gone")),
            DatabaseLost,
            id="a-commit-that-failed-with-it",
        ),
        pytest.param(
            asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-operation"),
            DatabaseLost,
            id="asyncpg-session-gone",
        ),
        pytest.param(
            asyncpg.exceptions.AdminShutdownError("terminating connection"),
            DatabaseLost,
            id="pg-terminate-backend",
        ),
        pytest.param(StoreError("database is corrupt"), None, id="another-store-error"),
        pytest.param(OSError("disk full"), None, id="a-bare-os-error"),
        pytest.param(ExceptionGroup("tg", [ValueError("bug")]), None, id="a-bug"),
    ],
)
def test_which_failures_are_a_lost_database(failure, lost):
    found = lost_database(failure)
    if lost is None:
        assert found is None
    else:
        assert isinstance(found, lost)


async def _get(app, path: str, method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://cued"
    ) as client:
        return await client.request(method, path)


async def test_while_away_every_request_is_told_to_come_back_but_the_liveness_check():
    app = outage_app(lambda: "the daemon lost its database and is reconnecting: refused")
    hook = await _get(app, "/hooks/github", "POST")
    assert hook.status_code == 503
    assert hook.headers["retry-after"] == str(OUTAGE_RETRY_AFTER_S)
    assert hook.json()["error"]["code"] == "database_unreachable"
    assert "reconnecting: refused" in hook.json()["error"]["message"]
    assert (await _get(app, "/api/v1/runs")).status_code == 503
    assert (await _get(app, "/readyz")).status_code == 503
    live = await _get(app, "/healthz")
    assert live.status_code == 200
    assert "refused" in live.json()["checks"]["store"]


async def test_the_switch_answers_503_for_a_store_that_failed_before_an_answer():
    async def failing(scope, receive, send):
        raise StoreError("the store could not commit: lost the connection")

    switch = Switch(failing)
    answer = await _get(switch, "/hook", "POST")
    assert answer.status_code == 503
    assert "lost the connection" in answer.json()["error"]["message"]

    async def answered_then_failed(scope, receive, send):
        await JSONResponse({"ok": True})(scope, receive, send)
        raise StoreError("too late")

    switch.app = answered_then_failed
    with pytest.raises(StoreError, match="too late"):
        await _get(switch, "/hook")

    async def buggy(scope, receive, send):
        raise ValueError("a bug")

    switch.app = buggy
    with pytest.raises(ValueError, match="a bug"):
        await _get(switch, "/hook")


def _link(tmp_path) -> DatabaseLink[object]:
    config = parse_config("", file=str(tmp_path / "config.toml"), base_dir=tmp_path)
    return DatabaseLink(config)


async def test_the_link_says_why_and_waits_less_than_the_cap(tmp_path):
    link = _link(tmp_path)
    link.connected("first")
    link.lost(DatabaseLost("lost the connection"))
    assert link.outage_problem().endswith("lost the connection")
    link.failed(DatabaseLost("connection refused"))
    assert link.status_line().startswith("reconnecting to the database (try 2")
    assert link.status_line().endswith("connection refused")
    stop = anyio.Event()
    stop.set()  # a stop ends the wait at once
    with anyio.fail_after(RECONNECT_MAX_S):
        await link.wait_to_retry(stop)
    assert ", next in " in link.status_line()
    link.connected("second")
    assert (link.current, link.problem, link.tries, link.reconnections) == ("second", None, 0, 1)


async def test_a_sighup_while_away_is_applied_once_the_database_is_back(tmp_path):
    link = _link(tmp_path)
    reloaded = anyio.Event()

    async def reload() -> None:
        reloaded.set()

    link.hup()  # no session: deferred
    with anyio.fail_after(10):
        async with link.reloads(reload):
            await reloaded.wait()


async def test_systemd_hears_that_the_daemon_reconnects_and_its_watchdog_is_fed():
    with NotifySocket() as systemd:
        systemd.sock.setblocking(False)
        notifier = Notifier(systemd.address)

        async def heard() -> bool:
            try:
                while True:
                    data = systemd.sock.recv(65536).decode()
                    systemd.received.append(dict(x.split("=", 1) for x in data.split("\n") if x))
            except BlockingIOError:
                pass
            said = systemd.received
            return any(m.get("STATUS") == "reconnecting: refused" for m in said) and any(
                m == {"WATCHDOG": "1"} for m in said
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_alive, notifier, 0.2, lambda: "reconnecting: refused")
            await until(heard, 10)
            tg.cancel_scope.cancel()
        notifier.close()
