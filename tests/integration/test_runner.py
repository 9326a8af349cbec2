"""The runner end to end, in process: real SQLite, real task kinds, real HTTP on loopback."""

from __future__ import annotations

import itertools

import anyio
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from cued.daemon.assembly import open_runner
from cued.daemon.errors import InvalidRequest, NotFound
from cued.daemon.store import AttemptRow, InstanceRow
from tests.support import probes
from tests.support.flood import until
from tests.support.http_server import serve_app
from tests.support.stores import keeping_state_in


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


PROBE_TASK = 'kind = "python"\nfunction = "tests.support.probes:record"\n'


def probe_pipeline(name: str, tasks: dict[str, str], *, head: str = "") -> str:
    """A pipeline of probe tasks; ``tasks`` maps a task name to its extra TOML lines."""
    text = f"[pipelines.{name}]\n{head}\n"
    for task, extra in tasks.items():
        args = "" if "args =" in extra else f'args = {{ name = "{task}" }}\n'
        text += f"[pipelines.{name}.tasks.{task}]\n{PROBE_TASK}{args}{extra}\n"
    return text


async def run_to_end(config, pipeline: str, inputs=None, timeout_s: float = 30):
    async with open_runner(config) as runner:
        with anyio.fail_after(timeout_s):
            run_id = (await runner.start_run(pipeline, inputs)).run_id
            row = await runner.wait(run_id)
        return runner, row


async def test_tasks_run_in_dependency_order_with_fan_in(make_config):
    probe = probes.reset()
    config = make_config(
        probe_pipeline(
            "p",
            {
                "a": "",
                "b": 'needs = ["a"]',
                "c": 'needs = ["a"]',
                "d": 'needs = ["b", "c"]',
            },
        )
    )
    _, row = await run_to_end(config, "p")
    assert row.state == "succeeded"
    assert probe.calls[0] == "a"
    assert set(probe.calls[1:3]) == {"b", "c"}
    assert probe.calls[3] == "d"


async def test_independent_tasks_really_run_at_once(make_config):
    # each task waits until all 100 are in flight: only true concurrency gets past that
    probe = probes.reset(barrier=100)
    config = make_config(
        "[pipelines.wide]\ninputs = { n = 100 }\n[pipelines.wide.tasks.t]\n"
        + PROBE_TASK
        + 'map = "{{ range(inputs.n) | list }}"\nargs = { name = "t{{ item }}" }\n'
    )
    _, row = await run_to_end(config, "wide", timeout_s=20)
    assert row.state == "succeeded"
    assert probe.max_in_flight == 100


async def test_global_limit_and_pools_hold_under_load(make_config):
    probe = probes.reset()
    config = make_config(
        """
[daemon]
max_running_tasks = 6
pools = { db = 2 }
[pipelines.load]
[pipelines.load.tasks.pooled]
kind = "python"
function = "tests.support.probes:record"
map = "{{ range(40) | list }}"
pool = "db"
args = { name = "pooled", hold_s = 0.005, group = "db" }
[pipelines.load.tasks.free]
kind = "python"
function = "tests.support.probes:record"
map = "{{ range(80) | list }}"
args = { name = "free", hold_s = 0.005 }
"""
    )
    _, row = await run_to_end(config, "load")
    assert row.state == "succeeded"
    assert probe.counts == {"pooled": 40, "free": 80}
    assert probe.max_in_flight == 6
    assert probe.max_by_group["db"] == 2


async def test_max_active_runs_queues_the_rest_in_the_backlog(make_config):
    probe = probes.reset()
    config = make_config(
        probe_pipeline(
            "p",
            {"only": 'args = { name = "only", group = "runs", until_released = true }'},
            head="max_active_runs = 2",
        )
    )
    async with open_runner(config) as runner:
        with anyio.fail_after(20):
            # the first two hold their slots until released: however slow the machine,
            # the other eight wait in the backlog meanwhile (on a store nodes share, a run
            # is counted waiting until its node's claim of it is read back: wait for that)
            ids = [(await runner.start_run("p")).run_id for _ in range(10)]

            async def eight_wait() -> bool:
                return runner.backlog.depth == 8 and probe.in_flight == 2

            await until(eight_wait)
            probe.released.set()
            rows = [await runner.wait(i) for i in ids]
    assert {r.state for r in rows} == {"succeeded"}
    assert probe.max_by_group["runs"] == 2
    assert runner.backlog.depth == 0


async def test_retries_back_off_then_succeed_with_the_same_idempotency_key(make_config):
    seen: list[tuple[float, str]] = []

    async def flaky(request):
        seen.append((anyio.current_time(), request.headers["idempotency-key"]))
        if len(seen) < 3:
            return JSONResponse({"error": "busy"}, 503)
        return JSONResponse({"path": "/data/x.csv"})

    app = Starlette(routes=[Route("/flaky", flaky, methods=["POST"])])
    async with serve_app(app) as base:
        config = make_config(
            f"""
[pipelines.p]
[pipelines.p.tasks.fetch]
kind = "http"
method = "POST"
url = "{base}/flaky"
retries = 3
retry_backoff = "40ms"
[pipelines.p.tasks.use]
kind = "python"
function = "tests.support.probes:record"
needs = ["fetch"]
args = {{ name = "{{{{ tasks.fetch.output.body.path }}}}" }}
"""
        )
        probe = probes.reset()
        _, row = await run_to_end(config, "p")
        async with open_runner(config) as runner:
            attempts = await runner.store.get_attempts(row.run_id)
    assert row.state == "succeeded"
    assert probe.calls == ["/data/x.csv"]
    assert len({key for _, key in seen}) == 1
    assert [a.state for a in attempts if a.key == "fetch"] == ["failed", "failed", "succeeded"]
    # exponential backoff with jitter between half and all of 40ms, then 80ms
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    assert gaps[0] >= 0.02
    assert gaps[1] >= 0.04


async def test_a_task_past_its_timeout_fails_and_downstream_is_upstream_failed(make_config):
    config = make_config(
        """
[pipelines.p]
[pipelines.p.tasks.slow]
kind = "sleep"
seconds = 30
timeout = "100ms"
[pipelines.p.tasks.after]
kind = "sleep"
needs = ["slow"]
[pipelines.p.tasks.cleanup]
kind = "sleep"
needs = ["slow"]
trigger_rule = "all_done"
"""
    )
    _, row = await run_to_end(config, "p", timeout_s=10)
    async with open_runner(config) as runner:
        states = {i.key: (i.state, i.error) for i in await runner.store.get_instances(row.run_id)}
    assert row.state == "failed"
    assert states["slow"] == ("failed", "Task 'slow' did not finish within 0.1s")
    assert states["after"][0] == "upstream_failed"
    assert states["cleanup"][0] == "succeeded"
    assert "slow: Task 'slow' did not finish within 0.1s" in (row.error or "")


async def test_mapping_over_a_thousand_items_gives_downstream_the_list_of_outputs(make_config):
    config = make_config(
        """
[pipelines.fan]
inputs = { n = 1000 }
[pipelines.fan.tasks.each]
kind = "python"
function = "tests.support.probes:record"
map = "{{ range(inputs.n) | list }}"
args = { name = "item-{{ item }}" }
[pipelines.fan.tasks.total]
kind = "python"
function = "tests.support.probes:record"
needs = ["each"]
args = { name = "{{ tasks.each.output | length }}:{{ tasks.each.output[999] }}" }
"""
    )
    probe = probes.reset()
    _, row = await run_to_end(config, "fan")
    assert row.state == "succeeded"
    assert probe.counts["item-0"] == 1
    assert len(probe.calls) == 1001
    assert probe.calls[-1] == "1000:item-999"


async def test_mapped_no_op_attempts_stepped_by_their_run_end_as_tasks_of_their_own_would(
    make_config,
):
    """``sleep 0`` runs inline: the attempts that find a slot free are stepped by one task
    of their run, the rest wait for a slot in tasks of their own; a sleep long enough to
    park goes through the same path. Every attempt is recorded once, as it ended, and the
    downstream task gets every output."""
    config = make_config(
        """
[daemon]
max_running_tasks = 4
[pipelines.fan]
inputs = { n = 20 }
[pipelines.fan.tasks.each]
kind = "sleep"
map = "{{ range(inputs.n) | list }}"
[pipelines.fan.tasks.total]
kind = "python"
function = "tests.support.probes:record"
needs = ["each"]
args = { name = "{{ tasks.each.output | length }}" }
[pipelines.parks]
[pipelines.parks.tasks.later]
kind = "sleep"
seconds = 3600
map = "{{ [1, 2, 3] }}"
"""
    )
    probe = probes.reset()
    async with open_runner(config) as runner:
        with anyio.fail_after(30):
            row = await runner.wait((await runner.start_run("fan")).run_id)
            attempts = await runner.store.get_attempts(row.run_id)
            parked = await runner.wait((await runner.start_run("parks")).run_id)
            waits = await runner.store.get_attempts(parked.run_id)
        assert runner.slots.running_tasks == 0
    assert row.state == "succeeded"
    assert probe.calls == [20]
    assert sorted((a.key, a.attempt, a.state) for a in attempts) == sorted(
        [(f"each[{i}]", 1, "succeeded") for i in range(20)] + [("total", 1, "succeeded")]
    )
    assert parked.state == "waiting"
    assert sorted((a.key, a.state) for a in waits) == [
        ("later[0]", "waiting"),
        ("later[1]", "waiting"),
        ("later[2]", "waiting"),
    ]


async def test_cancelling_a_run_cancels_its_running_tasks(make_config):
    config = make_config(
        probe_pipeline(
            "p", {"long": 'args = { name = "long", hold_s = 60 }', "next": 'needs = ["long"]'}
        )
    )
    probe = probes.reset()
    async with open_runner(config) as runner:
        with anyio.fail_after(10):
            run_id = (await runner.start_run("p")).run_id
            await probe.entered.wait()
            row = await runner.cancel(run_id)
            instances = {i.key: i.state for i in await runner.store.get_instances(run_id)}
            attempts = await runner.store.get_attempts(run_id)
    assert row.state == "cancelled"
    assert instances == {"long": "cancelled", "next": "cancelled"}
    assert [a.state for a in attempts] == ["cancelled"]
    assert probe.in_flight == 0


def committed_rows(runner) -> list:
    """Every row the runner's store commits from now on, in order."""
    rows: list = []
    runner.store.on_commit(lambda _seconds, batch: rows.extend(batch))
    return rows


async def test_a_task_that_ends_before_any_commit_writes_its_end_rows_only(make_config):
    """Its start is provisional: built only if a commit begins while it runs. A no-op task
    ends in the loop turn after it starts, before the writer takes the batch."""
    config = make_config('[pipelines.p]\n[pipelines.p.tasks.t]\nkind = "sleep"\n')
    async with open_runner(config) as runner:
        rows = committed_rows(runner)
        with anyio.fail_after(10):
            run_id = (await runner.start_run("p")).run_id
            row = await runner.wait(run_id)
        attempts = await runner.store.get_attempts(run_id)
        instances = await runner.store.get_instances(run_id)
    assert row.state == "succeeded"
    mine = [r for r in rows if getattr(r, "run_id", None) == run_id]
    assert [(r.state, r.attempt) for r in mine if isinstance(r, AttemptRow)] == [("succeeded", 1)]
    assert [r.state for r in mine if isinstance(r, InstanceRow)] == ["succeeded"]
    assert [(a.state, a.attempt) for a in attempts] == [("succeeded", 1)]
    assert [(i.key, i.state, i.attempts) for i in instances] == [("t", "succeeded", 1)]


async def test_a_task_still_running_at_a_commit_has_its_start_committed(make_config):
    """A long task is seen running in the store while it runs, with nothing else to
    commit: the writer commits a provisional start it did not see end."""
    config = make_config(
        probe_pipeline("p", {"long": 'args = { name = "long", until_released = true }'})
    )
    probe = probes.reset()
    async with open_runner(config) as runner:
        seen_running = anyio.Event()

        def watch(_seconds: float, batch) -> None:
            if any(isinstance(r, AttemptRow) and r.state == "running" for r in batch):
                seen_running.set()

        runner.store.on_commit(watch)
        with anyio.fail_after(20):
            run_id = (await runner.start_run("p")).run_id
            await seen_running.wait()
            running = [(a.state, a.attempt) for a in await runner.store.get_attempts(run_id)]
            instances = [(i.key, i.state) for i in await runner.store.get_instances(run_id)]
            probe.released.set()
            row = await runner.wait(run_id)
        attempts = await runner.store.get_attempts(run_id)
    assert running == [("running", 1)]
    assert instances == [("long", "running")]
    assert row.state == "succeeded"
    assert [(a.state, a.attempt) for a in attempts] == [("succeeded", 1)]


PARALLEL = probe_pipeline(
    "p",
    {
        "a": 'args = { name = "a", until_released = true }',
        "b": 'args = { name = "b", until_released = true }',
        "c": 'args = { name = "c", until_released = true }',
        "last": 'needs = ["a", "b", "c"]',
    },
    head="",
)


async def test_cancelling_a_run_cancels_its_attempts_running_at_once(make_config):
    """Its attempts run in the runner's drivers, each under a cancel scope the run's
    cancellation cancels; one waiting for a task slot never starts; the run ends after
    they have recorded how they ended."""
    config = make_config("[daemon]\nmax_running_tasks = 2\n" + PARALLEL)
    probe = probes.reset(barrier=2)
    async with open_runner(config) as runner:
        with anyio.fail_after(20):
            run_id = (await runner.start_run("p")).run_id
            await probe.all_arrived.wait()
            assert runner.slots.tasks_waiting == 1
            row = await runner.cancel(run_id)
            instances = {i.key: i.state for i in await runner.store.get_instances(run_id)}
            attempts = sorted((a.key, a.state) for a in await runner.store.get_attempts(run_id))
        assert runner.slots.running_tasks == 0
        assert runner.slots.tasks_waiting == 0
    assert row.state == "cancelled"
    assert instances == dict.fromkeys(["a", "b", "c", "last"], "cancelled")
    assert sorted(probe.calls) == ["a", "b"]
    assert [state for _, state in attempts] == ["cancelled", "cancelled"]
    assert probe.in_flight == 0


async def test_a_runner_stopped_mid_parallel_attempts_interrupts_them_and_resumes_the_run(
    make_config,
):
    config = make_config("[daemon]\nmax_running_tasks = 2\n" + PARALLEL)
    probe = probes.reset(barrier=2)
    async with open_runner(config) as runner:
        with anyio.fail_after(20):
            run_id = (await runner.start_run("p")).run_id
            await probe.all_arrived.wait()
    async with open_runner(config, resume=False) as runner:
        interrupted = sorted((a.key, a.state) for a in await runner.store.get_attempts(run_id))
    probe = probes.reset()
    probe.released.set()
    async with open_runner(config) as runner:
        with anyio.fail_after(20):
            row = await runner.wait(run_id)
        attempts = sorted(
            (a.key, a.attempt, a.state) for a in await runner.store.get_attempts(run_id)
        )
    assert interrupted == [("a", "interrupted"), ("b", "interrupted")]
    assert row.state == "succeeded"
    assert sorted(probe.calls) == ["a", "b", "c", "last"]
    assert [(k, n, st) for k, n, st in attempts if st == "succeeded"] == [
        ("a", 2, "succeeded"),
        ("b", 2, "succeeded"),
        ("c", 2, "succeeded"),
        ("last", 1, "succeeded"),
    ]


async def test_inputs_are_checked_and_defaults_filled(make_config):
    config = make_config(
        probe_pipeline(
            "p",
            {"t": 'args = { name = "{{ inputs.day }}-{{ inputs.n }}" }'},
            head='inputs = { day = "today", n = 1 }',
        )
    )
    probe = probes.reset()
    _, row = await run_to_end(config, "p", {"n": 7})
    assert probe.calls == ["today-7"]
    assert row.inputs == {"day": "today", "n": 7}
    async with open_runner(config) as runner:
        with pytest.raises(
            InvalidRequest, match="pipeline 'p' has no input 'nope' \\(declared: day, n\\)"
        ):
            await runner.start_run("p", {"nope": 1})
        with pytest.raises(NotFound, match="no pipeline 'q' \\(known: p\\)"):
            await runner.start_run("q")


async def test_a_failing_task_fails_the_run_with_its_error(make_config):
    config = make_config(
        probe_pipeline(
            "p", {"bad": 'args = { name = "bad", fail = true }\nretries = 1\nretry_backoff = "1ms"'}
        )
    )
    probes.reset()
    _, row = await run_to_end(config, "p")
    async with open_runner(config) as runner:
        attempts = await runner.store.get_attempts(row.run_id)
    assert row.state == "failed"
    assert row.error == "bad: bad failed as asked"
    assert [(a.attempt, a.state, a.error) for a in attempts] == [
        (1, "failed", "bad failed as asked"),
        (2, "failed", "bad failed as asked"),
    ]
