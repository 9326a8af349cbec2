"""kill -9 of the daemon while runs wait behind per-key limits (most of them cold, by id),
then restart: every event has exactly one run, no key ever had more runs active than its
limit, and each key's runs started the highest priority first, in the order their events
came within a priority."""

from __future__ import annotations

import json
from itertools import pairwise

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

KEYS, PER_KEY = ("a", "b", "c"), 40

CONFIG = (
    webhook_config("backlog_window = 5")
    + """
[pipelines.p]
inputs = { key = "", n = 0 }
[pipelines.p.tasks.t]
kind = "shell"
# every run holds until the file `go` exists: the kill falls while the first run of each
# key runs and all the others wait for their key, however fast or slow the machine is
command = "echo {{ inputs.key }} >> @LEDGER@; while [ ! -f @GO@ ]; do sleep 0.02; done"

[[triggers]]
source = "hook"
pipeline = "p"
inputs = { key = "{{ event.data.key }}", n = "{{ event.data.n }}" }
key = "{{ event.data.key }}"
concurrency = { limit = 1 }
priority = "{{ 9 if event.data.n % 3 == 1 else 2 }}"
"""
)


async def test_kill_9_with_runs_waiting_for_their_keys_then_restart_runs_each_once(tmp_path):
    port, ledger, go = free_port(), tmp_path / "ledger", tmp_path / "go"
    config = write_config(tmp_path, CONFIG, PORT=port, GO=go, LEDGER=ledger)
    state = tmp_path / "state.db"

    async with killed_after(config, state):
        events = [(f"{key}{n}", {"key": key, "n": n}) for n in range(PER_KEY) for key in KEYS]
        for response in await post_events(port, events):
            assert len(response.json()["runs"]) == 1
        running = "SELECT count(*) FROM runs WHERE state = 'running'"
        await wait_for(lambda: query(state, running) == [(len(KEYS),)], timeout_s=60)
        ((waiting_id,),) = query(
            state, "SELECT max(run_id) FROM runs WHERE state = 'queued' AND flow_key = 'a'"
        )
        shown = cued(config, "show", waiting_id)
        assert shown.returncode == 0, shown.stderr
        assert "key       a (limit 1)" in shown.stdout
        assert "waits     waiting for key 'a' (limit 1)" in shown.stdout
    waiting = query(state, "SELECT count(*) FROM runs WHERE state = 'queued'")
    assert waiting == [(len(KEYS) * (PER_KEY - 1),)]
    go.touch()

    await run_to_the_end(config, state, timeout_s=180)

    total = len(KEYS) * PER_KEY
    assert query(state, "SELECT state, count(*) FROM runs GROUP BY state") == [("succeeded", total)]
    per_event = query(state, "SELECT count(DISTINCT event_id), count(*) FROM runs")
    assert per_event == [(total, total)]
    rows = query(
        state,
        "SELECT flow_key, key_limit, priority, inputs, started_at, ended_at FROM runs "
        "ORDER BY started_at",
    )
    for key in KEYS:
        mine = [r for r in rows if r[0] == key]
        assert len(mine) == PER_KEY
        assert {(r[1]) for r in mine} == {1}
        # one at a time: each started once the one before it had ended
        for before, after in pairwise(mine):
            assert after[4] >= before[5], (key, before, after)
        # the first ran when the kill fell; the rest by priority, then by arrival
        order = [(r[2], int(json.loads(r[3])["n"])) for r in mine]
        assert order[0] == (2, 0)
        assert order[1:] == sorted(order[1:], key=lambda o: (-o[0], o[1]))
