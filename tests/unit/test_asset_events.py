"""Asset events of a succeeded run (daemon/runtime/asset_events.py)."""

from __future__ import annotations

from cued.daemon.core.assets import asset_event_id, asset_source
from cued.daemon.core.engine import Instance, State
from cued.daemon.core.plan import PipelinePlan
from cued.daemon.runtime.asset_events import asset_events
from cued.daemon.store import RunRow

CONFIG = """
[pipelines.etl]
inputs = { parts = [] }
[pipelines.etl.tasks.fetch]
kind = "python"
function = "tests.support.probes:record"
args = { name = "fetch" }
produces = ["orders", "audit"]
[pipelines.etl.tasks.split]
kind = "python"
function = "tests.support.probes:record"
args = { name = "{{ item }}" }
map = "{{ inputs.parts }}"
produces = ["parts"]
[pipelines.etl.tasks.quiet]
kind = "python"
function = "tests.support.probes:record"
args = { name = "quiet" }
"""


def test_one_event_per_produced_asset_with_the_tasks_output(make_config):
    plan = PipelinePlan.build("etl", make_config(CONFIG).pipelines["etl"])
    row = RunRow("r1", "etl", "succeeded", {"parts": ["a", "b"]}, 1.0)
    instances = [
        Instance("fetch", None, State.SUCCEEDED, output={"n": 3}),
        Instance("split", 0, State.SUCCEEDED, output="A"),
        Instance("split", 1, State.SUCCEEDED, output="B"),
        Instance("quiet", None, State.SUCCEEDED, output="not an asset"),
    ]
    events = asset_events(plan, row, instances)
    assert [(e.source, e.event_id) for e in events] == [
        ("asset:orders", "asset:orders:r1"),
        ("asset:audit", "asset:audit:r1"),
        ("asset:parts", "asset:parts:r1"),
    ]
    orders, _, parts = events
    assert orders.data == {
        "asset": "orders",
        "run_id": "r1",
        "pipeline": "etl",
        "task": "fetch",
        "inputs": {"parts": ["a", "b"]},
        "output": {"n": 3},
    }
    assert orders.meta == {"producer": "etl.fetch"}
    assert parts.data["output"] == ["A", "B"]  # a mapped task: every item's output


def test_the_id_is_the_same_however_often_the_run_finishes(make_config):
    plan = PipelinePlan.build("etl", make_config(CONFIG).pipelines["etl"])
    row = RunRow("r1", "etl", "succeeded", {"parts": []}, 1.0)
    first = asset_events(plan, row, [])
    again = asset_events(plan, row, [])
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert asset_source("orders") == "asset:orders"
    assert asset_event_id("orders", "r1") == "asset:orders:r1"
