"""The ``files`` source against what a local user can drop into a watched folder: names of
any bytes, links (to files outside, dangling, in loops), pipes, and a ``processed/`` that
leads out of the tree. None of it may crash or stall the source, or make it touch anything
outside the folder."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cued.daemon.config import parse_config
from cued.daemon.core.untrusted import os_name
from cued.daemon.errors import ConnectorError
from tests.support.files_source import (
    BAD,
    Finished,
    drop,
    events_of,
    files_config,
    files_config_text,
    leaves,
    names_in,
    output_of,
    until,
)
from tests.support.running import daemon_running

if TYPE_CHECKING:
    from pathlib import Path

    from cued.daemon.assembly import DaemonInfo
    from cued.daemon.store import EventRow


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / "landing"
    folder.mkdir()
    return folder


def by_name(events: list[EventRow]) -> dict[str, EventRow]:
    return {e.data["name"]: e for e in events}


# -- names that are not UTF-8 ------------------------------------------------------------


async def test_a_name_that_is_not_utf8_is_an_invalid_event_and_goes_to_failed_as_it_is(
    tmp_path: Path, landing: Path
) -> None:
    drop(landing, BAD)
    (landing / "fine.csv").write_text("fine")
    async with daemon_running(files_config(tmp_path)) as info:
        (row,) = await Finished(info).wait(1)
        await until(lambda: names_in(landing / "failed") == [BAD])
        events = by_name(await events_of(info))
        output = await output_of(info, row.run_id)
    bad = events["bad-\\xff.csv"]
    assert bad.status == "invalid"
    assert "not valid UTF-8" in (bad.error or "")
    assert bad.run_ids == ()
    # the escaped text is what is stored; the file keeps its own bytes
    assert bad.data["path"] == str(landing / "failed" / "bad-\\xff.csv")
    assert bad.event_id.startswith("landing:bad-\\xff.csv:")
    assert names_in(landing) == []
    assert output["text"] == "fine"


async def test_the_watcher_goes_on_after_a_name_it_cannot_report(
    tmp_path: Path, landing: Path
) -> None:
    # a rescan a minute away: within the test, only the watcher can bring files in
    config = files_config(tmp_path, 'rescan_every = "60s"')
    async with daemon_running(config) as info:
        finished = Finished(info)
        drop(landing, BAD)
        await until(lambda: names_in(landing / "failed") == [BAD])
        (landing / "after.csv").write_text("after")
        (row,) = await finished.wait(1)
        output = await output_of(info, row.run_id)
    assert output["text"] == "after"


# What Linux allows in a name: any bytes but "/" and NUL, not "." or "..". Names the source
# leaves alone on purpose (hidden, temporary) and those of its own folders are not dropped.
_NAMES = (
    st.binary(min_size=1, max_size=60)
    .filter(lambda b: b"/" not in b and b"\0" not in b)
    .filter(lambda b: not b.startswith(b".") and not b.endswith((b".tmp", b".part")))
    .filter(lambda b: b not in (b"processed", b"failed"))
)


async def test_a_file_of_any_name_becomes_an_event_and_leaves_the_folder(
    tmp_path: Path, landing: Path
) -> None:
    text = files_config_text(stable_for="0s")
    config = parse_config(text, file=str(tmp_path / "config.toml"), base_dir=tmp_path)
    dropped = 0

    @settings(max_examples=60, deadline=None)
    @given(st.lists(_NAMES, min_size=1, max_size=4, unique=True))
    def each(names: list[bytes]) -> None:
        # in a worker thread; the daemon runs in the test's event loop
        nonlocal dropped
        expected: dict[int, str] = {}
        for name in names:
            dropped += 1
            # a distinct mtime for each drop: the same name again is a new file
            mtime_ns = 1_000_000_000_000_000_000 + dropped
            drop(landing, name, mtime_ns=mtime_ns)
            expected[mtime_ns] = os_name(os.fsdecode(name))[0]
        recorded = anyio.from_thread.run(recorded_and_gone, info, landing, expected)
        for mtime_ns, event in recorded.items():
            assert event.data["name"] == expected[mtime_ns]
            assert event.status in ("matched", "invalid")

    # One daemon for every example: the source must keep going whatever came before.
    async with daemon_running(config) as info:
        await anyio.to_thread.run_sync(each)


async def recorded_and_gone(
    info: DaemonInfo, landing: Path, expected: dict[int, str]
) -> dict[int, EventRow]:
    """Once every file dropped has left the folder and has its event: the events, by the
    mtime each file was given."""
    found: dict[int, EventRow] = {}

    def done() -> bool:
        return not names_in(landing) and len(found) == len(expected)

    with anyio.fail_after(10):
        while not done():
            for e in await info.runner.store.list_events(source="landing", limit=20):
                if e.meta.get("mtime_ns") in expected:
                    found[e.meta["mtime_ns"]] = e
            if not done():
                await anyio.sleep(0.01)  # nothing signals an event recorded to a test
    return found


# -- links and what is not a file --------------------------------------------------------


async def test_links_go_to_failed_as_links_and_what_they_point_to_is_left_alone(
    tmp_path: Path, landing: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "passwd"
    secret.write_text("root:x:0:0")
    (landing / "to-outside.csv").symlink_to(secret)
    (landing / "to-folder").symlink_to(outside)
    (landing / "dangling.csv").symlink_to(tmp_path / "nowhere")
    (landing / "loop-a").symlink_to(landing / "loop-b")
    (landing / "loop-b").symlink_to(landing / "loop-a")
    os.mkfifo(landing / "pipe")  # opening it to read would wait for a writer forever
    (landing / "fine.csv").write_text("fine")
    links = ["dangling.csv", "loop-a", "loop-b", "to-folder", "to-outside.csv"]
    failed = landing / "failed"
    async with daemon_running(files_config(tmp_path)) as info:
        (row,) = await Finished(info).wait(1)
        await until(lambda: sorted(os.listdir(failed)) == sorted([*links, "pipe"]))
        events = by_name(await events_of(info))
        runs = await info.runner.store.list_runs()
    assert [r.run_id for r in runs] == [row.run_id], "only fine.csv ran"
    for name in links:
        assert events[name].status == "invalid"
        assert "symbolic link" in (events[name].error or "")
        assert (failed / name).is_symlink()
    assert os.readlink(failed / "to-outside.csv") == str(secret)
    assert secret.read_text() == "root:x:0:0"
    assert os.listdir(outside) == ["passwd"]
    assert stat.S_ISFIFO((failed / "pipe").lstat().st_mode)
    assert "not a regular file" in (events["pipe"].error or "")
    assert names_in(landing) == []


async def test_a_file_moved_into_a_sub_folder_that_links_out_of_the_tree_is_not_moved(
    tmp_path: Path, landing: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (landing / "sub").mkdir()
    (landing / "processed").mkdir()
    (landing / "processed" / "sub").symlink_to(outside)
    (landing / "sub" / "x.csv").write_text("x")
    async with daemon_running(files_config(tmp_path, "recursive = true")) as info:
        finished = Finished(info)
        await finished.wait(1)
        # files are taken one batch after another: once a later one is in, the move of
        # sub/x.csv has been tried
        (landing / "later.csv").write_text("later")
        await finished.wait(2)
    assert os.listdir(outside) == []
    assert (landing / "sub" / "x.csv").read_text() == "x"
    assert (landing / "processed" / "later.csv").exists()


async def test_a_processed_folder_that_links_out_of_the_tree_stops_the_source(
    tmp_path: Path, landing: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (landing / "processed").symlink_to(outside)
    errors: list[BaseException] = []
    try:
        async with daemon_running(files_config(tmp_path)):
            pytest.fail("the daemon started")
    except* ConnectorError as group:
        errors = leaves(group)
    (error,) = errors
    assert "processed_dir" in str(error)
    assert "outside the watched folder" in str(error)
