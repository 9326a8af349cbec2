"""Three daemons (processes) on one PostgreSQL database share a flood of events; one is
killed with -9 in the thick of it, and another loses its sessions to the database
(``pg_terminate_backend``): it stops its tasks, answers 503 meanwhile, and reconnects in
place (the same process), joining with a new generation. At the end every acknowledged event has exactly one run per trigger, every run finished (the dead
node's runs adopted by the others), no task whose success was recorded ran again, nothing
ran outside a recorded attempt, and ``max_active_runs = 1`` of the serial pipeline held
across the three.

The flood is of webhooks alone, or of webhooks, the messages of a Kafka topic of 6
partitions that the three read in one consumer group, and the ticks of a schedule that
all three have (each tick fires once in the cluster).

A sender posts each webhook to one node (round robin, as a load balancer would) and, when
that node does not answer, to the next, with the same delivery id."""

from __future__ import annotations

import json
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import httpx

from tests.support.daemon import Daemon, cued
from tests.support.flood import none_unfinished, until
from tests.support.kafka_broker import (
    committed_offsets,
    create_topics,
    started_producer,
    unique_name,
)
from tests.support.raw_http import free_port
from tests.support.stores import StoreAt, fresh_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from anyio.abc import TaskGroup

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

KAFKA = """
[sources.orders]
kind = "kafka"
bootstrap = "{bootstrap}"
topics = ["{topic}"]
group = "{group}"
max_batch = 20
session_timeout = "2s"

[[triggers]]
source = "orders"
pipeline = "p"
[[triggers]]
source = "orders"
pipeline = "serial"
when = "event.data.m % 20 == 0"
"""

TICKS = """
[sources.tick]
kind = "schedule"
every = "1s"
catchup = "all"                   # ticks due at once (a node held up): none is skipped

[[triggers]]
source = "tick"
pipeline = "p"
"""

HOOKS = 120
NODES = ("n1", "n2", "n3")
PARTITIONS = 6
MESSAGES = 240
#: Kafka messages go out in this many chunks, in step with the webhooks
CHUNKS = 20


async def test_three_nodes_share_a_flood_and_adopt_the_runs_of_one_killed_with_9(
    tmp_path, monkeypatch
):
    async with fresh_database(migrated=True) as url:
        monkeypatch.setenv("CUED_DATABASE_URL", url)  # the daemons inherit it
        db = StoreAt("postgresql", url)
        async with _cluster(tmp_path, db) as cluster:
            async with anyio.create_task_group() as tg:
                cluster.flood(tg)
                chaos = await _chaos(cluster)
            await cluster.settle()
        await _check(cluster, chaos)
    assert cluster.runs == _hook_runs()


async def test_three_nodes_share_webhooks_a_kafka_group_and_a_schedule_through_kill_9(
    tmp_path, monkeypatch, kafka
):
    topic, group = unique_name("orders"), unique_name("cued")
    await create_topics(kafka.bootstrap, topic, partitions=PARTITIONS)
    sources = KAFKA.format(bootstrap=kafka.bootstrap, topic=topic, group=group)
    produced: dict[str, int] = {}  # event id of a message the broker took -> its number

    async def produce(cluster: Cluster) -> None:
        """The messages in chunks, each once the sender has tried as many webhooks: they
        pour in beside the webhooks, through the kill and the cut."""
        async with started_producer(kafka.bootstrap, linger_ms=5) as producer:
            for chunk in range(CHUNKS):
                await until(lambda c=chunk: _tried(cluster, c * HOOKS // CHUNKS), 120)
                numbers = range(chunk * MESSAGES // CHUNKS, (chunk + 1) * MESSAGES // CHUNKS)
                sent = {}  # all of the chunk on its way at once, then each one's answer
                for m in numbers:
                    value = json.dumps({"m": m}).encode()
                    sent[m] = await producer.send(topic, value, partition=m % PARTITIONS)
                for m, delivery in sent.items():
                    taken = await delivery
                    produced[f"orders:{topic}:{taken.partition}:{taken.offset}"] = m

    async def kafka_and_ticks_in() -> bool:
        return len(await db.query(_OF_SOURCE, "orders")) >= 30 and (
            len(await db.query(_OF_SOURCE, "tick")) >= 2
        )

    async with fresh_database(migrated=True) as url:
        monkeypatch.setenv("CUED_DATABASE_URL", url)
        db = StoreAt("postgresql", url)
        async with _cluster(tmp_path, db, sources + TICKS) as cluster:
            # the three share the partitions before the flood
            await until(lambda: _all_hold_partitions(cluster), 120)
            async with anyio.create_task_group() as tg:
                cluster.flood(tg)
                tg.start_soon(produce, cluster)
                chaos = await _chaos(cluster, also=kafka_and_ticks_in)
            # every message recorded, and ticks fired after n3 came back
            await until(lambda: _at_least(_count(db, "orders"), MESSAGES), 120)
            ticked = await _count(db, "tick")
            await until(lambda: _at_least(_count(db, "tick"), ticked + 3), 120)
            # the schedule is taken out of the config: no tick starts a run after the end
            for node in ("n1", "n3"):
                cluster.write_config(node, sources)
                reloaded = cued(cluster.configs[node], "reload")
                assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
            await cluster.settle()

            async def all_committed() -> bool:
                partitions = [(topic, p) for p in range(PARTITIONS)]
                offsets = await committed_offsets(kafka.bootstrap, group, partitions)
                return sum(offsets.values()) == MESSAGES

            await until(all_committed, 120)
        await _check(cluster, chaos)
        ticks = await db.query("SELECT event_id, data FROM events WHERE source = 'tick'")
        messages = await db.query("SELECT event_id, data FROM events WHERE source = 'orders'")
    # every message the broker took has its one event (and no other message has one),
    # with one run, and a second one when it is for `serial` too
    assert len(produced) == MESSAGES
    assert {e: json.loads(data)["m"] for e, data in messages} == produced
    assert cluster.runs_of("orders") == {e: 2 if m % 20 == 0 else 1 for e, m in produced.items()}
    # each tick of the window fired once, with one run: from the first to the last, on
    # the one-second grid, none missing (one node at least was always up), through the
    # kill and the cut
    moments = sorted(json.loads(data)["scheduled_for"] for _, data in ticks)
    assert moments == [moments[0] + k for k in range(len(moments))]
    assert len(moments) >= 5
    assert cluster.runs_of("tick") == {e: 1 for e, _ in ticks}
    # and no run is of anything else
    assert cluster.runs == _hook_runs() | cluster.runs_of("orders") | cluster.runs_of("tick")


@dataclass
class Cluster:
    """Three daemons on one database (each its own folder, as on its own machine) and the
    sender in front of them; what is known once they are stopped."""

    tmp_path: Path
    db: StoreAt
    ports: dict[str, int]
    configs: dict[str, Path] = field(default_factory=dict)
    daemons: dict[str, Daemon] = field(default_factory=dict)
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    acked: dict[str, str] = field(default_factory=dict)  # delivery id -> event id
    down: set[str] = field(default_factory=set)
    tried: int = 0  # webhooks the sender has tried, answered or not
    killed: anyio.Event = field(default_factory=anyio.Event)  # n2 is killed
    back: anyio.Event = field(default_factory=anyio.Event)  # n3 reconnected after the cut
    first: dict[str, int] = field(default_factory=dict)  # node -> generation at start
    listed: str = ""  # `cued nodes` at the end
    stopped: dict[str, int] = field(default_factory=dict)
    runs: Counter[str] = field(default_factory=Counter)  # event id -> its runs, at the end

    def write_config(self, node: str, sources: str) -> None:
        folder = self.tmp_path / node
        folder.mkdir(exist_ok=True)
        self.configs[node] = folder / "config.toml"
        self.configs[node].write_text(
            CONFIG.format(
                port=self.ports[node],
                node=node,
                ledger=self.tmp_path / "ledger",
                serial=self.tmp_path / "serial",
            )
            + sources
        )

    def daemon(self, node: str) -> Daemon:
        self.daemons[node] = Daemon(self.configs[node], self.configs[node].parent / "postgresql")
        return self.daemons[node]

    async def post(self, numbers: range) -> None:
        for n in numbers:
            # the first half before the kill, a quarter before n3 is back, the rest after
            if n >= HOOKS // 2:
                await self.killed.wait()
            if n >= HOOKS * 3 // 4:
                await self.back.wait()
            # round robin, and on to the next node while one does not answer
            for turn in range(len(NODES)):
                node = NODES[(n + turn) % len(NODES)]
                if f"d{n}" in self.acked or node in self.down:
                    continue
                try:
                    response = await self.clients[node].post(
                        "/hook", json={"n": n}, headers={"x-delivery": f"d{n}"}
                    )
                except httpx.TransportError:
                    continue
                if response.status_code in (200, 202):
                    self.acked[f"d{n}"] = response.json()["event_id"]
            self.tried += 1

    def flood(self, tg: TaskGroup) -> None:
        """Two senders at once, of the even and of the odd webhooks."""
        tg.start_soon(self.post, range(0, HOOKS, 2))
        tg.start_soon(self.post, range(1, HOOKS, 2))

    async def succeeded(self) -> int:
        rows = await self.db.query("SELECT count(*) FROM task_instances WHERE state = 'succeeded'")
        return int(rows[0][0])

    async def settle(self) -> None:
        """Every webhook acknowledged (those the chaos left), every run finished."""
        with anyio.fail_after(120):
            while len(self.acked) < HOOKS:
                await self.post(range(HOOKS))
        await until(lambda: none_unfinished(self.db), 120)
        listed = cued(self.configs["n1"], "nodes")
        assert listed.returncode == 0, listed.stderr
        self.listed = listed.stdout

    def runs_of(self, source: str) -> Counter[str]:
        return Counter({e: n for e, n in self.runs.items() if e.startswith(f"{source}:")})


@asynccontextmanager
async def _cluster(tmp_path: Path, db: StoreAt, sources: str = "") -> AsyncIterator[Cluster]:
    """The three daemons started, then stopped (the one killed stays dead)."""
    cluster = Cluster(tmp_path, db, {node: free_port() for node in NODES})
    for node in NODES:
        cluster.write_config(node, sources)
    checked = cued(cluster.configs["n1"], "validate", "--strict")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    try:
        for node in NODES:
            await cluster.daemon(node).start(timeout_s=60)
        cluster.first = dict(await db.query("SELECT node, generation FROM nodes"))
        cluster.clients = {
            node: httpx.AsyncClient(base_url=f"http://127.0.0.1:{cluster.ports[node]}", timeout=10)
            for node in NODES
        }
        yield cluster
    finally:
        for client in cluster.clients.values():
            await client.aclose()
        cluster.stopped = {
            node: daemon.stop() for node, daemon in cluster.daemons.items() if node != "n2"
        }
        if "n2" in cluster.daemons:
            cluster.daemons["n2"].kill9()
    cluster.runs = Counter(e for (e,) in await db.query("SELECT event_id FROM runs"))


@dataclass(frozen=True)
class Chaos:
    """What the kill of n2 and the cut of n3 left."""

    orphaned: set[str]  # runs n2 owned unfinished at its kill
    done_before: set[str]  # tasks whose success was recorded by then, "run_id/key"
    stayed_up: bool  # n3 was the same process before the cut and after it reconnected


async def _chaos(cluster: Cluster, also: Callable[[], Awaitable[bool]] | None = None) -> Chaos:
    """In the thick of the flood (and once ``also`` holds), kill n2 with -9; then cut n3
    off the database, and wait until it has reconnected in place."""
    db, daemons = cluster.db, cluster.daemons

    async def thick() -> bool:
        # events recorded, tasks done, n2 owning unfinished runs
        if len(cluster.acked) < 30 or await cluster.succeeded() < 10:
            return False
        if also is not None and not await also():
            return False
        return bool(await db.query(_UNFINISHED_OF, "n2"))

    await until(thick, 120)
    daemons["n2"].kill9()
    _dead(cluster.tmp_path, daemons["n2"])
    cluster.down.add("n2")
    cluster.killed.set()
    # (not adopted yet: its lease holds for 3 s after its last renewal)
    orphaned = {r for (r,) in await db.query(_UNFINISHED_OF, "n2")}
    done_before = {
        f"{run_id}/{key}"
        for run_id, key in await db.query(
            "SELECT run_id, key FROM task_instances WHERE state = 'succeeded'"
        )
    }
    # n3 loses the database: it stops its tasks at once (the incarnation that ran them
    # marked dead before: its runs are adopted if its lease lapses before it is back) and
    # answers 503 meanwhile (the sender goes on to the next node); it reconnects in place
    n3 = daemons["n3"]
    assert n3.process is not None
    pid = n3.process.pid
    _dead(cluster.tmp_path, n3)
    cut = await db.query(_TERMINATE, f"cued:{pid}")
    # (false for a connection that ended on its own between the read of pg_stat_activity
    # and its terminate, such as the lease's after a renewal timed out: gone already)
    assert any(ok for (ok,) in cut), cut
    await until(lambda: _logged(n3, "database_reconnected"), 120)
    # what the incarnation before the cut ran is over: the ledgers go on with the new one
    _dead(cluster.tmp_path, n3)
    cluster.back.set()
    return Chaos(orphaned, done_before, n3.process.poll() is None and n3.process.pid == pid)


async def _check(cluster: Cluster, chaos: Chaos) -> None:
    """What holds after any flood, whatever its sources."""
    db, tmp_path = cluster.db, cluster.tmp_path
    assert cluster.stopped == {"n1": 0, "n3": 0}
    assert chaos.stayed_up
    assert chaos.orphaned, "n2 owned no unfinished run at the kill"
    # every acknowledged webhook is there
    hooks = {e for (e,) in await db.query(_OF_SOURCE, "hook")}
    assert set(cluster.acked.values()) == hooks == {f"hook:d{n}" for n in range(HOOKS)}
    # every run finished, those n2 owned at the kill too (by n1 or n3)
    assert await db.query("SELECT DISTINCT state FROM runs") == [("succeeded",)]
    assert await db.query("SELECT count(*) FROM run_owners") == [(0,)]
    lines = (tmp_path / "ledger").read_text().splitlines()
    starts = Counter(line.split()[1] for line in lines if line.startswith("start"))
    tasks = await db.query(
        "SELECT t.run_id, t.key FROM task_instances t JOIN runs r ON r.run_id = t.run_id "
        "WHERE r.pipeline = 'p'"
    )
    assert set(starts) == {f"{run_id}/{key}" for run_id, key in tasks}
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
    again = {key: starts[key] for key in chaos.done_before if key in starts}
    assert again == dict.fromkeys(again, 1)
    # max_active_runs = 1 of `serial` held across the nodes: its runs never overlapped,
    # though more than one node ran them (the shell's parent is the daemon)
    serial = (tmp_path / "serial").read_text().splitlines()
    _never_two_at_once(serial)
    assert len({line.split()[2] for line in serial if line.startswith("in")}) >= 2
    # the CLI lists the nodes that are left (n2's row went with its runs); n3 reconnected
    # with a new generation
    shown = [line.split()[:3] for line in cluster.listed.splitlines()[1:]]
    assert [(node, state) for node, state, _ in shown] == [("n1", "alive"), ("n3", "alive")]
    generations = {node: int(generation) for node, _, generation in shown}
    assert generations["n1"] == cluster.first["n1"]
    assert generations["n3"] > cluster.first["n3"]


def _hook_runs() -> dict[str, int]:
    """One run of `p` per webhook, and one of `serial` for every fourth."""
    return {f"hook:d{n}": 2 if n % 4 == 0 else 1 for n in range(HOOKS)}


_OF_SOURCE = "SELECT event_id FROM events WHERE source = ?"

_UNFINISHED_OF = (
    "SELECT o.run_id FROM run_owners o JOIN runs r ON r.run_id = o.run_id "
    "WHERE o.node = ? AND r.state IN ('queued', 'running')"
)

_TERMINATE = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?"


async def _count(db: StoreAt, source: str) -> int:
    rows = await db.query("SELECT count(*) FROM events WHERE source = ?", source)
    return int(rows[0][0])


async def _at_least(value: Awaitable[int], floor: int) -> bool:
    return await value >= floor


async def _tried(cluster: Cluster, floor: int) -> bool:
    return cluster.tried >= floor


async def _all_hold_partitions(cluster: Cluster) -> bool:
    """Each node's Kafka consumer holds partitions: its last assignment or revocation (as
    its log says: the broker tells members' assignments to no one else) gave it some."""
    return all(map(_holds_partitions, cluster.daemons.values()))


def _holds_partitions(daemon: Daemon) -> bool:
    held = False
    for line in daemon.log.read_text().splitlines():
        if line.startswith("{") and '"kafka_partitions_' in line:
            entry = json.loads(line)
            held = entry["event"] == "kafka_partitions_assigned" and bool(entry["partitions"])
    return held


def _dead(tmp_path: Path, daemon: Daemon) -> None:
    """Mark in the ledgers that ``daemon``'s incarnation is dead: what it ran until then is
    not running (it may run again elsewhere, or in the daemon reconnected)."""
    assert daemon.process is not None
    for name in ("ledger", "serial"):
        with (tmp_path / name).open("a") as ledger:
            ledger.write(f"dead {daemon.process.pid}\n")


def _never_twice_at_once(lines: list[str]) -> None:
    running: dict[str, str] = {}  # task -> the daemon running it
    for line in lines:
        what, *rest = line.split()
        if what == "dead":
            running = {key: pid for key, pid in running.items() if pid != rest[0]}
        elif what == "start":
            key, pid = rest
            other = running.get(key)
            # (a daemon starts a task again only once its attempt there is over: one
            # stopped as it lost the database, and resumed as it reconnected)
            assert other in (None, pid), f"{key} ran on {pid} and {other} at once"
            running[key] = pid
        elif running.get(rest[0]) == rest[1]:
            del running[rest[0]]


async def _logged(daemon: Daemon, event: str) -> bool:
    return f'"{event}"' in daemon.log.read_text()


def _never_two_at_once(lines: list[str]) -> None:
    inside: dict[str, str] = {}  # run -> the daemon running it
    for line in lines:
        what, *rest = line.split()
        if what == "dead":  # what it ran is not running (and runs again elsewhere)
            inside = {run_id: pid for run_id, pid in inside.items() if pid != rest[0]}
        elif what == "in":
            # (its own run started again by a daemon that reconnected: that one is over)
            alive = {run_id for run_id, pid in inside.items() if (run_id, pid) != tuple(rest)}
            assert not alive, f"{rest[0]} started while {alive} ran"
            inside[rest[0]] = rest[1]
        elif inside.get(rest[0]) == rest[1]:
            del inside[rest[0]]
