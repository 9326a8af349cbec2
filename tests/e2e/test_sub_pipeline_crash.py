"""kill -9 of the daemon while child runs (``kind = "pipeline"``) run and their parents wait
for them, then restart: each parent has exactly one child, no child is started twice, and
every parent completes with its child's output."""

from __future__ import annotations

from tests.support.daemon import (
    cued,
    killed_after,
    post_events,
    query,
    run_to_the_end,
    wait_for,
    webhook_config,
    write_config,
)
from tests.support.raw_http import free_port

PARENTS = 5

CONFIG = (
    webhook_config()
    + """
[pipelines.checkout]
inputs = { order = 0 }
[pipelines.checkout.tasks.ship]
kind = "pipeline"
pipeline = "shipping"
inputs = { order = "{{ inputs.order }}" }
[pipelines.checkout.tasks.done]
kind = "shell"
needs = ["ship"]
command = "echo done {{ tasks.ship.output.outputs.label.stdout | shell_quote }} >> @LEDGER@"

[pipelines.shipping]
inputs = { order = 0 }
[pipelines.shipping.tasks.label]
kind = "shell"
# each child holds until the file `go` exists: the kill falls while every child runs
command = "echo child {{ inputs.order }} >> @LEDGER@; while [ ! -f @GO@ ]; do sleep 0.02; done; printf label-{{ inputs.order }}"

[[triggers]]
source = "hook"
pipeline = "checkout"
inputs = { order = "{{ event.data.order }}" }
"""
)


async def test_kill_9_with_child_runs_running_then_restart_finishes_each_parent_once(tmp_path):
    port, ledger, go = free_port(), tmp_path / "ledger", tmp_path / "go"
    config = write_config(tmp_path, CONFIG, PORT=port, GO=go, LEDGER=ledger)
    state = tmp_path / "state.db"

    async with killed_after(config, state):
        await post_events(port, [(f"d{n}", {"order": n}) for n in range(PARENTS)])
        children = "SELECT count(*) FROM runs WHERE pipeline = 'shipping' AND state = 'running'"
        await wait_for(lambda: query(state, children) == [(PARENTS,)], timeout_s=60)
        parked = "SELECT count(*) FROM runs WHERE pipeline = 'checkout' AND state = 'waiting'"
        await wait_for(lambda: query(state, parked) == [(PARENTS,)], timeout_s=60)
    go.touch()

    await run_to_the_end(config, state)

    by_pipeline = query(
        state, "SELECT pipeline, state, count(*) FROM runs GROUP BY 1, 2 ORDER BY 1"
    )
    assert by_pipeline == [("checkout", "succeeded", PARENTS), ("shipping", "succeeded", PARENTS)]
    # one child per parent, linked to it
    links = query(
        state,
        "SELECT count(DISTINCT c.parent_run_id), count(*) FROM runs c JOIN runs p "
        "ON p.run_id = c.parent_run_id AND c.parent_key = 'ship' AND c.parent_attempt = 1",
    )
    assert links == [(PARENTS, PARENTS)]
    per_event = query(
        state, "SELECT count(DISTINCT event_id), count(*) FROM runs WHERE event_id IS NOT NULL"
    )
    assert per_event == [(PARENTS, PARENTS)]
    ((parent_id, child_id),) = query(
        state, "SELECT parent_run_id, run_id FROM runs WHERE parent_run_id IS NOT NULL LIMIT 1"
    )
    parent_shown, child_shown = cued(config, "show", parent_id), cued(config, "show", child_id)
    assert f"child     {child_id} (shipping, succeeded)" in parent_shown.stdout
    assert f"parent    {parent_id} (task ship)" in child_shown.stdout
    lines = ledger.read_text().split("\n")
    done = sorted(line for line in lines if line.startswith("done "))
    assert done == sorted(f"done label-{n}" for n in range(PARENTS))
