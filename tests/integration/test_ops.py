"""The application surface (daemon/ops) on a real SQLite file: a run's detail, pages of
runs and events with their one cursor format, counts by state, and the commands, whose
refusals of what a run's or gate's state does not allow now are a Conflict."""

from __future__ import annotations

import anyio
import pytest

from cued.daemon.assembly import open_runner, open_state
from cued.daemon.config.state import StateSettings, read_state_settings
from cued.daemon.core.assets import asset_event_id, asset_of, asset_source
from cued.daemon.core.ids import id_at, new_id
from cued.daemon.core.untrusted import page_position
from cued.daemon.errors import Conflict, CuedError, InvalidRequest, NotFound
from cued.daemon.ops import commands
from cued.daemon.ops.queries import Load, Queries, load
from cued.daemon.reading import open_reads
from cued.daemon.store import (
    ApprovalRow,
    AttemptRow,
    DecisionRow,
    EventRow,
    InstanceRow,
    RunRow,
)
from tests.support.flood import until
from tests.support.stores import keeping_state_in


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


CONFIG = """
[daemon]
state = "state.db"

[pipelines.etl.tasks.extract]
kind = "sleep"
[pipelines.etl.tasks.load]
kind = "sleep"
needs = ["extract"]
produces = ["sales"]

[pipelines.slow.tasks.wait]
kind = "sleep"
seconds = 60

[pipelines.gated.tasks.gate]
kind = "approval"
message = "Ship it?"
approvers = ["anna", "olga"]
"""


def run_id_at(seconds: float) -> str:
    return id_at(seconds)[:10] + new_id()[10:]


async def test_a_run_detail_has_everything_recorded_about_the_run(make_config):
    config = make_config(CONFIG)
    run_id = run_id_at(100.0)
    rows = [
        RunRow(run_id, "etl", "succeeded", {"day": 1}, 100.0, 101.0, 110.0, None, "e-1"),
        InstanceRow(run_id, "extract", "extract", None, "succeeded", 2, None, 104.0),
        InstanceRow(run_id, "load", "load", None, "succeeded", 1, None, 109.0),
        AttemptRow(run_id, "extract", 2, "succeeded", 103.0, 104.0),
        AttemptRow(run_id, "extract", 1, "failed", 101.0, 102.0, error="boom"),
        AttemptRow(run_id, "load", 1, "succeeded", 105.0, 109.0, cost=0.5),
        ApprovalRow(run_id, "load", 1, "Load?", ("anna",), 1, "fail", None, 104.5, None, "approved"),
        DecisionRow(run_id, "load", 1, "anna", "approve", None, "ok", 104.8),
        DecisionRow(run_id, "load", 0, "otto", "reject", None, "an older attempt", 90.0),
        EventRow("e-1", "orders", 99.0, "matched", {"id": 1}, {}, (run_id,)),
        EventRow(asset_event_id("sales", run_id), asset_source("sales"), 110.0, "matched",
                 {"run_id": run_id, "task": "load"}, {}, ("r-next",)),
    ]  # fmt: skip
    async with open_state(config) as state:
        await state.store.submit(rows).wait()
        detail = await state.queries.run_detail(run_id)
        missing = await state.queries.run_detail("r-missing")
    assert missing is None
    assert detail is not None
    assert detail.run == rows[0]
    assert [i.key for i in detail.instances] == ["extract", "load"]
    assert [(a.key, a.attempt) for a in detail.attempts] == [
        ("extract", 1),
        ("extract", 2),
        ("load", 1),
    ]
    assert [a.attempt for a in detail.attempts_of("extract")] == [1, 2]
    (gate,) = detail.gates
    assert gate.gate.key == "load"
    assert [d.who for d in gate.decisions] == ["anna"]  # of the gate's current attempt
    assert detail.event is not None
    assert detail.event.event_id == "e-1"
    (asset,) = detail.assets
    assert (asset.asset, asset.task) == ("sales", "load")
    assert asset.event.event_id == f"asset:sales:{run_id}"
    assert asset.event.run_ids == ("r-next",)


async def test_reads_that_know_only_where_the_state_is_answer_without_the_configuration(
    tmp_path, make_config
):
    # the CLI's `cued runs` and `cued show`: the state file opened from the [daemon] table
    # alone, no configuration loaded; a read that needs one says so instead of guessing
    config = make_config(CONFIG)
    run_id = run_id_at(100.0)
    rows = [
        RunRow(run_id, "etl", "succeeded", {}, 100.0, 101.0, 110.0),
        InstanceRow(run_id, "load", "load", None, "succeeded", 1, None, 109.0),
        AttemptRow(run_id, "load", 1, "succeeded", 105.0, 109.0),
        EventRow(asset_event_id("sales", run_id), asset_source("sales"), 110.0, "matched",
                 {"run_id": run_id, "task": "load"}, {}, ()),
    ]  # fmt: skip
    async with open_state(config) as state:
        await state.store.submit(rows).wait()
    assert config.text is not None
    (tmp_path / "config.toml").write_text(config.text)
    settings = read_state_settings(tmp_path / "config.toml")
    assert settings == StateSettings(config.state_location(), "full", "info")
    async with open_reads(settings) as queries:
        detail = await queries.run_detail(run_id, assets=False)
        page = await queries.runs_page(limit=10)
        with pytest.raises(CuedError, match="needs the configuration"):
            await queries.run_detail(run_id)  # its assets: the pipeline's plan says which
        with pytest.raises(CuedError, match="needs the configuration"):
            await queries.assets()
    assert detail is not None
    assert (detail.run, detail.instances, detail.assets) == (rows[0], [rows[1]], [])
    assert [r.run_id for r in page.items] == [run_id]


async def test_a_run_whose_event_is_no_longer_kept_has_none(make_config):
    config = make_config(CONFIG)
    run = RunRow(run_id_at(5.0), "etl", "failed", {}, 5.0, event_id="e-gone")
    async with open_state(config) as state:
        await state.store.submit([run]).wait()
        detail = await state.queries.run_detail(run.run_id)
    assert detail is not None
    assert detail.event is None
    assert detail.assets == []


async def test_runs_are_paged_newest_first_by_one_cursor_format(make_config):
    config = make_config(CONFIG)
    rows = [RunRow(run_id_at(1000.0 + i), "etl", "succeeded", {}, 1000.0 + i) for i in range(7)]
    newest_first = sorted((r.run_id for r in rows), reverse=True)
    async with open_state(config) as state:
        await state.store.submit(rows).wait()
        q = state.queries
        first = await q.runs_page(limit=3)
        assert first.next_cursor is not None
        second = await q.runs_page(limit=3, cursor=first.next_cursor)
        assert second.next_cursor is not None
        third = await q.runs_page(limit=3, cursor=second.next_cursor)
        # the cursor the API gave before this format, a bare run id, reads the same page
        legacy = await q.runs_page(limit=3, cursor=first.items[-1].run_id)
        with pytest.raises(InvalidRequest, match="is not one this API gave"):
            await q.runs_page(limit=3, cursor="zzz")
    pages = [first, second, third]
    assert [r.run_id for p in pages for r in p.items] == newest_first
    assert third.next_cursor is None
    last = first.items[-1]
    assert page_position(first.next_cursor) == (last.created_at, last.run_id)
    assert legacy == second


async def test_events_are_paged_newest_first_by_the_same_cursor_format(make_config):
    config = make_config(CONFIG)
    rows = [
        EventRow(f"e-{i}", "orders" if i % 2 else "files", 50.0 + i, "unmatched", None, {})
        for i in range(6)
    ]
    async with open_state(config) as state:
        await state.store.submit(rows).wait()
        q = state.queries
        first = await q.events_page(limit=4)
        assert first.next_cursor is not None
        rest = await q.events_page(limit=4, cursor=first.next_cursor)
        orders = await q.events_page(limit=10, source="orders")
        with pytest.raises(InvalidRequest):
            await q.events_page(limit=4, cursor=first.items[-1].event_id)
    assert [e.event_id for e in first.items + rest.items] == [f"e-{i}" for i in range(5, -1, -1)]
    last = first.items[-1]
    assert page_position(first.next_cursor) == (last.received_at, last.event_id)
    assert rest.next_cursor is None
    assert [e.event_id for e in orders.items] == ["e-5", "e-3", "e-1"]


async def test_runs_are_counted_by_state_and_waiting_gates_too(make_config):
    config = make_config(CONFIG)
    states = ["queued"] * 2 + ["waiting"] * 3 + ["succeeded"] * 4 + ["failed"]
    runs = [RunRow(new_id(), "etl", s, {}, float(i)) for i, s in enumerate(states)]
    gates = [
        ApprovalRow(r.run_id, "gate", 1, "?", (), 1, "fail", None, 1.0, None, state)
        for r, state in zip(runs, ["waiting", "waiting", "approved"], strict=False)
    ]
    async with open_state(config) as state:
        empty = await state.queries.run_counts()
        await state.store.submit([*runs, *gates]).wait()
        counts = await state.queries.run_counts()
        waiting = await state.queries.waiting_count()
    assert empty == {}
    assert counts == {"queued": 2, "waiting": 3, "succeeded": 4, "failed": 1}
    assert waiting == 2


async def test_commands_refuse_what_a_runs_state_does_not_allow_now_as_a_conflict(make_config):
    config = make_config(CONFIG)
    async with open_runner(config) as daemon:
        with anyio.fail_after(20):
            done = await commands.trigger(daemon, "etl", wait=True)
            assert done.state == "succeeded"
            with pytest.raises(Conflict, match="has finished already"):
                await commands.cancel(daemon, done.run_id)
            # nothing failed: asked wrongly, not too early or late
            with pytest.raises(InvalidRequest) as wrong:
                await commands.rerun(daemon, done.run_id)
            assert not isinstance(wrong.value, Conflict)
            slow = await commands.trigger(daemon, "slow")
            with pytest.raises(Conflict, match="still running"):
                await commands.rerun(daemon, slow.run_id)
            cancelled = await commands.cancel(daemon, slow.run_id)
            with pytest.raises(NotFound):
                await commands.trigger(daemon, "nope")
    assert cancelled.state == "cancelled"


async def test_a_run_waiting_for_a_slot_is_refused_likewise(make_config):
    # the second run waits (on PostgreSQL, counted in the database for any node to
    # claim, not known here by its id): a cancel twice is a conflict all the same
    config = make_config(
        CONFIG
        + "\n[pipelines.single]\nmax_active_runs = 1\n"
        + '[pipelines.single.tasks.wait]\nkind = "sleep"\nseconds = 60\n'
    )
    async with open_runner(config) as daemon:
        with anyio.fail_after(20):
            first = await commands.trigger(daemon, "single")
            second = await commands.trigger(daemon, "single")
            with pytest.raises(Conflict, match="still running"):
                await commands.rerun(daemon, first.run_id)
            with pytest.raises(Conflict):
                await commands.rerun(daemon, second.run_id)
            # once no read of waiting runs is out: a cancel that races a claim's read of
            # the run it cancels may still be answered twice (an open race, issue 11's
            # closing note), which this test is not about
            await until(lambda: _is("single" not in daemon._loading))
            cancelled = await commands.cancel(daemon, second.run_id)
            with pytest.raises(Conflict, match="has finished already"):
                await commands.cancel(daemon, second.run_id)
            await commands.cancel(daemon, first.run_id)
    assert cancelled.state == "cancelled"


async def _is(value: bool) -> bool:
    return value


async def test_a_decision_on_a_settled_gate_is_a_conflict(make_config):
    config = make_config(CONFIG)
    async with open_runner(config) as daemon:
        with anyio.fail_after(20):
            idle = load(daemon)
            run = await commands.trigger(daemon, "gated", wait=True)
            assert run.state == "waiting"
            (waiting,) = await Queries.of(daemon).waiting_gates()
            assert (waiting.gate.run_id, waiting.gate.message) == (run.run_id, "Ship it?")
            gate = await commands.decide(
                daemon, run.run_id, "gate", who="anna", approve=True, comment="ok"
            )
            assert gate.gate.state == "approved"
            assert [(d.who, d.comment) for d in gate.decisions] == [("anna", "ok")]
            with pytest.raises(Conflict, match="settled already"):
                await commands.decide(daemon, run.run_id, "gate", who="olga", approve=False)
            assert (await commands.wait(daemon, run.run_id)).state == "succeeded"
    high, low = config.daemon.backlog_high_water, config.daemon.backlog_low_water
    assert idle == Load(0, high, low, False, 0)


async def test_prune_counts_then_deletes_what_retention_lets_go(make_config):
    config = make_config(CONFIG + '\n[retention]\nruns = "1d"\n')
    old = RunRow(new_id(), "etl", "succeeded", {}, 10.0, 10.0, 11.0)
    async with open_state(config) as state:
        await state.store.submit([old]).wait()
        dry = await commands.prune(state, dry_run=True)
        done = await commands.prune(state)
        left = await state.queries.run_detail(old.run_id)
    assert (dry["dry_run"], dry["counts"]["runs"]) == (True, 1)
    assert (done["dry_run"], done["counts"]["runs"]) == (False, 1)
    assert left is None


def test_an_asset_and_its_events_are_spelt_one_way():
    assert asset_source("sales") == "asset:sales"
    assert asset_event_id("sales", "r1") == "asset:sales:r1"
    assert asset_of("asset:sales") == "sales"
    assert asset_of("orders") is None
