"""The ``schedule`` source: when it ticks (cron and intervals, across DST), what its config
accepts, and against a fake intake: clock jumps, backpressure, a cursor ahead of the clock.
In the real daemon: tests/integration/test_schedule_source_in_a_daemon.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from cued.connectors.schedule import Schedule, ScheduleConfig, ScheduleSource, tick_iso
from cued.daemon.config import parse_config
from cued.daemon.errors import ConfigError
from cued.daemon.sdk.sources import Receipt, SourceContext
from tests.support.clocks import MINUTE, ShiftedClock

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.sdk.sources import Event


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def upcoming(schedule: Schedule, after: datetime, n: int) -> list[str]:
    ticks = []
    for _ in range(n):
        after = schedule.next_after(after)
        ticks.append(tick_iso(after))
    return ticks


# --- when it ticks (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "tick"),
    [
        pytest.param(utc(2026, 1, 14, 12), "2026-01-15T01:00:00Z", id="winter-cet"),
        pytest.param(utc(2026, 7, 14, 12), "2026-07-15T00:00:00Z", id="summer-cest"),
    ],
)
def test_daily_0200_in_berlin_is_0100_utc_in_winter_and_0000_utc_in_summer(after, tick):
    nightly = Schedule(ScheduleConfig(cron="0 2 * * *", timezone="Europe/Berlin"))
    assert tick_iso(nightly.next_after(after)) == tick


def test_a_local_time_skipped_by_spring_forward_fires_once_at_the_end_of_the_gap():
    # 2026-03-29 in Berlin: 02:00 CET becomes 03:00 CEST, there is no 02:30. croniter
    # fires at 03:00 CEST (01:00 UTC) instead: once, that day, and 02:30 again after.
    nightly = Schedule(ScheduleConfig(cron="30 2 * * *", timezone="Europe/Berlin"))
    assert upcoming(nightly, utc(2026, 3, 27, 12), 3) == [
        "2026-03-28T01:30:00Z",  # 02:30 CET
        "2026-03-29T01:00:00Z",  # 03:00 CEST, the end of the gap
        "2026-03-30T00:30:00Z",  # 02:30 CEST
    ]


def test_a_local_time_repeated_by_fall_back_fires_once_unless_every_hour_fires():
    # 2026-10-25 in Berlin: 03:00 CEST becomes 02:00 CET, 02:30 happens twice
    nightly = Schedule(ScheduleConfig(cron="30 2 * * *", timezone="Europe/Berlin"))
    assert upcoming(nightly, utc(2026, 10, 24, 12), 2) == [
        "2026-10-25T00:30:00Z",  # 02:30 CEST, the first occurrence
        "2026-10-26T01:30:00Z",  # 02:30 CET, the next day
    ]
    half_hourly = Schedule(ScheduleConfig(cron="*/30 * * * *", timezone="Europe/Berlin"))
    assert upcoming(half_hourly, utc(2026, 10, 24, 23, 40), 4) == [
        "2026-10-25T00:00:00Z",  # 02:00 CEST
        "2026-10-25T00:30:00Z",  # 02:30 CEST
        "2026-10-25T01:00:00Z",  # 02:00 CET
        "2026-10-25T01:30:00Z",  # 02:30 CET: real time, every half hour
    ]


@pytest.mark.parametrize("cron", ["30 2 * * *", "0 2 * * *", "*/20 * * * *", "15 1-3 * * 0"])
@pytest.mark.parametrize(
    "window",
    [
        pytest.param((utc(2026, 3, 26), utc(2026, 4, 1)), id="spring"),
        pytest.param((utc(2026, 10, 22), utc(2026, 10, 28)), id="autumn"),
    ],
)
def test_looking_back_for_missed_ticks_agrees_with_looking_forward(cron, window):
    schedule = Schedule(ScheduleConfig(cron=cron, timezone="Europe/Berlin"))
    start, end = window
    forward, tick = [], schedule.next_after(start)
    while tick <= end:
        forward.append(tick)
        tick = schedule.next_after(tick)
    assert schedule.recent(start, end, 10_000) == (forward, False)
    assert schedule.recent(start, end, 2) == (forward[-2:], True)
    assert schedule.recent(start, forward[0], 3) == ([forward[0]], False)  # the end included


def test_every_is_aligned_to_the_epoch_in_its_zone():
    hourly_utc = Schedule(ScheduleConfig(every="1h"))
    assert upcoming(hourly_utc, utc(2026, 1, 1, 0, 10), 1) == ["2026-01-01T01:00:00Z"]
    hourly_kolkata = Schedule(ScheduleConfig(every="1h", timezone="Asia/Kolkata"))  # +05:30
    assert upcoming(hourly_kolkata, utc(2026, 1, 1, 0, 10), 1) == ["2026-01-01T00:30:00Z"]
    fast = Schedule(ScheduleConfig(every="300ms"))
    assert upcoming(fast, utc(2026, 1, 1), 4) == [
        "2026-01-01T00:00:00.300000Z",
        "2026-01-01T00:00:00.600000Z",
        "2026-01-01T00:00:00.900000Z",
        "2026-01-01T00:00:01.200000Z",
    ]
    # a long span costs nothing: the ticks are counted, not walked
    assert fast.recent(utc(2000, 1, 1), utc(2026, 1, 1), 2) == (
        [utc(2025, 12, 31, 23, 59, 59, 700_000), utc(2026, 1, 1)],
        True,
    )


def test_start_at_anchors_every_and_nothing_fires_before_it():
    config = ScheduleConfig(every="15m", start_at="2026-01-01T09:05:00", timezone="Europe/Berlin")
    schedule = Schedule(config)
    assert upcoming(schedule, utc(2020, 1, 1), 2) == [
        "2026-01-01T08:05:00Z",  # 09:05 in Berlin, naive start_at is in the zone
        "2026-01-01T08:20:00Z",
    ]
    assert schedule.recent(utc(2020, 1, 1), utc(2026, 1, 1, 8, 30), 10) == (
        [utc(2026, 1, 1, 8, 5), utc(2026, 1, 1, 8, 20)],
        False,
    )


# --- config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "line", "path", "words"),
    [
        pytest.param('cron = "61 * * * *"', 3, "sources.nightly.cron", ["out of range"], id="cron"),
        pytest.param(
            'cron = "0 0 * * * *"', 3, "sources.nightly.cron", ["5 fields", "got 6"], id="6-fields"
        ),
        pytest.param('cron = "0 0 31 2 *"', 3, "sources.nightly.cron", ["never fires"], id="31feb"),
        pytest.param(
            'cron = "0 2 * * *"\ntimezone = "Europe/Berlinn"',
            4,
            "sources.nightly.timezone",
            ["unknown time zone 'Europe/Berlinn'"],
            id="timezone",
        ),
        pytest.param(
            'cron = "0 2 * * *"\nevery = "1h"', 1, "sources.nightly", ["exactly one"], id="both"
        ),
        pytest.param('timezone = "UTC"', 1, "sources.nightly", ["cron or every"], id="neither"),
        pytest.param('every = "0s"', 3, "sources.nightly.every", ["longer than zero"], id="zero"),
        pytest.param(
            'cron = "0 2 * * *"\nstart_at = 2026-01-01T00:00:00',
            1,
            "sources.nightly",
            ["start_at goes with every"],
            id="start-at-with-cron",
        ),
        pytest.param(
            'every = "1h"\ncatchup = "some"', 4, "sources.nightly.catchup", ["'all'"], id="catchup"
        ),
    ],
)
def test_a_bad_schedule_is_a_config_problem_on_its_line(tmp_path, keys, line, path, words):
    text = f'[sources.nightly]\nkind = "schedule"\n{keys}\n[http]\nlisten = "127.0.0.1:0"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, file=str(tmp_path / "config.toml"), base_dir=tmp_path)
    (problem,) = info.value.problems
    assert (problem.line, problem.path) == (line, path)
    for word in words:
        assert word in problem.message


# --- against a fake intake: clock jumps, backpressure, a cursor ahead of the clock ---------


class FakeIntake:
    """The Intake protocol in memory: records what it is given; its gate is backpressure."""

    def __init__(self, cursor: str | None = None) -> None:
        self.events: list[Event] = []
        self.cursors: list[str | None] = []
        self.last_cursor = cursor
        self.open = True
        self.waiting = False
        self._changed = anyio.Event()

    async def record(self, events: list[Event], *, cursor: str | None = None) -> list[Receipt]:
        assert self.open, "recorded while the daemon was not accepting"
        self.events.extend(events)
        self.cursors.append(cursor)
        self.last_cursor = cursor
        self._poke()
        return [Receipt(e.event_id, "unmatched") for e in events]

    async def cursor(self, source: str) -> str | None:
        return self.last_cursor

    def accepting(self) -> bool:
        return self.open

    async def wait_accepting(self) -> None:
        self.waiting = True
        self._poke()
        while not self.open:
            await self._wait_changed()
        self.waiting = False

    def set_open(self, value: bool) -> None:
        self.open = value
        self._poke()

    async def until(self, check: Callable[[], bool], timeout_s: float = 5) -> None:
        with anyio.fail_after(timeout_s):
            while not check():
                await self._wait_changed()

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class ManualClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_source(
    tmp_path, intake: FakeIntake, clock: Callable[[], datetime], **keys: Any
) -> ScheduleSource:
    ctx = SourceContext(
        source="nightly",
        intake=intake,
        log=structlog.get_logger("cued").bind(source="nightly"),
        routes=None,  # type: ignore[arg-type]  # a schedule serves nothing
        base_dir=tmp_path,
    )
    return ScheduleSource(ScheduleConfig(**keys), ctx, clock=clock)


@pytest.mark.parametrize(
    ("catchup", "fired"),
    [
        pytest.param("none", [5], id="none"),
        pytest.param("latest", [5], id="latest"),
        pytest.param("all", [0, 1, 2, 3, 4, 5], id="all"),
    ],
)
async def test_when_the_clock_jumps_the_newest_tick_fires_and_catchup_says_about_the_rest(
    tmp_path, monkeypatch, catchup, fired
):
    monkeypatch.setattr(ScheduleSource, "max_sleep_s", 0.01)
    t0 = utc(2026, 3, 1, 12)
    clock = ManualClock(t0 - timedelta(seconds=1))
    intake = FakeIntake()
    source = make_source(tmp_path, intake, clock, every="1m", catchup=catchup)
    async with anyio.create_task_group() as tg:
        await tg.start(source.run)
        clock.now = t0 + 5 * MINUTE + timedelta(seconds=1)  # the machine slept
        await intake.until(lambda: intake.last_cursor == tick_iso(t0 + 5 * MINUTE))
        tg.cancel_scope.cancel()
    assert [e.event_id for e in intake.events] == [
        f"nightly:{tick_iso(t0 + m * MINUTE)}" for m in fired
    ]
    assert intake.cursors == [tick_iso(t0 + m * MINUTE) for m in fired]
    # the missed ones are marked; the newest is the current tick, late but not caught up
    assert [e.meta["catchup"] for e in intake.events] == [m != 5 for m in fired]


async def test_a_tick_waits_for_backpressure_and_is_late_not_lost(tmp_path):
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) + 5 * MINUTE
    intake = FakeIntake()
    intake.set_open(False)
    source = make_source(
        tmp_path, intake, ShiftedClock(t0 - timedelta(seconds=0.05)), every="1m", catchup="none"
    )
    async with anyio.create_task_group() as tg:
        await tg.start(source.run)
        await intake.until(lambda: intake.waiting)
        assert intake.events == []
        await anyio.sleep(0.3)  # behind for a while
        intake.set_open(True)
        await intake.until(lambda: len(intake.events) == 1)
        tg.cancel_scope.cancel()
    (event,) = intake.events
    assert event.event_id == f"nightly:{tick_iso(t0)}"
    assert event.data["late_by_s"] >= 0.3
    assert intake.cursors == [tick_iso(t0)]


async def test_ticks_at_or_before_the_cursor_never_fire_even_if_the_clock_went_back(tmp_path):
    cursor = utc(2026, 3, 1, 12)
    intake = FakeIntake(cursor=tick_iso(cursor))
    # the clock is half a second behind the last committed tick
    clock = ShiftedClock(cursor - timedelta(seconds=0.5))
    with capture_logs() as logs:
        source = make_source(tmp_path, intake, clock, every="200ms", catchup="all")
        async with anyio.create_task_group() as tg:
            await tg.start(source.run)
            await intake.until(lambda: len(intake.events) == 2)
            tg.cancel_scope.cancel()
    assert [e.data["tick_utc"] for e in intake.events] == [
        tick_iso(cursor + timedelta(milliseconds=200)),
        tick_iso(cursor + timedelta(milliseconds=400)),
    ]
    # info lines show or not by the level another test of this process set: count the rest
    warned = [entry["event"] for entry in logs if entry["log_level"] != "info"]
    assert warned == ["schedule_cursor_ahead_of_clock"]
