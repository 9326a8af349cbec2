"""What the README and the example config show works as shown."""

from __future__ import annotations

import re
from pathlib import Path

from cued.daemon.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_config_examples_are_valid_together():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) >= 2
    config = parse_config("\n".join(blocks), file="README.md")
    assert {"etl", "report"} <= set(config.pipelines)
    assert {"orders", "github", "landing", "nightly"} <= set(config.sources)


def test_the_example_config_is_valid():
    config = load_config(ROOT / "config.toml")
    assert config.pipelines
