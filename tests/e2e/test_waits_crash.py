"""kill -9 of the daemon while runs wait for an event or for a moment, then restart: each
run wakes exactly once, from an event delivered before the kill, from one that came while
the daemon was down (recorded by its source at the restart), or from its timer, which
is not restarted from zero (one that came due while the daemon was down fires at the
restart, one still ahead stays parked at its moment); and an event of the pipeline's ``cancel_on`` that came while
it was down cancels its run at the restart."""

from __future__ import annotations

import time
from collections import Counter

import anyio
import httpx

from tests.support.daemon import cued, killed_after, query, stopped_after, wait_for
from tests.support.raw_http import free_port

CONFIG = """
[http]
listen = "127.0.0.1:{port}"

[daemon]
state = "state.db"
shutdown_grace = "1s"

[sources.payments]
kind = "files"
path = "drop"
stable_for = "0s"
rescan_every = "100ms"

[sources.cancels]
kind = "files"
path = "cancels"
stable_for = "0s"
rescan_every = "100ms"

[pipelines.checkout]
inputs = {{ order_id = "" }}
cancel_on = [{{ source = "cancels", match = "event.data.name == run.inputs.order_id" }}]

[pipelines.checkout.tasks.payment]
kind = "wait_event"
source = "payments"
match = "event.data.name == inputs.order_id"

[pipelines.checkout.tasks.ship]
kind = "shell"
needs = ["payment"]
command = "echo woke {{{{ inputs.order_id }}}} >> {ledger}"

[pipelines.split]
inputs = {{ order_id = "" }}

[pipelines.split.tasks.payment]
kind = "wait_event"
source = "payments"
match = "event.data.name == inputs.order_id"

[pipelines.split.tasks.side]
kind = "shell"
command = "while [ ! -f {hold} ]; do sleep 0.02; done"

[pipelines.split.tasks.ship]
kind = "shell"
needs = ["payment", "side"]
command = "echo woke {{{{ inputs.order_id }}}} >> {ledger}"

[pipelines.nap]
inputs = {{ at = 0.0 }}

[pipelines.nap.tasks.until]
kind = "sleep"
until = "{{{{ inputs.at }}}}"

[pipelines.nap.tasks.ship]
kind = "shell"
needs = ["until"]
command = "echo woke timer >> {ledger}"
"""


async def _trigger(api: httpx.AsyncClient, pipeline: str, **inputs: object) -> str:
    response = await api.post(f"/api/v1/pipelines/{pipeline}/runs", json={"inputs": inputs})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def _state(state, run_id: str) -> str:
    return query(state, "SELECT state FROM runs WHERE run_id = ?", run_id)[0][0]


def _waits(state, run_id: str) -> list[tuple[str, int]]:
    return query(state, "SELECT state, applied FROM waits WHERE run_id = ?", run_id)


async def test_runs_waiting_for_events_and_timers_wake_once_across_kill_9(tmp_path):
    ledger, drop, cancels = tmp_path / "ledger", tmp_path / "drop", tmp_path / "cancels"
    drop.mkdir()
    cancels.mkdir()
    config = tmp_path / "config.toml"
    port = free_port()
    hold = tmp_path / "hold"
    config.write_text(CONFIG.format(ledger=ledger, port=port, hold=hold))
    try:
        await _kill_9_while_waiting(config, tmp_path, ledger, drop, cancels, hold, port)
    finally:
        hold.touch()  # no shell loop of a killed daemon outlives the test


async def _kill_9_while_waiting(config, tmp_path, ledger, drop, cancels, hold, port):
    state = tmp_path / "state.db"

    async with killed_after(config, state):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            runs = {n: await _trigger(api, "checkout", order_id=n) for n in ("A", "B", "C", "D")}
            # E waits for its payment while a task of it still runs (held): in memory
            runs["E"] = await _trigger(api, "split", order_id="E")
            # comes due while the daemon is down (the restart waits for it), and one an
            # hour on, which must stay parked at its moment through the kill and the restart
            due = time.time() + 3
            runs["timer"] = await _trigger(api, "nap", at=due)
            later = time.time() + 3600
            runs["later"] = await _trigger(api, "nap", at=later)
        await wait_for(
            lambda: (
                all(_state(state, runs[r]) == "waiting" for r in runs if r not in ("E", "timer"))
                and _state(state, runs["E"]) == "running"
                and all(_waits(state, runs[r]) == [("waiting", 0)] for r in runs if r != "timer")
                and _waits(state, runs["timer"]) != []
            )
        )
        (drop / "A").write_text("paid")
        # its run ended before the kill (a task killed mid-attempt runs again: not this)
        await wait_for(lambda: _state(state, runs["A"]) == "succeeded")

    # while the daemon is down: the payments of B and E come, D is cancelled, and the
    # timer's moment passes (it is as due at the restart whatever the machine's speed)
    (drop / "B").write_text("paid")
    (drop / "E").write_text("paid")
    (cancels / "D").write_text("cancelled")
    await anyio.sleep(max(0.0, due - time.time()))

    async with stopped_after(config, state):
        await wait_for(
            lambda: (
                all(_state(state, runs[r]) == "succeeded" for r in ("A", "B", "timer"))
                and _state(state, runs["D"]) == "cancelled"
                and _waits(state, runs["E"]) == [("matched", 0)]
            ),
            timeout_s=60,
        )
        # E's side task runs again (it was killed mid-attempt); its wait, matched, goes
        # on once the run has nothing else running
        hold.touch()
        await wait_for(lambda: _state(state, runs["E"]) == "succeeded")
        assert _state(state, runs["C"]) == "waiting"
        assert _state(state, runs["later"]) == "waiting"

    woke = Counter(_lines(ledger))
    assert woke == {"woke A": 1, "woke B": 1, "woke E": 1, "woke timer": 1}
    for name in ("A", "B", "E"):
        assert _waits(state, runs[name]) == [("matched", 1)]
    assert _waits(state, runs["timer"]) == [("expired", 1)]
    assert _waits(state, runs["C"]) == [("waiting", 0)]
    assert _waits(state, runs["later"]) == [("waiting", 0)]
    ((kept,),) = query(state, "SELECT deadline_at FROM waits WHERE run_id = ?", runs["later"])
    assert kept == later
    assert _waits(state, runs["D"]) == [("cancelled", 1)]
    shown = cued(config, "show", runs["C"])
    assert shown.returncode == 0, shown.stderr
    (line,) = [
        line
        for line in shown.stdout.splitlines()
        if line.startswith("payment ") and "waiting" in line and "event of" in line
    ]
    assert "an event of 'payments' where event.data.name == inputs.order_id" in line
    ((error,),) = query(state, "SELECT error FROM runs WHERE run_id = ?", runs["D"])
    assert error.startswith("cancelled by event 'cancels:D:")
    # the timer kept its moment across the kill: it woke at it, not restarted from zero
    (ended,) = query(
        state, "SELECT ended_at FROM attempts WHERE run_id = ? AND key = 'until'", runs["timer"]
    )[0]
    assert ended >= due
    # each wait's attempt ran once: woken, not started again
    attempts = query(
        state,
        "SELECT run_id, count(*) FROM attempts WHERE key IN ('payment', 'until') GROUP BY run_id",
    )
    assert all(n == 1 for _, n in attempts)


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
