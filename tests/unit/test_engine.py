"""The pure scheduler of one run: events in (a task finished, a retry is due, the run is
cancelled), commands out (Start, Wait, Finish). No I/O, no clock."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cued.daemon.config import parse_config
from cued.daemon.core.engine import Finish, Instance, RunEngine, Start, Wait
from cued.daemon.core.plan import PipelinePlan
from cued.daemon.core.states import TERMINAL_TASK_STATES, RunState, State

# --------------------------------------------------------------------------- helpers

FN = 'kind = "python"\nfunction = "tests.support.pyfuncs:add"\n'


def pipeline(tasks: dict[str, str], *, inputs: str = "") -> str:
    """TOML for pipeline ``p``; ``tasks`` maps a task name to its TOML lines (kind included)."""
    text = f"[pipelines.p]\n{f'inputs = {inputs}' if inputs else ''}\n"
    for name, body in tasks.items():
        text += f"[pipelines.p.tasks.{name}]\n{body}\n"
    return text


def engine_for(
    text: str, *, inputs: dict[str, Any] | None = None, prior: dict[str, Instance] | None = None
) -> RunEngine:
    config = parse_config(text, file="config.toml")
    ((name, pipe),) = config.pipelines.items()
    return RunEngine(
        PipelinePlan.build(name, pipe), "run-1", {**pipe.inputs, **(inputs or {})}, prior or {}
    )


def started(commands) -> dict[str, Start]:
    """The Start commands among ``commands``, by instance key."""
    return {c.instance.key: c for c in commands if isinstance(c, Start)}


def finishes(commands) -> list[Finish]:
    return [c for c in commands if isinstance(c, Finish)]


def states(engine: RunEngine) -> dict[str, State]:
    return {i.key: i.state for i in engine.instances()}


def succeed(engine: RunEngine, start: Start, output: Any = None):
    engine.started(start.instance)
    return engine.succeeded(start.instance, output)


def fail(engine: RunEngine, start: Start, error: str = "boom", *, retryable: bool = True):
    engine.started(start.instance)
    return engine.failed(start.instance, error, retryable=retryable)


# --------------------------------------------------------------------------- ordering


def test_roots_start_first():
    engine = engine_for(
        pipeline(
            {"a": 'kind = "sleep"', "b": 'kind = "sleep"', "c": 'kind = "sleep"\nneeds = ["a"]'}
        )
    )
    commands = engine.begin()
    assert set(started(commands)) == {"a", "b"}
    assert all(s.attempt == 1 for s in started(commands).values())
    assert states(engine) == {"a": State.QUEUED, "b": State.QUEUED}
    assert finishes(commands) == []
    assert engine.state is RunState.RUNNING


def test_started_marks_the_instance_running():
    engine = engine_for(pipeline({"a": 'kind = "sleep"'}))
    (start,) = engine.begin()
    engine.started(start.instance)
    assert start.instance.state is State.RUNNING


def test_a_task_starts_only_after_all_its_needs_succeeded():
    engine = engine_for(
        pipeline(
            {
                "a": 'kind = "sleep"',
                "b": 'kind = "sleep"',
                "join": 'kind = "sleep"\nneeds = ["a", "b"]',
            }
        )
    )
    begun = started(engine.begin())
    assert succeed(engine, begun["a"]) == []
    assert "join" not in states(engine)
    after_b = succeed(engine, begun["b"])
    assert set(started(after_b)) == {"join"}
    assert finishes(succeed(engine, started(after_b)["join"])) == [Finish(RunState.SUCCEEDED)]
    assert engine.state is RunState.SUCCEEDED


def test_a_task_fans_out_to_every_child():
    engine = engine_for(
        pipeline(
            {
                "a": 'kind = "sleep"',
                "b": 'kind = "sleep"\nneeds = ["a"]',
                "c": 'kind = "sleep"\nneeds = ["a"]',
            }
        )
    )
    (start,) = engine.begin()
    assert set(started(succeed(engine, start))) == {"b", "c"}


def test_params_render_from_inputs_run_and_upstream_outputs():
    engine = engine_for(
        pipeline(
            {
                "extract": 'kind = "sleep"',
                "load": FN
                + 'needs = ["extract"]\n'
                + 'args = { rows = "{{ tasks.extract.output.rows }}", '
                + 'day = "{{ inputs.day }}", where = "{{ run.pipeline }}/{{ run.id }}" }',
            },
            inputs='{ day = "2024-05-01" }',
        )
    )
    (start,) = engine.begin()
    load = started(succeed(engine, start, {"rows": 7}))["load"]
    assert load.params == {
        "function": "tests.support.pyfuncs:add",
        "args": {"rows": 7, "day": "2024-05-01", "where": "p/run-1"},
    }


def test_params_without_templates_are_passed_as_they_are():
    engine = engine_for(pipeline({"a": 'kind = "sleep"\nseconds = 2'}))
    (start,) = engine.begin()
    assert start.params == {"seconds": 2}


# --------------------------------------------------------------------------- failure


def test_upstream_failure_marks_downstream_upstream_failed_transitively():
    engine = engine_for(
        pipeline(
            {
                "a": 'kind = "sleep"',
                "other": 'kind = "sleep"',
                "b": 'kind = "sleep"\nneeds = ["a"]',
                "c": 'kind = "sleep"\nneeds = ["b"]',
                "d": 'kind = "sleep"\nneeds = ["c", "other"]',
            }
        )
    )
    begun = started(engine.begin())
    commands = fail(engine, begun["a"])
    assert started(commands) == {}
    assert finishes(commands) == []  # "other" still runs
    assert states(engine) == {
        "a": State.FAILED,
        "other": State.QUEUED,
        "b": State.UPSTREAM_FAILED,
        "c": State.UPSTREAM_FAILED,
    }
    commands = succeed(engine, begun["other"])
    assert started(commands) == {}
    assert commands == [Finish(RunState.FAILED)]
    assert states(engine)["d"] is State.UPSTREAM_FAILED
    assert all(i.attempts == 0 for i in engine.instances() if i.task in {"b", "c", "d"})
    assert engine.state is RunState.FAILED


def test_all_done_runs_after_a_failure_and_the_run_still_fails():
    engine = engine_for(
        pipeline(
            {
                "a": 'kind = "sleep"',
                "b": 'kind = "sleep"\nneeds = ["a"]',
                "cleanup": 'kind = "sleep"\nneeds = ["b"]\ntrigger_rule = "all_done"',
            }
        )
    )
    (start,) = engine.begin()
    commands = fail(engine, start)
    assert set(started(commands)) == {"cleanup"}
    assert states(engine)["b"] is State.UPSTREAM_FAILED
    assert succeed(engine, started(commands)["cleanup"]) == [Finish(RunState.FAILED)]
    assert states(engine)["cleanup"] is State.SUCCEEDED


def test_all_done_also_runs_after_success():
    engine = engine_for(
        pipeline(
            {"a": 'kind = "sleep"', "z": 'kind = "sleep"\nneeds = ["a"]\ntrigger_rule = "all_done"'}
        )
    )
    (start,) = engine.begin()
    (z,) = succeed(engine, start)
    assert succeed(engine, z) == [Finish(RunState.SUCCEEDED)]


def test_failed_attempt_waits_while_retries_are_left_then_fails_for_good():
    engine = engine_for(pipeline({"a": 'kind = "sleep"\nretries = 2'}))
    (start,) = engine.begin()
    inst = start.instance

    assert fail(engine, start, "first") == [Wait(inst, 1)]
    assert inst.state is State.UP_FOR_RETRY
    assert inst.error == "first"
    (second,) = engine.retry_due(inst)
    assert second == Start(inst, {}, 2)
    assert inst.state is State.QUEUED

    assert fail(engine, second, "second") == [Wait(inst, 2)]
    (third,) = engine.retry_due(inst)
    assert third.attempt == 3

    assert fail(engine, third, "third") == [Finish(RunState.FAILED)]
    assert inst.state is State.FAILED
    assert inst.attempts == 3
    assert inst.error == "third"


def test_a_retry_can_succeed():
    engine = engine_for(pipeline({"a": 'kind = "sleep"\nretries = 1'}))
    (start,) = engine.begin()
    fail(engine, start)
    (second,) = engine.retry_due(start.instance)
    assert succeed(engine, second, "ok") == [Finish(RunState.SUCCEEDED)]
    assert start.instance.output == "ok"
    assert start.instance.error is None


def test_non_retryable_failure_fails_at_once():
    engine = engine_for(pipeline({"a": 'kind = "sleep"\nretries = 5'}))
    (start,) = engine.begin()
    assert fail(engine, start, "bad params", retryable=False) == [Finish(RunState.FAILED)]
    assert start.instance.state is State.FAILED
    assert start.instance.attempts == 1


def test_retry_due_for_an_instance_not_waiting_does_nothing():
    engine = engine_for(pipeline({"a": 'kind = "sleep"\nretries = 1'}))
    (start,) = engine.begin()
    assert engine.retry_due(start.instance) == []
    assert start.instance.attempts == 1


def test_template_that_fails_to_render_at_start_fails_for_good():
    engine = engine_for(
        pipeline(
            {
                "a": 'kind = "sleep"',
                "b": FN
                + 'needs = ["a"]\nretries = 3\nargs = { x = "{{ tasks.a.output.missing }}" }',
                "c": 'kind = "sleep"\nneeds = ["b"]',
            }
        )
    )
    (start,) = engine.begin()
    commands = succeed(engine, start, {"present": 1})
    assert commands == [Finish(RunState.FAILED)]
    b = next(i for i in engine.instances() if i.key == "b")
    assert b.state is State.FAILED
    assert b.attempts == 1
    assert "missing" in b.error
    assert states(engine)["c"] is State.UPSTREAM_FAILED


def test_template_that_fails_to_render_on_a_root_fails_the_run_at_begin():
    engine = engine_for(
        pipeline({"a": FN + "args = { x = \"{{ inputs.n + 'x' }}\" }"}, inputs="{ n = 1 }")
    )
    assert engine.begin() == [Finish(RunState.FAILED)]
    assert states(engine) == {"a": State.FAILED}


# --------------------------------------------------------------------------- map

MAPPED = {
    "fan": FN + 'map = "{{ inputs.parts }}"\nargs = { part = "{{ item }}", run = "{{ run.id }}" }',
    "join": FN + 'needs = ["fan"]\nargs = { all = "{{ tasks.fan.output }}" }',
}


def test_map_creates_one_instance_per_item_with_item_rendered():
    engine = engine_for(pipeline(MAPPED, inputs='{ parts = ["x", "y", "z"] }'))
    begun = started(engine.begin())
    assert list(begun) == ["fan[0]", "fan[1]", "fan[2]"]
    assert [s.params["args"]["part"] for s in begun.values()] == ["x", "y", "z"]
    assert [s.instance.index for s in begun.values()] == [0, 1, 2]
    assert all(s.instance.task == "fan" for s in begun.values())
    assert begun["fan[1]"].params["args"]["run"] == "run-1"


def test_downstream_of_a_map_gets_the_outputs_in_index_order():
    engine = engine_for(pipeline(MAPPED, inputs='{ parts = ["x", "y", "z"] }'))
    begun = started(engine.begin())
    assert succeed(engine, begun["fan[2]"], "Z") == []
    assert succeed(engine, begun["fan[0]"], "X") == []
    (join,) = succeed(engine, begun["fan[1]"], "Y")
    assert join.params["args"]["all"] == ["X", "Y", "Z"]


def test_map_over_an_upstream_output():
    engine = engine_for(
        pipeline(
            {
                "list": 'kind = "sleep"',
                "each": FN + 'needs = ["list"]\nmap = "{{ tasks.list.output }}"\n'
                'args = { n = "{{ item.n }}" }',
            }
        )
    )
    (start,) = engine.begin()
    begun = started(succeed(engine, start, [{"n": 1}, {"n": 2}]))
    assert {k: s.params["args"]["n"] for k, s in begun.items()} == {"each[0]": 1, "each[1]": 2}


def test_map_over_an_empty_list_creates_no_instance_and_downstream_gets_an_empty_list():
    engine = engine_for(pipeline(MAPPED, inputs="{ parts = [] }"))
    begun = started(engine.begin())
    assert list(begun) == ["join"]
    assert begun["join"].params["args"]["all"] == []
    assert succeed(engine, begun["join"]) == [Finish(RunState.SUCCEEDED)]
    assert states(engine) == {"join": State.SUCCEEDED}


def test_a_run_of_only_an_empty_map_succeeds_at_begin():
    engine = engine_for(pipeline({"fan": MAPPED["fan"]}, inputs="{ parts = [] }"))
    assert engine.begin() == [Finish(RunState.SUCCEEDED)]


@pytest.mark.parametrize(
    ("parts", "type_name"),
    [
        pytest.param("3", "int", id="int"),
        pytest.param('"abc"', "str", id="string"),
        pytest.param("{ a = 1 }", "dict", id="table"),
    ],
)
def test_map_over_a_non_list_fails_the_task(parts, type_name):
    engine = engine_for(pipeline(MAPPED, inputs=f"{{ parts = {parts} }}"))
    assert engine.begin() == [Finish(RunState.FAILED)]
    (fan,) = [i for i in engine.instances() if i.task == "fan"]
    assert fan.state is State.FAILED
    assert fan.index is None
    assert "map must give a list" in fan.error
    assert type_name in fan.error
    assert states(engine)["join"] is State.UPSTREAM_FAILED


def test_one_failed_item_fails_the_map_and_its_downstream():
    engine = engine_for(pipeline(MAPPED, inputs='{ parts = ["x", "y"] }'))
    begun = started(engine.begin())
    assert succeed(engine, begun["fan[0]"]) == []
    assert fail(engine, begun["fan[1]"]) == [Finish(RunState.FAILED)]
    assert states(engine)["join"] is State.UPSTREAM_FAILED


def test_mapped_items_retry_on_their_own():
    text = pipeline(
        {"fan": MAPPED["fan"] + "\nretries = 1", "join": MAPPED["join"]},
        inputs='{ parts = ["x", "y"] }',
    )
    engine = engine_for(text)
    begun = started(engine.begin())
    assert fail(engine, begun["fan[1]"]) == [Wait(begun["fan[1]"].instance, 1)]
    (again,) = engine.retry_due(begun["fan[1]"].instance)
    assert again.attempt == 2
    assert again.params["args"]["part"] == "y"
    assert succeed(engine, begun["fan[0]"], 0) == []
    (join,) = succeed(engine, again, 1)
    assert join.params["args"]["all"] == [0, 1]


# --------------------------------------------------------------------------- cancel

CHAIN = {
    "a": 'kind = "sleep"\nretries = 1',
    "b": 'kind = "sleep"\nneeds = ["a"]',
    "c": 'kind = "sleep"',
    "fan": 'kind = "sleep"\nneeds = ["a"]\nmap = "{{ inputs.parts }}"',
}


def test_cancel_marks_every_unfinished_instance_cancelled():
    engine = engine_for(pipeline(CHAIN, inputs="{ parts = [1, 2] }"))
    begun = started(engine.begin())
    engine.started(begun["a"].instance)
    succeed(engine, begun["c"])
    engine.drain_changes()

    assert engine.cancel() == [Finish(RunState.CANCELLED)]
    assert engine.state is RunState.CANCELLED
    assert states(engine) == {
        "a": State.CANCELLED,
        "b": State.CANCELLED,
        "c": State.SUCCEEDED,
        "fan": State.CANCELLED,
    }
    assert {i.key for i in engine.drain_changes()} == {"a", "b", "fan"}


def test_nothing_starts_after_cancel():
    engine = engine_for(pipeline(CHAIN, inputs="{ parts = [1, 2] }"))
    begun = started(engine.begin())
    fail(engine, begun["a"])  # waits for a retry
    engine.cancel()
    assert engine.retry_due(begun["a"].instance) == []
    assert begun["a"].instance.state is State.CANCELLED
    # the runner cancels running attempts; one that ends anyway starts nothing and
    # does not finish the run a second time
    assert succeed(engine, begun["c"]) == []
    assert engine.state is RunState.CANCELLED


def test_a_late_success_after_cancel_leaves_every_instance_terminal():
    engine = engine_for(pipeline(CHAIN, inputs="{ parts = [1, 2] }"))
    begun = started(engine.begin())
    engine.started(begun["a"].instance)
    engine.cancel()
    assert succeed(engine, begun["a"]) == []
    assert engine.state is RunState.CANCELLED
    assert all(i.state in TERMINAL_TASK_STATES for i in engine.instances()), states(engine)
    assert states(engine)["b"] is State.CANCELLED


def test_cancel_after_the_run_finished_changes_nothing():
    engine = engine_for(pipeline({"a": 'kind = "sleep"'}))
    (start,) = engine.begin()
    assert succeed(engine, start) == [Finish(RunState.SUCCEEDED)]
    assert engine.cancel() == []
    assert engine.state is RunState.SUCCEEDED
    assert states(engine) == {"a": State.SUCCEEDED}


# --------------------------------------------------------------------------- recovery

RECOVER = {
    "a": 'kind = "sleep"',
    "b": FN + 'needs = ["a"]\nargs = { rows = "{{ tasks.a.output.rows }}" }',
    "c": 'kind = "sleep"\nneeds = ["b"]',
}


def test_recovery_does_not_rerun_succeeded_instances_and_keeps_their_output():
    prior = {
        "a": Instance("a", None, State.SUCCEEDED, attempts=1, output={"rows": 5}),
        "b": Instance("b", None, State.RUNNING, attempts=2, error="earlier"),
    }
    engine = engine_for(pipeline(RECOVER), prior=prior)
    commands = engine.begin()
    assert list(started(commands)) == ["b"]
    b = started(commands)["b"]
    assert b.attempt == 3
    assert b.instance.attempts == 3
    assert b.params["args"] == {"rows": 5}
    assert prior["a"].state is State.SUCCEEDED
    assert prior["a"].attempts == 1
    # a restored, succeeded instance is not written again
    assert [i.key for i in engine.drain_changes()] == ["b"]
    (c,) = succeed(engine, b)
    assert c.instance.key == "c"


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(State.RUNNING, id="running"),
        pytest.param(State.QUEUED, id="queued"),
        pytest.param(State.UP_FOR_RETRY, id="up-for-retry"),
    ],
)
def test_recovery_runs_an_unfinished_instance_again_as_its_next_attempt(state):
    prior = {"a": Instance("a", None, state, attempts=1)}
    engine = engine_for(pipeline({"a": 'kind = "sleep"'}), prior=prior)
    (start,) = engine.begin()
    assert start.instance is prior["a"]
    assert start.attempt == 2


def test_recovery_of_a_run_whose_instances_all_succeeded_finishes_at_once():
    prior = {
        "a": Instance("a", None, State.SUCCEEDED, 1, {"rows": 1}),
        "b": Instance("b", None, State.SUCCEEDED, 1, None),
        "c": Instance("c", None, State.SUCCEEDED, 1, None),
    }
    engine = engine_for(pipeline(RECOVER), prior=prior)
    assert engine.begin() == [Finish(RunState.SUCCEEDED)]


def test_recovery_of_a_partly_done_map():
    text = pipeline(
        {
            "list": 'kind = "sleep"',
            "each": FN + 'needs = ["list"]\nmap = "{{ tasks.list.output }}"\n'
            'args = { v = "{{ item }}" }',
            "join": FN + 'needs = ["each"]\nargs = { all = "{{ tasks.each.output }}" }',
        }
    )
    prior = {
        "list": Instance("list", None, State.SUCCEEDED, 1, ["x", "y", "z"]),
        "each[0]": Instance("each", 0, State.SUCCEEDED, 1, "X"),
        "each[1]": Instance("each", 1, State.RUNNING, 1),
        "each[2]": Instance("each", 2, State.UP_FOR_RETRY, 2, error="flaky"),
    }
    engine = engine_for(text, prior=prior)
    begun = started(engine.begin())
    assert {k: (s.attempt, s.params["args"]["v"]) for k, s in begun.items()} == {
        "each[1]": (2, "y"),
        "each[2]": (3, "z"),
    }
    assert succeed(engine, begun["each[2]"], "Z") == []
    (join,) = succeed(engine, begun["each[1]"], "Y")
    assert join.params["args"]["all"] == ["X", "Y", "Z"]


# --------------------------------------------------------------------------- changes


def test_drain_changes_returns_each_changed_instance_once():
    engine = engine_for(pipeline({"a": 'kind = "sleep"\nretries = 1', "b": 'kind = "sleep"'}))
    begun = started(engine.begin())
    engine.started(begun["a"].instance)
    engine.failed(begun["a"].instance, "boom")
    engine.retry_due(begun["a"].instance)
    changes = engine.drain_changes()
    assert sorted(i.key for i in changes) == ["a", "b"]
    assert engine.drain_changes() == []
    succeed(engine, begun["b"])
    assert [i.key for i in engine.drain_changes()] == ["b"]


def test_an_attempt_starting_is_not_a_change_to_drain():
    """The runner writes an attempt's start itself, only if a commit comes while it runs."""
    engine = engine_for(pipeline({"a": 'kind = "sleep"'}))
    (start,) = engine.begin()
    assert [i.key for i in engine.drain_changes()] == ["a"]  # queued
    engine.started(start.instance)
    assert start.instance.state is State.RUNNING
    assert engine.drain_changes() == []
    engine.succeeded(start.instance, None)
    assert [(i.key, i.state) for i in engine.drain_changes()] == [("a", State.SUCCEEDED)]


def test_drain_changes_includes_instances_that_never_started():
    engine = engine_for(pipeline({"a": 'kind = "sleep"', "b": 'kind = "sleep"\nneeds = ["a"]'}))
    (start,) = engine.begin()
    engine.drain_changes()
    fail(engine, start)
    assert {i.key: i.state for i in engine.drain_changes()} == {
        "a": State.FAILED,
        "b": State.UPSTREAM_FAILED,
    }


# --------------------------------------------------------------------------- properties


@st.composite
def task_specs(draw, index: int):
    """Task ``index``: the tasks before it that it needs, its trigger rule, retries, map
    width (None: not mapped) and outcome (the attempt that first succeeds; None: none)."""
    return {
        "needs": sorted(draw(st.sets(st.integers(0, index - 1)))) if index else [],
        "all_done": draw(st.booleans()),
        "retries": draw(st.integers(0, 2)),
        "width": draw(st.none() | st.integers(0, 3)),
        "succeeds_on": draw(st.none() | st.integers(1, 3)),
        "retryable": draw(st.booleans()),
    }


@st.composite
def dags(draw):
    """A pipeline of up to 8 tasks, task i needing a random subset of tasks < i."""
    n = draw(st.integers(1, 8))
    return [draw(task_specs(i)) for i in range(n)]


def _dag_toml(tasks) -> str:
    inputs = ", ".join(
        f"t{i} = {list(range(t['width']))}" for i, t in enumerate(tasks) if t["width"] is not None
    )
    body = {}
    for i, t in enumerate(tasks):
        lines = ['kind = "sleep"', f"retries = {t['retries']}"]
        if t["needs"]:
            lines.append("needs = [" + ", ".join(f'"t{n}"' for n in t["needs"]) + "]")
        if t["all_done"]:
            lines.append('trigger_rule = "all_done"')
        if t["width"] is not None:
            lines.append(f'map = "{{{{ inputs.t{i} }}}}"')
        body[f"t{i}"] = "\n".join(lines)
    return pipeline(body, inputs=f"{{ {inputs} }}" if inputs else "")


@settings(max_examples=200, deadline=None)
@given(tasks=dags(), data=st.data())
def test_engine_drives_any_dag_to_one_consistent_finish(tasks, data):
    engine = engine_for(_dag_toml(tasks))
    spec = {f"t{i}": t for i, t in enumerate(tasks)}
    attempts_seen: dict[str, list[int]] = {}
    finished: list[Finish] = []
    pending: list[Any] = []

    def receive(commands):
        for command in commands:
            assert not finished, f"{command} after {finished}"
            if isinstance(command, Finish):
                finished.append(command)
            elif isinstance(command, Start):
                inst = command.instance
                # (a) each attempt of an instance starts once, in order
                seen = attempts_seen.setdefault(inst.key, [])
                assert command.attempt == len(seen) + 1
                seen.append(command.attempt)
                assert command.attempt <= spec[inst.task]["retries"] + 1
                assert command.attempt == 1 or spec[inst.task]["retryable"]
                # (b) never before every instance of every need is terminal
                for need in spec[inst.task]["needs"]:
                    need_insts = [i for i in engine.instances() if i.task == f"t{need}"]
                    width = spec[f"t{need}"]["width"]
                    assert need_insts or width == 0, f"{inst.key} started before t{need}"
                    assert all(i.state in TERMINAL_TASK_STATES for i in need_insts)
                    if not spec[inst.task]["all_done"]:
                        assert all(i.state is State.SUCCEEDED for i in need_insts)
        pending.extend(c for c in commands if not isinstance(c, Finish))

    receive(engine.begin())
    while pending:
        command = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
        if isinstance(command, Wait):
            receive(engine.retry_due(command.instance))
            continue
        inst = command.instance
        task = spec[inst.task]
        engine.started(inst)
        if task["succeeds_on"] is not None and command.attempt >= task["succeeds_on"]:
            receive(engine.succeeded(inst, inst.key))
        else:
            receive(engine.failed(inst, "boom", retryable=task["retryable"]))

    # (c) exactly one Finish
    assert len(finished) == 1
    instances = engine.instances()
    # (e) every instance ends terminal
    assert all(i.state in TERMINAL_TASK_STATES for i in instances), states(engine)
    # (d) the run succeeded iff every instance did
    ok = all(i.state is State.SUCCEEDED for i in instances)
    assert finished[0].state is (RunState.SUCCEEDED if ok else RunState.FAILED)
    assert engine.state is finished[0].state
    # a failed instance used every attempt it had, or one if its failure was not retryable
    for inst in instances:
        if inst.state is State.FAILED:
            t = spec[inst.task]
            assert inst.attempts == (t["retries"] + 1 if t["retryable"] else 1)
    # a mapped task has one instance per item (unless it was upstream_failed)
    for name, t in spec.items():
        mine = [i for i in instances if i.task == name]
        if t["width"] is None:
            assert [i.key for i in mine] == [name]
        elif mine and mine[0].state is not State.UPSTREAM_FAILED:
            assert [i.key for i in mine] == [f"{name}[{k}]" for k in range(t["width"])]
