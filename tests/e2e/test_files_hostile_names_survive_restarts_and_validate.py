"""The ``files`` source with a real daemon and the CLI: a name that is not UTF-8 is recorded
and the daemon restarts cleanly after it, and ``cued validate`` names the line of a
``processed_dir`` that leads out of the tree."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support.daemon import Daemon, cued, query, wait_for
from tests.support.files_source import BAD, drop, files_config_text, names_in

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / "landing"
    folder.mkdir()
    return folder


async def test_a_daemon_finding_a_name_that_is_not_utf8_records_it_and_restarts_cleanly(
    tmp_path: Path, landing: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(files_config_text('state = "state.db"'))
    drop(landing, BAD)  # there before the daemon starts: what used to kill it at every start
    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    try:
        drop(landing, b"\xfe\xfflater.csv")  # and one dropped while it runs
        await wait_for(lambda: len(names_in(landing / "failed")) == 2)
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()
    assert names_in(landing / "failed") == [BAD, b"\xfe\xfflater.csv"]

    listed = cued(config, "events", "--status", "invalid")
    assert listed.returncode == 0, listed.stderr
    assert "bad-\\xff.csv" in listed.stdout
    assert "\\xfe\\xfflater.csv" in listed.stdout

    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log.read_text()
    assert query(tmp_path / "state.db", "SELECT status FROM events") == [("invalid",)] * 2


def test_validate_reports_a_processed_folder_out_of_the_tree_with_its_line(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    line = 'processed_dir = "../elsewhere"'
    text = files_config_text().replace('path = "landing"', f'path = "landing"\n{line}')
    config.write_text(text)
    validated = cued(config, "validate")
    assert validated.returncode == 2
    number = text.splitlines().index(line) + 1
    assert f"{config}:{number}: sources.landing.processed_dir: " in validated.stderr
