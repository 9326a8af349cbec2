"""The configuration file: every problem reported at once, each with file, line, key path
and what is wrong; and a valid file read into the values the daemon uses."""

from __future__ import annotations

from textwrap import dedent

import pytest

from cued.daemon.config import load_config, parse_config
from cued.daemon.errors import ConfigError, ConfigProblem
from tests.support.config_files import VALID


def problems_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_config(dedent(text), file="config.toml")
    assert all(p.file == "config.toml" for p in info.value.problems)
    return info.value.problems


def only_problem(text: str) -> ConfigProblem:
    found = problems_of(text)
    assert len(found) == 1, found
    return found[0]


# Each case is a file with exactly one thing wrong: (text, line, key path, words of the message).
ONE_PROBLEM = [
    pytest.param(
        """\
        [daemon]
        log_level = "info"
        state = "mysql://root@db/cued"
        """,
        3,
        "daemon.state",
        ["mysql:// is no store cued knows", "postgresql:// URL"],
        id="state-of-another-database",
    ),
    pytest.param(
        """\
        [daemon]
        state = "postgresql://cued:hunter2@db.internal"
        """,
        2,
        "daemon.state",
        ["names no database", "(got 'postgresql://cued@db.internal')"],
        id="state-url-without-a-database-shows-no-password",
    ),
    pytest.param(
        """\
        [daemon]
        state = "postgresql://db:port/cued"
        """,
        2,
        "daemon.state",
        ["is not a URL PostgreSQL can take", "Port"],
        id="state-url-with-a-bad-port",
    ),
    pytest.param(
        """\
        [daemon]
        state = "env:2BAD"
        """,
        2,
        "daemon.state",
        ["env:NAME takes a variable's name"],
        id="state-from-a-bad-variable-name",
    ),
    pytest.param(
        """\
        [daemon]
        state = "x.db"
        max_running_tasks =
        """,
        3,
        "",
        ["invalid TOML"],
        id="toml-syntax",
    ),
    pytest.param(
        """\
        [daemn]
        state = "x.db"
        """,
        1,
        "daemn",
        ["unknown key 'daemn'", "did you mean 'daemon'?"],
        id="unknown-top-level-table",
    ),
    pytest.param(
        """\
        version = 2
        [daemon]
        """,
        1,
        "version",
        ["unknown key 'version'", "daemon, http, auth, pipelines, sources, triggers"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        """\
        [daemon]
        max_runing_tasks = 3
        """,
        2,
        "daemon.max_runing_tasks",
        ["unknown key 'max_runing_tasks'", "did you mean 'max_running_tasks'?"],
        id="daemon-key-typo",
    ),
    pytest.param(
        """\
        [daemon]
        shutdown_grace = "3 parsecs"
        """,
        2,
        "daemon.shutdown_grace",
        ["'3 parsecs' is not a duration"],
        id="daemon-bad-duration",
    ),
    pytest.param(
        """\
        [daemon]
        log_level = "loud"
        """,
        2,
        "daemon.log_level",
        ["'debug'", "'info'", "loud"],
        id="daemon-bad-choice",
    ),
    pytest.param(
        """\
        [daemon]
        backlog_high_water = 10
        backlog_low_water = 20
        """,
        3,
        "daemon.backlog_low_water",
        ["must be below backlog_high_water"],
        id="low-water-above-high-water",
    ),
    pytest.param(
        """\
        [pipelines.p]
        max_active_runs = 0
        [pipelines.p.tasks.a]
        kind = "sleep"
        """,
        2,
        "pipelines.p.max_active_runs",
        ["greater than or equal to 1", "got 0"],
        id="pipeline-bad-value",
    ),
    pytest.param(
        """\
        [pipelines.p]
        max_active_runs = 2
        """,
        1,
        "pipelines.p.tasks",
        ["at least one task"],
        id="pipeline-without-tasks",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        retires = 3
        """,
        3,
        "pipelines.p.tasks.a.retires",
        ["unknown key 'retires'", "did you mean 'retries'?"],
        id="task-key-typo",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks]
        a = { kind = "sleep", retires = 3 }
        """,
        2,
        "pipelines.p.tasks.a.retires",
        ["unknown key 'retires'", "did you mean 'retries'?"],
        id="task-key-typo-in-inline-table",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        retries = -1
        """,
        3,
        "pipelines.p.tasks.a.retries",
        ["greater than or equal to 0"],
        id="negative-retries",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        trigger_rule = "one_success"
        """,
        3,
        "pipelines.p.tasks.a.trigger_rule",
        ["'all_success'", "'all_done'", "one_success"],
        id="unknown-trigger-rule",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "bash"
        """,
        2,
        "pipelines.p.tasks.a.kind",
        [
            "unknown task kind 'bash'",
            (
                "known: amqp, approval, http, kafka, llm, mqtt, nats, pipeline, python, "
                "redis_stream, shell, sleep, sql"
            ),
        ],
        id="unknown-kind",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        retries = 1
        """,
        1,
        "pipelines.p.tasks.a.kind",
        ["required key is missing"],
        id="missing-kind",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "shell"
        argv = 3
        """,
        3,
        "pipelines.p.tasks.a.argv",
        ["valid list", "got 3"],
        id="shell-argv-not-a-list",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "shell"
        argvv = ["true"]
        """,
        3,
        "pipelines.p.tasks.a.argvv",
        ["unknown key 'argvv'", "did you mean 'argv'?"],
        id="shell-parameter-typo",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "shell"
        cwd = "/tmp"
        """,
        1,
        "pipelines.p.tasks.a",
        ["exactly one of 'argv' and 'command'"],
        id="shell-without-argv-or-command",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "shell"
        argv = ["true"]

        [pipelines.p.tasks.a.env]
        HOME = 1
        """,
        6,
        "pipelines.p.tasks.a.env.HOME",
        ["valid string"],
        id="shell-env-value-in-subtable",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "http"
        method = "POST"
        """,
        1,
        "pipelines.p.tasks.a.url",
        ["required key is missing"],
        id="http-without-url",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "http"
        url = "http://example.com"
        jsn = { a = 1 }
        """,
        4,
        "pipelines.p.tasks.a.jsn",
        ["unknown key 'jsn'", "did you mean 'json'?"],
        id="http-parameter-typo-suggests-the-key-users-write",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "http"
        url = "http://example.com"
        expected_status = [200, 700]
        """,
        4,
        "pipelines.p.tasks.a.expected_status",
        ["700", "not an HTTP status code"],
        id="http-bad-status",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "python"
        function = "not a function"
        """,
        3,
        "pipelines.p.tasks.a.function",
        ["pattern", "not a function"],
        id="python-bad-function",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        seconds = -1
        """,
        3,
        "pipelines.p.tasks.a.seconds",
        ["greater than or equal to 0"],
        id="sleep-negative-seconds",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        needs = ["c"]
        """,
        3,
        "pipelines.p.tasks.a.needs",
        ["unknown task 'c'", "known: a"],
        id="needs-no-task",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.extract]
        kind = "sleep"
        [pipelines.p.tasks.load]
        kind = "sleep"
        needs = ["extrct"]
        """,
        5,
        "pipelines.p.tasks.load.needs",
        ["unknown task 'extrct'", "did you mean 'extract'?"],
        id="needs-typo",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        needs = ["a"]
        """,
        3,
        "pipelines.p.tasks.a.needs",
        ["cannot need itself"],
        id="needs-itself",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        needs = ["b"]
        [pipelines.p.tasks.b]
        kind = "sleep"
        needs = ["a"]
        """,
        3,
        "pipelines.p.tasks.a.needs",
        ["cycle: a -> b -> a"],
        id="cycle-of-two",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        needs = ["b"]
        [pipelines.p.tasks.b]
        kind = "sleep"
        needs = ["c"]
        [pipelines.p.tasks.c]
        kind = "sleep"
        needs = ["a"]
        """,
        3,
        "pipelines.p.tasks.a.needs",
        ["cycle: a -> b -> c -> a"],
        id="cycle-of-three",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        retry_backoff = "3 parsecs"
        """,
        3,
        "pipelines.p.tasks.a.retry_backoff",
        ["'3 parsecs' is not a duration", "'30s'"],
        id="bad-duration-retry-backoff",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        timeout = "3 parsecs"
        """,
        3,
        "pipelines.p.tasks.a.timeout",
        ["'3 parsecs' is not a duration"],
        id="bad-duration-timeout",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        timeout = -5
        """,
        3,
        "pipelines.p.tasks.a.timeout",
        ["cannot be negative"],
        id="negative-duration",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        timeout = nan
        """,
        3,
        "pipelines.p.tasks.a.timeout",
        ["duration"],
        id="nan-duration",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        pool = "gpu"
        """,
        3,
        "pipelines.p.tasks.a.pool",
        ["unknown pool 'gpu'", "none are declared"],
        id="pool-none-declared",
    ),
    pytest.param(
        """\
        [daemon]
        pools = { cpu = 2, io = 8 }
        [pipelines.p.tasks.a]
        kind = "sleep"
        pool = "gpu"
        """,
        5,
        "pipelines.p.tasks.a.pool",
        ["unknown pool 'gpu'", "known: cpu, io"],
        id="pool-unknown",
    ),
    pytest.param(
        """\
        [pipelines.p]
        inputs = { day = "today" }
        [pipelines.p.tasks.a]
        kind = "shell"
        argv = ["echo", "{{ inputs.dya }}"]
        """,
        5,
        "pipelines.p.tasks.a.argv",
        ["input 'dya'", "does not declare", "declared: day"],
        id="template-undeclared-input",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        [pipelines.p.tasks.b]
        kind = "shell"
        command = "echo {{ tasks.a.output }}"
        """,
        5,
        "pipelines.p.tasks.b.command",
        ["task 'a'", "not upstream", "needs"],
        id="template-task-not-upstream",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        [pipelines.p.tasks.b]
        kind = "sleep"
        needs = ["a"]
        [pipelines.p.tasks.c]
        kind = "shell"
        needs = ["a"]
        command = "echo {{ tasks.b.output }}"
        """,
        9,
        "pipelines.p.tasks.c.command",
        ["task 'b'", "not upstream"],
        id="template-task-sibling",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "python"
        function = "m:f"
        args = { x = "{{ item }}" }
        """,
        4,
        "pipelines.p.tasks.a.args",
        ["'item'", "only in a task with map"],
        id="template-item-outside-map",
    ),
    pytest.param(
        """\
        [pipelines.p]
        inputs = { xs = [1] }
        [pipelines.p.tasks.a]
        kind = "sleep"
        map = "{{ item }}"
        """,
        5,
        "pipelines.p.tasks.a.map",
        ["'item'", "only in a task with map"],
        id="template-item-in-map-itself",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "shell"
        argv = ["echo", "{{ env.HOME }}"]
        """,
        3,
        "pipelines.p.tasks.a.argv",
        ["'env'", "does not exist", "inputs, tasks, item or run"],
        id="template-unknown-root",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "shell"
        argv = ["echo", "{{ run.owner }}"]
        """,
        3,
        "pipelines.p.tasks.a.argv",
        ["run.owner", "does not exist"],
        id="template-unknown-run-field",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "shell"
        argv = ["echo", "{{ inputs. }}"]
        """,
        3,
        "pipelines.p.tasks.a.argv",
        ["does not parse"],
        id="template-syntax-error",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "shell"
        argv = ["echo", "a#b", "[c"]
        retires = 3
        """,
        4,
        "pipelines.p.tasks.a.retires",
        ["unknown key 'retires'"],
        id="line-after-string-holding-hash",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "shell"
        command = \"\"\"
        echo [
        \"\"\"
        retires = 3
        """,
        6,
        "pipelines.p.tasks.a.retires",
        ["unknown key 'retires'"],
        id="line-after-multi-line-string",
    ),
    pytest.param(
        """\
        [pipelines.p.tasks.a]
        kind = "shell"
        argv = [
            "echo",
            "x",
        ]
        retires = 3
        """,
        7,
        "pipelines.p.tasks.a.retires",
        ["unknown key 'retires'"],
        id="line-after-multi-line-array",
    ),
]


@pytest.mark.parametrize(("text", "line", "path", "words"), ONE_PROBLEM)
def test_each_problem_names_line_key_and_what_is_wrong(text, line, path, words):
    problem = only_problem(text)
    assert (problem.line, problem.path) == (line, path), problem
    for word in words:
        assert word in problem.message, problem


def test_toml_syntax_error_at_end_of_document_still_names_a_line():
    problem = only_problem('[pipelines.p.tasks.a]\nkind = "shell"\nargv = ["echo",\n')
    assert "invalid TOML" in problem.message
    assert problem.line is not None


def test_every_problem_is_reported_at_once():
    found = problems_of(
        """\
        [daemn]
        x = 1

        [daemon]
        max_runing_tasks = 3

        [pipelines.p]
        inputs = { day = "today" }

        [pipelines.p.tasks.a]
        kind = "sleep"
        retires = 3

        [pipelines.p.tasks.b]
        kind = "bash"
        needs = ["a", "zz"]
        pool = "gpu"

        [pipelines.p.tasks.c]
        kind = "shell"
        needs = ["a"]
        argv = ["echo", "{{ inputs.month }}", "{{ tasks.b.output }}"]
        timeout = "3 parsecs"

        [pipelines.q.tasks.d]
        kind = "http"
        """
    )
    assert sorted((p.line, p.path) for p in found) == [
        (1, "daemn"),
        (5, "daemon.max_runing_tasks"),
        (12, "pipelines.p.tasks.a.retires"),
        (15, "pipelines.p.tasks.b.kind"),
        (16, "pipelines.p.tasks.b.needs"),
        (17, "pipelines.p.tasks.b.pool"),
        (22, "pipelines.p.tasks.c.argv"),
        (22, "pipelines.p.tasks.c.argv"),
        (23, "pipelines.p.tasks.c.timeout"),
        (25, "pipelines.q.tasks.d.url"),
    ]
    assert len(found) == 10
    messages = " | ".join(p.message for p in found)
    for word in ("'daemon'", "'retries'", "'bash'", "unknown task 'zz'", "unknown pool 'gpu'"):
        assert word in messages


def test_a_task_with_a_bad_common_key_still_has_its_parameters_checked():
    found = problems_of(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        timeout = "3 parsecs"
        retires = 3
        """
    )
    assert sorted((p.line, p.path) for p in found) == [
        (3, "pipelines.p.tasks.a.timeout"),
        (4, "pipelines.p.tasks.a.retires"),
    ]


def test_a_bad_daemon_key_does_not_hide_the_declared_pools():
    problem = only_problem(
        """\
        [daemon]
        max_runing_tasks = 3
        pools = { cpu = 2 }
        [pipelines.p.tasks.a]
        kind = "sleep"
        pool = "cpu"
        """
    )
    assert problem.path == "daemon.max_runing_tasks"


def test_an_invalid_task_does_not_hide_a_cycle_through_it():
    found = problems_of(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        needs = ["b"]
        [pipelines.p.tasks.b]
        kind = "sleep"
        needs = ["a"]
        timeout = "3 parsecs"
        """
    )
    assert sorted((p.line, p.path, p.message[:6]) for p in found) == [
        (3, "pipelines.p.tasks.a.needs", "cycle:"),
        (7, "pipelines.p.tasks.b.timeout", "'3 par"),
    ]


def test_the_error_lists_every_problem_as_file_line_path_message():
    with pytest.raises(ConfigError) as info:
        parse_config('[daemon]\nmax_runing_tasks = 3\nlog_levl = "info"\n', file="cfg.toml")
    text = str(info.value)
    assert text.startswith("2 problem(s) in the configuration:")
    assert "cfg.toml:2: daemon.max_runing_tasks: unknown key 'max_runing_tasks'" in text
    assert "cfg.toml:3: daemon.log_levl: unknown key 'log_levl'" in text


def test_an_invalid_task_does_not_make_its_dependents_look_wrong():
    # b needs a and reads its output: the only problem is a's duration
    problem = only_problem(
        """\
        [pipelines.p.tasks.a]
        kind = "sleep"
        retry_backoff = "3 parsecs"
        [pipelines.p.tasks.b]
        kind = "shell"
        needs = ["a"]
        argv = ["echo", "{{ tasks.a.output }}"]
        """
    )
    assert problem.path == "pipelines.p.tasks.a.retry_backoff"


def test_a_cycle_does_not_hide_the_other_problems_of_its_pipeline():
    found = problems_of(
        """\
        [pipelines.p.tasks.a]
        kind = "shell"
        needs = ["b"]
        argv = ["echo", "{{ inputs.nope }}"]
        [pipelines.p.tasks.b]
        kind = "sleep"
        needs = ["a"]
        """
    )
    assert sorted((p.line, p.path) for p in found) == [
        (3, "pipelines.p.tasks.a.needs"),
        (4, "pipelines.p.tasks.a.argv"),
    ]


def test_problems_in_several_pipelines_are_all_reported():
    found = problems_of(
        """\
        [pipelines.p.tasks.a]
        kind = "bash"
        [pipelines.q.tasks.a]
        kind = "zsh"
        """
    )
    assert [(p.line, p.path) for p in found] == [
        (2, "pipelines.p.tasks.a.kind"),
        (4, "pipelines.q.tasks.a.kind"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('argv = ["echo", "{{ inputs.n }}"]', id="argv-item"),
        pytest.param('command = "sleep {{ inputs.n }}"', id="command"),
        pytest.param('argv = ["echo"]\nenv = { N = "{{ inputs.n }}" }', id="env-value"),
        pytest.param('argv = ["echo", "{{ item }}"]\nmap = "{{ inputs.xs }}"', id="item-in-mapped"),
        pytest.param('argv = ["echo", "{{ run.id }}", "{{ run.pipeline }}"]', id="run"),
        pytest.param('argv = ["echo", "{{ range(3) | list | join(\',\') }}"]', id="jinja-global"),
        pytest.param(
            'argv = ["echo", "{% for x in inputs.xs %}{{ loop.index }}{{ x }}{% endfor %}"]',
            id="for-loop-variables",
        ),
    ],
)
def test_valid_templates_pass(text):
    parse_config(
        '[pipelines.p]\ninputs = { n = 1, xs = [1, 2] }\n[pipelines.p.tasks.a]\nkind = "shell"\n'
        + text
        + "\n",
        file="config.toml",
    )


def test_a_template_may_stand_where_another_type_is_expected():
    # checked again, rendered, before each attempt
    config = parse_config(
        '[pipelines.p]\ninputs = { s = 1 }\n[pipelines.p.tasks.a]\nkind = "sleep"\n'
        'seconds = "{{ inputs.s }}"\n'
    )
    assert config.pipelines["p"].tasks["a"].params == {"seconds": "{{ inputs.s }}"}


# --------------------------------------------------------------------------- a valid file


def test_a_valid_file_with_every_feature_loads(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(VALID, encoding="utf-8")
    config = load_config(path)

    assert config.base_dir == tmp_path.resolve()
    assert config.state_path == tmp_path.resolve() / "state" / "cued.db"
    daemon = config.daemon
    assert daemon.shutdown_grace == 90.0
    assert daemon.pools == {"shell": 4, "http": 16}
    assert (daemon.max_running_tasks, daemon.synchronous, daemon.log_level) == (
        32,
        "normal",
        "warning",
    )
    assert list(config.pipelines) == ["orders", "nightly"]

    orders = config.pipelines["orders"]
    assert orders.max_active_runs == 4
    assert orders.inputs == {"day": "2024-05-01", "parts": ["a", "b"]}
    assert list(orders.tasks) == ["fetch", "part", "sum", "cleanup"]

    fetch = orders.tasks["fetch"]
    assert fetch.kind == "http"
    assert (fetch.retries, fetch.retry_backoff, fetch.retry_backoff_max, fetch.timeout) == (
        3,
        0.25,
        60.0,
        7200.0,
    )
    assert fetch.pool == "http"
    assert fetch.produces == ("orders",)
    assert fetch.params == {
        "method": "post",
        "url": "http://localhost:9/orders?day={{ inputs.day }}",
        "headers": {"Authorization": "Bearer x"},
        "json": {"day": "{{ inputs.day }}"},
        "expected_status": [200, 201],
    }

    part = orders.tasks["part"]
    assert part.needs == ("fetch",)
    assert part.map == "{{ inputs.parts }}"
    assert part.trigger_rule == "all_success"
    assert (part.retries, part.retry_backoff, part.timeout) == (0, 1.0, None)
    assert part.params["env"] == {"DAY": "{{ inputs.day }}"}

    assert orders.tasks["sum"].params == {
        "function": "tests.support.pyfuncs:add",
        "args": {"a": 1, "b": "{{ tasks.part.output | length }}"},
    }
    cleanup = orders.tasks["cleanup"]
    assert (cleanup.trigger_rule, cleanup.params) == ("all_done", {"seconds": 0.5})
    assert config.pipelines["nightly"].tasks["only"].params == {"command": "date"}


def test_defaults_of_an_empty_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("", encoding="utf-8")
    config = load_config(path)
    assert config.pipelines == {}
    assert config.state_path == tmp_path.resolve() / "cued.db"
    assert config.daemon.shutdown_grace == 30.0


def test_load_config_reports_the_file_and_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[daemon]\n\nmax_runing_tasks = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.path) == (
        str(path),
        3,
        "daemon.max_runing_tasks",
    )


def test_a_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert "cannot read" in problem.message


@pytest.mark.parametrize(
    ("state", "in_database", "shown"),
    [
        pytest.param("cued.db", False, None, id="sqlite-file"),
        pytest.param("var/state.db", False, None, id="sqlite-file-in-a-folder"),
        pytest.param("postgresql://cued:pw@db/cued", True, "postgresql://cued@db/cued", id="url"),
        pytest.param("postgres://db:5433/cued", True, "postgres://db:5433/cued", id="short-scheme"),
        pytest.param("env:CUED_DATABASE_URL", True, "env:CUED_DATABASE_URL", id="env"),
    ],
)
def test_the_state_is_a_sqlite_file_or_a_postgresql_database(tmp_path, state, in_database, shown):
    config = parse_config(f'[daemon]\nstate = "{state}"\n', base_dir=tmp_path)
    assert config.state_in_database is in_database
    if in_database:
        # the daemon's socket and lock are beside the config, named for the engine
        assert config.state_path == tmp_path / "postgresql"
        assert config.state_shown == shown
    else:
        assert config.state_path == tmp_path / state
        assert config.state_location() == str(tmp_path / state)


def test_a_database_url_from_the_environment_must_be_one(tmp_path, monkeypatch):
    from cued.daemon.errors import CuedError

    config = parse_config('[daemon]\nstate = "env:CUED_TEST_URL"\n', base_dir=tmp_path)
    monkeypatch.delenv("CUED_TEST_URL", raising=False)
    with pytest.raises(CuedError, match=r"environment variable 'CUED_TEST_URL'.*is not set"):
        config.state_location()
    monkeypatch.setenv("CUED_TEST_URL", "cued.db")
    with pytest.raises(CuedError, match="must hold a postgresql:// URL"):
        config.state_location()
    monkeypatch.setenv("CUED_TEST_URL", "postgresql://db")
    with pytest.raises(CuedError, match="names no database"):
        config.state_location()
    monkeypatch.setenv("CUED_TEST_URL", "postgresql://u:pw@db/cued")
    assert config.state_location() == "postgresql://u:pw@db/cued"


def test_strict_checks_name_the_line_of_a_database_url_that_is_not_there(tmp_path, monkeypatch):
    from cued.daemon.config.strict import environment_problems

    file = tmp_path / "config.toml"
    file.write_text('[http]\nlisten = ""\n[daemon]\nstate = "env:CUED_TEST_DB"\n')
    config = load_config(file)
    monkeypatch.delenv("CUED_TEST_DB", raising=False)
    (unset,) = environment_problems(config, file)
    monkeypatch.setenv("CUED_TEST_DB", "state.db")
    (not_url,) = environment_problems(config, file)
    monkeypatch.setenv("CUED_TEST_DB", "postgresql://db/cued")
    assert environment_problems(config, file) == []
    assert (unset.line, unset.path) == (4, "daemon.state")
    assert unset.message == "environment variable 'CUED_TEST_DB' is not set"
    assert (not_url.line, not_url.message) == (
        4,
        "[daemon] state 'env:CUED_TEST_DB' must hold a postgresql:// URL",
    )


def test_a_database_password_is_redacted_and_its_url_is_not(tmp_path):
    from cued.daemon.config.secrets import redact_text

    config = parse_config(
        '[daemon]\nstate = "postgresql://cued:pw-d7f3a9@db.internal/cued"\n', base_dir=tmp_path
    )
    assert config.state_location() == "postgresql://cued:pw-d7f3a9@db.internal/cued"
    assert redact_text("auth failed with pw-d7f3a9") == "auth failed with [redacted]"
    assert redact_text(config.state_shown) == "postgresql://cued@db.internal/cued"
