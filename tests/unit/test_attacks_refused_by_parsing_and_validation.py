"""Attacks a review of the hardening (issue 8) tried, that parsing and validation must
refuse, each stated as what must hold:

- ``untrusted.json_value`` does not let ``1e999`` through as ``inf``;
- ``cued validate`` refuses a template that chooses a shell task's program (``argv[0]``),
  and warns of one in the script of ``sh -c`` or inside a here-document.
"""

from __future__ import annotations

import json
from textwrap import dedent
from typing import TYPE_CHECKING

import pytest

from cued.daemon.config import parse_config
from cued.daemon.core import untrusted
from cued.daemon.errors import ConfigError

if TYPE_CHECKING:
    from cued.daemon.errors import ConfigProblem


def test_a_number_too_large_for_a_float_is_not_kept_as_infinity() -> None:
    """The module promises no NaN or Infinity: ``1e999`` parses as ``inf``, which is then
    stored as ``Infinity`` (not JSON) and shown by the API as ``null``."""
    parsed = untrusted.json_value(b'{"a": 1e999, "b": [-1e999]}')
    json.dumps(parsed.data, allow_nan=False)  # raises ValueError on inf


# -- cued validate: templates that choose code -------------------------------------------

PIPELINE = """\
[pipelines.p]
inputs = { x = "" }
[pipelines.p.tasks.t]
kind = "shell"
"""


def problems_of(task: str) -> tuple[list[ConfigProblem], list[ConfigProblem]]:
    """``(errors, warnings)`` of a config with one shell task."""
    try:
        config = parse_config(PIPELINE + dedent(task), file="config.toml")
    except ConfigError as exc:
        return list(exc.problems), list(exc.warnings)
    return [], list(config.warnings)


def test_validate_refuses_a_template_that_chooses_a_shell_tasks_program() -> None:
    """Event data choosing the program run is event data choosing code, as a templated
    python ``function`` is (which is refused)."""
    errors, _ = problems_of('argv = ["{{ inputs.x }}", "-c", "id"]\n')
    assert errors, "a template may choose the program a shell task runs"
    assert all(p.path.startswith("pipelines.p.tasks.t.argv") for p in errors)


@pytest.mark.parametrize("shell", ["sh", "/bin/sh", "bash"])
def test_validate_warns_of_a_template_in_the_script_of_sh_c(shell: str) -> None:
    """``argv = ["sh", "-c", "echo {{ x }}"]`` runs event data as shell code just as
    ``command = "echo {{ x }}"`` does, which is warned of."""
    _, warnings = problems_of(f'argv = ["{shell}", "-c", "echo {{{{ inputs.x }}}}"]\n')
    assert warnings, "no warning for a template in the script of sh -c"


def test_validate_warns_of_shell_quote_inside_a_here_document() -> None:
    """In an unquoted here-document quotes are text and ``$(...)`` runs: shell_quote does
    not protect there (``$(id)`` runs as the daemon's user)."""
    _, warnings = problems_of('command = "cat <<EOF\\n{{ inputs.x | shell_quote }}\\nEOF"\n')
    assert warnings, "no warning for shell_quote inside a here-document"
