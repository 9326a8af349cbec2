"""Event data stays data: it is not run as shell code, does not choose the function a
python task calls, nor the host an http or llm task sends its request (and key) to. Here
the templates and what ``cued validate`` checks; against /bin/sh, a real server and a
daemon in tests/e2e/test_injection_against_real_programs.py."""

from __future__ import annotations

from textwrap import dedent
from typing import TYPE_CHECKING

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cued.daemon.config import parse_config
from cued.daemon.core.templates import render, shell_quote
from cued.daemon.errors import ConfigError, PermanentTaskError
from cued.plugins.http import HttpTask
from cued.plugins.shell import ShellParams
from tests.support.config_files import SHELL

if TYPE_CHECKING:
    from cued.daemon.errors import ConfigProblem

# -- shell_quote -----------------------------------------------------------------------------


def test_shell_quote_makes_each_item_of_a_list_a_word_and_quote_is_its_alias() -> None:
    assert render("{{ x | shell_quote }}", {"x": ["a b", "$c", 3]}) == "'a b' '$c' 3"
    assert render("echo {{ x | quote }}", {"x": "it's"}) == shell_quote_of("echo", "it's")


def shell_quote_of(*words: str) -> str:
    return " ".join([words[0], *(shell_quote(w) for w in words[1:])])


# -- cued validate: warnings -----------------------------------------------------------------


def warnings_of(command: str) -> list[ConfigProblem]:
    config = parse_config(SHELL.format(command=command), file="config.toml")
    return list(config.warnings)


@pytest.mark.parametrize(
    ("command", "words"),
    [
        pytest.param('"echo {{ inputs.x }}"', "{{ inputs.x | shell_quote }}", id="bare"),
        pytest.param('"{{ inputs.x }}"', "{{ inputs.x | shell_quote }}", id="whole-command"),
        pytest.param(
            '"echo {{ inputs.x | shell_quote | upper }}"',
            "{{ inputs.x | shell_quote | upper | shell_quote }}",
            id="quoted-then-changed",
        ),
        pytest.param(
            '"{% if inputs.n %}rm {{ inputs.x }}{% endif %}"',
            "{{ inputs.x | shell_quote }}",
            id="inside-a-block",
        ),
        pytest.param(
            "'echo \"{{ inputs.x | shell_quote }}\"'", 'inside "..."', id="inside-double-quotes"
        ),
        pytest.param(
            "\"echo '{{ inputs.x | shell_quote }}'\"", "inside '...'", id="inside-single-quotes"
        ),
    ],
)
def test_validate_warns_of_a_command_template_the_shell_would_run(command, words) -> None:
    (warning,) = warnings_of(command)
    assert warning.warning
    assert (warning.line, warning.path) == (5, "pipelines.p.tasks.t.command")
    assert words in warning.message
    assert str(warning).startswith("config.toml:5: pipelines.p.tasks.t.command: warning: ")


@pytest.mark.parametrize(
    "command",
    [
        pytest.param('"echo {{ inputs.x | shell_quote }}"', id="quoted"),
        pytest.param('"echo {{ inputs.x | quote }} > out"', id="alias"),
        pytest.param('"echo {{ inputs.x | default(1) | shell_quote }}"', id="quoted-last"),
        pytest.param("\"echo 'it''s' {{ inputs.x | shell_quote }}\"", id="after-closed-quotes"),
        pytest.param('"echo \\\\\\" {{ inputs.x | shell_quote }}"', id="after-escaped-quote"),
        pytest.param('"echo $HOME"', id="no-template"),
    ],
)
def test_validate_is_quiet_about_a_command_whose_templates_are_quoted(command) -> None:
    assert warnings_of(command) == []


def test_warnings_are_listed_with_the_errors_of_an_invalid_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(SHELL.format(command='"echo {{ inputs.x }}"') + "retries = -1\n")
    assert [p.path for p in info.value.problems] == ["pipelines.p.tasks.t.retries"]
    assert [p.path for p in info.value.warnings] == ["pipelines.p.tasks.t.command"]


@settings(max_examples=200, deadline=None)
@given(command=st.text(alphabet="{}%|'\"\\ $ab.xinputs_quote", max_size=40))
def test_the_command_check_copes_with_any_text(command: str) -> None:
    for problem in ShellParams.template_problems({"command": command}):
        assert problem.key == ("command",)


# -- cued validate: refusals -----------------------------------------------------------------

PIPELINE = """\
[pipelines.p]
inputs = { x = "", url = "", host = "", f = "" }
[pipelines.p.tasks.t]
"""


def refusals_of(task: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_config(PIPELINE + dedent(task), file="config.toml")
    return info.value.problems


@pytest.mark.parametrize(
    ("task", "key", "words"),
    [
        pytest.param(
            'kind = "python"\nfunction = "{{ inputs.f }}"\n',
            "function",
            "could call any function",
            id="python-function",
        ),
        pytest.param(
            'kind = "python"\nfunction = "os:{{ inputs.f }}"\n',
            "function",
            "could call any function",
            id="python-function-part",
        ),
        pytest.param(
            'kind = "llm"\nbase_url = "{{ inputs.url }}"\nmodel = "m"\n'
            'messages = [{ role = "user", content = "hi" }]\n',
            "base_url",
            "where the api key is sent",
            id="llm-base-url",
        ),
        pytest.param(
            'kind = "llm"\nbase_url = "https://{{ inputs.host }}/v1"\nmodel = "m"\n'
            'messages = [{ role = "user", content = "hi" }]\n',
            "base_url",
            "where the api key is sent",
            id="llm-base-url-host",
        ),
        pytest.param(
            'kind = "llm"\nbase_url = "https://api.example.com/v1"\nmodel = "m"\n'
            'api_key = "env:{{ inputs.x }}"\nmessages = [{ role = "user", content = "hi" }]\n',
            "api_key",
            "which secret is sent",
            id="llm-api-key",
        ),
        pytest.param(
            'kind = "http"\nurl = "http://{{ inputs.host }}/x"\n',
            "url",
            "scheme or host",
            id="http-host",
        ),
        pytest.param(
            'kind = "http"\nurl = "{{ inputs.url }}"\n', "url", "scheme or host", id="http-whole"
        ),
        pytest.param(
            'kind = "http"\nurl = "http://example.com{{ inputs.x }}"\n',
            "url",
            "scheme or host",
            id="http-right-after-the-host",
        ),
        pytest.param(
            'kind = "http"\nurl = "http://example.com:{{ inputs.x }}/"\n',
            "url",
            "scheme or host",
            id="http-port",
        ),
        pytest.param(
            'kind = "http"\nurl = "{{ inputs.x }}://example.com/"\n',
            "url",
            "scheme or host",
            id="http-scheme",
        ),
        pytest.param(
            'kind = "shell"\nargv = ["env"]\nenv = ["{{ inputs.x }}"]\n',
            "env.0",
            "must be written out",
            id="shell-env-name",
        ),
        pytest.param(
            'kind = "shell"\nargv = ["env"]\nenv = "{{ inputs.x }}"\n',
            "env",
            "must be written out",
            id="shell-env-whole",
        ),
        pytest.param(
            'kind = "shell"\nargv = ["env", "MODE={{ inputs.x }}", "{{ inputs.x }}"]\n',
            "argv.2",
            "the program must be written out",
            id="shell-program-after-env",
        ),
        pytest.param(
            'kind = "shell"\nargv = ["busybox", "{{ inputs.x }}"]\n',
            "argv.1",
            "must be written out",
            id="shell-busybox-applet",
        ),
        pytest.param(
            'kind = "shell"\nargv = ["./run.sh"]\ncwd = "{{ inputs.x }}"\n',
            "cwd",
            "relative path",
            id="shell-cwd-of-a-relative-program",
        ),
    ],
)
def test_validate_refuses_a_template_that_would_choose_code_or_destination(task, key, words):
    (problem,) = refusals_of(task)
    assert problem.path == f"pipelines.p.tasks.t.{key}"
    assert not problem.warning
    assert words in problem.message


@pytest.mark.parametrize(
    "task",
    [
        pytest.param('kind = "http"\nurl = "http://example.com/{{ inputs.x }}"\n', id="path"),
        pytest.param('kind = "http"\nurl = "https://example.com?q={{ inputs.x }}"\n', id="query"),
        pytest.param(
            'kind = "http"\nurl = "http://{{ inputs.host }}/x"\nallow_hosts = ["api.example.com"]\n',
            id="host-with-allow-hosts",
        ),
        pytest.param(
            'kind = "shell"\nargv = ["env"]\nenv = ["MODE={{ inputs.x }}", "HOME"]\n',
            id="env-value",
        ),
        pytest.param(
            'kind = "shell"\nargv = ["env"]\nenv = { MODE = "{{ inputs.x }}" }\n', id="env-table"
        ),
        pytest.param(
            'kind = "shell"\nargv = ["sh", "-c", "echo \\"$1\\"", "sh", "{{ inputs.x }}"]\n',
            id="sh-c-argument-after-the-script",
        ),
        pytest.param(
            'kind = "shell"\nargv = ["bash", "-o", "pipefail", "-ec", "echo {{ inputs.x | quote }}"]\n',
            id="sh-c-quoted",
        ),
        pytest.param('kind = "shell"\nargv = ["sh", "run.sh", "{{ inputs.x }}"]\n', id="sh-file"),
        pytest.param(
            'kind = "shell"\ncommand = "cat <<\'EOF\'\\n{{ inputs.x }}\\nEOF"\n',
            id="here-document-quoted-delimiter",
        ),
        pytest.param(
            'kind = "shell"\ncommand = "cat <<EOF\\nit\'s\\nEOF\\necho {{ inputs.x | quote }}"\n',
            id="after-a-here-document",
        ),
    ],
)
def test_validate_accepts_templates_that_choose_no_destination(task) -> None:
    config = parse_config(PIPELINE + dedent(task), file="config.toml")
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("task", "key", "words"),
    [
        pytest.param(
            'argv = ["env", "A=1", "busybox", "sh", "-xc", "echo {{ inputs.x }}"]\n',
            "argv.5",
            "shell_quote",
            id="sh-xc-under-env-and-busybox",
        ),
        pytest.param(
            'argv = ["python3", "-c", "print(\'{{ inputs.x }}\')"]\n',
            "argv.2",
            "run as code",
            id="python-c",
        ),
        pytest.param(
            'command = "cat <<-EOF\\n\\t{{ inputs.x | shell_quote }}\\n\\tEOF"\n',
            "command",
            "here-document",
            id="here-document-with-tabs",
        ),
        pytest.param('argv = ["make"]\ncwd = "/srv/{{ inputs.x }}"\n', "cwd", "Makefile", id="cwd"),
    ],
)
def test_validate_warns_of_a_template_that_may_become_code(task, key, words) -> None:
    config = parse_config(PIPELINE + 'kind = "shell"\n' + task, file="config.toml")
    (warning,) = config.warnings
    assert (warning.path, warning.warning) == (f"pipelines.p.tasks.t.{key}", True)
    assert words in warning.message


def test_allow_hosts_must_be_hosts() -> None:
    problems = refusals_of(
        'kind = "http"\nurl = "http://{{ inputs.host }}/"\n'
        'allow_hosts = ["https://api.example.com", "api.example.com:443", "*"]\n'
    )
    assert [p.path for p in problems] == ["pipelines.p.tasks.t.allow_hosts"]
    assert "'https://api.example.com' is not a host" in problems[0].message


# -- allow_hosts at run time -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        pytest.param("api.example.com", True, id="listed"),
        pytest.param("API.Example.COM.", True, id="case-and-final-dot"),
        pytest.param("a.b.internal.example.com", True, id="below-a-wildcard"),
        pytest.param("internal.example.com", False, id="the-wildcards-own-domain"),
        pytest.param("evilinternal.example.com", False, id="not-a-label-below"),
        pytest.param("api.example.com.evil.org", False, id="listed-name-as-a-prefix"),
        pytest.param("[::1]", True, id="ipv6"),
        pytest.param("10.0.0.1", False, id="address-not-listed"),
    ],
)
def test_allow_hosts_match_names_wildcards_and_addresses(host: str, allowed: bool) -> None:
    from cued.plugins.http import _check_allowed

    params = HttpTask.Params.model_validate(
        {"url": "http://x/", "allow_hosts": ["api.example.com", "*.internal.example.com", "[::1]"]}
    )
    assert params.allow_hosts is not None
    url = httpx.URL(f"https://{host}:8443/path")
    if allowed:
        _check_allowed(url, params.allow_hosts, "GET")
    else:
        with pytest.raises(PermanentTaskError, match="is not in allow_hosts"):
            _check_allowed(url, params.allow_hosts, "GET")
