"""The plugin SDK, ``cued.daemon.sdk``: the one module of the daemon that connectors and
plugins import. Its names are a public interface, pinned here (as httpx pins its
``__all__``): adding or removing one is a decision, made in this file too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cued.daemon import errors, sdk

README = Path(__file__).resolve().parents[2] / "README.md"


def test_exported_members():
    assert sdk.__all__ == [
        "SHELL_QUOTE_FILTERS",
        "AwaitingDecision",
        "AwaitingEvent",
        "AwaitingRun",
        "AwaitingTime",
        "Backfills",
        "ConnectorError",
        "CuedError",
        "DataCheckFailed",
        "Duration",
        "EnvSpec",
        "Event",
        "Intake",
        "LineWriter",
        "Meter",
        "ParamProblem",
        "Parsed",
        "PermanentTaskError",
        "ProgramEnv",
        "ProgramExit",
        "Receipt",
        "Source",
        "SourceContext",
        "Span",
        "Spending",
        "StoreError",
        "TaskContext",
        "TaskError",
        "TaskKind",
        "TaskTimeout",
        "TemplateProblem",
        "WebRoutes",
        "as_moment",
        "backoff_s",
        "bounded_id",
        "condition_holds",
        "condition_template",
        "current_span",
        "current_traceparent",
        "db_value",
        "decimal",
        "decode_text",
        "describe_error",
        "error_response",
        "form_value",
        "has_template",
        "header_text",
        "json_value",
        "looks_like_json",
        "mark_secret",
        "message_value",
        "new_id",
        "now",
        "os_name",
        "outgoing_span",
        "parse_template",
        "parse_traceparent",
        "program_env",
        "resolve_secret",
        "run_program",
        "text_or_base64",
    ]


def test_every_exported_name_resolves():
    missing = [name for name in sdk.__all__ if not hasattr(sdk, name)]
    assert missing == []


def test_star_import_gives_exactly_the_exported_names():
    namespace: dict[str, object] = {}
    exec("from cued.daemon.sdk import *", namespace)  # noqa: S102 - a fixed string
    assert sorted(set(namespace) - {"__builtins__"}) == sorted(sdk.__all__)


def test_the_errors_are_the_daemons():
    # a plugin raising sdk.TaskError must be caught by the runner as the daemon's own
    assert sdk.TaskError is errors.TaskError
    assert sdk.PermanentTaskError is errors.PermanentTaskError
    assert issubclass(sdk.ConnectorError, sdk.CuedError)


@pytest.fixture
def readme_example() -> str:
    readme = README.read_text()
    section = readme[readme.index("### Writing a task kind") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    return code.group(1)


async def test_the_readme_plugin_example_is_a_task_kind(readme_example: str):
    namespace: dict[str, Any] = {}
    exec(readme_example, namespace)  # noqa: S102 - the README's own example
    task = namespace["EchoTask"]()
    assert isinstance(task, sdk.TaskKind)
    params = namespace["EchoParams"](text="hi")
    assert await task.execute(params, None) == "hi"
    with pytest.raises(sdk.PermanentTaskError, match="nothing to echo"):
        await task.execute(namespace["EchoParams"](text=""), None)
