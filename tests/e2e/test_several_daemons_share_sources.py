"""Two daemons (processes) on one PostgreSQL database with the same sources: a schedule
tick fires once in the two (one event, one run), and each file of a shared drop folder is
recorded by exactly one of them, also when one is killed with -9 mid-way."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import anyio

from tests.support.daemon import Daemon
from tests.support.raw_http import free_port
from tests.support.stores import StoreAt, fresh_database

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

NODE = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "{url}"
shutdown_grace = "1s"
{sources}
[pipelines.p]
max_active_runs = 1000
[pipelines.p.tasks.t]
kind = "shell"
command = "true"

[[triggers]]
source = "{source}"
pipeline = "p"
"""

SCHEDULE = """
[sources.tick]
kind = "schedule"
every = "200ms"
"""

FILES = """
[sources.drop]
kind = "files"
path = "{folder}"
stable_for = "0s"
rescan_every = "1s"
"""

FILE_COUNT = 300


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 120) -> None:
    """Poll ``check`` until true: the daemons are other processes, which cannot signal us."""
    with anyio.fail_after(timeout_s):
        while not await check():  # noqa: ASYNC110 - effects in other processes
            await anyio.sleep(0.05)


def node(tmp_path: Path, name: str, url: str, source: str, sources: str) -> Daemon:
    folder = tmp_path / name
    folder.mkdir()
    config = folder / "config.toml"
    text = NODE.format(port=free_port(), url=url, sources=sources, source=source)
    config.write_text(text)
    return Daemon(config, folder / "postgresql")


def drop_file(folder: Path, name: str) -> None:
    """Whole at once (written under a hidden name, then renamed): no listing sees it half
    written, which would be another file (``stable_for`` is 0)."""
    hidden = folder / f".{name}"
    hidden.write_text(name)
    hidden.rename(folder / name)


async def one_run_per_event(db: StoreAt, source: str) -> tuple[list[str], Counter[str]]:
    events = [e for (e,) in await db.query("SELECT event_id FROM events WHERE source = ?", source)]
    runs = Counter(e for (e,) in await db.query("SELECT event_id FROM runs"))
    return events, runs


async def test_a_schedule_tick_fires_once_in_two_daemons(tmp_path):
    async with fresh_database(migrated=True) as url:
        db = StoreAt("postgresql", url)
        nodes = [node(tmp_path, name, url, "tick", SCHEDULE) for name in ("a", "b")]
        try:
            for daemon in nodes:
                await daemon.start()

            async def ticked() -> bool:
                return len(await db.query("SELECT 1 FROM events")) >= 20

            await until(ticked)
        finally:
            for daemon in nodes:
                assert daemon.stop() == 0
        events, runs = await one_run_per_event(db, "tick")
    assert len(events) >= 20
    assert len(set(events)) == len(events)
    # each tick has its one run, and no run is of a tick not recorded
    assert runs == Counter(events)


async def test_each_file_of_a_shared_folder_is_recorded_by_one_daemon_through_a_kill_9(
    tmp_path,
):
    drop = tmp_path / "drop"
    drop.mkdir()
    sources = FILES.format(folder=drop)
    async with fresh_database(migrated=True) as url:
        db = StoreAt("postgresql", url)
        a, b = (node(tmp_path, name, url, "drop", sources) for name in ("a", "b"))
        names = [f"f{n:04d}.csv" for n in range(FILE_COUNT)]
        try:
            await a.start()
            await b.start()
            for name in names[: FILE_COUNT // 2]:
                drop_file(drop, name)

            async def some_recorded() -> bool:
                return len(await db.query("SELECT 1 FROM events")) >= FILE_COUNT // 10

            await until(some_recorded)
            a.kill9()  # mid-way: files it recorded may be left unmoved
            for name in names[FILE_COUNT // 2 :]:
                drop_file(drop, name)

            def all_moved() -> bool:
                return sorted(p.name for p in (drop / "processed").iterdir()) == names

            async def moved() -> bool:
                return all_moved()

            await until(moved)
        finally:
            a.stop()  # killed already, unless a failure came first
            assert b.stop() == 0
        events, runs = await one_run_per_event(db, "drop")
    assert not [p for p in drop.iterdir() if p.is_file()]  # none left behind
    assert sorted(e.split(":")[1] for e in events) == names  # each recorded exactly once
    assert runs == Counter(events)  # with one run each
