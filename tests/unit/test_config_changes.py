"""What a reload changes, part by part: the pure comparison of two checked configurations
(:mod:`cued.daemon.config.changes`)."""

from __future__ import annotations

from cued.daemon.config import parse_config
from cued.daemon.config.changes import changes, reload_problems, running_config

BASE = """
[daemon]
pools = { db = 2 }

[pipelines.etl.tasks.t]
kind = "sleep"

[pipelines.report.tasks.t]
kind = "sleep"

[sources.hook]
kind = "webhook"
path = "/hook"

[sources.other]
kind = "webhook"
path = "/other"

[[triggers]]
source = "hook"
pipeline = "etl"

[auth.users.ann]
token = "t-ann"
roles = ["operator"]
"""


def test_the_same_text_changes_nothing():
    found = changes(parse_config(BASE), parse_config(BASE))
    assert not found.any
    assert found.summary() == {}
    assert found.sources.kept == ("hook", "other")


def test_each_part_names_what_was_added_changed_and_removed():
    new = (
        BASE.replace("pools = { db = 2 }", "pools = { db = 3 }")
        .replace('path = "/hook"', 'path = "/hook"\nmax_body_bytes = 10')
        .replace('[sources.other]\nkind = "webhook"\npath = "/other"\n', "")
        .replace("[pipelines.report.tasks.t]", "[pipelines.daily.tasks.t]")
        .replace('pipeline = "etl"', 'pipeline = "etl"\nwhen = "true"')
        .replace('roles = ["operator"]', 'roles = ["viewer"]')
    )
    found = changes(parse_config(BASE), parse_config(new))
    assert found.summary() == {
        "pipelines": {"added": ["daily"], "removed": ["report"]},
        "sources": {"changed": ["hook"], "removed": ["other"]},
        "users": {"changed": ["ann"]},
        "triggers": "replaced",
        "pools": "changed",
    }
    assert found.pipelines.kept == ("etl",)
    assert not found.needs_restart


def test_settings_read_only_at_start_are_named_as_needing_a_restart():
    new = (
        BASE.replace(
            "pools = { db = 2 }", 'pools = { db = 2 }\nstate = "other.db"\nshutdown_grace = "5s"'
        )
        + '\n[http]\nlisten = "127.0.0.1:9999"\n'
    )
    found = changes(parse_config(BASE), parse_config(new))
    assert found.needs_restart == ("daemon.state", "daemon.shutdown_grace", "http")
    assert found.any
    assert found.summary() == {"needs_restart": ["daemon.state", "daemon.shutdown_grace", "http"]}


def test_a_reload_may_not_open_the_api_of_a_daemon_listening_beyond_loopback():
    public = BASE + '\n[http]\nlisten = "0.0.0.0:8080"\n'
    no_users = BASE.split("[auth.users.ann]")[0] + '\n[http]\nlisten = "127.0.0.1:8080"\n'
    assert reload_problems(parse_config(public), parse_config(no_users)) == [
        (
            "the daemon listens on '0.0.0.0:8080' (not a loopback address) until it restarts: "
            "a reload cannot remove the last of [auth.users], the API would take no token; "
            "restart it instead"
        )
    ]
    assert reload_problems(parse_config(public), parse_config(public)) == []
    assert reload_problems(parse_config(BASE), parse_config(no_users)) == []


def test_what_runs_keeps_the_settings_read_at_start_until_a_restart():
    new = (
        BASE.replace("pools = { db = 2 }", 'pools = { db = 5 }\nstate = "other.db"')
        + '\n[http]\nlisten = "127.0.0.1:9999"\n[retention]\nruns = "1d"\n'
    )
    old, loaded = parse_config(BASE), parse_config(new)
    running = running_config(old, loaded)
    assert running.daemon.pools == {"db": 5}, "pools apply at a reload"
    assert running.daemon.state == old.daemon.state
    assert running.http == old.http
    assert running.retention == old.retention
    assert running.text == loaded.text
    # the next reload of the same file names them again
    assert changes(running, parse_config(new)).needs_restart == (
        "daemon.state",
        "http",
        "retention",
    )
