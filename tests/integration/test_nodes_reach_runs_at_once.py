"""Two nodes (two whole daemons in this process) on one PostgreSQL database: what happens on
one reaches a run the other owns at once (``NOTIFY cued_signal``), not at that node's next
start: a child run that ends on b settles its parent's task on a; an event recorded by b
wakes a wait of a run of a's, and cancels (``cancel_on``) another; a timer of a's run is
a's, and fires once. Alerts are delivered once in the cluster, a gone node's taken over; an
approval quorum reached by decisions on both nodes settles the gate once; a dedupe key
recorded on both nodes at once starts one run.

Nothing here waits for a node's restart: each daemon runs until the test ends."""

from __future__ import annotations

import json
import time
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from cued.daemon.config import parse_config
from cued.daemon.core.ids import now
from cued.daemon.runtime.alerts import Alerts
from cued.daemon.store import OutboxRow
from tests.support.flood import until
from tests.support.http_server import serve_app
from tests.support.running import daemon_running
from tests.support.stores import StoreAt, fresh_database
from tests.support.webhook_receiver import Receiver

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from cued.daemon.assembly import DaemonInfo

NODE = """
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

[pipelines.parent.tasks.kid]
kind = "pipeline"
pipeline = "kid"
[pipelines.parent.tasks.busy]             # keeps the parent in memory on its node
kind = "sleep"
seconds = 240
[pipelines.parent.tasks.after]
kind = "sleep"
needs = ["kid"]
seconds = 0

[pipelines.kid.tasks.ok]
kind = "approval"
message = "go on?"

[pipelines.waiter.tasks.w]
kind = "wait_event"
source = "hook"
match = "event.data.n == 1"

[pipelines.doomed]
cancel_on = [{{ source = "hook", when = "event.data.n == 2" }}]
[pipelines.doomed.tasks.busy]
kind = "sleep"
seconds = 240

[pipelines.timed]
inputs = {{ at = 0.0 }}
[pipelines.timed.tasks.t]
kind = "sleep"
until = "{{{{ inputs.at | add_duration('1s') }}}}"

[pipelines.quorum.tasks.g]
kind = "approval"
message = "two of us?"
approvers = ["alice", "bob"]
min_approvals = 2

[pipelines.once]
inputs = {{ key = "" }}
[pipelines.once.tasks.t]
kind = "sleep"
seconds = 0

[[triggers]]
source = "hook"
pipeline = "once"
when = "event.data.n == 3"
inputs = {{ key = "{{{{ event.data.key }}}}" }}
dedupe = "{{{{ event.data.key }}}}"
"""


@pytest.fixture
async def db() -> AsyncIterator[StoreAt]:
    async with fresh_database(migrated=True) as url:
        yield StoreAt("postgresql", url)


def config(tmp_path: Path, db: StoreAt, node: str, extra: str = "", lease: str = "5s"):
    folder = tmp_path / node
    folder.mkdir(exist_ok=True)
    text = NODE.format(url=db.location, node=node, lease=lease) + extra
    return parse_config(text, file=str(folder / "config.toml"), base_dir=folder)


async def nodes(
    stack: AsyncExitStack, tmp_path: Path, db: StoreAt, extra: str = ""
) -> tuple[DaemonInfo, DaemonInfo]:
    """Daemons a and b, once each has heard the other (signals reach it)."""
    a = await stack.enter_async_context(daemon_running(config(tmp_path, db, "a", extra)))
    b = await stack.enter_async_context(daemon_running(config(tmp_path, db, "b", extra)))
    for info in (a, b):
        signals = info.runner.signals
        await until(lambda s=signals: _heard(s))
    return a, b


async def _heard(signals) -> bool:
    return bool(signals._notices.peers)


async def post(info: DaemonInfo, data: dict) -> None:
    assert info.http_address is not None
    host, port = info.http_address
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"http://{host}:{port}/hook", json=data)
    assert answer.status_code == 202, answer.text


async def instance_state(db: StoreAt, run_id: str, key: str) -> str | None:
    rows = await db.query(
        "SELECT state FROM task_instances WHERE run_id = ? AND key = ?", run_id, key
    )
    return rows[0][0] if rows else None


async def run_state(db: StoreAt, run_id: str) -> str:
    ((state,),) = await db.query("SELECT state FROM runs WHERE run_id = ?", run_id)
    return str(state)


async def owner(db: StoreAt, run_id: str) -> str | None:
    rows = await db.query("SELECT node FROM run_owners WHERE run_id = ?", run_id)
    return rows[0][0] if rows else None


async def test_a_child_run_that_ends_on_b_settles_its_parents_task_on_a(tmp_path, db):
    """The parent runs on a (its busy task keeps it in memory); its child waits at a gate,
    which is decided on b: the child goes on, and ends, on b; a goes on with the parent."""
    async with AsyncExitStack() as stack:
        a, b = await nodes(stack, tmp_path, db)
        parent = (await a.runner.start_run("parent")).run_id

        async def kid_waits() -> bool:
            found = await db.query(
                "SELECT c.run_id FROM runs c JOIN approvals g ON g.run_id = c.run_id "
                "WHERE c.parent_run_id = ? AND g.state = 'waiting'",
                parent,
            )
            return bool(found) and await run_state(db, found[0][0]) == "waiting"

        await until(kid_waits)
        ((kid,),) = await db.query("SELECT run_id FROM runs WHERE parent_run_id = ?", parent)
        await b.runner.gates.decide(kid, "ok", who="bob", approve=True)
        assert (await b.runner.wait(kid)).state == "succeeded"  # ended on b
        await until(lambda: _is(instance_state(db, parent, "after"), "succeeded"))
        assert a.runner.is_active(parent)  # a went on with it, in memory
        assert await owner(db, parent) == "a"
        await a.runner.cancel(parent)


async def test_an_event_recorded_on_b_wakes_a_wait_and_cancels_a_run_of_as(tmp_path, db):
    async with AsyncExitStack() as stack:
        a, b = await nodes(stack, tmp_path, db)
        waiter = (await a.runner.start_run("waiter")).run_id
        doomed = (await a.runner.start_run("doomed")).run_id
        await until(lambda: _is(run_state(db, waiter), "waiting"))
        await until(lambda: _is(instance_state(db, doomed, "busy"), "running"))
        await post(b, {"n": 1})
        await until(lambda: _is(run_state(db, waiter), "succeeded"))
        await post(b, {"n": 2})
        await until(lambda: _is(run_state(db, doomed), "cancelled"))
        (wait,) = await db.query("SELECT state, applied FROM waits WHERE run_id = ?", waiter)
    assert wait == ("matched", 1)
    ((error,),) = await db.query("SELECT error FROM runs WHERE run_id = ?", doomed)
    assert "cancelled by event" in error


async def test_a_timer_of_a_run_on_a_fires_once_there_with_b_beside_it(tmp_path, db):
    async with AsyncExitStack() as stack:
        a, _ = await nodes(stack, tmp_path, db)
        run_id = (await a.runner.start_run("timed", {"at": time.time()})).run_id
        await until(lambda: _is(run_state(db, run_id), "succeeded"))
    waits = await db.query("SELECT kind, state, applied FROM waits WHERE run_id = ?", run_id)
    assert waits == [("timer", "expired", 1)]
    assert await db.query("SELECT count(*) FROM attempts WHERE run_id = ?", run_id) == [(1,)]


async def test_two_approvals_on_two_nodes_reach_the_quorum_and_settle_the_gate_once(tmp_path, db):
    async with AsyncExitStack() as stack:
        a, b = await nodes(stack, tmp_path, db)
        for _ in range(5):
            run_id = (await a.runner.start_run("quorum")).run_id
            await until(lambda r=run_id: _is(run_state(db, r), "waiting"))
            async with anyio.create_task_group() as tg:
                for info, who in ((a, "alice"), (b, "bob")):
                    decide = partial(info.runner.gates.decide, who=who, approve=True)
                    tg.start_soon(decide, run_id, "g")
            await until(lambda r=run_id: _is(run_state(db, r), "succeeded"))
            # settled once, by the second decision, whichever node took it
            assert await db.query("SELECT state FROM approvals WHERE run_id = ?", run_id) == [
                ("approved",)
            ]
            decided = await db.query("SELECT who FROM decisions WHERE run_id = ?", run_id)
            assert sorted(decided) == [("alice",), ("bob",)]
            attempts = await db.query("SELECT state FROM attempts WHERE run_id = ?", run_id)
            assert attempts == [("succeeded",)]


async def test_a_dedupe_key_recorded_on_both_nodes_at_once_starts_one_run(tmp_path, db):
    """Two events of one key (two ids), each recorded by another node at the same moment:
    one starts its run; the other's is recorded skipped, as a duplicate, and runs nowhere."""
    keys = [f"k{n}" for n in range(8)]
    async with AsyncExitStack() as stack:
        a, b = await nodes(stack, tmp_path, db)
        for key in keys:
            async with anyio.create_task_group() as tg:
                tg.start_soon(post, a, {"n": 3, "key": key})
                tg.start_soon(post, b, {"n": 3, "key": key})
        await until(lambda: _all_ended(db, 2 * len(keys)))
    found = await db.query("SELECT inputs, state FROM runs WHERE pipeline = 'once'")
    started = sorted(json.loads(inputs)["key"] for inputs, state in found if state != "skipped")
    assert started == keys  # one run of each key
    assert {state for _, state in found} <= {"succeeded", "skipped"}
    assert await db.query("SELECT count(*) FROM events") == [(2 * len(keys),)]
    assert await db.query("SELECT count(*) FROM run_owners") == [(0,)]


ALERTS = """
[alerts.hook]
kind = "webhook"
url = "{url}/alerts"
on = ["run_failed"]
timeout = "120s"
"""


def alert(n: int, at: float) -> OutboxRow:
    return OutboxRow(f"hook:run_failed:r{n:03d}", "hook", "run_failed", {"n": n}, at, next_at=at)


async def test_each_alert_is_delivered_by_one_node_and_a_gone_nodes_are_taken_over(tmp_path, db):
    """Alerts left in the outbox (by a crash, or the CLI) are due for both nodes: while
    the receiver holds each delivery, a takes as many as it sends at once, and b as many
    others; each goes out once. Alerts that a live node (c) claimed are sent by neither,
    until c's lease lapses: then they are, once."""
    receiver = Receiver(status={"/alerts": "hang"})
    async with serve_app(receiver.app) as url, db.open() as store:
        at = now()
        await store.join("c", lease_s=3600.0, host="h", pid=1)
        await store.submit([alert(n, at - 1) for n in range(5)]).wait()  # due first
        await db.query("INSERT INTO outbox_claims SELECT alert_id, 'c' FROM outbox")
        await store.submit([alert(n, at) for n in range(5, 45)]).wait()
        extra = ALERTS.format(url=url)
        async with AsyncExitStack() as stack:
            for node in ("a", "b"):
                await stack.enter_async_context(
                    daemon_running(config(tmp_path, db, node, extra, lease="10s"))
                )
            both = 2 * Alerts.max_concurrent
            await receiver.until(lambda: receiver.hanging >= both)
            receiver.release.set()
            await receiver.until(lambda: len(receiver.hits) >= 40)

            async def recorded_sent() -> bool:
                sent = await db.query("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL")
                return sent == [(40,)]

            await until(recorded_sent)
            unsent = await db.query("SELECT alert_id FROM outbox WHERE sent_at IS NULL")
            assert sorted(unsent) == [(alert(n, 0).alert_id,) for n in range(5)]
            await db.query("UPDATE nodes SET expires_at = 0 WHERE node = 'c'")  # c is gone
            await receiver.until(lambda: len(receiver.hits) >= 45)
    tries = receiver.tries("/alerts")
    assert sorted(tries) == [alert(n, 0).alert_id for n in range(45)]
    assert set(tries.values()) == {1}


async def _all_ended(db: StoreAt, events: int) -> bool:
    """Every event was recorded, and every run has ended (succeeded, or skipped)."""
    (recorded,) = await db.query("SELECT count(*) FROM events")
    (unfinished,) = await db.query(
        "SELECT count(*) FROM runs WHERE state IN ('queued', 'running', 'waiting')"
    )
    return recorded == (events,) and unfinished == (0,)


async def _is(value, expected) -> bool:
    return await value == expected
