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


# `make test-fast` leaves out what starts other processes (daemons killed with -9 and
# restarted, the CLI, the Kafka broker, Chromium): the lane to run while working.
# `make test` runs everything.
_SLOW_MODULES = frozenset(
    {"test_all_sources_crash", "test_crash_recovery", "test_kafka", "test_ui", "test_cli"}
)
# a test whose own code names one of these starts a process (tests/support/daemon.py)
_STARTS_PROCESSES = frozenset({"Daemon", "cued", "subprocess"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
        code = getattr(getattr(item, "function", None), "__code__", None)
        if (
            module in _SLOW_MODULES
            or "kafka" in getattr(item, "fixturenames", ())
            or (code is not None and _STARTS_PROCESSES & set(code.co_names))
            or "kill_9" in item.name
            or "restart" in item.name
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
async def http_client():
    """An HTTP client for task kinds called directly (``kind.execute(params, ctx)``)."""
    import httpx

    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def ctx(http_client):
    """The context of one attempt, see :func:`tests.support.kinds.task_context`."""
    from tests.support.kinds import task_context

    return task_context(http_client)
