"""Nodes at the store: joining, renewing, a lease that lapses, adoption of a gone node's
runs, and fencing (a node whose runs were adopted writes nothing more), on the real
PostgreSQL; SQLite's one node, listed.

A lease that lapses is made to lapse in the database (its ``expires_at`` put in the past,
as the database's clock would find it after a kill -9), not waited for: nothing here
depends on the machine's speed."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import anyio
import asyncpg
import httpx
import pytest

from cued.daemon.core.ids import id_at
from cued.daemon.errors import Fenced, StoreError
from cued.daemon.store import AttemptRow, InstanceRow, RunRow
from cued.daemon.store.opening import open_store_at
from tests.support.running import daemon_running
from tests.support.stores import StoreAt, fresh_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

T0 = 1_800_000_000.0


def run(n: int, state: str = "running", **kw) -> RunRow:
    return RunRow(id_at(T0 + n) + f"{n:04d}", "p", state, {"n": n}, T0 + n, **kw)


def started(n: int) -> list:
    row = run(n, started_at=T0 + n)
    return [
        row,
        InstanceRow(row.run_id, "a", "a", None, "running", 1, None, T0 + n),
        AttemptRow(row.run_id, "a", 1, "running", T0 + n),
    ]


@pytest.fixture
async def db() -> AsyncIterator[StoreAt]:
    async with fresh_database(migrated=True) as url:
        yield StoreAt("postgresql", url)


async def lapse(db: StoreAt, node: str) -> None:
    """The node's lease lapses, as if it stopped renewing long ago."""
    await db.query("UPDATE nodes SET expires_at = 0 WHERE node = ?", node)


async def test_a_node_joins_and_is_listed_alive_then_gone_once_it_stops(store_at: StoreAt):
    async with store_at.open() as store:
        me = await store.join("a", lease_s=5.0, host="h", pid=7)
        assert await store.renew() is None  # no other node
        await store.submit([run(1, "queued"), run(2, "succeeded")]).wait()
        listed = await store.list_nodes()
    assert [(n.node, n.generation, n.alive, n.host, n.pid, n.runs) for n in listed] == [
        ("a", me.generation, True, "h", 7, 1)
    ]
    async with store_at.open() as store:
        after = await store.list_nodes()
        again = await store.join("a", lease_s=5.0, host="h", pid=8)
    assert [(n.node, n.alive) for n in after] == [("a", False)]
    assert again.generation > me.generation


async def test_a_node_resumes_only_its_own_runs_and_adopts_a_gone_nodes(db: StoreAt):
    async with db.open() as b:
        await b.join("b", lease_s=60.0, host="h", pid=2)
        with pytest.RaisesGroup(pytest.RaisesExc(StoreError, match="fenced")):
            async with db.open() as a:
                await a.join("a", lease_s=60.0, host="h", pid=1)
                await a.submit([*started(1), run(2, "queued"), run(3, "succeeded")]).wait()
                await b.submit([*started(4), run(5, "queued")]).wait()
                assert [r.run_id for r, *_ in await b.runs_to_resume()] == [
                    run(4).run_id,
                    run(5).run_id,
                ]
                assert [w.run_id for w in await b.waiting_runs()] == [run(5).run_id]
                # nobody's lease lapsed: nothing to adopt
                assert 0 < await b.renew() <= 60
                assert await b.adopt() == []
                await lapse(db, "a")
                assert await b.renew() == 0.0
                adopted = await b.adopt()
                assert adopted == [run(1).run_id, run(2).run_id]
                resumable = {r.run_id: (r, i) for r, i, _ in await b.runs_to_resume()}
                assert list(resumable) == [run(n).run_id for n in (1, 2, 4, 5)]
                # as after a crash: the attempt that was running is read back running
                row, instances = resumable[adopted[0]]
                assert (row.state, [i.state for i in instances]) == ("running", ["running"])
                assert {n.node: n.runs for n in await b.list_nodes()} == {"b": 4}
                # a's own writes are refused from now on (and stop its store)
                with pytest.raises(StoreError, match="fenced"):
                    await a.submit([run(1, "succeeded", started_at=T0)]).wait()
    assert await db.query("SELECT state FROM runs WHERE run_id = ?", run(1).run_id) == [
        ("running",)
    ]


async def test_a_stale_nodes_commit_waiting_on_an_adoption_writes_nothing(db: StoreAt):
    """Adoption and a commit of the node it adopts from are serialized by the node's row:
    a commit that comes while the adoption holds it fails once the adoption commits."""
    adopter = await asyncpg.connect(db.location)
    try:
        with pytest.RaisesGroup(pytest.RaisesExc(StoreError, match="fenced")):
            async with db.open() as a:
                me = await a.join("a", lease_s=60.0, host="h", pid=1)
                await a.submit(started(1)).wait()
                with pytest.raises(Fenced):
                    await _adopt_during_a_commit(a, adopter, me.generation)
    finally:
        await adopter.close()
    assert await db.query("SELECT state FROM runs") == [("running",)]
    assert await db.query("SELECT node FROM run_owners") == [("b",)]


async def _adopt_during_a_commit(a, adopter: asyncpg.Connection, generation: int) -> None:
    async with adopter.transaction():
        await adopter.execute("SELECT 1 FROM nodes WHERE node = 'a' FOR UPDATE")
        done = a.submit([run(1, "succeeded", started_at=T0 + 1, ended_at=T0 + 2)])
        # the commit waits for the row (the adoption holds it): nothing is committed
        with anyio.move_on_after(0.5):
            await done.wait()
            pytest.fail("the commit went through while the adoption held the row")
        await adopter.execute("UPDATE run_owners SET node = 'b' WHERE node = 'a'")
        await adopter.execute("DELETE FROM nodes WHERE node = 'a'")
    with pytest.raises(StoreError, match=f"node a \\(generation {generation}\\)"):
        await done.wait()
    await a.renew()


async def test_a_node_started_again_under_its_name_gets_a_new_generation_and_its_runs(
    db: StoreAt,
):
    with pytest.RaisesGroup(pytest.RaisesExc(StoreError, match="fenced")):
        async with db.open() as old:
            first = await old.join("a", lease_s=60.0, host="h", pid=1)
            await old.submit(started(1)).wait()
            await lapse(db, "a")  # killed -9: it never left
            async with db.open() as new:
                second = await new.join("a", lease_s=60.0, host="h", pid=2)
                resumed = [r.run_id for r, *_ in await new.runs_to_resume()]
            # the old incarnation is fenced by its generation
            with pytest.raises(StoreError, match="fenced"):
                await old.submit([run(1, "succeeded", started_at=T0)]).wait()
    assert second.generation > first.generation
    assert resumed == [run(1).run_id]


async def test_a_name_in_use_by_a_live_node_is_refused(db: StoreAt):
    async with db.open() as live, db.open() as second:
        await live.join("a", lease_s=0.5, host="h", pid=1)

        async def renewing() -> None:
            while True:
                await live.renew()
                await anyio.sleep(0.1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(renewing)
            with anyio.fail_after(30), pytest.raises(StoreError, match="'a' is running already"):
                await second.join("a", lease_s=0.5, host="h", pid=2)
            tg.cancel_scope.cancel()


async def test_a_lease_that_is_not_renewed_lapses_by_the_databases_clock(db: StoreAt):
    async with db.open() as a, db.open() as b:
        await a.join("a", lease_s=0.2, host="h", pid=1)
        await b.join("b", lease_s=60.0, host="h", pid=2)
        await a.submit([run(1, "queued")]).wait()
        with anyio.fail_after(30):
            while await b.renew() != 0.0:  # noqa: ASYNC110 - the database's clock decides
                await anyio.sleep(0.05)
        assert await b.adopt() == [run(1).run_id]


async def test_runs_nobody_owns_go_to_the_first_node_that_joins(db: StoreAt):
    async with db.open() as cli:  # recorded without a daemon (or copied from SQLite)
        await cli.submit([run(1, "queued"), run(2, "succeeded")]).wait()
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(open_store_at(db.location))
        await a.join("a", lease_s=60.0, host="h", pid=1)
        assert [w.run_id for w in await a.waiting_runs()] == [run(1).run_id]
        b = await stack.enter_async_context(open_store_at(db.location))
        await b.join("b", lease_s=60.0, host="h", pid=2)
        assert await b.waiting_runs() == []


async def test_max_active_runs_holds_across_nodes_through_run_slots(db: StoreAt):
    async with db.open() as a, db.open() as b:
        await a.join("a", lease_s=60.0, host="h", pid=1)
        await b.join("b", lease_s=60.0, host="h", pid=2)
        await a.submit([run(1, "queued"), run(2, "queued")]).wait()
        assert await a.take_run_slot("p", run(1).run_id, 1) is True
        assert await a.take_run_slot("p", run(1).run_id, 1) is True  # its own still
        assert await b.take_run_slot("p", run(2).run_id, 1) is False
        assert await b.take_run_slot("other", run(6).run_id, 1) is True
        await b.give_back_run_slot(run(6).run_id)
        # parked (or ended), a run gives its slot back in the commit that says so; the
        # oldest run waiting takes it, whichever node asks first
        await a.submit([run(1, "waiting", started_at=T0)]).wait()
        assert await a.take_run_slot("p", run(3).run_id, 1) is False
        assert await b.take_run_slot("p", run(2).run_id, 1) is True
        assert await a.take_run_slot("p", run(3).run_id, 2) is True
        assert await a.take_run_slot("p", run(4).run_id, 2) is False
        assert await a.run_slots_held([run(n).run_id for n in range(1, 5)]) == {
            run(2).run_id,
            run(3).run_id,
        }
        # a gone node's slots go with its runs: the adopter's resumed run has its own
        await lapse(db, "b")
        assert await a.renew() == 0.0
        await a.adopt()
        assert await a.take_run_slot("p", run(2).run_id, 2) is True
        assert await db.query(
            "SELECT run_id, node FROM run_slots WHERE held = 1 ORDER BY run_id"
        ) == [
            (run(2).run_id, "a"),
            (run(3).run_id, "a"),
        ]
        with pytest.raises(Fenced):
            await b.take_run_slot("p", run(5).run_id, 9)


async def test_a_run_waiting_on_a_gone_node_holds_back_no_one(db: StoreAt):
    async with db.open() as a, db.open() as b:
        await a.join("a", lease_s=60.0, host="h", pid=1)
        await b.join("b", lease_s=60.0, host="h", pid=2)
        assert await a.take_run_slot("p", run(1).run_id, 1) is True
        assert await b.take_run_slot("p", run(2).run_id, 1) is False  # b's waits, oldest
        await a.submit([run(1, "succeeded", started_at=T0, ended_at=T0)]).wait()
        assert await a.take_run_slot("p", run(3).run_id, 1) is False  # behind b's
        await lapse(db, "b")
        assert await a.take_run_slot("p", run(3).run_id, 1) is True


SQLITE_DAEMON = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
node = "solo"

[pipelines.p.tasks.wait]
kind = "approval"
message = "go on?"
"""


async def test_the_one_node_of_a_sqlite_daemon_is_shown_by_the_api_and_the_ui(make_config):
    async with daemon_running(make_config(SQLITE_DAEMON)) as info:
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            started = await client.post("/api/v1/pipelines/p/runs", json={})
            assert started.status_code == 201, started.text
            nodes = (await client.get("/api/v1/nodes")).json()
            overview = (await client.get("/ui/")).text
    assert [(n["node"], n["alive"], n["expired"], n["lease_s"], n["runs"]) for n in nodes] == [
        ("solo", True, False, 0.0, 1)
    ]
    assert 'data-node="solo"' in overview


async def test_runs_that_waited_for_a_slot_on_a_node_that_went_hold_back_no_one(db: StoreAt):
    """A waiting run asks again only when its turn comes on the node that has it now:
    what it left waiting when its node went (adopted, or started again) is forgotten."""
    async with db.open() as a, db.open() as b:
        await a.join("a", lease_s=60.0, host="h", pid=1)
        await b.join("b", lease_s=60.0, host="h", pid=2)
        assert await a.take_run_slot("p", run(1).run_id, 1) is True
        assert await b.take_run_slot("p", run(2).run_id, 1) is False
        await a.submit([run(1, "succeeded", started_at=T0, ended_at=T0)]).wait()
        await lapse(db, "b")
        assert await a.renew() == 0.0
        await a.adopt()  # b's run 2 is a's now, cold: it asks when its turn comes
        assert await a.take_run_slot("p", run(3).run_id, 1) is True
    async with db.open() as c, db.open() as again:
        await c.join("c", lease_s=60.0, host="h", pid=3)
        assert await c.take_run_slot("q", run(4).run_id, 1) is True
        assert await c.take_run_slot("q", run(5).run_id, 1) is False
        await c.submit([run(4, "succeeded", started_at=T0, ended_at=T0)]).wait()
        await lapse(db, "c")
        await again.join("c", lease_s=60.0, host="h", pid=4)  # started again at once
        assert await again.take_run_slot("q", run(6).run_id, 1) is True


async def test_nodes_starting_at_once_each_record_their_configuration(db: StoreAt):
    async with db.open() as a, db.open() as b:
        found: list = []

        async def record(store, text: str) -> None:
            found.append(await store.add_config_version(text, "config.toml", T0))

        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(record, a, f"a{n}")
                tg.start_soon(record, b, f"b{n}")
    assert sorted(v.version for v in found) == list(range(1, 11))


async def test_a_run_is_owned_by_the_node_that_drives_it(db: StoreAt):
    """A run parked by one node and resumed by another (a decision taken there) is the
    other's: if that one goes, its adopter resumes the run, not the first node."""
    async with db.open() as a, db.open() as b:
        await a.join("a", lease_s=60.0, host="h", pid=1)
        await b.join("b", lease_s=60.0, host="h", pid=2)
        await a.submit([run(1, "waiting", started_at=T0)]).wait()
        await b.submit([run(1, "running", started_at=T0)]).wait()
        assert await db.query("SELECT node FROM run_owners") == [("b",)]
        await a.submit([run(2, "queued")]).wait()
        await b.submit([run(2, "queued")]).wait()  # not driven: still a's
        assert await db.query("SELECT node FROM run_owners ORDER BY run_id") == [("b",), ("a",)]


SERIAL_NODE = """
[daemon]
state = "{url}"
node = "a"
lease = "10s"
[http]
listen = "127.0.0.1:0"
[pipelines.p]
max_active_runs = 1
[pipelines.p.tasks.t]
kind = "sleep"
seconds = 0
"""


async def test_a_run_adopted_with_a_slot_taken_before_its_start_was_recorded_goes_on(
    db: StoreAt, make_config
):
    """Node b took the one slot of ``p`` for a run and died before it recorded the start;
    node a, whose own run of ``p`` waits for that slot, adopts b's run: it goes on at once
    (it must not wait for a's own slot, which a's run holds while it waits for it), and
    then a's own run."""
    adopted, own = run(1, "queued").run_id, ""
    async with db.open() as b:
        await b.join("b", lease_s=60.0, host="h", pid=2)
        await b.submit([run(1, "queued")]).wait()
        assert await b.take_run_slot("p", adopted, 1) is True
        async with daemon_running(make_config(SERIAL_NODE.format(url=db.location))) as info:
            own = (await info.runner.start_run("p")).run_id

            async def waits_for_the_slot() -> bool:
                found = await db.query("SELECT held FROM run_slots WHERE run_id = ?", own)
                return found == [(0,)]

            await _until(waits_for_the_slot)
            await lapse(db, "b")
            await _until(lambda: _all_succeeded(db))
    assert {r for (r,) in await db.query("SELECT run_id FROM runs")} == {adopted, own}


async def test_a_node_started_again_goes_on_with_its_run_that_held_a_slot_before_it_started(
    db: StoreAt, make_config
):
    """The node took the one slot of ``p`` for its newer run and stopped before it
    recorded the start; started again, it goes on with that run at once, though its older
    run (which waits for that slot) comes first in its order."""
    async with db.open() as a:
        await a.join("a", lease_s=60.0, host="h", pid=1)
        await a.submit([run(1, "queued"), run(2, "queued")]).wait()
        assert await a.take_run_slot("p", run(2).run_id, 1) is True
    async with daemon_running(make_config(SERIAL_NODE.format(url=db.location))):
        await _until(lambda: _all_succeeded(db))
    assert await db.query("SELECT count(*) FROM runs") == [(2,)]


async def _all_succeeded(db: StoreAt) -> bool:
    return await db.query("SELECT DISTINCT state FROM runs") == [("succeeded",)]


async def _until(check, timeout_s: float = 60) -> None:
    with anyio.fail_after(timeout_s):
        while not await check():  # noqa: ASYNC110 - the store's rows: nothing signals them
            await anyio.sleep(0.05)
