"""The ``files`` source keeps to its folder: ``processed/`` and ``failed/`` must lie inside it,
and a recursive listing stops at its depth and says so once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import structlog
from structlog.testing import capture_logs

from cued.connectors.files import _MAX_DEPTH, FilesConfig, FilesSource
from cued.daemon.config import load_config
from cued.daemon.errors import ConfigError
from cued.daemon.sdk.sources import SourceContext
from tests.support.fakes import NoRoutes, SwappingIntake
from tests.support.files_source import files_config_text

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / "landing"
    folder.mkdir()
    return folder


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param('processed_dir = "../elsewhere"', "'..' leads out", id="dot-dot"),
        pytest.param('failed_dir = "a/../../x"', "'..' leads out", id="dot-dot-inside"),
        pytest.param('processed_dir = "/tmp/elsewhere"', "relative to it", id="absolute"),
        pytest.param('failed_dir = "sub/.."', "the watched folder itself", id="itself"),
    ],
)
def test_processed_and_failed_must_stay_inside_the_folder(
    tmp_path: Path, line: str, message: str
) -> None:
    config = tmp_path / "config.toml"
    text = files_config_text().replace('path = "landing"', f'path = "landing"\n{line}')
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    (problem,) = caught.value.problems
    number = text.splitlines().index(line) + 1
    key = line.split(" ")[0]
    assert str(problem).startswith(f"{config}:{number}: sources.landing.{key}: ")
    assert message in problem.message


# -- deep trees ----------------------------------------------------------------------------


def test_a_recursive_listing_stops_at_its_depth_and_says_so_once(landing: Path) -> None:
    """Sub-folders deeper than ``_MAX_DEPTH`` are left alone, named in one warning while
    they stay; files above them are taken as ever."""

    deep = landing
    for level in range(1, _MAX_DEPTH + 2):
        deep = deep / "d"
        deep.mkdir()
        (deep / f"at-{level}.csv").write_text("x")
    with capture_logs() as logs:
        ctx = SourceContext(
            source="landing",
            intake=SwappingIntake(lambda: None),
            log=structlog.get_logger(),
            routes=NoRoutes(),
            base_dir=landing.parent,
        )
        source = FilesSource(FilesConfig(path="landing", recursive=True, stable_for=0), ctx)
        ready, _ = source._scan()
        source._scan()
    assert sorted(f.name.rsplit("/", 1)[1] for f in ready) == sorted(
        f"at-{level}.csv" for level in range(1, _MAX_DEPTH + 1)
    )
    warned = [e for e in logs if e["event"] == "files_too_deep"]
    assert len(warned) == 1
    assert warned[0]["folder"] == str(deep)
