"""Three daemons (processes) on one PostgreSQL database share a webhook flood; one is
killed with -9 in the thick of it. At the end every acknowledged event has exactly one
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
lease = "2s"
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
command = "echo start $CUED_IDEMPOTENCY_KEY >> {ledger}; sleep 0.2; echo end $CUED_IDEMPOTENCY_KEY >> {ledger}"
[pipelines.p.tasks.second]
kind = "shell"
needs = ["first"]
command = "echo start $CUED_IDEMPOTENCY_KEY >> {ledger}; echo end $CUED_IDEMPOTENCY_KEY >> {ledger}"

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
            down.add("n2")
            # (not adopted yet: its lease holds for 2 s after its last renewal)
            orphaned = {r for (r,) in await db.query(_UNFINISHED_OF, "n2")}
            done_before = {
                f"{run_id}/{key}"
                for run_id, key in await db.query(
                    "SELECT run_id, key FROM task_instances WHERE state = 'succeeded'"
                )
            }
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
    attempts = Counter(
        f"{run_id}/{key}"
        for run_id, key in await db.query("SELECT run_id, key FROM attempts WHERE run_id IN "
                                          "(SELECT run_id FROM runs WHERE pipeline = 'p')")
    )  # fmt: skip
    assert len(attempts) == 2 * HOOKS
    # nothing ran outside a recorded attempt (a run driven by two nodes would), and each
    # task succeeded once; a task whose success was recorded before the kill never ran again
    assert all(starts[key] <= attempts[key] for key in attempts), {
        k: (starts[k], attempts[k]) for k in attempts if starts[k] > attempts[k]
    }
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
    # the CLI lists the nodes that are left (n2's row went with its runs)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [
        ["n1", "alive"],
        ["n3", "alive"],
    ]


_UNFINISHED_OF = (
    "SELECT o.run_id FROM run_owners o JOIN runs r ON r.run_id = o.run_id "
    "WHERE o.node = ? AND r.state IN ('queued', 'running')"
)


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
