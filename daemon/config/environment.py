"""The environment of the programs the daemon starts (shell tasks, alert commands).

Not the daemon's own: that holds the secrets the configuration names with ``env:`` (API
tokens, webhook secrets, keys), and a program's output is stored and shown to whoever
may read runs. A program gets a small base (:data:`BASE_NAMES`, and every ``LC_*``), the
names the configuration lets through (``[daemon] task_env``, a task's or a channel's own
``env``), and values the configuration sets.

``env`` is written either as a list, ``["API_TOKEN", "MODE=fast"]`` (a name alone passes
the daemon's variable through, if it is set; ``NAME=value`` sets one), or as a table,
``{ MODE = "fast" }`` (sets each).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, TypeAdapter, WrapValidator

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "BASE_NAMES",
    "EnvName",
    "EnvSpec",
    "ProgramEnv",
    "program_env",
]

#: Variables of the daemon's environment every program gets, besides every ``LC_*``: what
#: a program needs to find executables and its home, and to speak the right language.
BASE_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"})

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_NAME_RE = re.compile(_NAME)


EnvName = Annotated[str, Field(pattern=rf"^{_NAME}$")]
"""A variable's name (in ``[daemon] task_env``)."""

_TABLE: TypeAdapter[dict[str, str]] = TypeAdapter(dict[EnvName, str])
_LIST: TypeAdapter[list[str]] = TypeAdapter(list[str])


def _check_env_spec(spec: Any, handler: Any) -> list[str] | dict[str, str]:
    # Each form checked on its own, so that an error names the item that is wrong (the
    # nested validation's locations go on from the field's) rather than saying what is
    # wrong with the value as a list and as a table.
    if isinstance(spec, dict):
        return _TABLE.validate_python(spec)
    if not isinstance(spec, list):
        raise ValueError(  # noqa: TRY004 - pydantic reports ValueError as a validation error
            'a list of names and NAME=value strings (["TOKEN", "MODE=fast"]), '
            'or a table of values ({ MODE = "fast" })'
        )
    items = _LIST.validate_python(spec)
    for item in items:
        if not _NAME_RE.fullmatch(item.partition("=")[0]):
            raise ValueError(
                f"{item!r} is neither a variable's name nor NAME=value "
                "(a name is letters, digits and _, not starting with a digit)"
            )
    return items


EnvSpec = Annotated[list[str] | dict[str, str], WrapValidator(_check_env_spec)]
"""``env`` as written: names and ``NAME=value`` strings, or a table of values."""


@dataclass(frozen=True)
class ProgramEnv:
    """``env`` read: the names passed through from the daemon's environment, and the
    values set."""

    names: tuple[str, ...] = ()
    values: tuple[tuple[str, str], ...] = ()

    @classmethod
    def read(cls, spec: list[str] | dict[str, str]) -> ProgramEnv:
        """``spec`` as :data:`EnvSpec` checked it."""
        if isinstance(spec, dict):
            return cls(values=tuple(spec.items()))
        names: list[str] = []
        values: list[tuple[str, str]] = []
        for item in spec:
            name, sep, value = item.partition("=")
            if sep:
                values.append((name, value))
            else:
                names.append(name)
        return cls(tuple(names), tuple(values))


def program_env(
    names: Iterable[str] = (),
    values: Iterable[tuple[str, str]] = (),
    *,
    source: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for a program: the base, ``names`` taken from ``source`` (the
    daemon's environment) where set there, then ``values``.

    :param names: the variables to pass through, besides the base
    :param values: variables to set, over the others
    """
    source = os.environ if source is None else source
    env = {k: v for k, v in source.items() if k in BASE_NAMES or k.startswith("LC_")}
    for name in names:
        if name in source:
            env[name] = source[name]
    env.update(values)
    return env
