"""kill -9 of the daemon while flow control holds events (inside a debounce window, with
delayed events queued, with a batch half full), then a restart: every event is accounted
for exactly once: one run per window, batch or delay, none twice, none lost. And the
command line of a daemon that holds events: ``cued events`` says why, ``cued validate``
names bad settings with their line."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest

from tests.support.daemon import Daemon, cued, query, wait_for
from tests.support.flow_ledger import NOTED_ORDERS
from tests.support.raw_http import free_port

CONFIG = (
    """
[http]
listen = "127.0.0.1:{port}"

[daemon]
state = "state.db"
shutdown_grace = "1s"
"""
    + NOTED_ORDERS
    + "{flow}\n"
)

# long enough that the kill falls inside the windows, whatever the machine's load: the test
# checks that they are held when it kills
CASES = {
    "debounce": (
        (
            'debounce = { period = "8s", keep = "all" }\n'
            "inputs = { ids = \"{{ event.batch | map(attribute='id') | join(' ') }}\" }"
        ),
        [f"c{i % 4}" for i in range(20)],
        4,  # one run per key's burst
    ),
    "throttle": (
        (
            'throttle = { limit = 2, period = "4s", excess = "delay" }\ninputs = { ids = "{{ event.id }}" }'
        ),
        ["c0"] * 6,
        6,  # every event, two per period
    ),
    "batch": (
        (
            'batch = { size = 5, timeout = "8s" }\n'
            "inputs = { ids = \"{{ event.batch | map(attribute='id') | join(' ') }}\" }"
        ),
        ["c0"] * 12,
        3,  # two full batches at once, the half-full third at its timeout
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_kill_9_while_events_are_held_then_restart_accounts_for_each_once(tmp_path, case):
    flow, customers, runs_expected = CASES[case]
    ledger, state = tmp_path / "ledger", tmp_path / "state.db"
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(port=port, ledger=ledger, flow=flow))

    daemon = Daemon(config, state)
    await daemon.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for customer in customers:
                answer = await client.post("/hooks/orders", json={"customer": customer})
                assert answer.status_code == 202, answer.text
        # every event is recorded (acknowledged after commit); some are held right now
        assert query(state, "SELECT count(*) FROM events") == [(len(customers),)]
        assert query(state, "SELECT count(*) FROM flow_holds")[0][0] > 0
    finally:
        daemon.kill9()
    # a run released before the kill may have been in its task: that task runs again after
    # the restart (a shell command is not known to have ended), and notes its events again
    released_before = {
        i for (inputs,) in query(state, "SELECT inputs FROM runs") for i in _ids(inputs)
    }

    daemon = Daemon(config, state)
    await daemon.start()
    try:
        await wait_for(
            lambda: (
                query(state, "SELECT count(*) FROM flow_holds") == [(0,)]
                and query(state, "SELECT count(*) FROM runs WHERE state = 'succeeded'")
                == [(runs_expected,)]
            ),
            timeout_s=90,
        )
    finally:
        assert daemon.stop() == 0

    events = query(state, "SELECT event_id, status, run_ids FROM events")
    assert len(events) == len(customers)
    assert {status for _, status, _ in events} == {"matched"}
    # each event is in exactly one run, and that run ran once, with the event in its inputs
    assert all(run_ids.count(",") == 0 and run_ids != "[]" for _, _, run_ids in events)
    assert query(state, "SELECT count(*) FROM runs") == [(runs_expected,)]
    noted = Counter(i for line in ledger.read_text().splitlines() for i in line.split())
    assert sorted(noted) == sorted(e for e, _, _ in events)
    assert all(n == 1 for e, n in noted.items() if e not in released_before), noted
    assert all(n <= 2 for n in noted.values()), noted
    assert query(state, "SELECT count(*) FROM flow_windows") == [(0,)]


async def test_cued_events_says_why_an_event_waits_and_validate_names_bad_settings(tmp_path):
    ledger, state = tmp_path / "ledger", tmp_path / "state.db"
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        CONFIG.format(port=port, ledger=ledger, flow='batch = { size = 3, timeout = "1h" }')
    )
    daemon = Daemon(config, state)
    await daemon.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            answer = await client.post("/hooks/orders", json={"customer": "c7"})
            assert answer.json()["status"] == "held"
            listed = cued(config, "events", "--status", "held", "--full")
            for _ in range(2):  # the batch is full: its run starts
                await client.post("/hooks/orders", json={"customer": "c7"})
        await wait_for(lambda: query(state, "SELECT count(*) FROM runs") == [(1,)])
        ((run_id,),) = query(state, "SELECT run_id FROM runs")
        shown = cued(config, "show", run_id)
    finally:
        assert daemon.stop() == 0
    assert listed.returncode == 0, listed.stderr
    assert answer.json()["event_id"] in listed.stdout
    assert "trigger 'orders->sync' of key 'c7': waits in batch" in listed.stdout
    assert shown.returncode == 0, shown.stderr
    assert "trigger 'orders->sync' batch of key 'c7': 3 event(s) of window" in shown.stdout, (
        shown.stdout
    )

    config.write_text(
        CONFIG.format(
            port=port,
            ledger=ledger,
            flow='throttle = { limit = 0, period = "1m", excess = "later" }',
        )
    )
    checked = cued(config, "validate")
    assert checked.returncode == 2
    line = (
        config.read_text()
        .splitlines()
        .index('throttle = { limit = 0, period = "1m", excess = "later" }')
        + 1
    )
    assert f"{config}:{line}: triggers.0.throttle.limit" in checked.stderr
    assert f"{config}:{line}: triggers.0.throttle.excess" in checked.stderr


def _ids(inputs: str) -> list[str]:
    """The event ids a run of ``sync`` was given (its ``ids`` input, space-separated)."""
    return str(json.loads(inputs).get("ids", "")).split()
