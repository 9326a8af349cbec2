"""A daemon that loses its PostgreSQL database reconnects in place (issue 11).

The daemon runs in the test's own event loop (the same process, the same ``run_daemon``
throughout), on a database of the test's own on the real server. Its sessions are cut
with ``pg_terminate_backend`` (of this database only) while the database refuses new
connections (``ALLOW_CONNECTIONS false``), or through a TCP forwarder the test closes:
a real network cut. Meanwhile it stays up and answers ``503``; once the database is back
it joins with a new generation, goes on with its own runs exactly once, and never with
those another node adopted while it was away (fencing)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio
import asyncpg
import httpx
import pytest

from cued.daemon.config import parse_config
from cued.daemon.errors import Fenced
from cued.daemon.store.postgresql import lost_database, open_pg_store
from tests.support.flood import until
from tests.support.running import daemon_running
from tests.support.stores import PG_SERVER, StoreAt, fresh_database
from tests.support.systemd import NotifySocket
from tests.support.tcp_proxy import tcp_proxy

if TYPE_CHECKING:
    from pathlib import Path

    from cued.daemon.assembly import DaemonInfo
    from cued.daemon.config import Config

CONFIG = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "{url}"
node = "{node}"
lease = "{lease}"
shutdown_grace = "1s"

[sources.hook]
kind = "webhook"
path = "/hook"
id_header = "X-Delivery"

# each attempt writes where it ran to the ledger as it starts, waits for the go file,
# and writes again as it ends
[pipelines.work]
inputs = {{ n = 0 }}
[pipelines.work.tasks.step]
kind = "shell"
argv = ["sh", "-c", "echo $1 $$ >> {ledger}.pids; echo start {node} $1 >> {ledger}; while [ ! -e {go} ]; do sleep 0.05; done; echo done {node} $1 >> {ledger}", "sh", "n{{{{ inputs.n }}}}"]

[[triggers]]
source = "hook"
pipeline = "work"
inputs = {{ n = "{{{{ event.data.n }}}}" }}
"""

# every session of the test's own database (the test's admin session is on another)
_TERMINATE = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1"
_STATE = "SELECT state FROM runs WHERE run_id = ?"
# a session of the test's database waits for a lock (the daemon's commit, for the test's)
_WAITING = (
    "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'"
)


def _config(folder: Path, url: str, node: str, ledger: Path, go: Path, lease: str = "5s") -> Config:
    folder.mkdir()
    text = CONFIG.format(url=url, node=node, lease=lease, ledger=ledger, go=go)
    return parse_config(text, file=str(folder / "config.toml"), base_dir=folder)


def _base_url(info: DaemonInfo) -> str:
    assert info.http_address is not None
    host, port = info.http_address
    return f"http://{host}:{port}"


async def _post(http: httpx.AsyncClient, n: int) -> httpx.Response:
    return await http.post("/hook", json={"n": n}, headers={"X-Delivery": f"d{n}"})


def _lines(ledger: Path, line: str) -> int:
    return ledger.read_text().splitlines().count(line)


async def _run_of(db: StoreAt, n: int) -> str:
    """The run the event of delivery ``d{n}`` started."""

    async def recorded() -> bool:
        return bool(await db.query("SELECT run_ids FROM events WHERE event_id = ?", f"hook:d{n}"))

    await until(recorded)
    ((run_ids,),) = await db.query("SELECT run_ids FROM events WHERE event_id = ?", f"hook:d{n}")
    (run_id,) = json.loads(run_ids)
    return str(run_id)


async def _listen(systemd: NotifySocket) -> None:
    """Keep what the daemon tells systemd in ``systemd.received``."""
    systemd.sock.setblocking(False)
    while True:
        await anyio.wait_readable(systemd.sock)
        try:
            data = systemd.sock.recv(65536)
        except BlockingIOError:
            continue
        lines = [line for line in data.decode().split("\n") if line]
        systemd.received.append(dict(line.split("=", 1) for line in lines))


async def test_a_daemon_that_loses_its_database_stays_up_and_goes_on_once_it_is_back(
    tmp_path, monkeypatch
):
    ledger, go = tmp_path / "ledger", tmp_path / "go"
    ledger.touch()
    async with fresh_database(migrated=True) as url:
        name = url.rsplit("/", 1)[1]
        db = StoreAt("postgresql", url)
        config = _config(tmp_path / "a", url, "a", ledger, go)
        admin = await asyncpg.connect(f"{PG_SERVER}/postgres")
        with NotifySocket() as systemd:
            monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
            monkeypatch.setenv("WATCHDOG_USEC", "2000000")
            monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
            try:
                async with (
                    daemon_running(config) as info,
                    httpx.AsyncClient(base_url=_base_url(info), timeout=30) as http,
                    anyio.create_task_group() as tg,
                ):
                    tg.start_soon(_listen, systemd)
                    link = info.link
                    assert link is not None
                    before = link.node
                    assert before is not None
                    assert (await _post(http, 1)).status_code == 202
                    first = await _run_of(db, 1)

                    async def running() -> bool:
                        return _lines(ledger, "start a n1") == 1

                    await until(running)

                    # a webhook in flight: its commit waits for the node's row, which the
                    # test holds locked, when the daemon loses the database
                    blocker = await asyncpg.connect(url)
                    await blocker.execute("BEGIN")
                    await blocker.execute("SELECT 1 FROM nodes WHERE node = 'a' FOR UPDATE")
                    in_flight: list[httpx.Response] = []

                    async def post_in_flight() -> None:
                        in_flight.append(await _post(http, 3))

                    tg.start_soon(post_in_flight)

                    async def commit_waits() -> bool:
                        return bool(await admin.fetchval(_WAITING, name))

                    await until(commit_waits)

                    # the database refuses new sessions, and the daemon's are terminated
                    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                    await admin.fetch(_TERMINATE, name)
                    blocker.terminate()

                    async def answered() -> bool:
                        return bool(in_flight)

                    # not recorded, or not known to be: not acknowledged
                    await until(answered)
                    assert in_flight[0].status_code == 503, in_flight[0].text

                    async def lost() -> bool:
                        return link.problem is not None and link.tries >= 2

                    await until(lost)
                    # the same daemon, up: a webhook is refused (not recorded, retry later)
                    refused = await _post(http, 2)
                    assert refused.status_code == 503, refused.text
                    assert int(refused.headers["retry-after"]) > 0
                    assert refused.json()["error"]["code"] == "database_unreachable"
                    assert "database" in refused.json()["error"]["message"]
                    read = await http.get("/api/v1/runs")
                    assert read.status_code == 503
                    assert "reconnecting" in read.json()["error"]["message"]
                    assert (await http.get("/readyz")).status_code == 503
                    assert (await http.get("/healthz")).status_code == 200

                    # systemd hears that it reconnects, and the watchdog is fed meanwhile
                    async def told_systemd() -> bool:
                        said = systemd.received
                        at = next(
                            (
                                i
                                for i, m in enumerate(said)
                                if m.get("STATUS", "").startswith("reconnecting to the database")
                            ),
                            None,
                        )
                        return at is not None and any("WATCHDOG" in m for m in said[at:])

                    await until(told_systemd)
                    assert _lines(ledger, "start a n1") == 1

                    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

                    async def back() -> bool:
                        return link.problem is None and link.reconnections == 1

                    await until(back)
                    assert link.current is not info  # its parts anew, in the same daemon
                    assert link.node is not None
                    assert link.node.node == "a"
                    assert link.node.generation > before.generation
                    # the refused events are taken now (the one in flight was not recorded),
                    # and the run that was running goes on
                    assert await db.query("SELECT 1 FROM events WHERE event_id = 'hook:d3'") == []
                    assert (await _post(http, 2)).status_code == 202
                    assert (await _post(http, 3)).status_code == 202
                    second, third = await _run_of(db, 2), await _run_of(db, 3)

                    async def all_run() -> bool:
                        text = ledger.read_text()
                        again = _lines(ledger, "start a n1") == 2
                        return again and "start a n2" in text and "start a n3" in text

                    await until(all_run)
                    go.touch()

                    async def finished() -> bool:
                        runs = (first, second, third)
                        states = [(await db.query(_STATE, r))[0][0] for r in runs]
                        return states == ["succeeded"] * 3

                    await until(finished)
                    for n in (1, 2, 3):
                        assert _lines(ledger, f"done a n{n}") == 1

                    # the incarnation before the loss is fenced: a commit of it changes nothing
                    await _stale_commit_fails(url, before.node, before.generation, first)
                    tg.cancel_scope.cancel()
            finally:
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                await admin.close()


async def _stale_commit_fails(url: str, node: str, generation: int, run_id: str) -> None:
    """A commit under ``node``'s old ``generation`` is refused, and the run stays as it is."""
    with pytest.raises(BaseExceptionGroup) as failed:  # noqa: PT012 - the store's task group
        async with open_pg_store(url) as stale:
            (row,) = await stale.get_runs([run_id])
            stale._me = (node, generation)
            with anyio.fail_after(30):
                await stale.submit([replace(row, state="failed", error="stale")]).wait()
    assert isinstance(lost_database(failed.value), Fenced)
    async with open_pg_store(url) as store:
        (row,) = await store.get_runs([run_id])
    assert row.state == "succeeded"


async def test_runs_adopted_while_a_daemon_was_cut_off_are_not_run_by_it_when_it_is_back(
    tmp_path,
):
    ledger, go = tmp_path / "ledger", tmp_path / "go"
    ledger.touch()
    async with fresh_database(migrated=True) as direct:
        db = StoreAt("postgresql", direct)
        host, port = "127.0.0.1", 5432
        async with tcp_proxy(host, port) as proxy:
            through = direct.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
            a_config = _config(tmp_path / "a", through, "a", ledger, go, lease="2s")
            b_config = _config(tmp_path / "b", direct, "b", ledger, go, lease="2s")
            async with (
                daemon_running(a_config) as a,
                daemon_running(b_config) as b,
                httpx.AsyncClient(base_url=_base_url(a), timeout=30) as on_a,
            ):
                assert a.link is not None
                assert b.link is not None
                before = a.link.node
                assert before is not None
                assert (await _post(on_a, 1)).status_code == 202
                run_id = await _run_of(db, 1)

                async def running_on_a() -> bool:
                    return _lines(ledger, "start a n1") == 1

                await until(running_on_a)

                # a's network to the database is cut: b adopts its run once a's lease lapses
                proxy.cut()

                async def adopted_by_b() -> bool:
                    return _lines(ledger, "start b n1") == 1

                await until(adopted_by_b)
                assert a.link.problem is not None
                owners = await db.query("SELECT node FROM run_owners WHERE run_id = ?", run_id)
                assert owners == [("b",)]

                await proxy.mend()

                async def a_back() -> bool:
                    return a.link is not None and a.link.problem is None

                await until(a_back)
                assert a.link.node is not None
                assert a.link.node.generation > before.generation
                # a joined anew and resumed its own runs: none, as b has the one it had
                assert a.link.current is not None
                assert not a.link.current.runner.is_active(run_id)
                assert b.link.current is not None
                assert b.link.current.runner.is_active(run_id)
                go.touch()

                async def finished() -> bool:
                    return (await db.query(_STATE, run_id)) == [("succeeded",)]

                await until(finished)
                # a ran it until it was cut off, and not once after it came back
                assert _lines(ledger, "start a n1") == 1
                assert _lines(ledger, "done a n1") == 0
                assert _lines(ledger, "done b n1") == 1
                await _stale_commit_fails(direct, before.node, before.generation, run_id)


async def test_a_node_that_cannot_renew_its_lease_stops_its_tasks_and_joins_again(tmp_path):
    ledger, go = tmp_path / "ledger", tmp_path / "go"
    ledger.touch()
    async with fresh_database(migrated=True) as url:
        db = StoreAt("postgresql", url)
        config = _config(tmp_path / "a", url, "a", ledger, go, lease="2s")
        async with (
            daemon_running(config) as info,
            httpx.AsyncClient(base_url=_base_url(info), timeout=30) as http,
        ):
            link = info.link
            assert link is not None
            before = link.node
            assert before is not None
            assert (await _post(http, 1)).status_code == 202
            run_id = await _run_of(db, 1)

            async def running() -> bool:
                return _lines(ledger, "start a n1") == 1

            await until(running)
            (pid,) = [
                int(line.split()[1]) for line in (tmp_path / "ledger.pids").read_text().splitlines()
            ]
            # the node's row locked by another session: no renewal (nor commit) goes through
            blocker = await asyncpg.connect(url)
            try:
                await blocker.execute("BEGIN")
                await blocker.execute("SELECT 1 FROM nodes WHERE node = 'a' FOR UPDATE")

                async def gave_up() -> bool:
                    return link.problem is not None

                await until(gave_up)
                assert "could not renew its lease" in link.problem

                # its task was stopped with it (another node could have adopted the run)
                async def task_gone() -> bool:
                    return not _alive(pid)

                await until(task_gone)
                await blocker.execute("ROLLBACK")

                async def back() -> bool:
                    return link.problem is None and link.reconnections == 1

                await until(back)
            finally:
                await blocker.close()
            assert link.node is not None
            assert link.node.generation > before.generation
            go.touch()

            async def finished() -> bool:
                return (await db.query(_STATE, run_id)) == [("succeeded",)]

            await until(finished)
            assert _lines(ledger, "start a n1") == 2
            assert _lines(ledger, "done a n1") == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
