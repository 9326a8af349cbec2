"""The times replay and backfill take (ISO 8601, ``now``, ``-1h``) and the span a schedule
backfills: any text either reads as an instant from 1970 on or is refused with an error
that names the argument and the forms; the ticks of ``[from, to)`` are exactly those."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from functools import partial

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.connectors.schedule import ScheduleConfig, ScheduleSource
from cued.daemon.config.moments import parse_moment, parse_span
from cued.daemon.sdk import ConnectorError

AT = datetime(2026, 3, 30, 12, 0, tzinfo=UTC).timestamp()


@given(st.text())
def test_any_text_is_an_instant_or_refused_by_name(text):
    try:
        moment: float | None = parse_moment(text, AT, name="--since")
        problem = ""
    except ValueError as exc:
        moment, problem = None, str(exc)
    if moment is None:
        assert problem.startswith("--since ")
    else:
        assert 0 <= moment < datetime(9999, 1, 1, tzinfo=UTC).timestamp()


@given(st.text(), st.text())
def test_any_two_texts_are_a_span_or_refused(start, end):
    try:
        lo, hi = parse_span(start, end, AT)
        problem = ""
    except ValueError as exc:
        lo = hi = None
        problem = str(exc)
    if problem:
        assert problem.startswith(("--since ", "--until "))
    else:
        assert lo is not None
        assert hi is not None
        assert lo < hi


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1)))
def test_iso_8601_reads_as_its_instant_and_no_offset_means_utc(moment):
    aware = moment.replace(tzinfo=UTC)
    assert parse_moment(moment.isoformat(), AT) == aware.timestamp()
    assert parse_moment(aware.isoformat().replace("+00:00", "Z"), AT) == aware.timestamp()
    east = aware.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert parse_moment(east, AT) == aware.timestamp()


@given(st.integers(min_value=0, max_value=10_000), st.sampled_from(["s", "m", "h", "d"]))
def test_a_time_ago_is_counted_back_from_now(n, unit):
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit] * n
    assert parse_moment(f"-{n}{unit}", AT) == AT - seconds
    assert parse_moment(" now ", AT) == AT


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("yesterday", "--since 'yesterday' is not a time: give ISO 8601"),
        ("-", "--since '-' is not a time"),
        ("-1x", "--since '-1x' is not a time"),
        ("-100000d", "--since '-100000d' is out of range (1970 to 9998)"),
        ("1969-12-31T00:00:00Z", "--since '1969-12-31T00:00:00Z' is out of range"),
        ("0001-01-01T00:00:00+01:00", "--since '0001-01-01T00:00:00+01:00' is "),
    ],
)
def test_what_is_refused_and_why(text, error):
    with pytest.raises(ValueError, match="^" + re.escape(error)):
        parse_moment(text, AT, name="--since")


def test_an_empty_or_backward_span_is_refused():
    with pytest.raises(ValueError, match="is not before --until '-2h': the span is empty"):
        parse_span("-1h", "-2h", AT)
    with pytest.raises(ValueError, match="the span is empty"):
        parse_span("now", "now", AT)
    assert parse_span(None, None, AT) == (None, None)


def ticks(keys: dict[str, object], start: str, end: str, limit: int = 1000) -> list[str]:
    events = anyio.run(
        partial(
            ScheduleSource.backfill,
            ScheduleConfig.model_validate(keys),
            "s",
            datetime.fromisoformat(start),
            datetime.fromisoformat(end),
            at=datetime(2026, 3, 30, tzinfo=UTC),
            limit=limit,
        )
    )
    return [e.event_id for _, e in events]


def test_a_backfill_span_holds_its_start_and_not_its_end():
    every = {"every": "1h"}
    assert ticks(every, "2026-01-01T00:00:00+00:00", "2026-01-01T03:00:00+00:00") == [
        "s:2026-01-01T00:00:00Z",
        "s:2026-01-01T01:00:00Z",
        "s:2026-01-01T02:00:00Z",
    ]
    assert ticks(every, "2026-01-01T00:00:01+00:00", "2026-01-01T01:00:00+00:00") == []
    cron = {"cron": "30 2 * * *", "timezone": "Europe/Berlin"}
    # 02:30 does not exist on 2026-03-29 in Berlin: croniter fires at 03:00 CEST
    assert ticks(cron, "2026-03-28T00:00:00+00:00", "2026-03-30T00:00:00+00:00") == [
        "s:2026-03-28T01:30:00Z",
        "s:2026-03-29T01:00:00Z",
    ]


def test_a_backfill_of_more_ticks_than_its_limit_is_refused_whole():
    with pytest.raises(ConnectorError, match="more than 10 ticks of every 60s"):
        ticks({"every": "1m"}, "2026-01-01T00:00:00+00:00", "2026-01-01T01:00:00+00:00", 10)
    assert (
        len(ticks({"every": "1m"}, "2026-01-01T00:00:00+00:00", "2026-01-01T00:10:00+00:00", 10))
        == 10
    )
