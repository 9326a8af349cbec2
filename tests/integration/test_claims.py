"""Waiting runs claimed across nodes on the real PostgreSQL: a run is driven by the node
whose claim holds (``FOR UPDATE SKIP LOCKED``, fenced by the node's generation), a node
with a free slot claims the runs recorded on a busy one, and no run is started twice."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.config import parse_config
from cued.daemon.core.ids import new_id
from cued.daemon.errors import Fenced
from cued.daemon.runtime.claims import parse_waiting
from cued.daemon.store import RunRow
from tests.support import probes
from tests.support.flood import until
from tests.support.running import daemon_running
from tests.support.stores import StoreAt, fresh_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from cued.daemon.config import Config

T0 = 1_800_000_000.0


def queued(pipeline: str = "p", priority: int = 5, **kw) -> RunRow:
    return RunRow(new_id(), pipeline, "queued", {}, T0, priority=priority, **kw)


@pytest.fixture
async def db() -> AsyncIterator[StoreAt]:
    async with fresh_database(migrated=True) as url:
        yield StoreAt("postgresql", url)


async def test_two_nodes_racing_for_the_same_waiting_runs_each_claim_a_run_once(db: StoreAt):
    async with db.open() as a, db.open() as b:
        await a.join("a", lease_s=60.0, host="h", pid=1)
        await b.join("b", lease_s=60.0, host="h", pid=2)
        rows = [queued() for _ in range(300)]
        await a.submit(rows).wait()
        claims: dict[str, list[str]] = {"a": [], "b": []}

        async def claim(node: str, store) -> None:
            while found := await store.next_waiting("p", 5, after="", limit=7, anyone=True):
                claims[node] += [row.run_id for row in found]

        async with anyio.create_task_group() as tg:
            for _ in range(3):  # three claimers per node, at once
                tg.start_soon(claim, "a", a)
                tg.start_soon(claim, "b", b)
        both = claims["a"] + claims["b"]
        assert sorted(both) == sorted(row.run_id for row in rows)
        assert len(set(both)) == len(both)
        assert claims["b"]  # the node that recorded none claimed some
        owners = dict(await db.query("SELECT run_id, node FROM run_owners"))
        assert all(owners[run_id] == node for node, ids in claims.items() for run_id in ids)


async def test_a_claim_takes_the_lane_in_order_and_leaves_what_a_live_node_claimed(db: StoreAt):
    async with db.open() as a, db.open() as b:
        await a.join("a", lease_s=60.0, host="h", pid=1)
        await b.join("b", lease_s=60.0, host="h", pid=2)
        low, high = [queued(priority=1) for _ in range(3)], [queued(priority=9) for _ in range(3)]
        keyed = queued(flow_key="k", key_limit=1)
        started = queued(started_at=T0)
        await a.submit([*low, *high, keyed, started]).wait()
        # a node's own reads take its own runs past its cursor, in order
        first = await a.next_waiting("p", 9, after="", limit=2)
        assert [r.run_id for r in first] == [r.run_id for r in high[:2]]
        assert await b.next_waiting("p", 9, after="", limit=9) == []  # b's own: none
        # another node's claim passes over what a live node claimed
        rest = await b.next_waiting("p", 9, after="", limit=9, anyone=True)
        assert [r.run_id for r in rest] == [high[2].run_id]
        assert await a.claim_runs([high[2].run_id]) == []  # b's now
        # neither a run that counts for its key nor one that started is claimed
        assert await b.next_waiting("p", 5, after="", limit=9, anyone=True) == []
        # a's lease lapses and b adopts its runs: a claims nothing more (fenced), and
        # what a had claimed counts for nothing (its generation is gone): b's to claim
        await db.query("UPDATE nodes SET expires_at = 0 WHERE node = 'a'")
        await b.renew()
        await b.adopt()
        with pytest.raises(Fenced):
            await a.next_waiting("p", 1, after="", limit=9)
        again = await b.next_waiting("p", 9, after="", limit=9)
        assert [r.run_id for r in again] == [r.run_id for r in first]
        assert len(await b.next_waiting("p", 1, after="", limit=9)) == 3


async def test_a_run_that_holds_a_slot_across_the_nodes_is_never_claimed(db: StoreAt):
    async with db.open() as a, db.open() as b:
        await a.join("a", lease_s=60.0, host="h", pid=1)
        await b.join("b", lease_s=60.0, host="h", pid=2)
        row = queued()
        await a.submit([row]).wait()
        assert await a.take_run_slot("p", row.run_id, 1)
        assert await b.next_waiting("p", 5, after="", limit=9, anyone=True) == []
        assert await b.claim_runs([row.run_id]) == []


BUSY_AND_IDLE = """
[daemon]
state = "{url}"
node = "{node}"
backlog_window = 2
[http]
listen = "127.0.0.1:0"
[pipelines.p]
max_active_runs = 1
inputs = {{ n = 0 }}
[pipelines.p.tasks.hold]
kind = "python"
function = "tests.support.probes:record"
args = {{ name = "n{{{{ inputs.n }}}}", until_released = true }}
[pipelines.p.tasks.gate]
kind = "approval"
message = "go on?"
needs = ["hold"]
"""


def node_config(db: StoreAt, folder: Path, node: str) -> Config:
    """A node's configuration, in a folder of its own (one daemon per folder)."""
    folder.mkdir()
    text = BUSY_AND_IDLE.format(url=db.location, node=node)
    return parse_config(text, file=str(folder / "config.toml"), base_dir=folder)


async def test_runs_recorded_on_a_busy_node_are_driven_by_an_idle_one_each_once(
    db: StoreAt, tmp_path: Path
):
    """Node a records every run; its first holds the pipeline's one slot (across the
    nodes) until released. Node b records none: it hears that runs wait on a and claims
    one for its free slot. Once released, every run is driven, parking at its gate (its
    owner is then the node that drove it): each run once, some on b."""
    probe = probes.reset()
    count = 30

    async def b_claimed() -> bool:
        return await db.query("SELECT count(*) FROM run_owners WHERE node = 'b'") != [(0,)]

    async def all_parked() -> bool:
        return await db.query("SELECT count(*) FROM runs WHERE state = 'waiting'") == [(count,)]

    async with (
        daemon_running(node_config(db, tmp_path / "b", "b")),
        daemon_running(node_config(db, tmp_path / "a", "a")) as a,
    ):
        with anyio.fail_after(120):
            ids = [(await a.runner.start_run("p", {"n": n})).run_id for n in range(count)]
            await probe.entered.wait()
            await until(b_claimed)
            probe.released.set()
            await until(all_parked)
        owners = dict(await db.query("SELECT run_id, node FROM run_owners"))
        attempts = await db.query("SELECT run_id, key, count(*) FROM attempts GROUP BY 1, 2")
    assert sorted(owners) == sorted(ids)
    assert set(owners.values()) == {"a", "b"}
    assert sorted(attempts) == sorted((i, key, 1) for i in ids for key in ("hold", "gate"))
    assert sorted(probe.calls) == sorted(f"n{n}" for n in range(count))


@given(st.text())
def test_a_waiting_notice_is_parsed_from_any_text_without_raising(text):
    found = parse_waiting(text)
    assert found is None or 0 < len(found) <= 1000


@given(st.binary())
def test_a_waiting_notice_from_any_bytes_is_a_pipeline_or_nothing(data):
    found = parse_waiting(data.decode("utf-8", "replace"))
    assert found is None or isinstance(found, str)


def test_a_waiting_notice_names_its_pipeline():
    assert parse_waiting('["waiting", "orders"]') == "orders"
    assert parse_waiting('["waiting", ""]') is None
    assert parse_waiting('["cancel", "orders"]') is None
    assert parse_waiting('["waiting", 3]') is None


async def test_a_run_cancelled_on_one_node_while_another_claims_it_never_starts(
    db: StoreAt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Node b's claim of a run that waits on a is out (it read the run queued) when a
    cancels the run in the store and signals the nodes: b, hearing it while its read is
    out, does not start the run the read brings back."""
    probe = probes.reset()
    count = 6

    async def settled() -> bool:
        found = await db.query(
            "SELECT count(*) FROM runs WHERE state IN ('waiting', 'cancelled', 'succeeded')"
        )
        return found == [(count,)]

    async with (
        daemon_running(node_config(db, tmp_path / "b", "b")) as b,
        daemon_running(node_config(db, tmp_path / "a", "a")) as a,
    ):
        claimed, heard, go_on = anyio.Event(), anyio.Event(), anyio.Event()
        target: list[RunRow] = []
        read, is_active = b.runner.store.next_waiting, b.runner.is_active

        async def held_claim(*args, **kwargs):
            found = await read(*args, **kwargs)
            if found and kwargs.get("anyone") and not target:
                target.append(found[0])
                claimed.set()
                await go_on.wait()  # out, having read the run queued
            return found

        def seen(run_id: str) -> bool:
            if target and run_id == target[0].run_id:
                heard.set()  # the signal of the cancel is applied here
            return is_active(run_id)

        monkeypatch.setattr(b.runner.store, "next_waiting", held_claim)
        monkeypatch.setattr(b.runner, "is_active", seen)
        with anyio.fail_after(120):
            ids = [(await a.runner.start_run("p", {"n": n})).run_id for n in range(count)]
            await probe.entered.wait()
            await claimed.wait()
            (run,) = target
            cancelled = await a.runner.cancel_stored(run.run_id)
            assert cancelled.state == "cancelled"
            await heard.wait()
            go_on.set()
            probe.released.set()
            await until(settled)
        recorded = dict(await db.query("SELECT run_id, state FROM runs"))
        attempts = await db.query("SELECT run_id FROM attempts")
    assert sorted(recorded) == sorted(ids)
    assert recorded[run.run_id] == "cancelled"
    assert (run.run_id,) not in attempts
    assert f"n{run.inputs['n']}" not in probe.calls
