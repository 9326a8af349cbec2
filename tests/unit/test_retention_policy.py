"""Retention's policy: the ``[retention]`` table is checked with its line, and its defaults keep
runs and events 30 days, alerts 7 and a dedupe key its trigger's window."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from cued.daemon.errors import ConfigError
from cued.daemon.runtime import retention
from tests.support.retention import CONFIG, DAY, NOW, config_of

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("table", "message"),
    [
        pytest.param("runs = 'a month'", "is not a duration", id="not-a-duration"),
        pytest.param("runs = -1", "cannot be negative", id="negative"),
        pytest.param("prune_every = 0", "greater than 0", id="never-pruning"),
        pytest.param("run = '30d'", "did you mean 'runs'", id="typo"),
    ],
)
def test_the_retention_table_is_checked_with_its_line(
    tmp_path: Path, table: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_of(tmp_path, f"[retention]\n{table}")
    (problem,) = caught.value.problems
    text = CONFIG.format(retention=f"[retention]\n{table}", daemon="")
    assert problem.line == text.splitlines().index(table) + 1
    assert problem.path.startswith("retention.")
    assert message in problem.message


def test_the_defaults_keep_runs_and_events_30_days_and_alerts_7(tmp_path: Path) -> None:
    policy = retention.policy(config_of(tmp_path), NOW)
    assert policy.runs_before == policy.events_before == NOW - 30 * DAY
    assert policy.alerts_before == NOW - 7 * DAY
    assert policy.dedupe_before == {"orders": NOW - 3600}
    assert policy.dedupe_other_before == NOW - DAY
