"""kill -9 of the daemon while hundreds of runs wait behind ``max_active_runs`` with a
window of a few loaded, then restart: every run starts, exactly once, in the order its
event came."""

from __future__ import annotations

from tests.support.daemon import (
    killed_after,
    post_events,
    query,
    run_to_the_end,
    stopped_after,
    wait_for,
    webhook_config,
    write_config,
)
from tests.support.raw_http import free_port

RUNS, HELD_FROM = 300, 150

CONFIG = (
    webhook_config("backlog_window = 5")
    + """
[pipelines.p]
max_active_runs = 1
inputs = { n = 0 }
[pipelines.p.tasks.t]
kind = "shell"
# runs from HELD_FROM on hold until the file `go` exists: the kill falls while the run
# HELD_FROM runs and all after it wait, however fast or slow the machine is
command = "if [ {{ inputs.n }} -ge @HELD@ ]; then while [ ! -f @GO@ ]; do sleep 0.02; done; fi; echo {{ inputs.n }} >> @LEDGER@"

[[triggers]]
source = "hook"
pipeline = "p"
inputs = { n = "{{ event.data.n }}" }
"""
)


def ledger_of(path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


async def test_kill_9_with_runs_waiting_cold_then_restart_starts_each_once_in_order(tmp_path):
    port, ledger, go = free_port(), tmp_path / "ledger", tmp_path / "go"
    config = write_config(tmp_path, CONFIG, PORT=port, HELD=HELD_FROM, GO=go, LEDGER=ledger)
    state = tmp_path / "state.db"

    async with killed_after(config, state):
        await post_events(port, [(f"d{n}", {"n": n}) for n in range(RUNS)])
        await wait_for(lambda: len(ledger_of(ledger)) == HELD_FROM, timeout_s=120)
        running = "SELECT count(*) FROM runs WHERE state = 'running'"
        await wait_for(lambda: query(state, running) == [(1,)])
    waiting = query(state, "SELECT count(*) FROM runs WHERE state = 'queued'")
    assert waiting == [(RUNS - HELD_FROM - 1,)]
    go.touch()

    await run_to_the_end(config, state)

    # each run ran once, in order; but the one the kill interrupted: its task's process,
    # orphaned by the kill, may write too, beside the attempt that resumed it
    written = ledger_of(ledger)
    assert written.count(HELD_FROM) in (1, 2)
    first = [n for i, n in enumerate(written) if n != HELD_FROM or HELD_FROM not in written[:i]]
    assert first == list(range(RUNS))
    assert query(state, "SELECT state, count(*) FROM runs GROUP BY state") == [("succeeded", RUNS)]
    per_event = query(state, "SELECT count(DISTINCT event_id), count(*) FROM runs")
    assert per_event == [(RUNS, RUNS)]
    again = query(state, "SELECT count(*) FROM attempts WHERE attempt > 1")
    assert again == [(1,)]


async def test_a_source_is_still_refused_past_the_high_water_mark_with_runs_cold(tmp_path):
    port, ledger, go = free_port(), tmp_path / "ledger", tmp_path / "go"
    template = CONFIG.replace(
        "backlog_window = 5",
        "backlog_window = 5\nbacklog_high_water = 20\nbacklog_low_water = 10",
    )
    config = write_config(tmp_path, template, PORT=port, HELD=0, GO=go, LEDGER=ledger)
    async with stopped_after(config, tmp_path / "state.db"):
        events = [(f"d{n}", {"n": n}) for n in range(40)]
        answers = [r.status_code for r in await post_events(port, events, check=False)]
        # one runs (held), twenty wait (most of them cold): the rest are refused
        assert answers.count(202) == 21
        assert set(answers[21:]) == {429}
        go.touch()
        await wait_for(lambda: len(ledger_of(ledger)) == 21, timeout_s=60)
        # all of them started: the backlog drained, the source is accepted again
        await post_events(port, [("late", {"n": 99})])
