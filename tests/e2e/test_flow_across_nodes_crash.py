"""Two daemons (processes) on one PostgreSQL database take the events of two keys, each
event posted to either; the node that opened the windows is killed with -9 while they
are held. The other releases them when due (it never restarts the dead one): one run per
window, or per batch, each event in exactly one, none twice, none lost."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from tests.support.daemon import Daemon
from tests.support.flood import none_unfinished, until
from tests.support.flow_ledger import NOTED_ORDERS
from tests.support.raw_http import free_port
from tests.support.stores import StoreAt, fresh_database

CONFIG = (
    """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "env:CUED_DATABASE_URL"
node = "{node}"
lease = "3s"
shutdown_grace = "1s"
"""
    + NOTED_ORDERS
    + """inputs = {{ ids = "{{{{ event.batch | map(attribute='id') | join(' ') }}}}" }}
{flow}
"""
)

# long enough that the kill falls inside the windows, whatever the machine's load: the test
# checks that they are held when it kills
CASES = {
    # the flow, the runs before the kill and in all
    "debounce": ('debounce = { period = "6s", keep = "all" }', 0, 2),  # one run per key
    "batch": ('batch = { size = 4, timeout = "15s" }', 4, 6),  # c0: 4+4+2, c1: 4+4+2
}
EVENTS = 20  # c0 and c1 alternately, to n1 and n2 alternately


@pytest.mark.parametrize("case", list(CASES))
async def test_the_windows_of_a_node_killed_with_9_are_released_by_the_other(
    tmp_path, monkeypatch, case
):
    flow, runs_before, runs_expected = CASES[case]
    ledger = tmp_path / "ledger"
    ports = {node: free_port() for node in ("n1", "n2")}
    daemons: dict[str, Daemon] = {}
    async with fresh_database(migrated=True) as url:
        monkeypatch.setenv("CUED_DATABASE_URL", url)  # the daemons inherit it
        db = StoreAt("postgresql", url)
        for node, port in ports.items():
            folder = tmp_path / node
            folder.mkdir()
            config = folder / "config.toml"
            config.write_text(CONFIG.format(port=port, node=node, ledger=ledger, flow=flow))
            daemons[node] = Daemon(config, folder / "postgresql")
        try:
            # n1 first: it opens the windows, n2's events join them
            await daemons["n1"].start(timeout_s=60)
            await daemons["n2"].start(timeout_s=60)
            for n in range(EVENTS):
                port = ports["n1" if n % 4 < 2 else "n2"]
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    answer = await client.post("/hooks/orders", json={"customer": f"c{n % 2}"})
                assert answer.status_code == 202, answer.text
            assert len(await db.query("SELECT event_id FROM events")) == EVENTS

            # the full batches' runs ended (a run n1 has in hand at the kill would be
            # adopted by n2 and might run a task again: not what this test is about)
            async def before() -> bool:
                runs = await db.query("SELECT count(*) FROM runs")
                return runs == [(runs_before,)] and await none_unfinished(db)

            await until(before)
            assert (await db.query("SELECT count(*) FROM flow_holds"))[0][0] > 0
            daemons["n1"].kill9()

            async def released() -> bool:
                holds = await db.query("SELECT count(*) FROM flow_holds")
                done = await db.query("SELECT count(*) FROM runs WHERE state = 'succeeded'")
                return holds == [(0,)] and done == [(runs_expected,)]

            await until(released, timeout_s=90)
        finally:
            for node, daemon in daemons.items():
                if daemon.process is not None and daemon.process.poll() is None:
                    assert daemon.stop() == 0, node
        events = await db.query("SELECT event_id, status, run_ids FROM events")
        assert await db.query("SELECT count(*) FROM runs") == [(runs_expected,)]
        assert await db.query("SELECT count(*) FROM flow_windows") == [(0,)]
    assert {status for _, status, _ in events} == {"matched"}
    # each event is in exactly one run, and that run ran once, with the event in its inputs
    assert all(run_ids.count(",") == 0 and run_ids != "[]" for _, _, run_ids in events)
    noted = Counter(i for line in ledger.read_text().splitlines() for i in line.split())
    assert sorted(noted) == sorted(e for e, _, _ in events)
    assert set(noted.values()) == {1}
