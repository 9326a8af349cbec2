"""Debounce, throttle and batch end to end: real webhooks on loopback into the real daemon,
on both stores, with the flow control's clock in the test's hand (the timer is told to
look when the test moves it, so nothing here waits for a period to pass)."""

from __future__ import annotations

import anyio
import httpx
import pytest

from tests.support.flood import until
from tests.support.running import daemon_running, wait_finished
from tests.support.stores import keeping_state_in


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


class Clock:
    """Seconds since the epoch that move only when the test says."""

    def __init__(self, at: float = 1_800_000_000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


HEAD = """
[http]
listen = "127.0.0.1:0"

[sources.orders]
kind = "webhook"
path = "/hooks/orders"

[pipelines.sync]
inputs = { customer = "", x = "", n = "", ids = "" }
[pipelines.sync.tasks.noop]
kind = "python"
function = "tests.support.probes:record"
args = { name = "{{ inputs.customer }}" }
"""


async def _post(info, events: list[dict]) -> list[dict]:
    host, port = info.http_address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        answers = []
        for data in events:
            response = await client.post("/hooks/orders", json=data)
            assert response.status_code == 202, response.text
            answers.append(response.json())
        return answers


async def _settle(info, clock: Clock, at: float) -> int:
    """Move the clock to ``at``, settle what is due (as the timer would: the two take
    turns, so whichever comes second finds nothing left) and count the runs started."""
    clock.at = at
    await info.intake.flow.settle_due(info.runner)
    return len(await _runs(info))


async def _runs(info) -> list:
    return sorted(await info.runner.store.list_runs(limit=1000), key=lambda r: r.run_id)


async def _events(info) -> dict:
    return {e.event_id: e for e in await info.runner.store.list_events(limit=1000)}


async def test_debounce_starts_one_run_per_quiet_window_of_each_key_with_its_last_event(
    make_config,
):
    config = make_config(
        HEAD
        + """
[[triggers]]
source = "orders"
pipeline = "sync"
key = "{{ event.data.customer }}"
inputs = { customer = "{{ event.data.customer }}", x = "{{ event.data.x }}" }
debounce = { period = "30s", keep = "last" }
"""
    )
    clock = Clock()
    t0 = clock.at
    async with daemon_running(config) as info:
        info.intake.flow.clock = clock
        answers = await _post(
            info,
            [
                {"customer": "c1", "x": 1},
                {"customer": "c2", "x": 2},
                {"customer": "c1", "x": 3},
            ],
        )
        assert [a["status"] for a in answers] == ["held"] * 3
        assert all(a["runs"] == [] for a in answers)
        held = await info.runner.store.event_holds([a["event_id"] for a in answers])
        assert sorted((w.key, w.kind, h.seq) for h, w in held) == [
            ("c1", "debounce", 1),
            ("c1", "debounce", 2),
            ("c2", "debounce", 1),
        ]
        # c1's window restarts at its second event: 20 s later, more of it comes
        clock.at = t0 + 20
        await _post(info, [{"customer": "c1", "x": 4}])
        assert await _settle(info, clock, t0 + 31) == 1  # c2 only: quiet for 31 s
        assert await _settle(info, clock, t0 + 45) == 1  # c1: its last event was at t0+20
        assert await _settle(info, clock, t0 + 51) == 2
        runs = await _runs(info)
        await wait_finished(info, [r.run_id for r in runs])
        events = await _events(info)
    assert sorted((r.inputs["customer"], r.inputs["x"]) for r in runs) == [("c1", 4), ("c2", 2)]
    assert all(e.status == "matched" and len(e.run_ids) == 1 for e in events.values())
    c1_run = next(r for r in runs if r.inputs["customer"] == "c1")
    c1_events = [e for e in events.values() if e.data["customer"] == "c1"]
    assert len(c1_events) == 3
    assert {e.run_ids for e in c1_events} == {(c1_run.run_id,)}
    # what the release says (while held, where each waited was shown from its hold)
    assert all("3 event(s) of window" in (e.error or "") for e in c1_events)


async def test_throttle_delays_the_excess_in_order_into_the_next_slots(make_config, store_at):
    config = make_config(
        HEAD
        + """
[[triggers]]
source = "orders"
pipeline = "sync"
inputs = { x = "{{ event.data.x }}" }
throttle = { limit = 2, period = "1m", excess = "delay" }
"""
    )
    clock = Clock()
    t0 = clock.at
    async with daemon_running(config) as info:
        info.intake.flow.clock = clock
        answers = await _post(info, [{"x": i} for i in range(5)])
        if store_at.kind == "sqlite":
            assert [a["status"] for a in answers] == ["matched"] * 2 + ["held"] * 3
        else:
            # nodes may share the database: the slots are counted in it, at the release
            assert [a["status"] for a in answers] == ["held"] * 5
        assert await _settle(info, clock, t0) == 2
        assert await _settle(info, clock, t0 + 59) == 2
        assert await _settle(info, clock, t0 + 60) == 4
        assert await _settle(info, clock, t0 + 119) == 4
        assert await _settle(info, clock, t0 + 120) == 5
        runs = await _runs(info)
        await wait_finished(info, [r.run_id for r in runs])
        events = await _events(info)
    assert [r.inputs["x"] for r in runs] == [0, 1, 2, 3, 4]
    delayed = [events[a["event_id"]] for a in answers[2:]]
    assert all(e.status == "matched" for e in delayed)
    assert all("delayed by the throttle" in (e.error or "") for e in delayed)


async def test_throttle_drops_the_excess_and_says_so_on_the_event(make_config, store_at):
    config = make_config(
        HEAD
        + """
[[triggers]]
source = "orders"
pipeline = "sync"
key = "{{ event.data.customer }}"
throttle = { limit = 1, period = "1h", excess = "drop" }
"""
    )
    clock = Clock()
    async with daemon_running(config) as info:
        info.intake.flow.clock = clock
        answers = await _post(
            info, [{"customer": "a"}, {"customer": "a"}, {"customer": "b"}, {"customer": "a"}]
        )
        await _settle(info, clock, clock.at)  # (PostgreSQL: each event waits for it)
        events = await _events(info)
        await wait_finished(info, [r for e in events.values() for r in e.run_ids])

        async def keys() -> int:
            # one node: in its memory; nodes sharing the database: in the database only
            if store_at.kind == "sqlite":
                return info.intake.flow.held_keys()
            assert info.intake.flow.held_keys() == 0
            return len((await info.runner.store.flow_state())[1])

        # the slots of keys a and b count for an hour; then both are forgotten
        assert await keys() == 2
        clock.at += 3599
        await info.intake.flow.sweep()
        assert await keys() == 2
        clock.at += 2
        await info.intake.flow.sweep()
        assert await keys() == 0
        assert (await info.runner.store.flow_state())[1] == []
    statuses = [events[a["event_id"]].status for a in answers]
    assert statuses == ["matched", "dropped", "matched", "dropped"]
    if store_at.kind == "sqlite":
        assert [a["status"] for a in answers] == statuses
    dropped = events[answers[1]["event_id"]]
    assert "of key 'a': dropped (throttle: 1 runs per 3600s reached)" in (dropped.error or "")


async def test_batch_starts_a_run_per_size_and_at_the_timeout_and_inputs_see_event_batch(
    make_config,
):
    config = make_config(
        HEAD
        + """
[[triggers]]
source = "orders"
pipeline = "sync"
inputs = { n = "{{ event.batch | length }}", ids = "{{ event.batch | map(attribute='data') | map(attribute='x') | join(',') }}", x = "{{ event.data.x }}" }
batch = { size = 3, timeout = "5s" }
"""
    )
    clock = Clock()
    t0 = clock.at
    async with daemon_running(config) as info:
        info.intake.flow.clock = clock
        answers = await _post(info, [{"x": i} for i in range(7)])
        assert [a["status"] for a in answers] == ["held"] * 7
        # why the seventh waits: in the API's event view and on the UI's event page
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            seventh = answers[6]["event_id"]
            shown = (await client.get(f"/api/v1/events/{seventh}")).json()
            page = (await client.get(f"/ui/events/{seventh}")).text
        assert shown["status"] == "held"
        ((hold),) = shown["holds"]
        assert (hold["kind"], hold["phase"], hold["seq"], hold["held"]) == ("batch", "open", 1, 1)
        assert hold["due_at"] == t0 + 5
        assert "waits in batch" in shown["error"]
        assert "Held by flow control" in page
        assert hold["window"] in page
        # the two full batches are due at once; the seventh waits for the timeout
        assert await _settle(info, clock, t0 + 4) == 2
        assert await _settle(info, clock, t0 + 5) == 3
        runs = await _runs(info)
        await wait_finished(info, [r.run_id for r in runs])
        events = await _events(info)
        assert await info.runner.store.flow_next_due() is None
    assert [(r.inputs["n"], r.inputs["ids"], r.inputs["x"]) for r in runs] == [
        (3, "0,1,2", 2),
        (3, "3,4,5", 5),
        (1, "6", 6),
    ]
    assert all(e.status == "matched" and len(e.run_ids) == 1 for e in events.values())


async def test_a_reload_that_removes_the_trigger_drops_its_windows_with_a_note(make_config):
    config = make_config(
        HEAD
        + """
[[triggers]]
source = "orders"
pipeline = "sync"
debounce = { period = "10s" }
"""
    )
    clock = Clock()
    async with daemon_running(config) as info:
        info.intake.flow.clock = clock
        (answer,) = await _post(info, [{"x": 1}])
        info.intake.reconfigure(make_config(HEAD))
        with anyio.fail_after(30):
            assert await _settle(info, clock, clock.at + 11) == 0
        events = await _events(info)
    event = events[answer["event_id"]]
    assert event.status == "dropped"
    assert "is no longer configured" in (event.error or "")


async def test_replay_through_a_debounce_trigger_holds_the_event_again(make_config):
    config = make_config(
        HEAD
        + """
[[triggers]]
source = "orders"
pipeline = "sync"
inputs = { x = "{{ event.data.x }}" }
debounce = { period = "10s" }
"""
    )
    clock = Clock()
    t0 = clock.at
    async with daemon_running(config) as info:
        info.intake.flow.clock = clock
        (answer,) = await _post(info, [{"x": 7}])
        assert await _settle(info, clock, t0 + 10) == 1
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:

            async def replay(force: bool) -> dict:
                body = {"event_id": answer["event_id"], "force": force}
                response = await client.post("/api/v1/events/replay", json=body)
                assert response.status_code == 200, response.text
                return response.json()

            # it ran for this pipeline already: nothing, unless forced
            assert (await replay(False))["duplicates"] == 1
            forced = await replay(True)
            assert (forced["held"], forced["runs_started"]) == (1, 0)
            # held now: a replay leaves it be
            assert (await replay(False))["events"][0]["skipped"] == [
                "flow control holds the event now"
            ]
        (event,) = (await _events(info)).values()
        assert event.status == "held"
        assert await _settle(info, clock, t0 + 19) == 1
        assert await _settle(info, clock, t0 + 21) == 2
        runs = await _runs(info)
        await wait_finished(info, [r.run_id for r in runs])
        (event,) = (await _events(info)).values()
    assert event.status == "matched"
    assert event.run_ids == tuple(r.run_id for r in runs)
    assert [r.inputs["x"] for r in runs] == [7, 7]


async def test_a_debounce_under_a_throttle_waits_for_a_slot_after_its_window(make_config):
    config = make_config(
        HEAD
        + """
[[triggers]]
source = "orders"
pipeline = "sync"
inputs = { x = "{{ event.data.x }}" }
debounce = { period = "10s", keep = "first" }
throttle = { limit = 1, period = "1m" }
"""
    )
    clock = Clock()
    t0 = clock.at
    async with daemon_running(config) as info:
        info.intake.flow.clock = clock
        await _post(info, [{"x": 1}, {"x": 2}])
        assert await _settle(info, clock, t0 + 10) == 1
        clock.at = t0 + 11
        (later,) = await _post(info, [{"x": 3}])
        # its window is due at +21, but the key's one slot a minute is taken until +70
        assert await _settle(info, clock, t0 + 21) == 1
        (held,) = await info.runner.store.event_holds([later["event_id"]])
        assert (held[1].phase, held[1].due_at) == ("slotted", t0 + 70)
        assert (await _events(info))[later["event_id"]].status == "held"
        assert await _settle(info, clock, t0 + 69) == 1
        assert await _settle(info, clock, t0 + 70) == 2
        runs = await _runs(info)
        await wait_finished(info, [r.run_id for r in runs])
        event = (await _events(info))[later["event_id"]]
    assert [r.inputs["x"] for r in runs] == [1, 3]
    assert event.status == "matched"
    assert "the throttle delays its run to" in (event.error or "")


async def test_the_timer_releases_windows_by_itself_on_the_real_clock(make_config):
    config = make_config(
        HEAD
        + """
[[triggers]]
source = "orders"
pipeline = "sync"
key = "{{ event.data.customer }}"
inputs = { customer = "{{ event.data.customer }}" }
debounce = { period = "200ms" }

[[triggers]]
source = "orders"
pipeline = "sync"
name = "batches"
inputs = { n = "{{ event.batch | length }}" }
batch = { size = 2, timeout = "300ms" }
"""
    )
    async with daemon_running(config) as info:
        answers = await _post(info, [{"customer": "a"}, {"customer": "b"}, {"customer": "a"}])
        ids = [a["event_id"] for a in answers]
        with anyio.fail_after(60):
            # nobody moves a clock here: the timer sleeps until each window is due
            while any(e.status == "held" for e in (await _events(info)).values()):  # noqa: ASYNC110 - the daemon's timer, out of our hands
                await anyio.sleep(0.05)
        runs = await _runs(info)
        await wait_finished(info, [r.run_id for r in runs])
        events = await _events(info)
    debounced = sorted(r.inputs["customer"] for r in runs if r.inputs["customer"])
    batched = sorted(r.inputs["n"] for r in runs if r.inputs["n"])
    # a and b: a window each (however slow the posts, at least one run per key); the
    # batches: every event in exactly one
    assert set(debounced) == {"a", "b"}
    assert sum(batched) == 3
    assert all(len(events[i].run_ids) == 2 for i in ids)  # one of each trigger


@pytest.mark.parametrize("apart", [True, False], ids=["released-apart", "released-together"])
async def test_an_event_two_windows_hold_is_held_until_both_are_released(make_config, apart):
    config = make_config(
        HEAD
        + """
[[triggers]]
source = "orders"
pipeline = "sync"
inputs = { x = "{{ event.data.x }}" }
batch = { size = 2, timeout = "1h" }

[pipelines.load.tasks.noop]
kind = "python"
function = "tests.support.probes:record"
args = { name = "load" }

[[triggers]]
source = "orders"
pipeline = "load"
debounce = { period = "10s" }
"""
    )
    clock = Clock()
    t0 = clock.at
    async with daemon_running(config) as info:
        info.intake.flow.clock = clock
        answers = await _post(info, [{"x": 1}, {"x": 2}])
        assert [a["status"] for a in answers] == ["held"] * 2
        ids = [a["event_id"] for a in answers]
        if apart:
            assert await _settle(info, clock, t0 + 1) == 1  # the full batch only
            events = await _events(info)
            # the debounce window still holds them: held, with the batch's run and note
            assert {events[i].status for i in ids} == {"held"}
            assert {len(events[i].run_ids) for i in ids} == {1}
            assert all("batch of key" in (events[i].error or "") for i in ids)
        assert await _settle(info, clock, t0 + 11) == 2
        runs = await _runs(info)
        await wait_finished(info, [r.run_id for r in runs])
        events = await _events(info)
        assert await info.runner.store.event_holds(ids) == []
    assert {events[i].status for i in ids} == {"matched"}
    assert all(sorted(events[i].run_ids) == [r.run_id for r in runs] for i in ids)
    for i in ids:
        error = events[i].error or ""
        assert "batch of key" in error
        assert "debounce of key" in error


async def test_the_idle_timer_looks_at_the_store_only_while_a_key_is_kept(make_config, store_at):
    # an idle daemon (no window, no key's throttle slots) sends its store nothing on a
    # timer; a key kept gives the timer its sweep to make, and once forgotten, none (a
    # store nodes share keeps the keys itself: there the timer never has one to sweep)
    config = make_config(
        HEAD
        + """
[[triggers]]
source = "orders"
pipeline = "sync"
key = "{{ event.data.customer }}"
throttle = { limit = 1, period = "1h", excess = "drop" }
"""
    )
    clock = Clock()
    async with daemon_running(config) as info:
        flow = info.intake.flow
        flow.clock = clock

        async def looks_at(when: float) -> bool:
            return flow.looks_at == when

        await until(lambda: looks_at(float("inf")))
        answers = await _post(info, [{"customer": "a"}])
        await wait_finished(info, answers[0]["runs"])
        if store_at.kind != "sqlite":
            await until(lambda: looks_at(float("inf")))
            assert flow.held_keys() == 0
            return
        await until(lambda: looks_at(clock.at + 60))
        clock.at += 3601  # the slot no longer counts
        flow.poke()
        await until(lambda: looks_at(float("inf")))
        assert flow.held_keys() == 0
