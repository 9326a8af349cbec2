from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from cued.daemon.config import parse_config
from cued.daemon.logs import configure_logging

if TYPE_CHECKING:
    from pathlib import Path

    from cued.daemon.config import Config


@pytest.fixture(autouse=True, scope="session")
def _logs() -> None:
    configure_logging("warning", json=True)


@pytest.fixture
def make_config(tmp_path: Path):
    """Parse config text with the test's tmp_path as the config file's folder."""

    def make(text: str) -> Config:
        return parse_config(text, file=str(tmp_path / "config.toml"), base_dir=tmp_path)

    return make


@pytest.fixture(scope="session")
def kafka():
    """A real Kafka-protocol broker (Tansu) for the session, on a free loopback port."""
    from tests.support.kafka_broker import running_broker

    with running_broker() as broker:
        yield broker
