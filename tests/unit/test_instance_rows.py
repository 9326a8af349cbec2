"""Task instances between the engine and the store (daemon/runtime/instance_rows.py)."""

from __future__ import annotations

from cued.daemon.core.engine import Instance, State
from cued.daemon.runtime.instance_rows import instance_row, instances_of


def test_an_instance_comes_back_from_its_row_with_its_output():
    instances = [
        Instance("load", 2, State.SUCCEEDED, attempts=3, output=None, retry_base=1),
        Instance("check", None, State.FAILED, attempts=1, error="boom"),
    ]
    rows = [instance_row("r1", i) for i in instances]
    assert [(r.run_id, r.key, r.map_index, r.state) for r in rows] == [
        ("r1", "load[2]", 2, "succeeded"),
        ("r1", "check", None, "failed"),
    ]
    back = instances_of(rows, {"load[2]": {"n": 1}})
    assert back == {
        "load[2]": Instance("load", 2, State.SUCCEEDED, 3, {"n": 1}, None, 1),
        "check": Instance("check", None, State.FAILED, 1, None, "boom", 0),
    }
