"""Fixtures and markers for the whole suite.

The folders say what a test needs:

  unit/         pure and fast: no sockets, no subprocesses, no broker, no browser
                (files under tmp_path and in-memory fakes are fine)
  integration/  one real component each: SQLite, loopback HTTP, the Kafka broker, a task
                kind's program, or the whole daemon in the test's own event loop
  e2e/          the daemon as a process (kill -9 and restart), the CLI as a process, Chromium
  support/      helpers the tests share; a test file imports from here, never from another

A file sits in the folder of the most its tests need, so a few tests of a file in e2e/
would do in integration/ or unit/.

Markers, set below from the folder and the fixtures, never by hand:

  slow     everything in e2e/, the Kafka broker, a browser, and property tests that ask
           for more than Hypothesis's default 100 examples
  kafka    uses the ``kafka`` fixture (the session's broker: it starts one, so also slow)
  browser  its module drives Chromium through Playwright (so also slow)

Lanes (the Makefile): ``make test-fast`` runs ``tests/unit -m "not slow"``, the lane to run
while working (under 30 s on two cores); ``make test`` runs everything. Others by marker,
e.g. ``pytest -n 2 -m "not slow"`` (unit and integration without the broker) or
``pytest tests/integration -m "not kafka"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import is_hypothesis_test, settings

from cued.daemon.config import parse_config
from cued.daemon.logs import configure_logging

if TYPE_CHECKING:
    from pathlib import Path

    from cued.daemon.config import Config

#: How many examples a property test tries unless it asks for more (Hypothesis's default).
_DEFAULT_EXAMPLES = settings.get_profile("default").max_examples


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in _markers_of(item):
            item.add_marker(name)


def pytest_configure(config: pytest.Config) -> None:
    """In the process that runs the tests or starts the workers (which inherit it): the
    run's id, which names its migrated PostgreSQL template (:mod:`tests.support.stores`)."""
    if not hasattr(config, "workerinput"):
        import os
        import secrets

        os.environ["CUED_TEST_RUN"] = secrets.token_hex(4)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """At the end of the run (in the process that ran it, or that led its workers): the
    run's migrated PostgreSQL template goes (see :mod:`tests.support.stores`)."""
    if hasattr(session.config, "workerinput"):
        return  # a worker: the others may still copy the template
    import anyio

    from tests.support.stores import drop_template

    anyio.run(drop_template)


def _markers_of(item: pytest.Item) -> set[str]:
    """The markers a test has by its folder and the fixtures it uses (see the docstring)."""
    found: set[str] = set()
    if "e2e" in item.path.parts:
        found.add("slow")
    if "kafka" in getattr(item, "fixturenames", ()):
        found |= {"kafka", "slow"}  # the fixture starts the broker
    module = getattr(item, "module", None)
    if module is not None and any(
        getattr(value, "__module__", "").startswith("playwright") for value in vars(module).values()
    ):
        found |= {"browser", "slow"}  # its module drives Chromium through Playwright
    function = getattr(item, "obj", None)
    if is_hypothesis_test(function):
        # its author asked for more examples than the default: thoroughness over speed,
        # the trade `make test` makes and the fast lane does not
        wanted = getattr(function, "_hypothesis_internal_use_settings", settings.default)
        if wanted.max_examples > _DEFAULT_EXAMPLES:
            found.add("slow")
    return found


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_at(request, tmp_path: Path):
    """Where a store lives, once on each engine: a SQLite file under tmp_path, and a
    database of its own on the real PostgreSQL (127.0.0.1:5432), dropped after the test
    (see :mod:`tests.support.stores`)."""
    from tests.support.stores import store_at

    async with store_at(request.param, tmp_path) as at:
        yield at


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
