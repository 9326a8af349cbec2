"""JSON Schema as pydantic: an AI step's ``response_schema`` turned into a pydantic
type that checks answers strictly (``"3"`` is not 3). ``jsonschema`` is not a
dependency: the common keywords are understood, anything else is refused by name when
the config is checked, never skipped silently."""

from __future__ import annotations

import functools
import json
import re
from typing import TYPE_CHECKING, Annotated, Any, Union

import annotated_types
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    create_model,
)
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


__all__ = ["SchemaProblem", "compile_schema", "compiled"]


class SchemaProblem(ValueError):
    """A response schema uses JSON Schema that :func:`compile_schema` cannot check."""


#: Keywords that only describe: they check nothing, so they are accepted and skipped.
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "format",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)

#: The checking keywords understood, by the type they apply to.
_KEYWORDS: dict[str, frozenset[str]] = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "minItems", "maxItems"}),
    "string": frozenset({"minLength", "maxLength", "pattern"}),
    "number": frozenset(
        {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
    ),
}
_GENERAL = frozenset({"type", "enum", "const", "anyOf", "$ref"})
_UNDERSTOOD = _GENERAL.union(*_KEYWORDS.values())
_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


@functools.lru_cache(maxsize=256)
def compiled(schema_json: str) -> TypeAdapter[Any]:
    """:func:`compile_schema` once per schema: templated parameters are validated again
    before each attempt."""
    try:
        return compile_schema(json.loads(schema_json))
    except SchemaProblem as exc:
        raise ValueError(str(exc)) from exc


def compile_schema(schema: Mapping[str, Any]) -> TypeAdapter[Any]:
    """A validator for the answers ``schema`` describes, built of pydantic types.

    Understood: ``type`` (one or a list, of ``object``, ``array``, ``string``,
    ``integer``, ``number``, ``boolean``, ``null``); ``enum``, ``const``, ``anyOf``;
    objects' ``properties``, ``required``, ``additionalProperties`` (``false``, ``true``,
    or a schema for an object without ``properties``); arrays' ``items``, ``minItems``,
    ``maxItems``; strings' ``minLength``, ``maxLength``, ``pattern`` (Python's ``re``,
    unanchored as JSON Schema's); numbers' ``minimum``, ``maximum``,
    ``exclusiveMinimum``, ``exclusiveMaximum``, ``multipleOf``; ``$ref`` to ``#/$defs/NAME``
    or ``#/definitions/NAME``, not recursive. Annotations (``title``, ``description``,
    ``format``, ...) are skipped. Validate with ``strict=True``, as JSON Schema compares
    types without converting values.

    :raises SchemaProblem: if the schema uses anything else, naming what and where
    """
    compiler = _Compiler(schema)
    root = compiler.node(schema, "")
    try:
        return TypeAdapter(root)
    except Exception as exc:  # pydantic's schema errors; none is expected
        raise SchemaProblem(f"cannot be compiled: {exc}") from exc


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.resolving: list[str] = []

    def node(self, schema: Any, at: str) -> Any:
        """The type for the schema at JSON pointer ``at``."""
        where = f"at {at!r}" if at else "at the root"
        if schema is True or schema == {}:
            return Any
        if not isinstance(schema, dict):
            raise SchemaProblem(f"{where}: a schema must be an object, not {schema!r}")
        known = _UNDERSTOOD | _ANNOTATIONS | ({"$defs", "definitions"} if not at else set())
        if unknown := sorted(set(schema) - known):
            raise SchemaProblem(
                f"{where}: {unknown[0]!r} is not supported (supported: "
                f"{', '.join(sorted(_UNDERSTOOD))})"
            )
        if "$ref" in schema:
            if others := sorted(set(schema) & (_UNDERSTOOD - {"$ref"})):
                raise SchemaProblem(f"{where}: {others[0]!r} beside '$ref' is not supported")
            return self.ref(schema["$ref"], where)
        checks: list[Any] = []
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaProblem(f"{where}: 'enum' must be a list of values")
            checks.append(AfterValidator(_one_of(values)))
        if "const" in schema:
            checks.append(AfterValidator(_one_of([schema["const"]])))
        if "anyOf" in schema:
            options = schema["anyOf"]
            if not isinstance(options, list) or not options:
                raise SchemaProblem(f"{where}: 'anyOf' must be a list of schemas")
            if "type" in schema:
                raise SchemaProblem(f"{where}: 'type' beside 'anyOf' is not supported")
            base = _union([self.node(s, f"{at}/anyOf/{i}") for i, s in enumerate(options)])
        else:
            base = self.typed(schema, at, where)
        return _annotated(base, checks)

    def typed(self, schema: dict[str, Any], at: str, where: str) -> Any:
        types = schema.get("type")
        if types is None:
            # keywords of one type and no "type": take it to be meant as that type
            implied = [t for t, words in _KEYWORDS.items() if words & set(schema)]
            if not implied:
                return Any
            if len(implied) > 1:
                raise SchemaProblem(f"{where}: give 'type' with keywords of several types")
            types = implied[0]
        names = types if isinstance(types, list) else [types]
        if not names or any(t not in _TYPES for t in names):
            raise SchemaProblem(f"{where}: 'type' must be one or a list of {', '.join(_TYPES)}")
        return _union([self.one_type(t, schema, at, where) for t in names])

    def one_type(self, name: str, schema: dict[str, Any], at: str, where: str) -> Any:
        if name == "null":
            return type(None)
        if name == "boolean":
            return bool
        if name in ("integer", "number"):
            return _annotated(int if name == "integer" else float, _number_checks(schema, where))
        if name == "string":
            return _annotated(str, _string_checks(schema, where))
        if name == "array":
            items = self.node(schema.get("items", True), f"{at}/items")
            return _annotated(list[items], _lengths(schema, "minItems", "maxItems", where))  # type: ignore[valid-type]
        return self.object(schema, at, where)

    def object(self, schema: dict[str, Any], at: str, where: str) -> Any:
        properties = schema.get("properties")
        extra = schema.get("additionalProperties", True)
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaProblem(f"{where}: 'required' must be a list of names")
        if properties is None:
            if required:
                raise SchemaProblem(f"{where}: 'required' needs 'properties' naming them")
            if extra is False:
                return Annotated[dict[str, Any], annotated_types.MaxLen(0)]
            return dict[str, self.node(extra, f"{at}/additionalProperties")]  # type: ignore[misc]
        if not isinstance(properties, dict):
            raise SchemaProblem(f"{where}: 'properties' must be an object")
        if not isinstance(extra, bool):
            raise SchemaProblem(
                f"{where}: 'additionalProperties' as a schema beside 'properties' is not supported"
            )
        if missing := sorted(set(required) - set(properties)):
            raise SchemaProblem(f"{where}: 'required' names {missing[0]!r}, not in 'properties'")
        fields: dict[str, Any] = {}
        for i, (name, sub) in enumerate(properties.items()):
            kind = self.node(sub, f"{at}/properties/{name}")
            # Absent and optional: the default, not validated. Present as null: checked
            # against the type, as JSON Schema does. Python names: a property may be called
            # "json" or "model_config", and be no identifier at all.
            default = ... if name in required else None
            fields[f"p{i}"] = (kind, Field(default, alias=name))
        config = ConfigDict(extra="ignore" if extra else "forbid", strict=True)
        # the name shows in errors: "Input should be a valid dictionary or instance of object"
        return create_model("object", __config__=config, **fields)

    def ref(self, ref: Any, where: str) -> Any:
        match = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref if isinstance(ref, str) else "")
        if match is None:
            raise SchemaProblem(
                f"{where}: '$ref' {ref!r} is not supported (only '#/$defs/NAME' and "
                "'#/definitions/NAME')"
            )
        section, name = match.groups()
        defs = self.root.get(section)
        if not isinstance(defs, dict) or name not in defs:
            raise SchemaProblem(f"{where}: '$ref' {ref!r} names no definition")
        if ref in self.resolving:
            raise SchemaProblem(f"{where}: recursive '$ref' {ref!r} is not supported")
        self.resolving.append(ref)
        try:
            return self.node(defs[name], f"/{section}/{name}")
        finally:
            self.resolving.pop()


def _annotated(base: Any, checks: list[Any]) -> Any:
    return Annotated[(base, *checks)] if checks else base


def _union(options: list[Any]) -> Any:
    return options[0] if len(options) == 1 else Union[tuple(options)]  # noqa: UP007


def _lengths(schema: dict[str, Any], low: str, high: str, where: str) -> list[Any]:
    """A ``Len`` check from ``minItems``/``maxItems`` or ``minLength``/``maxLength``."""
    counts = []
    for key in (low, high):
        value = schema.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            raise SchemaProblem(f"{where}: {key!r} must be a whole number, not {value!r}")
        counts.append(value)
    if counts == [None, None]:
        return []
    return [annotated_types.Len(counts[0] or 0, counts[1])]


def _number_checks(schema: dict[str, Any], where: str) -> list[Any]:
    bounds: list[tuple[str, Callable[[Any], Any]]] = [
        ("minimum", lambda v: annotated_types.Ge(v)),
        ("maximum", lambda v: annotated_types.Le(v)),
        ("exclusiveMinimum", lambda v: annotated_types.Gt(v)),
        ("exclusiveMaximum", lambda v: annotated_types.Lt(v)),
        ("multipleOf", lambda v: annotated_types.MultipleOf(v)),
    ]
    checks = []
    for key, make in bounds:
        if key in schema:
            value = schema[key]
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise SchemaProblem(f"{where}: {key!r} must be a number, not {value!r}")
            if key == "multipleOf" and value <= 0:
                raise SchemaProblem(f"{where}: 'multipleOf' must be above 0, not {value!r}")
            checks.append(make(value))
    return checks


def _string_checks(schema: dict[str, Any], where: str) -> list[Any]:
    checks = _lengths(schema, "minLength", "maxLength", where)
    if "pattern" in schema:
        pattern = schema["pattern"]
        try:
            compiled = re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise SchemaProblem(f"{where}: 'pattern' {pattern!r} is not a regex: {exc}") from exc
        checks.append(AfterValidator(_matches(compiled)))
    return checks


def _matches(pattern: re.Pattern[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if pattern.search(value) is None:
            raise PydanticCustomError(
                "string_pattern_mismatch",
                "String should match pattern '{pattern}'",
                {"pattern": pattern.pattern},
            )
        return value

    return check


def _one_of(values: list[Any]) -> Callable[[Any], Any]:
    shown = ", ".join(json.dumps(v) for v in values)

    def check(value: Any) -> Any:
        if not any(_same(value, v) for v in values):
            if len(values) == 1:
                raise PydanticCustomError(
                    "const", "Input should be {expected}", {"expected": shown}
                )
            raise PydanticCustomError(
                "enum", "Input should be one of {expected}", {"expected": shown}
            )
        return value

    return check


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: ``1 == 1.0``, but ``true != 1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)
