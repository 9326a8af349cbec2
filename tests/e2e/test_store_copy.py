"""``cued store copy``: a state file with every kind of row moves to PostgreSQL and back,
row for row, checked by counts; a target that holds anything is refused."""

from __future__ import annotations

import sqlite3

from cued.daemon.core.ids import new_id
from cued.daemon.store import (
    ApprovalRow,
    AttemptRow,
    CancelRow,
    CursorRow,
    DecisionRow,
    DedupeRow,
    EventRow,
    HoldRow,
    InstanceRow,
    LogLineRow,
    OutboxRow,
    PauseRow,
    RunRow,
    ThrottleRow,
    WaitRow,
    WindowRow,
)
from cued.daemon.store.copying import TABLES
from cued.daemon.store.postgresql import open_pg_store
from cued.daemon.store.sqlite import open_store
from tests.support.daemon import cued
from tests.support.stores import fresh_database

T0 = 1_800_000_000.0


def every_kind_of_row(n: int) -> list:
    run_id = new_id()
    return [
        RunRow(run_id, "p", "succeeded", {"n": n, "é": "\u2603"}, T0, T0, T0 + 1, None,
               f"hook:{n}", "00-abc-def-01", n % 2 + 1),
        InstanceRow(run_id, f"m[{n}]", "m", n, "succeeded", 2, None, T0 + 1, 1),
        AttemptRow(run_id, f"m[{n}]", 1, "failed", T0, T0 + 0.5, "boom"),
        AttemptRow(run_id, f"m[{n}]", 2, "succeeded", T0 + 0.5, T0 + 1, None, '{"rows": 3}',
                   0.125, {"input_tokens": 7}),
        EventRow(f"hook:{n}", "hook", T0, "matched", {"n": n}, {"headers": {"a": "b"}}, (run_id,)),
        EventRow(f"asset:{n}", "asset:orders", T0 + n, "matched", {"v": n}, {}, ()),
        DedupeRow("orders", f"key-{n}", T0),
        CursorRow(f"clock-{n}", "2026-01-01T00:00:00Z", T0),
        OutboxRow(f"alert-{n}", "ops", "run_failed", {"run": run_id}, T0, None, 2, "503", T0 + 9),
        ApprovalRow(run_id, "gate", 1, "ok?", ("ann", "group:ops"), 2, "reject", {"p": n}, T0,
                    T0 + 60, "approved", T0 + 5),
        DecisionRow(run_id, "gate", 1, "ann", "approve", {"p": n}, "fine", T0 + 5),
        LogLineRow(run_id, f"m[{n}]", 2, 1, T0 + 0.7, "stdout", f"line {n}"),
        WaitRow(run_id, "pay", 1, "event", "payments", "event.data.n == inputs.n",
                {"inputs": {"n": n}}, T0 - 60, T0 + 3600, "fail", T0, "matched", f"hook:{n}",
                '{"event": null}', T0 + 1, 1, 1),
        CancelRow(run_id, f"hook:{n}", "hook", T0 + 2, 1),
        WindowRow(f"w{n}", "orders->p", f"c{n}", "batch", "open", T0, None if n % 2 else T0 + 5, 1),
        HoldRow(f"w{n}", 1, f"hook:{n}", T0),
        ThrottleRow("orders->p", f"c{n}", (T0, T0 + 0.5), T0 + 60.5),
    ]  # fmt: skip


def dump(path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as db:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in TABLES}


async def test_a_state_file_moves_to_postgresql_and_back_row_for_row(tmp_path):
    source, back = tmp_path / "cued.db", tmp_path / "back.db"
    async with open_store(source) as store:
        # more rows than a page, so that paging is crossed in every table
        rows = [row for n in range(1200) for row in every_kind_of_row(n)]
        await store.submit(rows).wait()
        await store.set_paused("p", PauseRow("p", T0, "ann"))
        # the versions the runs name (1 and 2)
        await store.add_config_version("a = 1\n", "/etc/cued/config.toml", T0)
        await store.add_config_version("a = 2\n", "/etc/cued/config.toml", T0 + 1)
    config = tmp_path / "none.toml"  # the command needs no configuration
    async with fresh_database() as url:
        there = cued(config, "store", "copy", "--from", str(source), "--to", url, timeout_s=120)
        assert there.returncode == 0, there.stderr
        again = cued(config, "store", "copy", "--from", str(source), "--to", url)
        home = cued(config, "store", "copy", "--from", url, "--to", str(back), timeout_s=120)
        assert home.returncode == 0, home.stderr
    assert "copied 20403 rows; every table holds as many in both" in there.stdout
    assert again.returncode == 1
    assert "is not empty (1200 runs, 1200 task_instances" in again.stderr
    assert dump(back) == dump(source)
    assert all(len(rows) > 0 for rows in dump(back).values())


async def test_a_state_file_that_is_not_there_is_not_made_empty_and_copied(tmp_path):
    async with fresh_database() as url:
        copied = cued(
            tmp_path / "none.toml",
            "store",
            "copy",
            "--from",
            str(tmp_path / "typo.db"),
            "--to",
            url,
        )
    assert copied.returncode == 1
    assert "no state file at" in copied.stderr
    assert not (tmp_path / "typo.db").exists()


async def test_a_store_with_a_daemon_on_it_is_not_copied_into(tmp_path):
    source = tmp_path / "cued.db"
    async with open_store(source) as store:
        await store.submit(every_kind_of_row(1)).wait()
    async with fresh_database() as url, open_pg_store(url, shared=True):  # its daemon
        copied = cued(tmp_path / "none.toml", "store", "copy", "--from", str(source), "--to", url)
    assert copied.returncode == 1
    assert "another cued daemon is running on" in copied.stderr
