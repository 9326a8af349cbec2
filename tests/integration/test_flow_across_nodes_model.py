"""Flow control of two nodes on one PostgreSQL database (the real server) against a model
of one node: hypothesis draws the events of two keys (when each comes, and which node
takes it); each node's flow control and store take them, and the windows due are released
as the timers would (at their due times, by either node). Whatever the nodes, the runs
are the model's: one per quiet window (debounce), one per batch (every event in exactly
one), and never more than the throttle's limit in a period of the cluster.

Below the daemon (no HTTP, no runner): the two nodes' :class:`FlowControl` and stores,
with the runs they release recorded by a :class:`RunQueue` of the test's."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cued.daemon.config import parse_config
from cued.daemon.core.ids import new_id
from cued.daemon.core.triggers import Match
from cued.daemon.runtime.flow import FlowControl
from cued.daemon.store import EventClaim, EventRow, RunRow
from cued.daemon.store.opening import open_store_at
from tests.support.stores import fresh_database

if TYPE_CHECKING:
    from cued.daemon.store import Store

T0 = 1_800_000_000.0
PERIOD = 10.0  # the debounce's period, the throttle's, the batch's timeout

CONFIG = """
[sources.orders]
kind = "webhook"
path = "/hooks/orders"

[pipelines.sync]
inputs = {{ xs = "" }}
[pipelines.sync.tasks.noop]
kind = "python"
function = "tests.support.probes:record"

[[triggers]]
name = "t"
source = "orders"
pipeline = "sync"
key = "{{{{ event.data.key }}}}"
{flow}
"""
#: the inputs of a run: its events' numbers
BATCH = "inputs = { xs = \"{{ event.batch | map(attribute='data') | map(attribute='x') | join(',') }}\" }\n"


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> float:
        return self.at


class Runs:
    """The runs a node's releases start (as the runner would take them), and when."""

    def __init__(self, clock: Clock, started: list[tuple[float, RunRow]]) -> None:
        self._clock = clock
        self.started = started

    def new_run(
        self,
        pipeline: str,
        inputs: dict[str, Any] | None = None,
        *,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> RunRow:
        return RunRow(new_id(), pipeline, "queued", inputs or {}, self._clock(), event_id=event_id)

    def enqueue(self, row: RunRow) -> None:
        self.started.append((self._clock(), row))

    def wake_waits(self) -> None:
        pass


# an event: how long after the one before it comes, its key, the node that takes it
EVENTS = st.lists(
    st.tuples(
        st.sampled_from([0.0, 1.0, 4.0, 9.0, 10.0, 11.0, 25.0]),
        st.sampled_from(["k0", "k1"]),
        st.integers(0, 1),
    ),
    min_size=1,
    max_size=14,
)
#: which node's timer comes first, at each release
FIRST = st.lists(st.integers(0, 1), min_size=1, max_size=8)


async def _play(
    tmp_path: Any, flow: str, events: list[tuple[float, str, int]], first: list[int]
) -> tuple[list[tuple[float, RunRow]], dict[str, tuple[str, ...]], list[tuple[float, str]]]:
    """Run ``events`` through two nodes; the runs started (when, which), each event's runs,
    and when each event came (with its key), in order."""
    config = parse_config(CONFIG.format(flow=flow), file=str(tmp_path / "c.toml"))
    clock = Clock()
    started: list[tuple[float, RunRow]] = []
    came: list[tuple[float, str]] = []
    turns = itertools.cycle(first)
    async with (
        fresh_database(migrated=True) as url,
        open_store_at(url) as a,
        open_store_at(url) as b,
    ):
        stores: list[Store] = [a, b]
        nodes = [FlowControl(config, s, clock=clock) for s in stores]
        queues = [Runs(clock, started), Runs(clock, started)]

        async def release_until(at: float) -> None:
            # as the timers would: each window at its due time, by whichever node
            for _ in range(10 * len(events) + 10):
                due = await a.flow_next_due()
                if due is None or due > at:
                    break
                clock.at = max(clock.at, due)
                n = next(turns)
                await nodes[n].settle_due(queues[n])
            else:
                raise AssertionError(f"windows due by {at} are not released")
            clock.at = at

        for x, (gap, key, n) in enumerate(events):
            await release_until(clock.at + gap)
            event_id = f"e{x:03d}"
            m = Match("t", "sync", {}, None, 0.0, key=key)
            admitted = nodes[n].admit(m, event_id)
            row = EventRow(event_id, "orders", clock.at, "held", {"key": key, "x": x}, {})
            await stores[n].submit([EventClaim(event_id), row, *admitted.rows]).wait()
            nodes[n].submitted(None)
            came.append((clock.at, key))
        await release_until(clock.at + 10 * PERIOD * len(events))
        assert await a.flow_next_due() is None
        recorded = {e.event_id: e.run_ids for e in await a.list_events(limit=1000)}
    return started, recorded, came


def _batches(started: list[tuple[float, RunRow]]) -> list[list[int]]:
    return sorted([int(x) for x in r.inputs["xs"].split(",")] for _, r in started)


_SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(events=EVENTS, first=FIRST)
def test_debounce_across_nodes_is_one_run_per_quiet_window_of_each_key(tmp_path, events, first):
    started, recorded, came = anyio.run(
        _play, tmp_path, BATCH + 'debounce = { period = "10s", keep = "all" }', events, first
    )
    # the model: a key's event joins its burst unless the burst was quiet for a period
    bursts: list[list[int]] = []
    last: dict[str, tuple[float, list[int]]] = {}
    for x, (at, key) in enumerate(came):
        if key in last and at < last[key][0] + PERIOD:
            last[key][1].append(x)
            last[key] = (at, last[key][1])
        else:
            last[key] = (at, [x])
            bursts.append(last[key][1])
    assert _batches(started) == sorted(bursts)
    assert all(len(runs) == 1 for runs in recorded.values())


@_SETTINGS
@given(events=EVENTS, first=FIRST, size=st.integers(1, 4))
def test_every_event_is_in_exactly_one_batch_of_the_cluster(tmp_path, events, first, size):
    started, recorded, came = anyio.run(
        _play, tmp_path, BATCH + f'batch = {{ size = {size}, timeout = "10s" }}', events, first
    )
    # the model: a key's batch is released when full, or a timeout after its first event
    batches: list[list[int]] = []
    filling: dict[str, tuple[float, list[int]]] = {}
    for x, (at, key) in enumerate(came):
        if key in filling and at >= filling[key][0] + PERIOD:
            del filling[key]
        if key not in filling:
            filling[key] = (at, [])
            batches.append(filling[key][1])
        filling[key][1].append(x)
        if len(filling[key][1]) == size:
            del filling[key]
    assert _batches(started) == sorted(batches)
    assert all(len(runs) == 1 for runs in recorded.values())


@_SETTINGS
@given(events=EVENTS, first=FIRST, limit=st.integers(1, 3))
def test_a_throttle_is_never_over_its_limit_in_the_cluster(tmp_path, events, first, limit):
    started, recorded, _ = anyio.run(
        _play,
        tmp_path,
        'inputs = { xs = "{{ event.data.x }}" }\n'
        f'throttle = {{ limit = {limit}, period = "10s", excess = "delay" }}',
        events,
        first,
    )
    # every event runs once, and no period holds more than `limit` starts of a key
    assert all(len(runs) == 1 for runs in recorded.values())
    assert len(started) == len(events)
    for key in ("k0", "k1"):
        times = sorted(at for at, r in started if r.flow_key == key)
        assert all(times[i + limit] - times[i] >= PERIOD for i in range(len(times) - limit))
