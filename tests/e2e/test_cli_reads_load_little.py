"""The CLI's reads (``cued runs``, ``show``, ``events``, ``approvals``, ``logs``) and
``cued --help`` load neither the web stack, Kafka, HTTP, the configuration's models nor
structlog and rich, beside a running daemon or with none; and the commands that only ask
the daemon through its socket (``cued status``, ``reload``, ``trigger``) load neither its
server nor
its wiring (nor ``cued trigger``, ``cancel``, ``pause``, ... the task kinds of the whole
configuration, which they read only when no daemon runs and they act here). What each
process imported is read from its ``sys.modules`` at the end, so a
heavy import that creeps back in fails here (how long they take is measured in
bench/cli.py, never in a test)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.daemon import Daemon, cued

CONFIG = """
[http]
listen = "127.0.0.1:0"

[daemon]
state = "state.db"
log_level = "info"

[pipelines.hello.tasks.greet]
kind = "shell"
argv = ["echo", "hello from greet"]

# never run here: it is there so that checking the whole configuration needs Kafka
[pipelines.publish.tasks.send]
kind = "kafka"
bootstrap = "127.0.0.1:1"
topic = "news"
value = "{{ inputs }}"

[sources.hook]
kind = "webhook"
path = "/hooks/hello"

[[triggers]]
source = "hook"
pipeline = "hello"
"""

#: Modules a read must not load (a package's own modules count as the package).
HEAVY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "aiokafka",
    "httpx",
    "pydantic",
    "structlog",
    "rich",
    "jinja2",
    "cued.daemon.web",
    "cued.daemon.runtime",
    "cued.daemon.config.models",
    "cued.connectors",
    "cued.plugins",
)

#: Modules a command through the daemon's socket must not load: it parses the config's
#: ``[daemon]`` table and speaks HTTP, no more.
SERVER = (
    "fastapi",
    "starlette",
    "uvicorn",
    "aiokafka",
    "cued.daemon.assembly",
    "cued.daemon.runtime",
    "cued.daemon.web.control",
    "cued.daemon.web.api",
    "cued.connectors",
    "cued.plugins",
)

#: Runs the command line as ``cued`` does, then writes the names in sys.modules.
HOOK = """
import json, sys
from cued.daemon.cli import main
try:
    status = main(sys.argv[2:])
except SystemExit as exc:  # --help
    status = exc.code
sys.stdout.flush()
with open(sys.argv[1], "w") as out:
    json.dump({"status": status, "modules": sorted(sys.modules)}, out)
"""


def run_and_list_modules(tmp_path, config, *args):
    listing = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", HOOK, str(listing), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = json.loads(listing.read_text())
    assert found["status"] == 0, done.stderr
    return done.stdout, set(found["modules"])


def heavy(modules, of=HEAVY):
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in of))


@pytest.fixture
def config_with_a_run(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    started = cued(config, "trigger", "hello")  # no daemon: run here
    assert started.returncode == 0, started.stderr
    return config, started.stdout.split()[2]


def assert_reads_load_little(tmp_path, config, run_id):
    expected = {
        ("runs",): run_id,
        ("show", run_id): "state     succeeded",
        ("events",): "EVENT",
        ("approvals",): "APPROVERS",
        ("logs", run_id): "hello from greet",
        ("--help",): "usage: cued",
    }
    for args, shown in expected.items():
        out, modules = run_and_list_modules(tmp_path, config, *args)
        assert shown in out, (args, out)
        assert heavy(modules) == [], args


def test_reads_with_no_daemon_load_neither_the_web_kafka_nor_the_models(
    tmp_path, config_with_a_run
):
    config, run_id = config_with_a_run
    assert_reads_load_little(tmp_path, config, run_id)


async def test_reads_and_commands_beside_a_running_daemon_load_no_more(tmp_path, config_with_a_run):
    config, run_id = config_with_a_run
    daemon = Daemon(config, tmp_path / "state.db")
    await daemon.start()
    try:
        assert_reads_load_little(tmp_path, config, run_id)
        for args, shown in [
            (("status",), "config version: 1"),
            (("reload",), "reloaded"),
            (("trigger", "hello"), "started run"),
            (("pause", "hello"), "paused"),
            (("resume", "hello"), "resumed"),
        ]:
            out, modules = run_and_list_modules(tmp_path, config, *args)
            assert shown in out, (args, out)
            assert heavy(modules, SERVER) == [], args
        # the daemon runs on the configuration it checked: a mistake written into the
        # file since stops no command through it; with no daemon, the command done here
        # checks the whole file first
        config.write_text(CONFIG + '\n[pipelines.broken.tasks.t]\nkind = "sleep"\nneeds = ["x"]\n')
        through = cued(config, "trigger", "hello")
        assert through.returncode == 0, through.stderr
        assert "started run" in through.stdout
    finally:
        daemon.stop()
    here = cued(config, "trigger", "hello")
    assert here.returncode == 2
    assert "needs" in here.stderr


def test_what_reads_more_than_the_state_still_loads_the_configuration(tmp_path, config_with_a_run):
    # the hook is right to list a heavy module when one is loaded
    config, _ = config_with_a_run
    listing = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", HOOK, str(listing), "--config", str(config), "validate"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert "cued.daemon.config.models" in heavy(json.loads(listing.read_text())["modules"])


def test_a_mistake_elsewhere_in_the_configuration_does_not_stop_a_read(tmp_path, config_with_a_run):
    config, run_id = config_with_a_run
    config.write_text(CONFIG + '\n[pipelines.broken.tasks.t]\nkind = "sleep"\nneeds = ["nope"]\n')
    assert cued(config, "validate").returncode == 2
    listed = cued(config, "runs")
    assert listed.returncode == 0, listed.stderr
    assert run_id in listed.stdout


def test_a_daemon_table_in_doubt_is_reported_by_the_whole_check_and_nothing_is_read(tmp_path):
    # a misspelt `state` would otherwise read (and create) the default cued.db
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nstat = "mine.db"\n')
    listed = cued(config, "runs")
    assert listed.returncode == 2
    assert "config.toml:2" in listed.stderr
    assert "stat" in listed.stderr
    assert not (tmp_path / "cued.db").exists()
    assert not (tmp_path / "mine.db").exists()


def test_logging_loads_structlog_with_the_first_line_and_as_configured(tmp_path):
    program = """
import sys
from cued.daemon.logs import configure_logging, get_logger
configure_logging("warning", json=True)
log = get_logger(part="cli")
assert "structlog" not in sys.modules
log.info("below_the_level")
log.warning("shown", n=1)
print("structlog" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == "True\n"
    (line,) = done.stderr.splitlines()
    shown = json.loads(line)
    assert (shown["event"], shown["level"], shown["part"], shown["n"]) == (
        "shown",
        "warning",
        "cli",
        1,
    )


def test_checking_a_configuration_imports_only_the_kinds_it_uses(tmp_path):
    # every source and task kind installed is listed (an unknown one is named among
    # them), but only those the file uses are imported: here a shell task and a webhook
    config = tmp_path / "config.toml"
    config.write_text(
        CONFIG.split("# never run here")[0] + CONFIG.split('value = "{{ inputs }}"')[1]
    )
    out, modules = run_and_list_modules(tmp_path, config, "validate")
    assert "valid (1 pipelines, 1 tasks)" in out, out
    assert "cued.plugins.shell" in modules
    assert "cued.connectors.webhook" in modules
    unused = ("aiokafka", "aiomqtt", "aio_pika", "redis", "nats", "aiomysql", "cued.plugins.kafka")
    assert heavy(modules, unused) == []
    config.write_text(CONFIG.replace('kind = "kafka"', 'kind = "kafak"'))
    refused = cued(config, "validate")
    assert refused.returncode == 2
    assert "unknown task kind 'kafak' (known: amqp, approval, http, kafka," in refused.stderr
