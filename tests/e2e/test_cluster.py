"""Three daemons (processes) on one PostgreSQL database share a webhook flood; one is
killed with -9 in the thick of it, and another loses its sessions to the database
(``pg_terminate_backend``), stops, and is started again (as its supervisor would). At the
end every acknowledged event has exactly one
run, every run finished (the dead node's runs adopted by the others), no task whose
success was recorded ran again, nothing ran outside a recorded attempt, and
``max_active_runs = 1`` of the serial pipeline held across the three.

A sender posts each event to one node (round robin, as a load balancer would) and, when
that node does not answer, to the next, with the same delivery id."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import anyio
import httpx

from tests.support.daemon import Daemon, cued
from tests.support.raw_http import free_port
from tests.support.stores import StoreAt, fresh_database

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

CONFIG = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "env:CUED_DATABASE_URL"
node = "{node}"
lease = "3s"
max_running_tasks = 8
shutdown_grace = "1s"

[sources.hook]
kind = "webhook"
path = "/hook"
id_header = "X-Delivery"          # a sender's retry is the same event

[pipelines.p]
max_active_runs = 64
[pipelines.p.tasks.first]
kind = "shell"
command = "echo start $CUED_IDEMPOTENCY_KEY $PPID >> {ledger}; sleep 0.2; echo end $CUED_IDEMPOTENCY_KEY $PPID >> {ledger}"
[pipelines.p.tasks.second]
kind = "shell"
needs = ["first"]
command = "echo start $CUED_IDEMPOTENCY_KEY $PPID >> {ledger}; echo end $CUED_IDEMPOTENCY_KEY $PPID >> {ledger}"

[pipelines.serial]
max_active_runs = 1
[pipelines.serial.tasks.only]
kind = "shell"
command = "echo in $CUED_RUN_ID $PPID >> {serial}; sleep 0.3; echo out $CUED_RUN_ID $PPID >> {serial}"

[[triggers]]
source = "hook"
pipeline = "p"
[[triggers]]
source = "hook"
pipeline = "serial"
when = "event.data.n % 4 == 0"
"""

HOOKS = 120
NODES = ("n1", "n2", "n3")


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 120) -> None:
    """Poll ``check`` until true: the daemons are other processes, which cannot signal us."""
    with anyio.fail_after(timeout_s):
        while not await check():  # noqa: ASYNC110 - effects in other processes
            await anyio.sleep(0.05)


async def test_three_nodes_share_a_flood_and_adopt_the_runs_of_one_killed_with_9(
    tmp_path, monkeypatch
):
    async with fresh_database() as url:
        monkeypatch.setenv("CUED_DATABASE_URL", url)  # the daemons inherit it
        await _flood(tmp_path, StoreAt("postgresql", url))


def _node_config(tmp_path: Path, node: str, port: int) -> Path:
    folder = tmp_path / node  # its own control socket and lock, as on its own machine
    folder.mkdir()
    config = folder / "config.toml"
    config.write_text(
        CONFIG.format(port=port, node=node, ledger=tmp_path / "ledger", serial=tmp_path / "serial")
    )
    return config


async def _flood(tmp_path: Path, db: StoreAt) -> None:
    ports = {node: free_port() for node in NODES}
    configs = {node: _node_config(tmp_path, node, ports[node]) for node in NODES}
    checked = cued(configs["n1"], "validate", "--strict")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    daemons = {node: Daemon(configs[node], configs[node].parent / "postgresql") for node in NODES}
    acked: dict[str, str] = {}  # delivery id -> event id, answered 202 or 200
    down: set[str] = set()

    async def post(clients: dict[str, httpx.AsyncClient], numbers: range) -> None:
        for n in numbers:
            # round robin, and on to the next node while one does not answer
            for turn in range(len(NODES)):
                node = NODES[(n + turn) % len(NODES)]
                if f"d{n}" in acked or node in down:
                    continue
                try:
                    response = await clients[node].post(
                        "/hook", json={"n": n}, headers={"x-delivery": f"d{n}"}
                    )
                except httpx.TransportError:
                    continue
                if response.status_code in (200, 202):
                    acked[f"d{n}"] = response.json()["event_id"]

    async def succeeded() -> int:
        rows = await db.query("SELECT count(*) FROM task_instances WHERE state = 'succeeded'")
        return int(rows[0][0])

    for daemon in daemons.values():
        await daemon.start(timeout_s=60)
    first = dict(await db.query("SELECT node, generation FROM nodes"))
    clients = {
        node: httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[node]}", timeout=10)
        for node in NODES
    }
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(post, clients, range(0, HOOKS, 2))
            tg.start_soon(post, clients, range(1, HOOKS, 2))
            # in the thick of it: events recorded, tasks done, n2 owning unfinished runs
            await until(lambda: _thick(db, len(acked), succeeded))
            daemons["n2"].kill9()
            _dead(tmp_path, daemons["n2"])
            down.add("n2")
            # (not adopted yet: its lease holds for 3 s after its last renewal)
            orphaned = {r for (r,) in await db.query(_UNFINISHED_OF, "n2")}
            done_before = {
                f"{run_id}/{key}"
                for run_id, key in await db.query(
                    "SELECT run_id, key FROM task_instances WHERE state = 'succeeded'"
                )
            }
            # n3 loses the database: it stops at once, and is started again
            down.add("n3")
            cut = await db.query(_TERMINATE, f"cued:{daemons['n3'].process.pid}")
            assert cut
            assert all(ok for (ok,) in cut)
            await until(lambda: _exited(daemons["n3"]))
            _dead(tmp_path, daemons["n3"])
            lost = daemons["n3"].process.returncode
            daemons["n3"] = Daemon(configs["n3"], configs["n3"].parent / "postgresql")
            await daemons["n3"].start(timeout_s=60)
            down.discard("n3")
        with anyio.fail_after(120):
            while len(acked) < HOOKS:
                await post(clients, range(HOOKS))
        await until(lambda: _none_unfinished(db))
        listed = cued(configs["n1"], "nodes")
    finally:
        for client in clients.values():
            await client.aclose()
        stopped = {node: daemon.stop() for node, daemon in daemons.items() if node != "n2"}
        daemons["n2"].kill9()
    assert stopped == {"n1": 0, "n3": 0}
    assert lost != 0
    assert orphaned, "n2 owned no unfinished run at the kill"
    # every acknowledged event is there, with exactly one run per trigger, none twice
    events = {e for (e,) in await db.query("SELECT event_id FROM events")}
    assert set(acked.values()) == events == {f"hook:d{n}" for n in range(HOOKS)}
    runs_of = Counter(e for (e,) in await db.query("SELECT event_id FROM runs"))
    assert runs_of == {f"hook:d{n}": 2 if n % 4 == 0 else 1 for n in range(HOOKS)}
    # every run finished, those n2 owned at the kill too (by n1 or n3)
    assert await db.query("SELECT state, count(*) FROM runs GROUP BY state") == [
        ("succeeded", HOOKS + HOOKS // 4)
    ]
    assert await db.query("SELECT count(*) FROM run_owners") == [(0,)]
    lines = (tmp_path / "ledger").read_text().splitlines()
    starts = Counter(line.split()[1] for line in lines if line.startswith("start"))
    assert len(starts) == 2 * HOOKS
    # no task ran on two live daemons at once (a run driven by two nodes would); one
    # whose start a daemon had not committed yet when it died runs again (at least once)
    _never_twice_at_once(lines)
    # each task succeeded once; one whose success was recorded before the kill never ran
    # again
    assert (
        await db.query(
            "SELECT run_id, key FROM attempts WHERE state = 'succeeded' "
            "GROUP BY run_id, key HAVING count(*) > 1"
        )
        == []
    )
    assert {key: starts[key] for key in done_before if key in starts} == {
        key: 1 for key in done_before if key in starts
    }
    # max_active_runs = 1 of `serial` held across the nodes: its runs never overlapped,
    # though more than one node ran them (the shell's parent is the daemon)
    serial = (tmp_path / "serial").read_text().splitlines()
    _never_two_at_once(serial)
    assert len({line.split()[2] for line in serial}) >= 2
    # the CLI lists the nodes that are left (n2's row went with its runs); n3 came back
    # with a new generation
    assert listed.returncode == 0, listed.stderr
    shown = [line.split()[:3] for line in listed.stdout.splitlines()[1:]]
    assert [(node, state) for node, state, _ in shown] == [("n1", "alive"), ("n3", "alive")]
    generations = {node: int(generation) for node, _, generation in shown}
    assert generations["n1"] == first["n1"]
    assert generations["n3"] > first["n3"]


_UNFINISHED_OF = (
    "SELECT o.run_id FROM run_owners o JOIN runs r ON r.run_id = o.run_id "
    "WHERE o.node = ? AND r.state IN ('queued', 'running')"
)


def _dead(tmp_path: Path, daemon: Daemon) -> None:
    """Mark in the ledger that ``daemon`` is dead (what it ran after is not running)."""
    assert daemon.process is not None
    with (tmp_path / "ledger").open("a") as ledger:
        ledger.write(f"dead {daemon.process.pid}\n")


def _never_twice_at_once(lines: list[str]) -> None:
    running: dict[str, str] = {}  # task -> the daemon running it
    dead: set[str] = set()
    for line in lines:
        what, *rest = line.split()
        if what == "dead":
            dead.add(rest[0])
        elif what == "start":
            key, pid = rest
            other = running.get(key)
            assert other is None or other in dead, f"{key} ran on {pid} and {other} at once"
            running[key] = pid
        elif running.get(rest[0]) == rest[1]:
            del running[rest[0]]


_TERMINATE = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?"


async def _exited(daemon: Daemon) -> bool:
    return daemon.process is not None and daemon.process.poll() is not None


def _never_two_at_once(lines: list[str]) -> None:
    inside: set[str] = set()
    for line in lines:
        what, run_id, _ = line.split()
        if what == "in":
            assert not inside, f"{run_id} started while {inside} ran"
            inside.add(run_id)
        else:
            inside.discard(run_id)


async def _thick(db: StoreAt, acked: int, succeeded: Callable[[], Awaitable[int]]) -> bool:
    if acked < 30 or await succeeded() < 10:
        return False
    return bool(await db.query(_UNFINISHED_OF, "n2"))


async def _none_unfinished(db: StoreAt) -> bool:
    rows = await db.query("SELECT count(*) FROM runs WHERE state NOT IN ('succeeded', 'failed')")
    return rows[0][0] == 0 and len(await db.query("SELECT 1 FROM events")) > 0
