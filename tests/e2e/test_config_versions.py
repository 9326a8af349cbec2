"""Config versions and reloads from the command line, as an operator uses them: ``cued run``
in its own process, ``cued reload`` and SIGHUP, ``cued config history / show / diff /
rollback``, and ``cued show`` naming the version a run started under."""

from __future__ import annotations

import signal

import anyio

from tests.support.daemon import Daemon, cued, wait_for


def config_text(greeting: str) -> str:
    return f"""
[daemon]
state = "state.db"

[http]
listen = ""

[pipelines.hello]
[pipelines.hello.tasks.greet]
kind = "shell"
argv = ["echo", "{greeting}"]
"""


BROKEN = (
    config_text("broken") + '\n[pipelines.hello.tasks.more]\nkind = "shell"\nneeds = ["nope"]\n'
)


def run_id_of(result) -> str:
    """The run id in ``cued trigger``'s answer (``run ID: STATE`` or ``started run ID``)."""
    words = result.stdout.split()
    return words[words.index("run") + 1].rstrip(":")


async def test_reload_history_show_diff_and_rollback_end_to_end(tmp_path):
    file = tmp_path / "config.toml"
    file.write_text(config_text("first"))
    daemon = Daemon(file, tmp_path / "state.db")
    await daemon.start()
    try:
        first = cued(file, "trigger", "hello", "--wait")
        assert first.returncode == 0, first.stderr

        file.write_text(config_text("second"))
        reloaded = cued(file, "reload")
        assert reloaded.returncode == 0, reloaded.stderr
        assert "reloaded: config version 2" in reloaded.stdout
        assert '"pipelines": {"changed": ["hello"]}' in reloaded.stdout
        second = cued(file, "trigger", "hello", "--wait")
        assert second.returncode == 0, second.stderr

        # an invalid file is refused, by `cued reload` and by SIGHUP alike, naming its line
        file.write_text(BROKEN)
        refused = cued(file, "reload")
        assert refused.returncode == 2
        assert f"{file}:" in refused.stderr
        assert "nope" in refused.stderr
        assert "refused: the daemon keeps config version 2" in refused.stdout
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        await wait_for(lambda: daemon.log.read_text().count("config_reload_refused") == 2)
        # nothing refused is kept as a version (`cued config` reads a broken file's state)
        kept = cued(file, "config", "history")
        assert [line.split()[0] for line in kept.stdout.splitlines()[1:]] == ["2", "1"]

        # rolled back from the broken file to version 1: written back, and reloaded
        rollback = cued(file, "config", "rollback", "1")
        assert rollback.returncode == 0, rollback.stderr
        assert f"wrote config version 1 to {file}" in rollback.stdout
        assert "reloaded: config version 3" in rollback.stdout
        assert file.read_text() == config_text("first")
        third = cued(file, "trigger", "hello", "--wait")
        assert third.returncode == 0, third.stderr

        history = cued(file, "config", "history")
        shown = cued(file, "config", "show", "2")
        diff = cued(file, "config", "diff", "1", "2")
        missing = cued(file, "config", "show", "9")
    finally:
        assert daemon.stop() == 0

    versions = [line.split()[0] for line in history.stdout.splitlines()[1:]]
    assert versions == ["3", "2", "1"]
    assert shown.stdout == config_text("second")
    assert '-argv = ["echo", "first"]' in diff.stdout
    assert '+argv = ["echo", "second"]' in diff.stdout
    assert missing.returncode == 1
    assert "no config version 9" in missing.stderr
    # each run names the version it started under, and ran that version's definition
    for result, version, greeting in (
        (first, 1, "first"),
        (second, 2, "second"),
        (third, 3, "first"),
    ):
        show = cued(file, "show", run_id_of(result))
        assert f"config    version {version} " in show.stdout, show.stdout
        assert greeting in show.stdout


async def test_rollback_without_a_daemon_writes_the_version_for_the_next_start(tmp_path):
    file = tmp_path / "config.toml"
    file.write_text(config_text("first"))
    daemon = Daemon(file, tmp_path / "state.db")
    await daemon.start()
    assert daemon.stop() == 0
    file.write_text(config_text("second"))
    await daemon.start()
    assert daemon.stop() == 0

    rollback = cued(file, "config", "rollback", "1")
    reload = cued(file, "reload")
    assert rollback.returncode == 0, rollback.stderr
    assert "it loads this version when it starts" in rollback.stdout
    assert file.read_text() == config_text("first")
    assert reload.returncode == 1
    assert "no daemon runs on this state file" in reload.stderr
    with anyio.fail_after(30):
        await daemon.start()
    assert daemon.stop() == 0
    history = cued(file, "config", "history")
    assert [line.split()[0] for line in history.stdout.splitlines()[1:]] == ["3", "2", "1"]
