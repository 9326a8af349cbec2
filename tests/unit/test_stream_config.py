"""``cued validate`` on the nats and postgres sources and the sql and nats task kinds:
errors at file:line, and ``--strict`` finding the secrets this machine lacks."""

from __future__ import annotations

import pytest

from cued.daemon.config import load_config
from cued.daemon.config.strict import environment_problems
from cued.daemon.errors import ConfigError

CONFIG = """
[sources.orders]
kind = "nats"
servers = ["nats://127.0.0.1:4222"]
stream = "ORDERS"
durable = "cued"
token = "env:CUED_TEST_UNSET_NATS_TOKEN"

[sources.outbox]
kind = "postgres"
dsn = "env:CUED_TEST_UNSET_APP_DSN"
table = "outbox"

[pipelines.load]
[pipelines.load.tasks.upsert]
kind = "sql"
dsn = "env:CUED_TEST_UNSET_WAREHOUSE"
query = "select 1"
"""


def test_strict_names_each_secret_this_machine_lacks_at_its_line(tmp_path, monkeypatch):
    for name in (
        "CUED_TEST_UNSET_NATS_TOKEN",
        "CUED_TEST_UNSET_APP_DSN",
        "CUED_TEST_UNSET_WAREHOUSE",
    ):
        monkeypatch.delenv(name, raising=False)
    file = tmp_path / "config.toml"
    file.write_text(CONFIG)
    config = load_config(file)  # valid without them: CI has not the machine's secrets
    found = {(p.line, p.path) for p in environment_problems(config, file)}
    assert found == {
        (7, "sources.orders.token"),
        (11, "sources.outbox.dsn"),
        (17, "pipelines.load.tasks.upsert.dsn"),
    }


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param(
            '[sources.o]\nkind = "nats"\nservers = ["nats://x"]\nstream = "A.B"\ndurable = "d"\n',
            "config.toml:4: sources.o.stream",
            id="nats-stream-name",
        ),
        pytest.param(
            '[sources.o]\nkind = "nats"\nservers = ["nats://x"]\nstream = "A"\n',
            "config.toml:1: sources.o.durable",
            id="nats-no-durable",
        ),
        pytest.param(
            '[sources.o]\nkind = "postgres"\ndsn = "postgresql://x/y"\ntable = "t"\n'
            'cursor = "id; drop"\n',
            "config.toml:5: sources.o.cursor",
            id="postgres-cursor-name",
        ),
        pytest.param(
            '[pipelines.p.tasks.t]\nkind = "sql"\ndsn = "oracle://x"\nquery = "select 1"\n',
            "config.toml:3: pipelines.p.tasks.t.dsn",
            id="sql-dsn-scheme",
        ),
        pytest.param(
            '[pipelines.p.tasks.t]\nkind = "nats"\nservers = ["{{ inputs.s }}"]\n'
            'subject = "x"\nvalue = 1\n',
            "config.toml:3: pipelines.p.tasks.t.servers",
            id="nats-servers-template",
        ),
    ],
)
def test_validate_names_file_line_and_key(make_config, text, where):
    with pytest.raises(ConfigError) as refused:
        make_config(text)
    assert where in str(refused.value)
