"""An event is recorded once however many daemons record it (``EventClaim``), the same on
SQLite and on PostgreSQL: a claimed event already stored is written neither it nor its
runs, and the commit names it a duplicate; two stores on one database claiming the same
events at once record each once, with its runs, and never deadlock."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import anyio

from cued.daemon.assembly import open_runner
from cued.daemon.core.ids import new_id
from cued.daemon.runtime.intake import DaemonIntake
from cued.daemon.sdk.sources import Event
from cued.daemon.store import CursorRow, DedupeRow, EventClaim, EventRow, RunRow
from tests.support.stores import keeping_state_in

if TYPE_CHECKING:
    from collections.abc import Callable

    from cued.daemon.sdk.sources import Receipt
    from cued.daemon.store import Durable, Row
    from tests.support.stores import StoreAt

T0 = 1_800_000_000.0


def event(event_id: str, status: str = "matched") -> EventRow:
    return EventRow(event_id, "src", T0, status, {"id": event_id}, {})


def run_of(event_id: str) -> RunRow:
    return RunRow(new_id(), "p", "queued", {}, T0, event_id=event_id)


async def test_a_claimed_event_stored_already_writes_neither_it_nor_its_runs(store_at: StoreAt):
    first, other = run_of("e1"), run_of("e2")
    committed: list[object] = []
    async with store_at.open() as store:
        done = store.submit([EventClaim("e1"), event("e1"), first])
        await done.wait()
        assert done.duplicates == set()
        store.on_commit(lambda _, rows: committed.extend(rows))
        again, later = run_of("e1"), run_of("e1")
        cursor = CursorRow("src", "c2", T0)
        done = store.submit(
            [
                EventClaim("e1"),
                event("e1", "unmatched"),
                again,
                later,
                cursor,
                EventClaim("e2"),
                event("e2"),
                other,
            ]
        )
        await done.wait()
        assert done.duplicates == {"e1"}
        runs = await store.list_runs()
        (stored,) = await store.get_events(["e1"])
        cursor_now = await store.get_cursor("src")
    assert {r.run_id for r in runs} == {first.run_id, other.run_id}
    assert stored == event("e1")  # as first recorded
    assert cursor_now == "c2"  # the rest of the commit is written
    assert again not in committed
    assert event("e1", "unmatched") not in committed
    assert other in committed
    assert event("e2") in committed


async def test_an_event_row_without_a_claim_is_written_over_as_before(store_at: StoreAt):
    async with store_at.open() as store:
        await store.submit([EventClaim("e1"), event("e1")]).wait()
        done = store.submit([event("e1", "unmatched")])  # as a replay updates it
        await done.wait()
        assert done.duplicates == set()
        assert await store.get_events(["e1"]) == [event("e1", "unmatched")]


async def test_two_stores_on_one_database_claiming_the_same_events_record_each_once(
    store_at: StoreAt,
):
    ids = [f"tick-{n:03d}" for n in range(120)]
    taken: dict[str, list[str]] = {"a": [], "b": []}

    async def record(name: str, seed: int) -> None:
        order = random.Random(seed)
        async with store_at.open() as store:
            pending = list(ids)
            while pending:
                size = order.randint(1, 12)
                chunk, pending = pending[:size], pending[size:]
                order.shuffle(chunk)  # each daemon submits them in an order of its own
                rows: list[object] = [DedupeRow("t", "k", T0), CursorRow("src", chunk[0], T0)]
                for event_id in chunk:
                    rows += [EventClaim(event_id), event(event_id), run_of(event_id)]
                done = store.submit(rows)  # type: ignore[arg-type]
                await done.wait()
                taken[name] += [i for i in chunk if i not in done.duplicates]

    async with store_at.open():
        pass  # made (migrated) before both open it
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(record, "a", 1)
            tg.start_soon(record, "b", 2)
    async with store_at.open() as store:
        runs = await store.list_runs(limit=10_000)
        events = await store.list_events(limit=10_000)
    assert sorted(taken["a"] + taken["b"]) == ids  # each taken by exactly one of them
    assert sorted(e.event_id for e in events) == ids
    assert sorted(r.event_id or "" for r in runs) == ids  # one run each, of the taker


async def test_intake_claims_events_only_where_other_daemons_record_too(store_at, make_config):
    """PostgreSQL (several daemons): each new event is claimed in its commit; SQLite (one
    daemon per file): not, and a redelivery is still told apart, by intake's own check."""
    config = keeping_state_in(make_config, store_at)(
        '[sources.hook]\nkind = "webhook"\npath = "/hook"\n'
    )
    submitted: list[object] = []
    async with open_runner(config) as runner, anyio.create_task_group() as tg:
        submit = runner.store.submit

        def noting(rows: list[Row]) -> Durable:  # what intake asks the store to commit
            submitted.extend(rows)
            return submit(rows)

        runner.store.submit = noting  # type: ignore[method-assign]
        intake = DaemonIntake(runner.config, runner.store, runner.backlog)
        await tg.start(intake.run, runner)
        first = await intake.record([Event("hook", "e-1", {"n": 1})])
        again = await intake.record([Event("hook", "e-1", {"n": 1}), Event("hook", "e-2", 2)])
        events = await runner.store.list_events()
        tg.cancel_scope.cancel()
    assert [r.status for r in first] == ["unmatched"]
    assert [r.status for r in again] == ["duplicate", "unmatched"]
    assert sorted(e.event_id for e in events) == ["e-1", "e-2"]
    claims = sorted(r.event_id for r in submitted if isinstance(r, EventClaim))
    assert claims == (["e-1", "e-2"] if store_at.kind == "postgresql" else [])


class _Held:
    """A commit that begins only once ``release`` is set: holds a batch's events in flight."""

    def __init__(self, submit: Callable[[], Durable], release: anyio.Event) -> None:
        self._submit, self._release = submit, release
        self._durable: Durable | None = None

    async def wait(self) -> None:
        await self._release.wait()
        self._durable = self._submit()
        await self._durable.wait()

    @property
    def duplicates(self) -> set[str]:
        assert self._durable is not None
        return self._durable.duplicates

    @property
    def deduped(self) -> set[str]:
        assert self._durable is not None
        return self._durable.deduped


async def test_a_copy_that_comes_while_its_first_commits_is_a_duplicate(store_at, make_config):
    """The copy's read of known ids begins before its first commits and ends after: the
    first is in neither the store's answer nor, by then, among the ids in flight. Intake
    takes the ids in flight before it reads, so it finds the first there."""
    config = keeping_state_in(make_config, store_at)(
        '[sources.hook]\nkind = "webhook"\npath = "/hook"\n'
    )
    release, in_flight, first_done = anyio.Event(), anyio.Event(), anyio.Event()
    first: list[Receipt] = []
    async with open_runner(config) as runner, anyio.create_task_group() as tg:
        submit, known_events = runner.store.submit, runner.store.known_events
        intake = DaemonIntake(runner.config, runner.store, runner.backlog)

        def held(rows: list[Row]) -> Durable:
            in_flight.set()
            return _Held(lambda: submit(rows), release)  # type: ignore[return-value]

        async def read_across_the_commit(ids: list[str]) -> set[str]:
            found = await known_events(ids)
            release.set()  # the first commits now, while this read is out
            await first_done.wait()  # and has left the ids in flight
            return found

        async def record_first() -> None:
            first.extend(await intake.record([Event("hook", "e-1", {"n": 1})]))
            first_done.set()

        await tg.start(intake.run, runner)
        runner.store.submit = held  # type: ignore[method-assign]
        tg.start_soon(record_first)
        with anyio.fail_after(30):
            await in_flight.wait()
            runner.store.submit = submit  # type: ignore[method-assign]
            runner.store.known_events = read_across_the_commit  # type: ignore[method-assign]
            again = await intake.record([Event("hook", "e-1", {"n": 1})])
        tg.cancel_scope.cancel()
    assert [r.status for r in first] == ["unmatched"]
    assert [r.status for r in again] == ["duplicate"]
