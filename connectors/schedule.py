"""``schedule`` source: clock ticks as events.

```toml
[sources.nightly]
kind = "schedule"
cron = "0 2 * * *"          # 5 fields, or instead: every = "15m"
timezone = "Europe/Berlin"  # IANA name, default "UTC"
catchup = "latest"          # none | latest | all: missed ticks after downtime
max_catchup = 1000          # the most ticks "all" fires at once
# start_at = 2026-01-01T09:00:00   (with `every`: the first tick and the grid's anchor)
```

Each tick is one event with the id ``"{source}:{tick in UTC}"``, e.g.
``nightly:2026-03-30T00:00:00Z``, and data:

================  ==================================================================
``tick``          the tick in the configured zone, ISO 8601 (``2026-03-30T02:00:00+02:00``)
``tick_utc``      the same instant in UTC (``2026-03-30T00:00:00Z``)
``scheduled_for`` the same instant in seconds since the epoch (compare ``event.received_at``)
``late_by_s``     how long after the tick it was recorded (downtime, backpressure)
================  ==================================================================

The tick is recorded with the source's cursor (the tick, in UTC) in one transaction, so
after a restart no tick at or before the cursor fires again; the id is a second guard.
Several daemons on one database with the same schedule each record every tick, under the
same id: intake claims it in the commit, so the first records it with its run and the
others answer ``duplicate`` (a tick fires once in the cluster).

When it ticks:

* ``cron``: in the configured zone, by croniter with zone-aware times. A local time that
  does not exist (clocks go forward) fires once, at the end of the gap: ``30 2 * * *`` in
  Europe/Berlin fires at 03:00 CEST on 2026-03-29 (croniter's choice). A local time that
  happens twice (clocks go back) fires once, at its first occurrence, unless the hour
  field covers every hour (``*/15 * * * *``): those follow real time and fire in both
  (as vixie cron does).
* ``every``: fixed elapsed time, ``anchor + k * every``. The anchor is ``start_at`` (a
  naive one is in the zone; nothing fires before it) or midnight on 1 January 1970 in the
  zone (at its offset then), so ``every = "1h"`` in Asia/Kolkata ticks on the local hour.
  Elapsed time does not follow DST: ``every = "1d"`` moves by an hour of wall time across
  a change; use ``cron`` for wall-clock times.

Missed ticks: on the first start (no cursor) nothing in the past fires. On a restart, the
ticks after the cursor up to now were missed: ``none`` skips them all, ``latest`` fires
the most recent, ``all`` fires every one in order (the newest ``max_catchup``; dropping
older ones is logged). With ``none`` the cursor stays where it was until the next tick
fires: intake commits a cursor only with events, and skipped ticks are skipped again on
another restart anyway. While running, when several ticks are due at once (a suspended
machine, a wall-clock jump, a long wait for backpressure), the most recent fires under
every policy and the earlier ones are missed: ``all`` fires them first, ``none`` and
``latest`` skip them (logged).

Before recording a tick the source waits until the daemon takes events: a late tick is
late, not lost.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
from croniter import CroniterBadDateError, CroniterError, croniter  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cued.daemon.sdk import ConnectorError, Duration, Event

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from anyio.abc import TaskStatus

    from cued.daemon.sdk import SourceContext

__all__ = ["Schedule", "ScheduleConfig", "ScheduleSource", "tick_iso"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# Where a cron expression is tried at validation, to find one that never fires (30 Feb)
_PROBE_FROM = datetime(2000, 1, 1, tzinfo=UTC)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # ValueError: a name that is not a key at all ("../x", an absolute path)
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None


class ScheduleConfig(BaseModel):
    """Keys of a ``[sources.NAME]`` table with ``kind = "schedule"``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cron: str | None = None
    """A 5-field cron expression (minute hour day month weekday), in ``timezone``."""
    every: Duration | None = None
    """A fixed interval (``"15m"``, ``"300ms"``) instead of ``cron``."""
    timezone: str = "UTC"
    catchup: Literal["none", "latest", "all"] = "latest"
    max_catchup: int = Field(1000, ge=1)
    start_at: datetime | None = None
    """With ``every``: the first tick, and the anchor of the interval grid."""

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        fields = value.split()
        if len(fields) != 5:
            raise ValueError(
                f"a cron expression has 5 fields (minute hour day month weekday), "
                f"got {len(fields)} in {value!r}"
            )
        try:
            croniter(value, _PROBE_FROM).get_next(datetime)
        except CroniterBadDateError:
            raise ValueError(f"cron expression {value!r} never fires") from None
        except CroniterError as exc:
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        return " ".join(fields)

    @field_validator("every")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and round(value * 1_000_000) < 1:
            raise ValueError(f"every must be longer than zero, got {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        _zone(value)
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> ScheduleConfig:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give either cron or every (exactly one)")
        if self.start_at is not None and self.every is None:
            raise ValueError("start_at goes with every (a cron expression has its own times)")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)

    def describe(self) -> str:
        """``cron 0 2 * * *`` or ``every 900s``: what the schedule is, for logs and meta."""
        return f"cron {self.cron}" if self.cron is not None else f"every {self.every:g}s"


def tick_iso(tick: datetime) -> str:
    """A tick in UTC as ISO 8601 with ``Z``: the cursor and the end of the event id.

    Part of the ids already recorded, so it must not change.
    """
    return tick.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _to_us(moment: datetime) -> int:
    return (moment - _EPOCH) // _US


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class Schedule:
    """When a schedule ticks: pure functions of its config, no I/O, no clock.

    Times in are zone-aware datetimes (any zone); ticks out are in UTC. (Aware datetimes
    with the *same* zone compare by wall time, ignoring ``fold``: wrong in the repeated hour
    when clocks go back, hence UTC throughout.)
    """

    def __init__(self, config: ScheduleConfig) -> None:
        self.config = config
        self.zone = config.zone
        self._cron = config.cron
        if config.cron is not None:
            hours = croniter(config.cron).expanded[1]
            self._every_hour = hours == ["*"] or len(hours) == 24
        else:
            assert config.every is not None  # the config's validator ensures it
            self._step_us = round(config.every * 1_000_000)
            start = config.start_at
            if start is not None and start.tzinfo is None:
                start = start.replace(tzinfo=self.zone)
            self._first_k = 0 if start is not None else None
            self._anchor_us = _to_us(start or datetime(1970, 1, 1, tzinfo=self.zone))

    def next_after(self, after: datetime) -> datetime:
        """The first tick strictly after ``after``.

        :raises ConnectorError: if the cron expression fires no more (within croniter's
            search range)
        """
        if self._cron is None:
            k = (_to_us(after) - self._anchor_us) // self._step_us + 1
            if self._first_k is not None:
                k = max(k, self._first_k)
            return _from_us(self._anchor_us + k * self._step_us)
        it = croniter(self._cron, after.astimezone(self.zone))
        while True:
            try:
                tick: datetime = it.get_next(datetime).astimezone(UTC)
            except CroniterBadDateError:
                raise ConnectorError(
                    f"cron expression {self._cron!r} fires no more after {tick_iso(after)}"
                ) from None
            if self._keeps(tick):
                return tick

    def recent(self, after: datetime, until: datetime, limit: int) -> tuple[list[datetime], bool]:
        """The newest ``limit`` ticks in ``(after, until]``, oldest first, and whether older
        ones in that span were left out.

        Bounded work however long the span: a year of downtime under ``every = "10ms"``
        costs no more than a minute of it.
        """
        if self._cron is None:
            hi = (_to_us(until) - self._anchor_us) // self._step_us
            lo = (_to_us(after) - self._anchor_us) // self._step_us + 1
            if self._first_k is not None:
                lo = max(lo, self._first_k)
            if hi < lo:
                return [], False
            first = max(lo, hi - limit + 1)
            ticks = [_from_us(self._anchor_us + k * self._step_us) for k in range(first, hi + 1)]
            return ticks, first > lo
        # get_prev is strictly before its start: start just after ``until`` to include it
        it = croniter(self._cron, (until + _US).astimezone(self.zone))
        newest_first: list[datetime] = []
        while True:
            try:
                tick: datetime = it.get_prev(datetime).astimezone(UTC)
            except CroniterBadDateError:  # none earlier within croniter's search range
                return newest_first[::-1], False
            if tick <= after:
                return newest_first[::-1], False
            if not self._keeps(tick):
                continue
            if len(newest_first) == limit:
                return newest_first[::-1], True
            newest_first.append(tick)

    def _keeps(self, tick: datetime) -> bool:
        """False for the second occurrence of a repeated local time (clocks went back),
        unless the expression fires every hour."""
        return self._every_hour or tick.astimezone(self.zone).fold == 0


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ScheduleSource:
    """Fires the ticks of one schedule as events."""

    kind: ClassVar[str] = "schedule"
    Config: ClassVar[type[BaseModel]] = ScheduleConfig

    clock: ClassVar[Callable[[], datetime]] = staticmethod(_utc_now)
    """The wall clock (zone-aware). The daemon builds sources itself, so tests replace this
    class attribute (or pass ``clock=``) to see a clock of their choosing."""
    max_sleep_s: ClassVar[float] = 30.0
    """The longest sleep before the clock is read again: a sleep runs on the monotonic
    clock, which knows nothing of wall-clock jumps or a suspended machine, so a tick is
    never later than this for those reasons."""

    def __init__(
        self,
        config: ScheduleConfig,
        ctx: SourceContext,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.schedule = Schedule(config)
        self._clock = clock or type(self).clock

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    @classmethod
    async def backfill(
        cls,
        config: ScheduleConfig,
        source: str,
        start: datetime,
        end: datetime,
        *,
        at: datetime,
        limit: int,
        base_dir: Path | None = None,
    ) -> list[tuple[datetime, Event]]:
        """The ticks of ``[start, end)`` as events, oldest first, with the ids the live
        source gives them (``cued backfill``: a tick recorded already starts nothing again).

        :raises ConnectorError: if there are more than ``limit``
        """
        ticks, more = Schedule(config).recent(start - _US, end - _US, limit)
        if more:
            raise ConnectorError(
                f"more than {limit} ticks of {config.describe()} between {tick_iso(start)} "
                f"and {tick_iso(end)}: backfill a shorter span at a time"
            )
        meta = {"schedule": config.describe(), "timezone": config.timezone, "backfill": True}
        return [(t, _tick_event(source, t, config.zone, at, meta)) for t in ticks]

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        log = self.ctx.log
        cursor = await self._read_cursor()
        task_status.started()
        log.info(
            "schedule_started",
            schedule=self.config.describe(),
            timezone=self.config.timezone,
            catchup=self.config.catchup,
            cursor=tick_iso(cursor) if cursor is not None else None,
        )
        if cursor is None:
            after = self._now()  # first start: nothing in the past fires
        else:
            if cursor > (now := self._now()):
                log.warning(
                    "schedule_cursor_ahead_of_clock",
                    cursor=tick_iso(cursor),
                    now=tick_iso(now),
                    note="no tick fires until the clock passes the cursor",
                )
            after = await self._fire_due(cursor, restarting=True)
        while True:
            await self._sleep_until(self.schedule.next_after(after))
            after = await self._fire_due(after, restarting=False)

    async def _read_cursor(self) -> datetime | None:
        text = await self.ctx.intake.cursor(self.ctx.source)
        if text is None:
            return None
        try:
            cursor = datetime.fromisoformat(text)
        except ValueError:
            cursor = None
        if cursor is None or cursor.tzinfo is None:
            self.ctx.log.warning(
                "schedule_cursor_unreadable", cursor=text, note="starting as if for the first time"
            )
            return None
        return cursor.astimezone(UTC)

    async def _sleep_until(self, deadline: datetime) -> None:
        # a wall-clock deadline, read again after each sleep: no event to wait for
        while (remaining_s := (deadline - self._now()).total_seconds()) > 0:  # noqa: ASYNC110
            await anyio.sleep(min(remaining_s, self.max_sleep_s))

    async def _fire_due(self, after: datetime, *, restarting: bool) -> datetime:
        """Fire what is due in ``(after, now]`` as ``catchup`` says; return the new lower
        bound for the next tick.

        :param restarting: every due tick was missed while the daemon was down; otherwise
            the most recent one is the current tick and fires whatever the policy
        """
        policy = self.config.catchup
        now = self._now()
        limit = self.config.max_catchup if policy == "all" else 1
        due, truncated = self.schedule.recent(after, now, limit)
        if not due:
            return after
        log = self.ctx.log.bind(policy=policy, since=tick_iso(after))
        if restarting and policy == "none":
            log.info("schedule_missed_ticks_skipped", until=tick_iso(due[-1]))
            return now
        if truncated and policy == "all":
            log.warning(
                "schedule_catchup_truncated",
                max_catchup=self.config.max_catchup,
                oldest_fired=tick_iso(due[0]),
                note="older missed ticks are dropped",
            )
        elif truncated:  # "none" or "latest": older ones were left out of ``due``
            log.info("schedule_missed_ticks_skipped", firing_only=tick_iso(due[-1]))
        for tick in due:
            await self._fire(tick, catchup=restarting or tick != due[-1])
        return due[-1]

    async def _fire(self, tick: datetime, *, catchup: bool) -> None:
        await self.ctx.intake.wait_accepting()
        event = _tick_event(
            self.ctx.source, tick, self.schedule.zone, self._now(), self._meta(catchup)
        )
        (receipt,) = await self.ctx.intake.record([event], cursor=tick_iso(tick))
        self.ctx.log.debug(
            "schedule_tick",
            tick=event.data["tick_utc"],
            status=receipt.status,
            late_by_s=event.data["late_by_s"],
        )

    def _meta(self, catchup: bool) -> dict[str, Any]:
        return {
            "schedule": self.config.describe(),
            "timezone": self.config.timezone,
            "catchup": catchup,
        }


def _tick_event(
    source: str, tick: datetime, zone: ZoneInfo, now: datetime, meta: dict[str, Any]
) -> Event:
    """A tick as an event; its id is ``{source}:{tick in UTC}``, for live and backfilled
    ticks alike."""
    iso = tick_iso(tick)
    return Event(
        source=source,
        event_id=f"{source}:{iso}",
        data={
            "tick": tick.astimezone(zone).isoformat(),
            "tick_utc": iso,
            "scheduled_for": tick.timestamp(),
            "late_by_s": round(max(0.0, (now - tick).total_seconds()), 6),
        },
        meta=meta,
        received_at=now.timestamp(),
    )
