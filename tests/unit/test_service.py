"""What cued tells systemd, decided without a socket: which environment counts, when the
watchdog is withheld, the STATUS= line, the journal's lines, the unit's command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.cli import render
from cued.daemon.logs import journal_line, stderr_is_journal
from cued.daemon.ops.status import DaemonStatus
from cued.daemon.runtime.supervision import SourceStatus
from cued.daemon.service.activation import inherited_sockets
from cued.daemon.service.notify import Notifier, watchdog_interval_s
from cued.daemon.service.unit import UnitSettings, render_unit, stop_timeout_s
from cued.daemon.service.watchdog import Progress, progress_problems, status_line

ME = 4242


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({"WATCHDOG_USEC": "30000000"}, 30.0, id="no-pid"),
        pytest.param({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(ME)}, 0.5, id="ours"),
        pytest.param({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, None, id="another's"),
        pytest.param({"WATCHDOG_USEC": "0"}, None, id="zero"),
        pytest.param({"WATCHDOG_USEC": "¹"}, None, id="superscript-digit"),
        pytest.param({"WATCHDOG_USEC": "٣"}, None, id="arabic-digit"),
        pytest.param({}, None, id="none"),
    ],
)
def test_watchdog_interval_is_read_only_when_meant_for_this_process(environ, expected):
    assert watchdog_interval_s(environ, ME) == expected


@given(st.dictionaries(st.sampled_from(["WATCHDOG_USEC", "WATCHDOG_PID"]), st.text()))
def test_any_watchdog_environment_is_read_without_raising(environ):
    found = watchdog_interval_s(environ, ME)
    assert found is None or found > 0


@given(st.dictionaries(st.sampled_from(["LISTEN_FDS", "LISTEN_PID"]), st.text()))
def test_socket_activation_is_only_for_the_process_listen_pid_names(environ):
    """No descriptor is touched unless LISTEN_PID is this process (ME is not)."""
    assert inherited_sockets(environ, ME) == []


@given(st.text())
def test_any_journal_stream_value_is_read_without_raising(value):
    assert stderr_is_journal({"JOURNAL_STREAM": value}) in (True, False)


def test_journal_stream_of_another_file_is_not_the_journal():
    assert not stderr_is_journal({"JOURNAL_STREAM": "1:1"})


def test_a_notifier_without_notify_socket_sends_nothing():
    environ = {"PATH": "/bin"}
    notifier = Notifier.from_environment(environ)
    assert not notifier.enabled
    assert not notifier.ready("up")
    assert not notifier.watchdog()


def test_notify_socket_is_taken_out_of_the_environment():
    environ = {"NOTIFY_SOCKET": "@nobody-listens-here"}
    notifier = Notifier.from_environment(environ)
    try:
        assert notifier.enabled
        assert "NOTIFY_SOCKET" not in environ
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("level", "priority"),
    [("debug", 7), ("info", 6), ("warning", 4), ("error", 3), ("critical", 2)],
)
def test_journal_lines_carry_the_syslog_priority_of_the_level(level, priority):
    line = journal_line(None, level, {"event": "x", "level": level, "n": 1})
    assert line == f"<{priority}>x n=1"


_KEYS = st.text(min_size=1, max_size=8).filter(lambda key: key not in ("event", "level"))
_VALUES = st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.lists(st.text()))


@given(st.text(), st.dictionaries(_KEYS, _VALUES))
def test_a_journal_record_is_one_line_of_printable_ascii(event, fields):
    """Whatever a record holds (a traceback, a hostile header, escapes), it is one line:
    journald would otherwise make each line a record of its own."""
    line = journal_line(None, "info", {"event": event, "level": "warning", **fields})
    assert line.startswith("<4>")
    assert line.isascii()
    assert line.isprintable()


def test_a_traceback_stays_in_its_record():
    line = journal_line(None, "error", {"event": "boom", "exception": "Traceback\n  x\nE"})
    assert line == '<3>boom exception="Traceback\\n  x\\nE"'


def test_the_watchdog_pings_while_everything_makes_progress():
    assert progress_problems(Progress(0.0, 0.0, ()), limit_s=15) == []
    assert progress_problems(Progress(14.9, 3.0, ()), limit_s=15) == []


def test_the_watchdog_is_withheld_for_a_stalled_writer_intake_or_an_ended_source():
    problems = progress_problems(Progress(16.0, 20.0, ("orders",)), limit_s=15)
    assert problems == [
        "store writer stalled for 16 s",
        "an event handed in waits 20 s to be recorded",
        "source(s) ended: orders",
    ]


def _status(**changes) -> DaemonStatus:
    values = {
        "version": "1.0",
        "started_at": 0.0,
        "uptime_s": 1.0,
        "sources": [
            SourceStatus("hook", "webhook", "taking events"),
            SourceStatus("orders", "kafka", "taking events"),
        ],
        "backlog": 0,
        "saturated": False,
        "active_runs": 0,
    }
    return DaemonStatus(**{**values, **changes})


def test_the_status_line_says_runs_backlog_and_sources():
    assert status_line(_status(active_runs=1)) == (
        "1 run active, backlog 0, 2/2 sources taking events"
    )


def test_the_status_line_names_the_sources_held_back_and_why_pings_stop():
    held = [SourceStatus("hook", "webhook", "held back"), SourceStatus("t", "schedule", "starting")]
    line = status_line(_status(sources=held, backlog=500, saturated=True), ["store writer"])
    assert line == (
        "0 runs active, backlog 500, 0/2 sources taking events, saturated, held back: hook, "
        "watchdog withheld: store writer"
    )


def test_stop_timeout_leaves_room_for_the_drain_and_the_servers_grace():
    assert stop_timeout_s(30) == 75
    assert stop_timeout_s(0.5) == 16


@pytest.mark.parametrize(
    ("path", "written"),
    [
        pytest.param("/etc/cued/config.toml", "/etc/cued/config.toml", id="plain"),
        pytest.param("/etc/my cued/c.toml", "'/etc/my cued/c.toml'", id="space"),
        pytest.param("/etc/$HOME/c.toml", "/etc/$$HOME/c.toml", id="dollar"),
        pytest.param("/etc/100%/c.toml", "/etc/100%%/c.toml", id="percent"),
    ],
)
def test_the_unit_command_line_takes_the_config_path_as_it_is(path, written):
    unit = render_unit(UnitSettings(command=("/usr/bin/cued",), config=Path(path)))
    assert f"ExecStart=/usr/bin/cued --config {written} run\n" in unit


def test_the_unit_runs_as_its_own_user_on_a_read_only_system():
    unit = render_unit(UnitSettings(command=("/usr/bin/cued",), config=Path("/c.toml")))
    assert "User=cued\n" in unit
    assert "ProtectSystem=strict\n" in unit
    assert "ReadWritePaths=" not in unit  # nothing outside /var/lib/cued given


def test_cued_status_shows_the_daemon_then_each_source():
    answer = {
        "version": "0.1.0",
        "started_at": 0.0,
        "uptime_s": 3725.2,
        "sources": [
            {"name": "drop", "kind": "files", "state": "taking events"},
            {"name": "orders", "kind": "kafka", "state": "held back"},
        ],
        "backlog": 120,
        "saturated": True,
        "active_runs": 8,
        "config_version": None,
        "last_reload": None,
    }
    assert render.status(answer).splitlines() == [
        "cued 0.1.0, up 1h 2m 5s",
        "active runs: 8",
        "backlog: 120 (saturated: sources held back)",
        "config version: not recorded",
        "last reload: none",
        "sources:",
        "  drop    files     taking events",
        "  orders  kafka     held back",
    ]


def test_a_private_tmp_unless_what_the_daemon_reads_lies_in_tmp():
    # PrivateTmp=yes gives the service a /tmp of its own: a cued installed under /tmp
    # (a checkout there, a test run) would not be found by systemd at all
    plain = render_unit(UnitSettings(command=("/usr/bin/cued",), config=Path("/c.toml")))
    in_tmp = render_unit(
        UnitSettings(command=("/tmp/x/.venv/bin/cued",), config=Path("/c.toml"), in_tmp=True)
    )
    assert "PrivateTmp=yes\n" in plain
    assert "PrivateTmp=no\n" in in_tmp
    assert "\nPrivateTmp=yes" not in in_tmp  # (the comment above it names it)
