"""Pools and per-key concurrency across nodes, on the real PostgreSQL: a pool's size and a
key's limit hold for all the nodes on one database (key_slots, pool_slots), the commit
that records an end frees the slot and wakes whoever waits (a notice), and a gone node's
slots are freed when it is adopted.

At the store, nodes are stores joined under their names; end to end, two daemons in this
process share the database, and their shell tasks write when they run into a ledger,
whose order is the order they ran in (a line is written after the slot is taken and
before it is given back)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import anyio
import asyncpg
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.config import parse_config
from cued.daemon.runtime.shared_slots import parse_wake
from cued.daemon.store import AttemptRow, InstanceRow
from tests.integration.test_nodes import T0, lapse, run
from tests.support.flood import until
from tests.support.running import daemon_running
from tests.support.stores import StoreAt, fresh_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from cued.daemon.assembly import DaemonInfo
    from cued.daemon.config import Config


@pytest.fixture
async def db() -> AsyncIterator[StoreAt]:
    async with fresh_database(migrated=True) as url:
        yield StoreAt("postgresql", url)


def keyed(n: int, state: str = "running", key: str = "k", **kw):
    return run(n, state, flow_key=key, key_limit=1, **kw)


def attempt(n: int) -> tuple[str, str, int]:
    return (run(n).run_id, "t", 1)


async def test_a_keys_limit_holds_across_nodes_the_highest_priority_first(db: StoreAt):
    async with db.open() as a, db.open() as b:
        await a.join("a", lease_s=60.0, host="h", pid=1)
        await b.join("b", lease_s=60.0, host="h", pid=2)
        first, older, urgent = keyed(1), keyed(2), keyed(3)
        assert await a.take_key_slot("p", "k", first.run_id, 5, 1) is True
        assert await a.take_key_slot("p", "k", first.run_id, 5, 1) is True  # its own still
        assert await b.take_key_slot("p", "other", keyed(4).run_id, 5, 1) is True
        assert await b.take_key_slot("q", "k", keyed(5).run_id, 5, 1) is True  # another's
        assert await b.take_key_slot("p", "k", older.run_id, 5, 1) is False  # b's waits
        assert await a.take_key_slot("p", "k", urgent.run_id, 9, 1) is False
        await a.submit([replace(first, state="succeeded", ended_at=T0 + 9)]).wait()
        # the slot is free; the waiting run of the higher priority goes first, whichever
        # node asks first
        assert await b.take_key_slot("p", "k", older.run_id, 5, 1) is False
        assert await a.take_key_slot("p", "k", urgent.run_id, 9, 1) is True
        await a.submit([replace(urgent, state="waiting")]).wait()  # parked: gives it back
        assert await b.take_key_slot("p", "k", older.run_id, 5, 1) is True
        held = await db.query(
            "SELECT run_id, node FROM key_slots WHERE key = 'k' AND held = 1 ORDER BY run_id"
        )
        assert held == [(older.run_id, "b"), (keyed(5).run_id, "b")]
        # a run cancelled while it held its slot gives it back
        await b.give_back_run_slot(older.run_id)
        assert await a.take_key_slot("p", "k", keyed(6).run_id, 5, 1) is True


async def test_a_pools_size_holds_across_nodes_and_a_freed_slot_wakes_the_waiters(db: StoreAt):
    """Only a commit that frees a slot someone waits for sends a notice (a sentinel sent
    after each commit shows what came before it)."""
    heard: list[str] = []
    listener = await asyncpg.connect(db.location)
    try:
        await listener.add_listener("cued_slots", lambda *args: heard.append(args[3]))

        async def heard_after(commit) -> list[str]:
            await commit.wait()
            await listener.execute("NOTIFY cued_slots, 'sentinel'")
            await until(_said(heard, "sentinel"))
            said = heard[:-1]
            heard.clear()
            return said

        async with db.open() as a, db.open() as b:
            await a.join("a", lease_s=60.0, host="h", pid=1)
            await b.join("b", lease_s=60.0, host="h", pid=2)
            a.wake_slot_waiters_as("tok")
            assert await a.take_pool_slot("db", attempt(1), 2) is True
            assert await b.take_pool_slot("db", attempt(2), 2) is True
            assert await b.take_pool_slot("db", attempt(3), 2) is False  # b's waits
            assert await a.take_pool_slot("db", attempt(4), 2) is False  # behind b's
            assert await heard_after(a.submit(_running(1))) == []  # it runs: still held
            assert await b.take_pool_slot("db", attempt(3), 2) is False
            ended = AttemptRow(run(1).run_id, "t", 1, "succeeded", T0, T0 + 1)
            assert await heard_after(a.submit([ended])) == ["tok pool db"]
            assert await a.take_pool_slot("db", attempt(4), 2) is False  # b's asked first
            assert await b.take_pool_slot("db", attempt(3), 2) is True
            await b.give_back_pool_slot(attempt(3))  # its attempt did not start after all
            assert await a.take_pool_slot("db", attempt(4), 2) is True
            # nobody waits: the end of a's attempt tells no one
            assert await heard_after(a.submit([replace(ended, run_id=run(4).run_id)])) == []
            assert await db.query("SELECT run_id FROM pool_slots") == [(run(2).run_id,)]
            # a run that ends frees what its attempts held, should their ends not say
            assert await a.take_pool_slot("db", attempt(5), 2) is True
            await a.submit([run(5, "failed", ended_at=T0 + 9)]).wait()
            assert await db.query("SELECT run_id FROM pool_slots") == [(run(2).run_id,)]
    finally:
        await listener.close()


async def test_a_gone_nodes_pool_and_key_slots_are_freed_when_it_is_adopted(db: StoreAt):
    """Adoption frees a gone node's pool slots, and its key slots but those of its runs
    that hold a run slot (the adopter goes on with those at once, holding both)."""
    async with db.open() as a, db.open() as b:
        await a.join("a", lease_s=60.0, host="h", pid=1)
        await b.join("b", lease_s=60.0, host="h", pid=2)
        driven, waiting = keyed(1), keyed(2, "queued", key="j")
        await a.submit([driven, waiting, *_running(3)]).wait()
        assert await a.take_key_slot("p", "k", driven.run_id, 5, 1) is True
        assert await a.take_run_slot("p", driven.run_id, 1) is True
        assert await a.take_key_slot("p", "j", waiting.run_id, 5, 1) is True
        assert await a.take_pool_slot("db", attempt(3), 1) is True
        assert await b.take_pool_slot("db", attempt(4), 1) is False
        assert await b.take_key_slot("p", "j", keyed(5).run_id, 5, 1) is False
        await lapse(db, "a")
        assert set(await b.adopt()) == {driven.run_id, waiting.run_id, run(3).run_id}
        assert await db.query("SELECT run_id, node, held FROM key_slots ORDER BY run_id") == [
            (driven.run_id, "b", 1),
            (keyed(5).run_id, "b", 0),
        ]
        assert await b.take_pool_slot("db", attempt(4), 1) is True
        assert await b.take_key_slot("p", "j", keyed(5).run_id, 5, 1) is True
        assert await b.take_key_slot("p", "k", driven.run_id, 5, 1) is True  # its own


@given(st.text())
def test_a_notice_on_the_slots_channel_is_a_key_or_a_pool_or_nothing(text: str):
    found = parse_wake(text)
    if found is not None:
        assert found[0] in ("key", "pool")
        assert f"{found[0]} {found[1]}" == text


# -- two daemons ---------------------------------------------------------------------------

NODE = """
[daemon]
state = "{url}"
node = "{node}"
lease = "10s"
max_running_tasks = 8
pools = {{ two = 2 }}
[http]
listen = "127.0.0.1:0"
[sources.hook]
kind = "webhook"
path = "/hook"
[pipelines.p]
max_active_runs = 20
[pipelines.p.tasks.t]
kind = "shell"
pool = "two"
command = "echo in {node} $CUED_IDEMPOTENCY_KEY >> {ledger}; sleep 0.5; echo out {node} $CUED_IDEMPOTENCY_KEY >> {ledger}"
[pipelines.k]
max_active_runs = 20
[pipelines.k.tasks.t]
kind = "shell"
command = "echo in {node} $CUED_RUN_ID >> {keyed}; sleep 0.1; echo out {node} $CUED_RUN_ID >> {keyed}"
[[triggers]]
source = "hook"
pipeline = "k"
key = "{{{{ event.data.k }}}}"
concurrency = {{ limit = 1 }}
"""


def _config(db: StoreAt, tmp_path: Path, node: str) -> Config:
    """The node's configuration, in a folder of its own (the control socket is there)."""
    folder = tmp_path / node
    folder.mkdir(exist_ok=True)
    text = NODE.format(
        url=db.location, node=node, ledger=tmp_path / "ledger", keyed=tmp_path / "keyed"
    )
    return parse_config(text, file=str(folder / "config.toml"), base_dir=folder)


async def test_two_nodes_run_a_pool_of_two_at_most_two_at_once_and_a_key_one_at_once(
    db: StoreAt, tmp_path: Path
):
    async with (
        daemon_running(_config(db, tmp_path, "a")) as a,
        daemon_running(_config(db, tmp_path, "b")) as b,
    ):

        async def start(info: DaemonInfo) -> None:
            for _ in range(6):
                await info.runner.start_run("p")
            for n in range(6):
                await _post(info, {"k": "k1", "n": n})

        async with anyio.create_task_group() as tg:
            tg.start_soon(start, a)
            tg.start_soon(start, b)
        await until(lambda: _all_succeeded(db, 24))
    ledger = (tmp_path / "ledger").read_text().splitlines()
    assert _most_at_once(ledger) <= 2
    assert {line.split()[1] for line in ledger} == {"a", "b"}
    assert len(ledger) == 24  # each of the 12 attempts in and out once
    keyed_ledger = (tmp_path / "keyed").read_text().splitlines()
    assert _most_at_once(keyed_ledger) == 1
    assert {line.split()[1] for line in keyed_ledger} == {"a", "b"}


async def test_the_slots_of_a_node_that_is_gone_are_freed_at_adoption_and_the_other_goes_on(
    db: StoreAt, tmp_path: Path
):
    """Node a holds both slots of the pool (for its running run's attempt and another)
    and the one slot of key k1 (for a run that waits for its run slot), and its lease
    lapses: node b, whose attempt waits for the pool and whose run waits for the key,
    adopts a's runs and goes on with them and its own."""
    async with db.open() as gone:
        await gone.join("a", lease_s=60.0, host="h", pid=1)
        holder = replace(keyed(1, "queued", key="k1"), pipeline="k")
        await gone.submit([holder, *_running(2), *_running(3)]).wait()
        assert await gone.take_key_slot("k", "k1", holder.run_id, 5, 1) is True
        assert await gone.take_pool_slot("two", attempt(2), 2) is True
        assert await gone.take_pool_slot("two", attempt(3), 2) is True
        async with daemon_running(_config(db, tmp_path, "b")) as b:
            own = (await b.runner.start_run("p")).run_id
            await _post(b, {"k": "k1"})

            async def both_wait() -> bool:
                pools = await db.query("SELECT node, held FROM pool_slots WHERE run_id = ?", own)
                keys = await db.query("SELECT node, held FROM key_slots WHERE node = 'b'")
                return pools == [("b", 0)] and keys == [("b", 0)]

            await until(both_wait)
            await lapse(db, "a")
            await until(lambda: _all_succeeded(db, 5))
    assert await db.query("SELECT count(*) FROM pool_slots") == [(0,)]
    assert await db.query("SELECT count(*) FROM key_slots") == [(0,)]


def _running(n: int) -> list:
    """A run of ``p`` whose attempt 1 of task ``t`` runs."""
    row = run(n, started_at=T0 + n)
    return [
        row,
        InstanceRow(row.run_id, "t", "t", None, "running", 1, None, T0 + n),
        AttemptRow(row.run_id, "t", 1, "running", T0 + n),
    ]


def _said(heard: list[str], what: str):
    async def check() -> bool:
        return bool(heard) and heard[-1] == what

    return check


async def _post(info: DaemonInfo, data: dict) -> None:
    assert info.http_address is not None
    host, port = info.http_address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        response = await client.post("/hook", json=data)
    assert response.status_code in (200, 202), response.text


async def _all_succeeded(db: StoreAt, runs: int) -> bool:
    found = await db.query("SELECT state, count(*) FROM runs GROUP BY state")
    return found == [("succeeded", runs)]


def _most_at_once(lines: list[str]) -> int:
    """The most attempts (or runs) in at once, by the ledger's order."""
    inside: set[str] = set()
    most = 0
    for line in lines:
        what, _, name = line.split()
        if what == "in":
            inside.add(name)
            most = max(most, len(inside))
        else:
            inside.discard(name)
    return most
