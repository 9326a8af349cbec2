"""``cued events replay`` and ``cued backfill`` as a user runs them, real processes: with
no daemon (the CLI does it here, runs to their end) and through the running daemon's
control socket; what each prints; its arguments refused with one clear line."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

from cued.daemon.assembly import open_intake
from cued.daemon.config import load_config
from cued.daemon.sdk.sources import Event
from tests.support.daemon import Daemon, cued, query, wait_for

if TYPE_CHECKING:
    from pathlib import Path

CONFIG = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
log_level = "warning"

[sources.hook]
kind = "webhook"
path = "/hook"

[sources.yearly]
kind = "schedule"
cron = "0 0 1 1 *"
catchup = "none"

[[triggers]]
source = "hook"
pipeline = "first"
when = "event.data.go"

[[triggers]]
source = "yearly"
pipeline = "first"

[pipelines.first]
[pipelines.first.tasks.say]
kind = "shell"
argv = ["true"]

[pipelines.second]
[pipelines.second.tasks.say]
kind = "shell"
argv = ["true"]
"""

ADDED = """
[[triggers]]
name = "added"
source = "hook"
pipeline = "second"
"""


async def record(config: Path, events: list[Event]) -> None:
    """Hand ``events`` to a real intake on the state file, their runs seen to their end."""
    async with open_intake(load_config(config)) as (runner, intake):
        receipts = await intake.record(events)
        for run_id in [r for receipt in receipts for r in receipt.run_ids]:
            await runner.wait(run_id)


def runs_of(tmp_path: Path, pipeline: str) -> list[tuple[str, str | None]]:
    return query(
        tmp_path / "state.db",
        "SELECT state, event_id FROM runs WHERE pipeline = ? ORDER BY run_id",
        pipeline,
    )


async def test_replay_here_and_through_the_daemon(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    await record(config, [Event("hook", "e-1", {"go": True}), Event("hook", "e-2", {})])
    config.write_text(CONFIG + ADDED)

    here = cued(config, "events", "replay", "e-1")
    assert here.returncode == 0, here.stderr
    lines = here.stdout.splitlines()
    assert lines[-2].startswith("event e-1 (hook): started, started run ")
    assert lines[-2].endswith(
        "; trigger 'hook->first': pipeline 'first' ran for this event already"
    )
    assert lines[-1] == (
        "replayed 1 event(s): 1 run(s) started, 0 skipped as duplicates, 0 no match, "
        "0 invalid, 0 with errors"
    )
    assert runs_of(tmp_path, "second") == [("succeeded", "e-1")]
    # `cued show` names the event the replayed run came from
    run_id = lines[-2].split("started run ")[1].split(";")[0]
    assert "e-1" in cued(config, "show", run_id).stdout

    # the config may come after the command too, as everywhere
    twice = subprocess.run(  # noqa: ASYNC221 - the CLI to its end, as cued() runs it
        [sys.executable, "-m", "cued.daemon.cli", "events", "replay", "e-1", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert twice.stdout.splitlines()[-1].startswith(
        "replayed 1 event(s): 0 run(s) started, 1 skipped"
    )

    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    try:
        chosen = cued(config, "events", "replay", "--source", "hook", "--since=-1h")
        assert chosen.returncode == 0, chosen.stderr
        # e-2 now matches "added" (no when): it starts; e-1 ran both already
        assert chosen.stdout.splitlines()[-1] == (
            "replayed 2 event(s): 1 run(s) started, 1 skipped as duplicates, 0 no match, "
            "0 invalid, 0 with errors"
        )
        forced = cued(config, "events", "replay", "e-1", "--trigger", "added", "--force")
        assert forced.stdout.splitlines()[-1].startswith("replayed 1 event(s): 1 run(s) started")
    finally:
        assert daemon.stop() == 0
    assert [e for _, e in runs_of(tmp_path, "second")] == ["e-1", "e-2", "e-1"]

    for args, error in [
        (["--since", "yesterday"], "cued: error: --since 'yesterday' is not a time: give ISO"),
        (["--source", "hook", "--status", "lost"], "cued: error: status 'lost' is not one of"),
        (["--trigger", "nope"], "cued: error: no trigger 'nope' (known: 1: hook->first"),
        ([], "cued: error: choose the events to replay"),
    ]:
        refused = cued(config, "events", "replay", *args)
        assert refused.returncode == 1
        assert refused.stderr.startswith(error), refused.stderr
    # `cued events` alone still lists
    assert "e-2" in cued(config, "events").stdout


async def test_backfill_here_then_through_the_daemon_fires_each_tick_once(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    span = ["--from", "2020-01-01", "--to", "2024-01-01T00:00:00Z"]

    here = cued(config, "backfill", "yearly", *span, "--concurrency", "3")
    assert here.returncode == 0, here.stderr
    assert here.stderr.splitlines() == [
        "backfill yearly: 3/4 ticks, 3 recorded, 0 recorded before, 3 run(s) started",
        "backfill yearly: 4/4 ticks, 4 recorded, 0 recorded before, 4 run(s) started",
    ]
    assert here.stdout == (
        "backfill yearly: 4 tick(s), 4 recorded, 0 recorded before (started nothing), "
        "4 run(s): 4 succeeded\n"
    )
    ticks = [f"yearly:{year}-01-01T00:00:00Z" for year in (2020, 2021, 2022, 2023)]
    assert sorted(e for _, e in runs_of(tmp_path, "first")) == ticks

    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    try:
        again = cued(config, "backfill", "yearly", "--from", "2019-06-01", "--to", "2025-01-01")
        assert again.returncode == 0, again.stderr
        assert again.stdout == (
            "backfill yearly: 5 tick(s), 1 recorded, 4 recorded before (started nothing), "
            "1 run(s): 1 succeeded\n"
        )
        assert len(again.stderr.splitlines()) == 5  # --concurrency 1: a line a tick
    finally:
        assert daemon.stop() == 0
    assert len(runs_of(tmp_path, "first")) == 5

    for args, error in [
        (["yearly", "--from", "soon", "--to", "now"], "cued: error: --from 'soon' is not a time"),
        (["hook", "--from=-1d", "--to", "now"], "cued: error: source 'hook' is of kind"),
        (["nope", "--from=-1d", "--to", "now"], "cued: error: no source 'nope'"),
        (["yearly", "--from=-1d", "--to", "2999-01-01"], "cued: error: --to '2999-01-01' is"),
        (["yearly", "--from=-1d", "--to=-2d"], "cued: error: --from '-1d' is not before"),
        (
            ["yearly", "--from=-1d", "--to", "now", "--concurrency", "0"],
            "cued: error: --concurrency 0 is not between 1 and 1000",
        ),
    ]:
        refused = cued(config, "backfill", *args)
        assert refused.returncode == 1, refused.stdout
        assert refused.stderr.startswith(error), refused.stderr


async def test_a_backfill_cut_by_kill_9_and_run_again_fires_each_tick_once(tmp_path):
    config = tmp_path / "config.toml"
    # each run waits for RELEASE: the first tick's run holds the backfill for sure
    config.write_text(
        CONFIG.replace(
            'argv = ["true"]',
            f'argv = ["sh", "-c", "while [ ! -e {tmp_path / "RELEASE"} ]; do sleep 0.02; done"]',
            1,
        )
    )
    state = tmp_path / "state.db"
    span = ["yearly", "--from", "2020-01-01", "--to", "2024-01-01"]
    daemon = Daemon(config, state)
    await daemon.start()
    backfill = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "backfill", *span],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await wait_for(lambda: len(query(state, "SELECT 1 FROM runs")) == 1)
        daemon.kill9()
        _, err = backfill.communicate(timeout=60)
    finally:
        if backfill.poll() is None:
            backfill.kill()
            backfill.wait()
    assert backfill.returncode == 1
    assert err.startswith("cued: error: "), err

    (tmp_path / "RELEASE").touch()
    await daemon.start()  # the run cut short resumes
    try:
        again = cued(config, "backfill", *span, timeout_s=120)
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith(
            "backfill yearly: 4 tick(s), 3 recorded, 1 recorded before (started nothing)"
        )
    finally:
        assert daemon.stop() == 0
    assert sorted(e for _, e in runs_of(tmp_path, "first")) == [
        f"yearly:{year}-01-01T00:00:00Z" for year in (2020, 2021, 2022, 2023)
    ]
    assert {s for s, _ in runs_of(tmp_path, "first")} == {"succeeded"}
