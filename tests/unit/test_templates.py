"""Templates (Jinja2 in its immutable sandbox) and durations, as config values use them."""

from __future__ import annotations

import math

import pytest

from cued.daemon.config.durations import parse_duration
from cued.daemon.core.templates import (
    Reference,
    TemplateProblem,
    has_template,
    references,
    render,
    render_value,
    when_holds,
)

CONTEXT = {
    "inputs": {"n": 3, "day": "2024-05-01", "parts": ["a", "b"], "items": [1, 2], "flag": False},
    "tasks": {"extract": {"output": {"rows": 7, "path": "/tmp/x"}}},
    "run": {"id": "run-1", "pipeline": "orders"},
}

# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("{{ inputs.n }}", 3, id="int"),
        pytest.param("{{ inputs.parts }}", ["a", "b"], id="list"),
        pytest.param("{{ inputs.flag }}", False, id="bool"),
        pytest.param("{{ tasks.extract.output }}", {"rows": 7, "path": "/tmp/x"}, id="dict"),
        pytest.param("{{ inputs.n * 2 }}", 6, id="arithmetic"),
        pytest.param("{{ inputs.parts | length }}", 2, id="filter"),
        pytest.param("  {{ inputs.n }}  ", 3, id="surrounding-whitespace"),
        pytest.param("{{ none }}", None, id="none"),
    ],
)
def test_whole_expression_renders_to_its_native_value(text, expected):
    assert render(text, CONTEXT) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("n={{ inputs.n }}", "n=3", id="text-around"),
        pytest.param("{{ inputs.n }}-{{ inputs.day }}", "3-2024-05-01", id="two-expressions"),
        pytest.param("{{ run.id }}/{{ run.pipeline }}", "run-1/orders", id="run-names"),
        pytest.param("{% if inputs.flag %}yes{% else %}no{% endif %}", "no", id="statement"),
        pytest.param(
            "{% for p in inputs.parts %}{{ loop.index }}{{ p }}{% endfor %}", "1a2b", id="loop"
        ),
    ],
)
def test_other_templates_render_to_a_string(text, expected):
    assert render(text, CONTEXT) == expected


def test_text_without_template_syntax_is_returned_as_it_is():
    assert render("plain {text}", {}) == "plain {text}"


def test_dict_keys_come_before_attributes():
    # ``inputs.items`` is the input named ``items``, not the ``dict.items`` method
    assert render("{{ inputs.items }}", CONTEXT) == [1, 2]
    assert render("{{ inputs.items | sum }}", CONTEXT) == 3


def test_render_value_walks_dicts_and_lists():
    value = {"argv": ["echo", "{{ inputs.n }}"], "nested": {"day": "{{ inputs.day }}"}, "k": 5}
    assert render_value(value, CONTEXT) == {
        "argv": ["echo", 3],
        "nested": {"day": "2024-05-01"},
        "k": 5,
    }


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{{ inputs.__class__ }}", id="dunder-class"),
        pytest.param("x {{ inputs.__class__ }}", id="dunder-class-in-string"),
        pytest.param("{{ ''.__class__.__mro__ }}", id="mro"),
        pytest.param("{{ inputs.parts.append(1) }}", id="mutating-method"),
        pytest.param("{{ run.__init__.__globals__ }}", id="globals"),
    ],
)
def test_sandbox_refuses_python_internals(text):
    with pytest.raises(TemplateProblem, match="not allowed"):
        render(text, CONTEXT)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{{ nothing }}", id="unknown-root"),
        pytest.param("{{ inputs.missing }}", id="unknown-input"),
        pytest.param("day {{ inputs.missing }}", id="unknown-input-in-string"),
        pytest.param("{{ tasks.load.output }}", id="unknown-task"),
        pytest.param("{{ inputs.missing | length }}", id="through-a-filter"),
        pytest.param("{{ [inputs.missing] }}", id="inside-a-list"),
        pytest.param("{{ {'k': inputs.missing} }}", id="inside-a-dict"),
    ],
)
def test_undefined_names_raise_template_problem(text):
    with pytest.raises(TemplateProblem, match=r"missing|nothing|load"):
        render(text, CONTEXT)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{{ inputs. }}", id="dangling-dot"),
        pytest.param("{{ inputs.n ", id="unclosed"),
        pytest.param("{% if %}x{% endif %}", id="empty-if"),
    ],
)
def test_syntax_errors_raise_template_problem(text):
    with pytest.raises(TemplateProblem, match="does not parse"):
        render(text, CONTEXT)


def test_a_failing_filter_raises_template_problem():
    with pytest.raises(TemplateProblem, match="failed"):
        render("{{ inputs.day + 1 }}", CONTEXT)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("{{ x }}", True, id="expression"),
        pytest.param("{% if x %}{% endif %}", True, id="statement"),
        pytest.param(["a", {"b": "{{ x }}"}], True, id="nested"),
        pytest.param(("a", "{{ x }}"), True, id="tuple"),
        pytest.param("plain", False, id="plain"),
        pytest.param({"a": 1, "b": ["c"]}, False, id="plain-nested"),
        pytest.param(3, False, id="number"),
    ],
)
def test_has_template(value, expected):
    assert has_template(value) is expected


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("{{ inputs.day }}", [Reference("inputs", "day")], id="input"),
        pytest.param("{{ inputs['day'] }}", [Reference("inputs", "day")], id="input-subscript"),
        pytest.param("{{ tasks.extract.output.rows }}", [Reference("tasks", "extract")], id="task"),
        pytest.param(
            "{{ tasks['extract'].output }}", [Reference("tasks", "extract")], id="task-subscript"
        ),
        pytest.param("{{ item }}", [Reference("item", None)], id="item"),
        pytest.param("{{ item.name }}", [Reference("item", "name")], id="item-attribute"),
        pytest.param("{{ run.id }}", [Reference("run", "id")], id="run"),
        pytest.param("{{ bogus }}", [Reference("bogus", None)], id="unknown-root"),
        pytest.param("no template", [], id="plain"),
        pytest.param(7, [], id="number"),
    ],
)
def test_references_name_what_a_template_reads(value, expected):
    assert references(value) == expected


def test_references_walk_dicts_and_lists():
    value = {"argv": ["echo", "{{ inputs.a }}"], "env": {"X": "{{ tasks.b.output }}"}}
    assert set(references(value)) == {Reference("inputs", "a"), Reference("tasks", "b")}


def test_references_of_several_expressions_in_one_string():
    refs = references("{{ inputs.a }} {{ tasks.b.output }} {{ item }}")
    assert set(refs) == {Reference("inputs", "a"), Reference("tasks", "b"), Reference("item", None)}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{{ range(3) | list }}", id="range"),
        pytest.param("{{ dict(a=1) }}", id="dict"),
        pytest.param("{{ namespace(x=1).x }}", id="namespace"),
        pytest.param("{% set y = 1 %}{{ y }}", id="set-variable"),
        pytest.param("{% for x in range(2) %}{{ x }}{% endfor %}", id="for-variable"),
        pytest.param("{% for x in range(2) %}{{ loop.index }}{% endfor %}", id="loop-variable"),
    ],
)
def test_jinja_globals_and_local_names_are_not_references(text):
    assert references(text) == []


def test_templates_and_conditions_see_jinjas_globals_and_the_values_given_over_them():
    assert render("{{ range(3) | list }}", {}) == [0, 1, 2]
    assert render("{{ namespace(x=2).x + dict(a=1).a }}", {}) == 3
    assert when_holds("range(n) | list == [0, 1]", {"n": 2})
    # a value given under a global's name is the value, for that evaluation only
    assert render("{{ range }}", {"range": 7}) == 7
    assert render("{{ range(1) | list }}", {}) == [0]


def test_references_raise_template_problem_on_syntax_error():
    with pytest.raises(TemplateProblem, match="does not parse"):
        references("{{ inputs. }}")


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("250ms", 0.25, id="milliseconds"),
        pytest.param("30s", 30.0, id="seconds"),
        pytest.param("15m", 900.0, id="minutes"),
        pytest.param("2h", 7200.0, id="hours"),
        pytest.param("1d", 86400.0, id="days"),
        pytest.param("1h30m", 5400.0, id="combined"),
        pytest.param("1m30s500ms", 90.5, id="three-parts"),
        pytest.param("1h 30m", 5400.0, id="combined-with-space"),
        pytest.param(" 5s ", 5.0, id="surrounding-space"),
        pytest.param("1.5h", 5400.0, id="fraction"),
        pytest.param("0s", 0.0, id="zero-string"),
        pytest.param(5, 5.0, id="int"),
        pytest.param(2.5, 2.5, id="float"),
        pytest.param(0, 0.0, id="zero"),
    ],
)
def test_parse_duration(value, seconds):
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == seconds


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(-1, id="negative-int"),
        pytest.param(-0.5, id="negative-float"),
        pytest.param("-1s", id="negative-string"),
        pytest.param(True, id="bool"),
        pytest.param(False, id="false"),
        pytest.param("", id="empty"),
        pytest.param("30", id="no-unit"),
        pytest.param("3 parsecs", id="unknown-unit"),
        pytest.param("5S", id="upper-case-unit"),
        pytest.param("1h30", id="trailing-number"),
        pytest.param("s", id="unit-only"),
        pytest.param("5s junk", id="trailing-junk"),
        pytest.param("junk 5s", id="leading-junk"),
        pytest.param(None, id="none"),
        pytest.param([5], id="list"),
        pytest.param(math.nan, id="nan"),
    ],
)
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)
