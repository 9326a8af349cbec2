"""The ``files`` source end to end: a real daemon, a real folder, real SQLite."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anyio
import pytest

from cued.daemon.core.ids import new_id, now
from cued.daemon.errors import ConfigError, ConnectorError
from cued.daemon.store import EventRow, RunRow
from cued.daemon.store.sqlite import open_store
from tests.support import probes
from tests.support.files_source import (
    Finished,
    events_of,
    files_config,
    leaves,
    output_of,
    until,
)
from tests.support.running import daemon_running

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / "landing"
    folder.mkdir()
    return folder


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.is_dir())


async def test_a_file_there_at_start_is_recorded_then_moved_and_its_run_reads_it_there(
    tmp_path: Path, landing: Path
) -> None:
    (landing / "a.csv").write_text("id\n1\n")
    st = (landing / "a.csv").stat()
    async with daemon_running(files_config(tmp_path)) as info:
        (row,) = await Finished(info).wait(1)
        (event,) = await events_of(info)
        output = await output_of(info, row.run_id)
    processed = landing / "processed" / "a.csv"
    assert row.state == "succeeded"
    assert event.event_id == f"landing:a.csv:{st.st_size}:{st.st_mtime_ns}"
    assert event.status == "matched"
    assert event.run_ids == (row.run_id,)
    assert event.data == {
        "path": str(processed),
        "name": "a.csv",
        "size": st.st_size,
        "mtime": st.st_mtime_ns / 1e9,
    }
    assert event.meta["original_path"] == str(landing / "a.csv")
    # the run's task read the file at data.path: it was moved before the run started
    assert output == {"path": str(processed), "text": "id\n1\n"}
    assert files_in(landing) == []
    assert processed.stat().st_mtime_ns == st.st_mtime_ns


async def test_a_file_dropped_while_running_is_noticed_by_the_watcher(
    tmp_path: Path, landing: Path
) -> None:
    # a rescan a minute away: only the watcher can bring the file in within the test
    config = files_config(tmp_path, 'rescan_every = "60s"')
    async with daemon_running(config) as info:
        finished = Finished(info)
        (landing / "b.csv").write_text("b")
        (row,) = await finished.wait(1)
        output = await output_of(info, row.run_id)
    assert output == {"path": str(landing / "processed" / "b.csv"), "text": "b"}
    assert files_in(landing) == []


async def test_a_file_still_being_written_is_taken_only_once_stable(
    tmp_path: Path, landing: Path
) -> None:
    src = landing / "big.csv"
    chunks = [f"line {i}\n" * 100 for i in range(6)]
    async with daemon_running(files_config(tmp_path)) as info:
        finished = Finished(info)
        async with await anyio.open_file(src, "w") as f:
            for chunk in chunks:
                await f.write(chunk)
                await f.flush()
                await anyio.sleep(0.05)  # the writer's pace: well within stable_for
                assert src.exists(), "taken while still being written"
        (row,) = await finished.wait(1)
        (event,) = await events_of(info)
        output = await output_of(info, row.run_id)
    assert event.data["size"] == len("".join(chunks))
    assert output["text"] == "".join(chunks)


async def test_marker_mode_takes_a_file_once_its_marker_appears_and_moves_both(
    tmp_path: Path, landing: Path
) -> None:
    config = files_config(tmp_path, 'complete_when = "marker"')
    async with daemon_running(config) as info:
        finished = Finished(info)
        (landing / "x.csv").write_text("x")
        (landing / "y.csv").write_text("y")
        (landing / "y.csv.done").touch()
        (first,) = await finished.wait(1)
        # the listing that took y.csv saw x.csv too, without its marker
        assert files_in(landing) == ["x.csv"]
        (landing / "x.csv.done").touch()
        second = (await finished.wait(2))[1]
        outputs = [await output_of(info, r.run_id) for r in (first, second)]
    assert [o["text"] for o in outputs] == ["y", "x"]
    assert files_in(landing) == []
    assert files_in(landing / "processed") == ["x.csv", "x.csv.done", "y.csv", "y.csv.done"]


async def test_files_not_matching_the_pattern_stay_in_place(tmp_path: Path, landing: Path) -> None:
    config = files_config(tmp_path, 'pattern = "*.csv"')
    async with daemon_running(config) as info:
        finished = Finished(info)
        (landing / "notes.txt").write_text("not for us")
        (landing / "data.csv").write_text("d")
        await finished.wait(1)
        events = await events_of(info)
    assert [e.data["name"] for e in events] == ["data.csv"]
    assert files_in(landing) == ["notes.txt"]


async def test_hidden_and_partial_files_are_left_alone_until_renamed(
    tmp_path: Path, landing: Path
) -> None:
    async with daemon_running(files_config(tmp_path)) as info:
        finished = Finished(info)
        for name in (".hidden.csv", "upload.csv.part", "scratch.tmp"):
            (landing / name).write_text(name)
        (landing / "ok.csv").write_text("ok")
        await finished.wait(1)
        assert files_in(landing) == [".hidden.csv", "scratch.tmp", "upload.csv.part"]
        # the usual atomic drop: written as .part, then renamed
        (landing / "upload.csv.part").rename(landing / "upload.csv")
        await finished.wait(2)
        events = await events_of(info)
    assert sorted(e.data["name"] for e in events) == ["ok.csv", "upload.csv"]
    assert files_in(landing) == [".hidden.csv", "scratch.tmp"]


async def test_a_file_whose_trigger_fails_to_render_is_unmatched_and_still_processed(
    tmp_path: Path, landing: Path
) -> None:
    config = files_config(tmp_path, inputs='{ path = "{{ event.data.nope }}" }')
    processed = landing / "processed" / "a.csv"
    async with daemon_running(config) as info:
        (landing / "a.csv").write_text("a")
        await until(processed.exists)
        (event,) = await events_of(info)
        runs = await info.runner.store.list_runs()
    # the event records the trigger's error; the file itself is fine, so processed/
    assert event.status == "unmatched"
    assert "nope" in (event.error or "")
    assert event.run_ids == ()
    assert runs == []
    assert event.data["path"] == str(processed)


async def test_a_dangling_link_is_recorded_invalid_and_moved_to_failed_as_a_link(
    tmp_path: Path, landing: Path
) -> None:
    (landing / "ghost.csv").symlink_to(tmp_path / "nowhere.csv")  # dangling
    (landing / "fine.csv").write_text("fine")
    failed = landing / "failed" / "ghost.csv"
    async with daemon_running(files_config(tmp_path)) as info:
        await until(lambda: failed.is_symlink() and (landing / "processed" / "fine.csv").exists())
        events = {e.data["name"]: e for e in await events_of(info)}
    assert events["ghost.csv"].status == "invalid"
    assert "symbolic link" in (events["ghost.csv"].error or "")
    assert events["ghost.csv"].data["path"] == str(failed)
    assert events["ghost.csv"].run_ids == ()
    assert events["fine.csv"].status == "matched"
    assert files_in(landing) == []


async def test_a_recorded_file_that_was_not_moved_is_moved_after_a_restart_and_runs_once(
    tmp_path: Path, landing: Path
) -> None:
    probe = probes.reset()
    config = files_config(
        tmp_path,
        task='kind = "python"\nfunction = "tests.support.probes:record"\n'
        'args = { name = "{{ inputs.path }}" }\n',
    )
    src = landing / "r.csv"
    processed = landing / "processed" / "r.csv"
    src.write_text("r")
    st = src.stat()
    async with daemon_running(config) as info:
        await Finished(info).wait(1)
    # as if the daemon had crashed after recording but before moving: an identical file
    # (name, size, mtime) back in the folder, none in processed/
    processed.unlink()
    src.write_text("r")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    async with daemon_running(config) as info:
        await until(processed.exists)
        events = await events_of(info)
        runs = await info.runner.store.list_runs()
    assert len(events) == 1
    assert len(runs) == 1
    assert probe.calls == [str(processed)]
    assert files_in(landing) == []


async def test_backpressure_takes_files_gradually_and_loses_none(
    tmp_path: Path, landing: Path
) -> None:
    probe = probes.reset()
    config = files_config(
        tmp_path,
        daemon="backlog_high_water = 2\nbacklog_low_water = 1",
        pipeline="max_active_runs = 1",
        task='kind = "python"\nfunction = "tests.support.probes:record"\n'
        'args = { name = "{{ inputs.path }}", hold_s = 0.05 }\n',
    )
    names = [f"f{i:02}.csv" for i in range(10)]
    async with daemon_running(config) as info:
        finished = Finished(info)
        # at each flip of the backlog: events taken so far, files still waiting
        flips: list[tuple[bool, int, int]] = []
        info.runner.backlog.on_change(
            lambda saturated: flips.append(
                (saturated, info.intake.received["landing"], len(files_in(landing)))
            )
        )
        for name in names:
            (landing / name).write_text(name)
        rows = await finished.wait(10, timeout_s=20)
    assert {r.state for r in rows} == {"succeeded"}
    assert sorted(probe.calls) == [str(landing / "processed" / n) for n in names]
    assert files_in(landing / "processed") == names
    assert files_in(landing) == []
    saturations = [f for f in flips if f[0]]
    assert len(saturations) >= 2, "the files were not taken gradually"
    assert flips[0][0] is True
    assert flips[0][2] > 0, "all files were taken before the backlog saturated"
    # nothing is taken while saturated: the count of events does not move until it drains
    for (saturated, taken, _), (_, taken_after, _) in zip(flips[::2], flips[1::2], strict=False):
        assert saturated
        assert taken_after == taken


async def test_recursive_keeps_sub_folders_and_skips_processed_and_failed(
    tmp_path: Path, landing: Path
) -> None:
    for folder in ("sub", "processed", "failed"):
        (landing / folder).mkdir()
    (landing / "processed" / "old.csv").write_text("old")
    (landing / "failed" / "bad.csv").write_text("bad")
    (landing / "top.csv").write_text("top")
    (landing / "sub" / "deep.csv").write_text("deep")
    async with daemon_running(files_config(tmp_path, "recursive = true")) as info:
        rows = await Finished(info).wait(2)
        outputs = {(await output_of(info, r.run_id))["text"] for r in rows}
        events = await events_of(info)
    assert outputs == {"top", "deep"}
    assert sorted(e.data["name"] for e in events) == ["sub/deep.csv", "top.csv"]
    assert (landing / "processed" / "sub" / "deep.csv").read_text() == "deep"
    assert files_in(landing / "processed") == ["old.csv", "top.csv"]
    assert files_in(landing / "failed") == ["bad.csv"]


async def test_a_name_taken_in_processed_gets_the_size_and_mtime_of_the_event_id(
    tmp_path: Path, landing: Path
) -> None:
    (landing / "processed").mkdir()
    (landing / "processed" / "a.csv").write_text("an earlier a.csv")
    (landing / "a.csv").write_text("new")
    st = (landing / "a.csv").stat()
    async with daemon_running(files_config(tmp_path)) as info:
        (row,) = await Finished(info).wait(1)
        output = await output_of(info, row.run_id)
    dest = landing / "processed" / f"a.{st.st_size}-{st.st_mtime_ns}.csv"
    assert output == {"path": str(dest), "text": "new"}
    assert (landing / "processed" / "a.csv").read_text() == "an earlier a.csv"


async def test_a_missing_folder_stops_the_daemon_from_starting(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    try:
        async with daemon_running(files_config(tmp_path)):
            pytest.fail("the daemon started")
    except* ConnectorError as group:  # raised in the daemon's task groups
        errors = leaves(group)
    (error,) = errors
    assert "does not exist" in str(error)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param('patern = "*.csv"', "did you mean 'pattern'", id="unknown-key"),
        pytest.param('complete_when = "size"', "'stable' or 'marker'", id="complete-when"),
        pytest.param('rescan_every = "0s"', "greater than 0", id="rescan-every"),
    ],
)
def test_config_is_checked(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        files_config(tmp_path, line)


async def test_after_a_crash_between_recording_and_moving_the_resumed_run_finds_its_file(
    tmp_path: Path, landing: Path
) -> None:
    config = files_config(tmp_path)
    drop = landing / "late.csv"
    drop.write_text("a,b\n")
    stat = drop.stat()
    event_id = f"landing:late.csv:{stat.st_size}:{stat.st_mtime_ns}"
    processed = str(landing / "processed" / "late.csv")
    # what a crash right after the commit leaves: the event and its run recorded, the run
    # not started, the file not yet moved
    run = RunRow(new_id(), "ingest", "queued", {"path": processed}, now(), event_id=event_id)
    async with open_store(config.state_path) as store:
        await store.submit(
            [
                EventRow(
                    event_id, "landing", now(), "matched", {"path": processed}, {}, (run.run_id,)
                ),
                run,
            ]
        ).wait()

    async with daemon_running(config) as info:
        with anyio.fail_after(20):
            row = await info.runner.wait(run.run_id)
        (attempt,) = await info.runner.store.get_attempts(run.run_id)
        events = await info.runner.store.list_events(source="landing")
    assert row.state == "succeeded", row.error
    assert attempt.output == {"path": processed, "text": "a,b\n"}
    assert [e.event_id for e in events] == [event_id], "the file started a second run"
    assert not drop.exists()
