"""A trigger tried on stored events (``cued triggers test``), on a real SQLite file: what
would match and with what inputs, what would not and why, a misspelt field named, and
nothing started."""

from __future__ import annotations

import pytest

from cued.daemon.assembly import open_state
from cued.daemon.core.ids import now
from cued.daemon.errors import InvalidRequest, NotFound
from cued.daemon.ops.trials import try_trigger
from cued.daemon.store import DedupeRow, EventRow

CONFIG = """
[daemon]
state = "state.db"

[pipelines.ship.inputs]
order = 0
[pipelines.ship.tasks.go]
kind = "sleep"

[sources.orders]
kind = "webhook"
path = "/orders"
[sources.other]
kind = "webhook"
path = "/other"

[[triggers]]
name = "big-orders"
source = "orders"
pipeline = "ship"
when = "event.data.total > 100"
inputs = { order = "{{ event.data.id }}" }
dedupe = "order-{{ event.data.id }}"

[[triggers]]
source = "orders"
pipeline = "ship"
when = "event.data.stauts == 'paid'"

[[triggers]]
source = "other"
pipeline = "ship"

[[triggers]]
source = "other"
pipeline = "ship"
"""

EVENTS = [
    EventRow("e-1", "orders", 1.0, "matched", {"id": 1, "total": 500, "status": "paid"}, {}),
    EventRow("e-2", "orders", 2.0, "unmatched", {"id": 2, "total": 5, "status": "paid"}, {}),
    EventRow("e-3", "orders", 3.0, "unmatched", {"id": 3, "total": "lots"}, {}),
    EventRow("e-4", "orders", 4.0, "invalid", "not json", {}, error="body is not valid JSON"),
    EventRow("o-1", "other", 5.0, "matched", {}, {}),
]


async def test_a_trigger_tried_on_the_events_of_its_source(make_config):
    config = make_config(CONFIG)
    async with open_state(config) as state:
        await state.store.submit(EVENTS).wait()
        tried = await try_trigger(state.queries, "big-orders")
        runs = await state.queries.runs_page(limit=10)
    assert tried.number == 1
    assert tried.trigger.ref == "big-orders"
    outcomes = {t.event.event_id: t for t in tried.trials}
    assert [t.event.event_id for t in tried.trials] == ["e-4", "e-3", "e-2", "e-1"]  # newest first
    assert outcomes["e-1"].outcome == "matches"
    assert outcomes["e-1"].inputs == {"order": 1}
    assert outcomes["e-1"].dedupe_key == "order-1"
    assert outcomes["e-2"].outcome == "no match"
    assert outcomes["e-3"].outcome == "error"
    assert "'>' not supported" in (outcomes["e-3"].error or "")
    assert outcomes["e-4"].outcome == "invalid"
    assert tried.missing_fields == []
    assert runs.items == []  # nothing started


async def test_a_field_no_event_has_is_named(make_config):
    config = make_config(CONFIG)
    async with open_state(config) as state:
        await state.store.submit(EVENTS).wait()
        tried = await try_trigger(state.queries, "orders->ship")
    assert tried.number == 2
    assert tried.missing_fields == ["event.data.stauts"]


async def test_the_last_n_or_one_event(make_config):
    config = make_config(CONFIG)
    async with open_state(config) as state:
        await state.store.submit(EVENTS).wait()
        last = await try_trigger(state.queries, "1", last=2)
        one = await try_trigger(state.queries, "big-orders", event_id="e-1")
        with pytest.raises(InvalidRequest, match="event 'o-1' is of source 'other'"):
            await try_trigger(state.queries, "big-orders", event_id="o-1")
        with pytest.raises(NotFound, match="no event 'e-9'"):
            await try_trigger(state.queries, "big-orders", event_id="e-9")
        with pytest.raises(InvalidRequest, match="--last 0"):
            await try_trigger(state.queries, "big-orders", last=0)
    assert [t.event.event_id for t in last.trials] == ["e-4", "e-3"]
    assert [(t.event.event_id, t.outcome) for t in one.trials] == [("e-1", "matches")]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        pytest.param("nope", "no trigger 'nope' (known: 1: big-orders, 2: orders->ship", id="name"),
        pytest.param("5", "no trigger '5'", id="number-past-the-end"),
        pytest.param("0", "no trigger '0'", id="number-zero"),
        pytest.param("other->ship", "2 triggers are 'other->ship' (numbers 3, 4)", id="twice"),
        pytest.param("\u00b9", "no trigger '\u00b9'", id="a-digit-to-isdigit-not-to-int"),
        pytest.param("9" * 5000, "no trigger '999", id="more-digits-than-int-takes"),
    ],
)
async def test_a_trigger_not_found_is_named(make_config, ref, message):
    config = make_config(CONFIG)
    async with open_state(config) as state:
        with pytest.raises(NotFound) as caught:
            await try_trigger(state.queries, ref)
    assert str(caught.value).startswith(message)


async def test_a_match_whose_dedupe_key_started_a_run_within_its_window_is_marked(make_config):
    config = make_config(CONFIG)
    seen_at = now()
    async with open_state(config) as state:
        await state.store.submit(
            [
                *EVENTS,
                EventRow("e-5", "orders", 6.0, "matched", {"id": 5, "total": 900}, {}),
                # order 1's key started a run just now; order 5's a window (1 day) ago
                DedupeRow("big-orders", "order-1", seen_at),
                DedupeRow("big-orders", "order-5", seen_at - 86_401),
            ]
        ).wait()
        tried = await try_trigger(state.queries, "big-orders")
    outcomes = {t.event.event_id: t for t in tried.trials}
    assert outcomes["e-1"].key_seen_at == seen_at
    assert outcomes["e-5"].outcome == "matches"
    assert outcomes["e-5"].key_seen_at is None
    assert all(outcomes[e].key_seen_at is None for e in ("e-2", "e-3", "e-4"))
