"""The daemon on PostgreSQL, killed with -9 while webhook events pour in, then restarted:
every acknowledged event has exactly one run, every run finishes, and no task whose
success was recorded runs again. The state's URL comes from the environment
(``state = "env:CUED_DATABASE_URL"``), as a deployment would give it."""

from __future__ import annotations

from collections import Counter

import anyio
import httpx

from tests.support.daemon import Daemon, cued
from tests.support.flood import Sender, none_unfinished, succeeded_tasks, until
from tests.support.raw_http import free_port
from tests.support.stores import StoreAt, fresh_database

CONFIG = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "env:CUED_DATABASE_URL"
max_running_tasks = 16
shutdown_grace = "1s"

[sources.hook]
kind = "webhook"
path = "/hook"
id_header = "X-Delivery"          # a sender's retry is the same event

[pipelines.p]
max_active_runs = 64
[pipelines.p.tasks.first]
kind = "shell"
command = "echo start $CUED_IDEMPOTENCY_KEY >> {ledger}; echo end $CUED_IDEMPOTENCY_KEY >> {ledger}"
[pipelines.p.tasks.second]
kind = "shell"
needs = ["first"]
command = "echo start $CUED_IDEMPOTENCY_KEY >> {ledger}; echo end $CUED_IDEMPOTENCY_KEY >> {ledger}"

[[triggers]]
source = "hook"
pipeline = "p"
"""

HOOKS = 120


async def test_kill_9_of_a_daemon_on_postgresql_mid_flood_loses_and_doubles_nothing(
    tmp_path, monkeypatch
):
    async with fresh_database(migrated=True) as url:
        monkeypatch.setenv("CUED_DATABASE_URL", url)  # the daemons inherit it
        await _kill_9_mid_flood(tmp_path, StoreAt("postgresql", url))


async def _kill_9_mid_flood(tmp_path, db: StoreAt) -> None:
    port, ledger = free_port(), tmp_path / "ledger"
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(port=port, ledger=ledger))
    checked = cued(config, "validate", "--strict")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    local = tmp_path / "postgresql"  # the name of the daemon's socket and lock

    daemon = Daemon(config, local)
    await daemon.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        sender = Sender({"only": client})
        try:
            async with anyio.create_task_group() as tg:
                # two senders at once: the intake batches what arrives together
                tg.start_soon(sender.post, range(0, HOOKS, 2))
                tg.start_soon(sender.post, range(1, HOOKS, 2))
                # in the thick of it: events recorded, tasks done, much still coming
                await until(lambda: _thick(len(sender.acked), db))
                daemon.kill9()
        finally:
            daemon.kill9()
        acked_before = dict(sender.acked)
        done_before = await succeeded_tasks(db)

        daemon = Daemon(config, local)
        await daemon.start()
        try:
            # senders try again what was not acknowledged, with the same delivery ids
            await sender.post_all(HOOKS)
            await until(lambda: none_unfinished(db))
        finally:
            assert daemon.stop() == 0
    acked = sender.acked

    assert len(acked_before) < HOOKS, "the kill came after the flood"
    assert done_before, "nothing had finished at the kill"
    # every acknowledged event is there, with exactly one run, and no event twice
    runs_of = dict(await db.query("SELECT event_id, count(*) FROM runs GROUP BY event_id"))
    events = {e for (e,) in await db.query("SELECT event_id FROM events")}
    assert set(acked.values()) == events == {f"hook:d{n}" for n in range(HOOKS)}
    assert set(runs_of) == events
    assert set(runs_of.values()) == {1}
    # every run finished, each of its tasks having run
    assert await db.query("SELECT state, count(*) FROM runs GROUP BY state") == [
        ("succeeded", HOOKS)
    ]
    lines = ledger.read_text().splitlines()
    starts = Counter(line.split()[1] for line in lines if line.startswith("start"))
    ends = Counter(line.split()[1] for line in lines if line.startswith("end"))
    keys = {
        f"{run_id}/{key}"
        for run_id, key in await db.query("SELECT run_id, key FROM task_instances")
    }
    assert len(keys) == 2 * HOOKS
    assert all(ends[key] >= 1 for key in keys)
    # a task whose success was recorded before the kill never ran again
    assert {key: starts[key] for key in done_before} == dict.fromkeys(done_before, 1)
    # the CLI reads the database itself when no daemon runs
    ((run_id,),) = await db.query("SELECT run_id FROM runs WHERE event_id = 'hook:d0'")
    listed = cued(config, "runs", "--limit", "3")
    shown = cued(config, "show", run_id)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("succeeded") == 3
    assert shown.returncode == 0, shown.stderr
    assert "second" in shown.stdout


async def _thick(acked: int, db: StoreAt) -> bool:
    return acked >= 30 and len(await succeeded_tasks(db)) >= 10
