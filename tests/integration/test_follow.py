"""A run followed as it goes (``cued trigger --wait``): every attempt's start and end,
retries included, then the run's end; read from the store, as another process would."""

from __future__ import annotations

import anyio
import pytest

from cued.daemon.assembly import open_runner
from cued.daemon.ops import commands
from cued.daemon.ops.follow import AttemptEnded, AttemptStarted, RunSettled, follow
from cued.daemon.ops.queries import Queries
from tests.support.stores import keeping_state_in


@pytest.fixture
def make_config(make_config, store_at):
    """This module's configs, once on each store (SQLite and PostgreSQL)."""
    return keeping_state_in(make_config, store_at)


CONFIG = """
[daemon]
state = "state.db"

[pipelines.p.tasks.first]
kind = "shell"
argv = ["echo", "one"]

[pipelines.p.tasks.flaky]
kind = "shell"
needs = ["first"]
# fails the first time (no marker yet), succeeds the second
argv = ["sh", "-c", "test -e marker || { touch marker; exit 3; }"]
retries = 1
retry_backoff = "0s"
"""


async def test_every_attempt_is_seen_to_start_and_end_then_the_run(make_config, tmp_path):
    config = make_config(CONFIG.replace("marker", str(tmp_path / "marker")))
    seen: list[tuple[str, str, int, str]] = []
    with anyio.fail_after(30):
        async with open_runner(config) as daemon:
            run_id = (await commands.trigger(daemon, "p")).run_id
            async for change in follow(Queries.of(daemon), run_id, max_interval_s=0.05):
                if isinstance(change, RunSettled):
                    settled = change.run
                    break
                kind = "started" if isinstance(change, AttemptStarted) else "ended"
                a = change.attempt
                seen.append((kind, a.key, a.attempt, a.state if kind == "ended" else ""))
    assert settled.state == "succeeded"
    assert seen == [
        ("started", "first", 1, ""),
        ("ended", "first", 1, "succeeded"),
        ("started", "flaky", 1, ""),
        ("ended", "flaky", 1, "failed"),
        ("started", "flaky", 2, ""),
        ("ended", "flaky", 2, "succeeded"),
    ]


async def test_a_finished_run_is_told_at_once(make_config):
    config = make_config(CONFIG.replace("test -e marker || { touch marker; exit 3; }", "true"))
    with anyio.fail_after(30):
        async with open_runner(config) as daemon:
            run = await commands.trigger(daemon, "p", wait=True)
            changes = [c async for c in follow(Queries.of(daemon), run.run_id)]
    assert [type(c) for c in changes] == [
        AttemptStarted,
        AttemptEnded,
        AttemptStarted,
        AttemptEnded,
        RunSettled,
    ]
