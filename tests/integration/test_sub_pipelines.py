"""Sub-pipelines (``kind = "pipeline"``) in the real daemon, on each store: the child run is
started once, the parent's instance waits without a slot and gets the child's outputs; a
child that fails fails it; cancelling the parent cancels the child; lineage and the run's
detail name the link."""

from __future__ import annotations

from dataclasses import replace

import anyio
import pytest

from cued.daemon.core.states import TERMINAL_RUN_STATES
from cued.daemon.ops.queries import Queries
from cued.daemon.ops.repair import cancel
from cued.daemon.store import AttemptRow, RunRow
from tests.support import probes
from tests.support.flood import until
from tests.support.running import daemon_running
from tests.support.stores import keeping_state_in


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


CONFIG = """
[http]
listen = "127.0.0.1:0"

[pipelines.checkout]
inputs = { order_id = 0, fail = false, hold = false }
[pipelines.checkout.tasks.prep]
kind = "python"
function = "tests.support.probes:record"
args = { name = "prep-{{ inputs.order_id }}" }
[pipelines.checkout.tasks.ship]
kind = "pipeline"
pipeline = "shipping"
needs = ["prep"]
inputs = { order = "{{ inputs.order_id }}", fail = "{{ inputs.fail }}", hold = "{{ inputs.hold }}" }
[pipelines.checkout.tasks.after]
kind = "python"
function = "tests.support.probes:record"
needs = ["ship"]
args = { name = "after-{{ tasks.ship.output.outputs.label }}" }

[pipelines.shipping]
inputs = { order = 0, fail = false, hold = false }
[pipelines.shipping.tasks.label]
kind = "python"
function = "tests.support.probes:record"
args = { name = "label-{{ inputs.order }}", fail = "{{ inputs.fail }}", until_released = "{{ inputs.hold }}" }
"""


async def _reaches(store, run_id: str, states) -> RunRow:
    """The run once its state is one of ``states`` (a parent parks while its child runs,
    and comes back: the store is where that shows)."""
    with anyio.fail_after(60):
        while (row := await store.get_run(run_id)) is None or row.state not in states:  # noqa: ASYNC110 - only the store shows it
            await anyio.sleep(0.02)
    return row


async def _entered(probe, call: str) -> None:
    """Once the probe's task has been entered with ``call`` (it holds there)."""
    with anyio.fail_after(30):
        while call not in probe.calls:
            probe.entered = anyio.Event()
            if call in probe.calls:
                break
            await probe.entered.wait()


def _holding(slots, count: int):
    """A check for :func:`until`: exactly ``count`` runs hold a slot."""

    async def check() -> bool:
        return slots.active_runs == count

    return check


async def _ended(info, run_id: str) -> RunRow:
    return await _reaches(info.runner.store, run_id, TERMINAL_RUN_STATES)


async def test_a_child_run_is_started_once_and_its_outputs_come_back(make_config):
    probe = probes.reset()
    config = make_config(CONFIG)
    async with daemon_running(config) as info:
        parent = await info.runner.start_run("checkout", {"order_id": 42})
        done = await _ended(info, parent.run_id)
        store = info.runner.store
        (child,) = await store.children_of(parent.run_id)
        attempts = [a for a in await store.get_attempts(parent.run_id) if a.key == "ship"]
        detail = await Queries(store, config).run_detail(parent.run_id)
        child_detail = await Queries(store, config).run_detail(child.run_id)
        lineage_runs = await _lineage_of(store, config, parent.run_id)
    assert done.state == "succeeded", done.error
    assert (child.pipeline, child.state, child.inputs["order"]) == ("shipping", "succeeded", 42)
    assert (child.parent_run_id, child.parent_key, child.parent_attempt) == (
        parent.run_id,
        "ship",
        1,
    )
    assert probe.calls == ["prep-42", "label-42", "after-label-42"]
    (attempt,) = attempts
    assert attempt.state == "succeeded"
    assert attempt.output == {
        "run_id": child.run_id,
        "pipeline": "shipping",
        "state": "succeeded",
        "outputs": {"label": "label-42"},
    }
    assert detail is not None
    assert [c.run_id for c in detail.children] == [child.run_id]
    assert child_detail is not None
    assert child_detail.run.parent_run_id == parent.run_id
    assert lineage_runs == [child.run_id]


async def _lineage_of(store, config, run_id: str) -> list[str]:
    from cued.daemon.ops import lineage

    (found,) = await lineage.downstream(
        store, Queries(store, config).plans, [run_id], lineage.Budget()
    )
    return [c.run.run_id for c in found.children]


async def test_a_child_that_fails_fails_the_task_and_its_parent(make_config):
    probes.reset()
    config = make_config(CONFIG)
    async with daemon_running(config) as info:
        parent = await info.runner.start_run("checkout", {"order_id": 7, "fail": True})
        done = await _ended(info, parent.run_id)
        (child,) = await info.runner.store.children_of(parent.run_id)
        instances = {i.key: i for i in await info.runner.store.get_instances(parent.run_id)}
    assert child.state == "failed"
    assert done.state == "failed"
    assert instances["ship"].state == "failed"
    assert instances["after"].state == "upstream_failed"
    assert instances["ship"].error.startswith(
        f"child run {child.run_id} of pipeline 'shipping' failed"
    )


async def test_cancelling_the_parent_cancels_the_child(make_config):
    probe = probes.reset()
    config = make_config(CONFIG)
    async with daemon_running(config) as info:
        parent = await info.runner.start_run("checkout", {"order_id": 3, "hold": True})
        await _entered(probe, "label-3")
        store = info.runner.store
        (child,) = await store.children_of(parent.run_id)
        # the parent parks while its child runs: it holds no slot
        await _reaches(store, parent.run_id, {"waiting"})
        # the child's alone (the parent frees its slot once its parking is committed, so
        # after the store shows it waiting)
        await until(_holding(info.runner.slots, 1))
        cancelled = await cancel(info.runner, parent.run_id)
        child_done = await _ended(info, child.run_id)
    assert cancelled.state == "cancelled"
    assert child_done.state == "cancelled"
    assert "after-label-3" not in probe.calls


async def test_a_child_that_ended_while_the_daemon_was_down_settles_its_parent_at_start(
    make_config, store_at
):
    # what a kill -9 between the child's end and its parent's settling leaves: the child
    # ended in the store, the parent's instance still waiting for it
    probe = probes.reset()
    config = make_config(CONFIG)
    async with daemon_running(config) as info:
        parent = await info.runner.start_run("checkout", {"order_id": 9, "hold": True})
        store = info.runner.store
        await _reaches(store, parent.run_id, {"waiting"})
        # the child's task has started (its instance is recorded): the parent parks as
        # its child is recorded, and the child is claimed and started after that
        await _entered(probe, "label-9")
    async with store_at.open() as store:
        (child,) = await store.children_of(parent.run_id)
        (label,) = await store.get_instances(child.run_id)
        stamp = child.created_at + 1
        await store.submit(
            [
                replace(label, state="succeeded", updated_at=stamp),
                AttemptRow(child.run_id, "label", 1, "succeeded", stamp, stamp, None, '"label-9"'),
                replace(child, state="succeeded", started_at=stamp, ended_at=stamp),
            ]
        ).wait()
    probe.released.set()
    async with daemon_running(config) as info:
        done = await _ended(info, parent.run_id)
        children = await info.runner.store.children_of(parent.run_id)
    assert done.state == "succeeded", done.error
    assert [c.run_id for c in children] == [child.run_id]
    assert probe.calls == ["prep-9", "label-9", "after-label-9"]
