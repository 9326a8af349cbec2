"""The ``schedule`` source in the real daemon: ticks start runs, no tick fires twice across
a restart, and missed ticks are caught up as ``catchup`` says."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from structlog.testing import capture_logs

from cued.connectors.schedule import ScheduleSource, tick_iso
from cued.daemon.runtime.intake import DaemonIntake
from cued.daemon.store.opening import open_store_at
from tests.support import probes
from tests.support.clocks import MINUTE, ShiftedClock
from tests.support.running import daemon_running, wait_finished
from tests.support.stores import keeping_state_in

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.assembly import DaemonInfo


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


PIPELINE = """
[http]
listen = "127.0.0.1:0"

[pipelines.p]
inputs = { tick = "" }
[pipelines.p.tasks.t]
kind = "python"
function = "tests.support.probes:record"
args = { name = "{{ inputs.tick }}" }

[[triggers]]
source = "nightly"
pipeline = "p"
inputs = { tick = "{{ event.data.tick }}" }
"""


def schedule_source(keys: str) -> str:
    return f'[sources.nightly]\nkind = "schedule"\n{keys}\n{PIPELINE}'


def use_clock(monkeypatch, clock: Callable[[], datetime]) -> None:
    monkeypatch.setattr(ScheduleSource, "clock", staticmethod(clock))


async def poll(check: Callable[[], Any], timeout_s: float = 5) -> Any:
    """Wait until ``await check()`` is truthy (a clock is what we wait for: no event)."""
    with anyio.fail_after(timeout_s):
        while not (result := await check()):  # noqa: ASYNC110 - a store, nothing to wait on
            await anyio.sleep(0.02)
        return result


async def ticks_of(info: DaemonInfo) -> list[Any]:
    events = await info.runner.store.list_events(limit=100_000, source="nightly")
    return sorted(events, key=lambda e: e.data["scheduled_for"])


async def test_every_300ms_ticks_start_runs_with_the_tick_as_input(make_config):
    probe = probes.reset()
    config = make_config(schedule_source('every = "300ms"\ntimezone = "Europe/Berlin"'))
    async with daemon_running(config) as info:

        async def three() -> list[Any]:
            events = await ticks_of(info)
            return events if len(events) >= 3 else []

        events = (await poll(three))[:3]
        rows = await wait_finished(info, [r for e in events for r in e.run_ids])
        cursor = await info.intake.cursor("nightly")
    ticks = [datetime.fromisoformat(e.data["tick_utc"]) for e in events]
    # on the 300 ms grid; a loaded machine may make the source miss a tick (no catch-up),
    # which skips it rather than firing it late
    step = timedelta(milliseconds=300)
    assert all(b > a and (b - a) % step == timedelta(0) for a, b in itertools.pairwise(ticks))
    for event, tick in zip(events, ticks, strict=True):
        assert event.event_id == f"nightly:{tick_iso(tick)}"
        assert event.status == "matched"
        local = datetime.fromisoformat(event.data["tick"])
        assert local == tick
        assert local.utcoffset() in (timedelta(hours=1), timedelta(hours=2))  # Berlin
        assert event.data["scheduled_for"] == tick.timestamp()
        assert event.data["late_by_s"] >= 0
        assert event.meta == {
            "schedule": "every 0.3s",
            "timezone": "Europe/Berlin",
            "catchup": False,
        }
    assert [r.state for r in rows] == ["succeeded"] * 3
    assert [r.inputs["tick"] for r in rows] == [e.data["tick"] for e in events]
    assert set(probe.calls) >= {e.data["tick"] for e in events}
    assert cursor is not None
    assert datetime.fromisoformat(cursor) >= ticks[-1]


async def test_no_tick_fires_twice_across_a_restart(make_config, monkeypatch):
    probes.reset()
    recorded: list[str] = []
    record = DaemonIntake.record

    async def spy(self, events, *, cursor=None):
        recorded.extend(e.event_id for e in events)  # handed to intake, committed or not
        return await record(self, events, cursor=cursor)

    monkeypatch.setattr(DaemonIntake, "record", spy)
    config = make_config(schedule_source('every = "300ms"\ncatchup = "all"'))

    async def cursor_of(info: DaemonInfo) -> datetime | None:
        text = await info.intake.cursor("nightly")
        return datetime.fromisoformat(text) if text else None

    async with daemon_running(config) as info:
        await poll(lambda: _at_least(info, 2))
        first = await cursor_of(info)
    fired_first = list(recorded)
    async with open_store_at(config.state_location()) as store:
        # what the first daemon committed; a tick its stop cancelled in intake may be missing
        committed_first = {e.event_id for e in await store.list_events(limit=100_000)}
    async with daemon_running(config) as info:
        await poll(lambda: _at_least(info, len(committed_first) + 2))
        second = await cursor_of(info)
    async with open_store_at(config.state_location()) as store:
        # read once the daemon has stopped: a tick committed between two reads of a
        # running daemon would be in one and not the other
        events = await store.list_events(limit=100_000, source="nightly")
        runs = await store.list_runs(limit=100_000)
    assert first is not None
    assert second is not None
    assert second > first
    # the second daemon fires no tick that the first one committed ...
    after_restart = recorded[len(fired_first) :]
    assert after_restart
    assert not committed_first & set(after_restart), sorted(committed_first & set(after_restart))
    assert len(after_restart) == len(set(after_restart)), Counter(after_restart).most_common(3)
    assert all(datetime.fromisoformat(i.removeprefix("nightly:")) > first for i in after_restart)
    # ... and every tick committed is one event with one run
    assert {e.event_id for e in events} <= set(recorded)
    assert sorted(r.event_id or "" for r in runs) == sorted(e.event_id for e in events)


async def _at_least(info: DaemonInfo, n: int) -> bool:
    return len(await info.runner.store.list_events(limit=100_000, source="nightly")) >= n


@pytest.mark.parametrize(
    ("keys", "caught_up"),
    [
        pytest.param('catchup = "none"', [], id="none"),
        pytest.param('catchup = "latest"', [30], id="latest"),
        pytest.param('catchup = "all"', list(range(1, 31)), id="all"),
        pytest.param('catchup = "all"\nmax_catchup = 5', list(range(26, 31)), id="all-bounded"),
    ],
)
async def test_missed_ticks_are_caught_up_as_catchup_says(
    make_config, monkeypatch, keys, caught_up
):
    config = make_config(schedule_source(f'every = "1m"\n{keys}'))
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) + 10 * MINUTE

    async def cursor_is(info: DaemonInfo, tick: datetime) -> bool:
        return await info.intake.cursor("nightly") == tick_iso(tick)

    # first start: no cursor, nothing in the past fires; the next tick does
    use_clock(monkeypatch, ShiftedClock(t0 - timedelta(seconds=0.3)))
    async with daemon_running(config) as info:
        await poll(lambda: cursor_is(info, t0))
        assert [e.event_id for e in await ticks_of(info)] == [f"nightly:{tick_iso(t0)}"]

    # down for half an hour: t0+1m .. t0+30m are missed; t0+31m is a regular tick
    use_clock(monkeypatch, ShiftedClock(t0 + 30 * MINUTE + timedelta(seconds=59.7)))
    with capture_logs() as logs:
        async with daemon_running(config) as info:
            await poll(lambda: cursor_is(info, t0 + 31 * MINUTE))
            events = await ticks_of(info)
    assert [e.event_id for e in events] == [
        f"nightly:{tick_iso(t0 + m * MINUTE)}" for m in [0, *caught_up, 31]
    ]
    assert [e.meta["catchup"] for e in events] == [False, *[True] * len(caught_up), False]
    if caught_up:
        # late by the time since each tick, as the source's clock saw it on waking
        late = events[-2].data["late_by_s"]
        assert 59.7 <= late < 62
    truncated = [entry for entry in logs if entry["event"] == "schedule_catchup_truncated"]
    assert len(truncated) == (1 if "max_catchup" in keys else 0)
