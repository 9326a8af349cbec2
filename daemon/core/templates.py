"""Parameters templated from a run's inputs and upstream outputs, in a sandbox.

Templates are Jinja2 in its immutable sandbox: expressions and filters, no attribute access
to Python internals, no calls with side effects, no arbitrary code. A string that is one
whole ``{{ expression }}`` evaluates to the expression's native value (a list stays a list,
which is what ``map`` needs); any other string renders to a string.

Names a template may use:

* ``inputs.NAME``          the run's inputs (declared with defaults on the pipeline)
* ``tasks.NAME.output``    an upstream task's output (a list, for a mapped task)
* ``item``                 the current element, in a mapped task
* ``run.id``, ``run.pipeline``

Besides Jinja's own filters, ``shell_quote`` (alias ``quote``) makes a value one word of a
``/bin/sh`` command line, whatever it holds: ``echo {{ inputs.name | shell_quote }}``; and
``add_duration`` moves a time (seconds since the epoch, or ISO 8601) on by a duration as
config writes one: ``{{ event.received_at | add_duration('1d') }}`` (seconds since the epoch).
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import (
    ChainableUndefined,
    StrictUndefined,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
    meta,
    nodes,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from cued.daemon.core.durations import add_duration

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, MutableMapping

__all__ = [
    "SHELL_QUOTE_FILTERS",
    "TemplateProblem",
    "has_template",
    "parse",
    "references",
    "render",
    "render_value",
    "shell_quote",
    "when_expression",
    "when_holds",
]


class _Environment(ImmutableSandboxedEnvironment):
    """Dict keys before attributes: ``inputs.items`` is the input named ``items``, not the
    ``dict.items`` method that Jinja would otherwise find first."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        # A template's globals as one plain dict, not Jinja's ChainMap over the
        # environment's: each evaluation copies them into a new context and lists their
        # names, which over a ChainMap took half of a ``when``'s time. The environment's
        # globals are set once, when this module loads, before any template compiles.
        return {**self.globals, **(d or {})}


def _defined(value: Any) -> Any:
    """``value``, after failing if it is undefined or holds something undefined.

    StrictUndefined fails only when a value is used (printed, iterated, compared), and a
    list or dict literal does not use its items: ``[inputs.missing]`` would come out as
    ``[Undefined]``, and print as that too, unless the result is walked.
    """
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, list | tuple):
        for item in value:
            _defined(item)
    elif isinstance(value, dict):  # an undefined key failed already, when it was hashed
        for item in value.values():
            _defined(item)
    return value


def shell_quote(value: Any) -> str:
    """``value`` as one word of a POSIX shell command line (``shlex.quote``), so that
    nothing in it is expanded or run: ``$(...)``, ``;``, quotes and spaces stay text.

    A list or tuple becomes its items, each quoted, separated by spaces (one word each).
    Anything else is quoted as the template would print it.
    """
    if isinstance(value, list | tuple):
        return " ".join(shell_quote(item) for item in value)
    _defined(value)
    return shlex.quote(value if isinstance(value, str) else str(value))


#: The names of :func:`shell_quote` among the filters.
SHELL_QUOTE_FILTERS = frozenset({"shell_quote", "quote"})

# ``finalize`` sees each ``{{ ... }}`` of a template rendered to a string before it is
# printed; ``_compile`` applies ``_defined`` to a whole-expression's native value itself.
_ENV = _Environment(undefined=StrictUndefined, autoescape=False, finalize=_defined)
_ENV.filters.update(dict.fromkeys(SHELL_QUOTE_FILTERS, shell_quote))
_ENV.filters["add_duration"] = add_duration
_WHOLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)


class _Missing(ChainableUndefined):
    """A field the event lacks, in a ``when``: false, and so is every comparison with it
    (``event.data.total > 100`` without a ``total``), and what is read through it
    (``event.data.order.id`` without an ``order``). Events of one source differ in their
    fields, and a condition that tests one does not mean "or fail" for events without
    it. Calling it, or doing arithmetic with it, still fails: that is a mistake in the
    expression, not a field the event lacks."""

    __slots__ = ()

    # Undefined types these as its failing method; any comparison is a bool here
    def __lt__(self, other: Any) -> bool:  # type: ignore[override]
        return False

    __le__ = __gt__ = __ge__ = __lt__  # type: ignore[assignment]


# ``when`` conditions only: templates that make values (inputs, dedupe keys, parameters)
# keep StrictUndefined, since a value made from nothing would pass on silently
_WHEN_ENV = _Environment(undefined=_Missing, autoescape=False)
_WHEN_ENV.filters.update(dict.fromkeys(SHELL_QUOTE_FILTERS, shell_quote))
_WHEN_ENV.filters["add_duration"] = add_duration


@functools.lru_cache(maxsize=1024)
def _compile_when(when: str) -> Callable[..., Any]:
    try:
        return _WHEN_ENV.compile_expression(when, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template {when!r} does not parse: {exc.message}") from exc


def when_holds(when: str, context: Mapping[str, Any]) -> bool:
    """Whether a trigger's ``when`` holds on ``context``: a field the event lacks is
    false (see :class:`_Missing`).

    :raises TemplateProblem: if it does not parse, or fails on the values it was given
    """
    try:
        return bool(_compile_when(when)(**context))
    except TemplateProblem:
        raise
    except UndefinedError as exc:
        raise TemplateProblem(f"{exc.message}") from exc
    except SecurityError as exc:
        raise TemplateProblem(f"not allowed: {exc}") from exc
    except Exception as exc:  # a filter or operator failed on the values it was given
        raise TemplateProblem(f"failed: {exc}") from exc


def when_expression(when: str) -> str:
    """A ``when`` condition as a template, so the template machinery compiles, checks and
    runs it (config checks it, triggers evaluate it)."""
    return "{{ " + when + " }}"


class TemplateProblem(ValueError):
    """A template cannot be compiled or rendered."""


def has_template(value: Any) -> bool:
    """True if ``value`` (or any string inside it) holds template syntax."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(has_template(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_template(v) for v in value)
    return False


@functools.lru_cache(maxsize=4096)
def _compile(text: str) -> Callable[[Mapping[str, Any]], Any]:
    try:
        if whole := _WHOLE.match(text):
            expression = _ENV.compile_expression(whole.group("expr"), undefined_to_none=False)
            return lambda ctx: _defined(expression(**ctx))
        template = _ENV.from_string(text)
        return lambda ctx: template.render(**ctx)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template {text!r} does not parse: {exc.message}") from exc


def render(text: str, context: Mapping[str, Any]) -> Any:
    """Render one template string.

    :raises TemplateProblem: if it does not parse or refers to something that is not there
    """
    if "{{" not in text and "{%" not in text:
        return text
    try:
        return _compile(text)(context)
    except UndefinedError as exc:
        raise TemplateProblem(f"template {text!r}: {exc.message}") from exc
    except SecurityError as exc:
        raise TemplateProblem(f"template {text!r} is not allowed: {exc}") from exc
    except TemplateProblem:
        raise
    except Exception as exc:  # a filter or operator failed on the values it was given
        raise TemplateProblem(f"template {text!r} failed: {exc}") from exc


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every string inside ``value`` (dicts and lists are walked)."""
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    return value


def parse(text: str) -> nodes.Template:
    """The syntax tree of a template, for checks of what it does (``cued validate``).

    A string that is one whole ``{{ expression }}`` parses as a template printing it.

    :raises TemplateProblem: if it does not parse
    """
    whole = _WHOLE.match(text)
    source = "{{" + whole.group("expr") + "}}" if whole else text
    try:
        return _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template {text!r} does not parse: {exc.message}") from exc


@dataclass(frozen=True)
class Reference:
    """A name a template reads: ``("tasks", "extract")``, ``("inputs", "day")``, ``("item",)``."""

    root: str
    name: str | None


def references(value: Any) -> list[Reference]:
    """Every name the templates inside ``value`` read, for ``cued validate``.

    :raises TemplateProblem: if a template does not parse
    """
    found: list[Reference] = []
    if isinstance(value, dict):
        for v in value.values():
            found.extend(references(v))
        return found
    if isinstance(value, list):
        for v in value:
            found.extend(references(v))
        return found
    if not isinstance(value, str) or not has_template(value):
        return found
    return list(_text_references(value))


# Remembered by text: a reload checks every template of the file again, and most are the
# ones checked before (compiling them is most of the time a large file takes to check)
@functools.lru_cache(maxsize=4096)
def _text_references(value: str) -> tuple[Reference, ...]:
    tree = parse(value)
    try:
        # The names the template reads from its context, as Jinja's compiler sees them: not
        # its globals (``range``), nor names it binds itself (``{% set %}``, loop targets
        # and ``loop``, macro parameters and ``caller``). Compiling also finds unknown
        # filters and tests, which parsing does not.
        free = meta.find_undeclared_variables(tree)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template {value!r} does not parse: {exc.message}") from exc
    found = [
        Reference(attr.node.name, attr.attr)
        for attr in tree.find_all(nodes.Getattr)
        if isinstance(attr.node, nodes.Name) and attr.node.name in free
    ]
    found.extend(
        Reference(item.node.name, item.arg.value)
        for item in tree.find_all(nodes.Getitem)
        if isinstance(item.node, nodes.Name)
        and item.node.name in free
        and isinstance(item.arg, nodes.Const)
        and isinstance(item.arg.value, str)
    )
    named = {r.root for r in found}
    found.extend(Reference(name, None) for name in sorted(free - named))
    return tuple(found)
