"""A route's request JSON Schema (Draft 2020-12) and its path parameter schemas, compiled once, and their
violations as safe paths.

jsonschema's own messages quote the offending value ("'abc' does not match ..."), so they never leave
this module: each error becomes a `Violation` of a field path and a reason built from the keyword and
the schema alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from gateway.errors import SchemaViolation, Violation
from gateway.policy.codegen import UNDECLARED, schema_names
from gateway.policy.fastschema import compile_fast

ROOT = "$"
MAX_VIOLATIONS = 20


def check_schema(schema: Mapping[str, Any]) -> str | None:
    """Why `schema` is not a valid 2020-12 schema, or None."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = ".".join(str(p) for p in exc.path)
        return f"request schema is not valid JSON Schema 2020-12 ({exc.validator} at {where or 'the root'})"
    if _remote_refs(schema):
        # jsonschema would try to resolve it at the first request and fail every request from then on.
        return "request schema has a $ref outside itself; only local references (#/...) are allowed"
    unchecked = sorted(_unchecked_formats(schema))
    if unchecked:
        # jsonschema treats a format it has no checker for as an annotation and accepts any string, so a
        # `format: uri` (or `date-time` without its validator package) would let an IMEI through where
        # the author meant to allow only a URL: refuse the profile instead (fail closed).
        return (f"request schema uses format {', '.join(unchecked)}, which this installation cannot check "
                f"(checked: {', '.join(sorted(CHECKED_FORMATS))}); use a pattern instead")
    return None


CHECKED_FORMATS = frozenset(Draft202012Validator.FORMAT_CHECKER.checkers)
# Keywords whose values are data, not subschemas (a `{"format": ...}` inside them is a value), and those
# whose values map names to subschemas (a property may itself be called `format`).
_DATA_KEYWORDS = frozenset({"const", "enum", "examples", "default"})
_NAMED_SUBSCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def _keywords(node: Any) -> Iterator[tuple[str, Any]]:
    """Every keyword (name, value) of every subschema under `node`, skipping data keywords' values and
    treating the names under `properties` and the like as names, not keywords."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _DATA_KEYWORDS:
                continue
            yield key, value
            if key in _NAMED_SUBSCHEMAS and isinstance(value, dict):
                for sub in value.values():
                    yield from _keywords(sub)
            else:
                yield from _keywords(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keywords(item)


def _remote_refs(schema: Any) -> bool:
    return any(key in ("$ref", "$dynamicRef") and isinstance(value, str) and not value.startswith("#")
               for key, value in _keywords(schema))


def _unchecked_formats(schema: Any) -> set[str]:
    return {value for key, value in _keywords(schema)
            if key == "format" and isinstance(value, str) and value not in CHECKED_FORMATS}


def render_path(parts: Iterable[Any], names: frozenset[str] | None = None) -> str:
    """A JSON Schema error path as the profile's dotted form with concrete indices: items[2].sku. With
    `names` (the schema's own property names), any other key is the caller's and shows as `*`: a key
    name may be personal data (`{"kim@example.com": ...}`) and is never echoed."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            if names is not None and part not in names:
                part = UNDECLARED
            text = f"{text}.{part}" if text else str(part)
    return text or ROOT


def _reason(error: ValidationError) -> str:
    keyword = str(error.validator)
    expected: Any = error.validator_value
    if keyword == "type":
        return f"expected type {expected if isinstance(expected, str) else ' or '.join(expected)}"
    if keyword == "required":
        return "required property missing"
    if keyword in ("enum", "const"):
        return "not one of the allowed values"
    if keyword == "pattern":
        return "does not match the required pattern"
    if keyword == "format":
        return f"not a valid {expected}"
    if keyword == "additionalProperties" or keyword == "unevaluatedProperties":
        return "property not allowed by the schema"
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                   "minItems", "maxItems", "minProperties", "maxProperties", "multipleOf"):
        return f"violates {keyword} {expected}"
    return f"violates {keyword}"


def _violations(error: ValidationError, names: frozenset[str]) -> list[Violation]:
    base: list[Any] = list(error.absolute_path)
    keyword = error.validator
    instance = error.instance
    # These keywords fail on the parent object; the useful path is the property they are about.
    if keyword == "required" and isinstance(instance, dict):
        required: Any = error.validator_value
        missing = [name for name in required if name not in instance]
        return [Violation(render_path([*base, name], names), _reason(error)) for name in missing]
    if keyword == "additionalProperties" and isinstance(instance, dict) and isinstance(error.schema, dict):
        declared = error.schema.get("properties", {})
        extra = [name for name in instance if name not in declared]
        if extra and not error.schema.get("patternProperties"):
            return [Violation(render_path([*base, name], names), _reason(error)) for name in extra]
    return [Violation(render_path(base, names), _reason(error))]


class CompiledSchema:
    """One route's request schema with its validator built once; `validate` raises `SchemaViolation`."""

    __slots__ = ("_fast", "_names", "_validator", "schema")

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        self._validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        self._fast = compile_fast(schema)
        self._names = frozenset(schema_names(schema))

    @property
    def compiled_fast(self) -> bool:
        """Whether the fast subset check serves this schema (otherwise jsonschema does every request)."""
        return self._fast is not None

    def validate(self, body: Any) -> None:
        if self._fast is not None and self._fast(body):
            return
        # jsonschema is the authority: it names the violations, and if it finds none the body is valid.
        errors = self._validator.iter_errors(body)
        first = next(errors, None)
        if first is None:
            return
        found: list[Violation] = []
        for error in (first, *errors):
            for violation in _violations(error, self._names):
                if violation not in found:
                    found.append(violation)
            if len(found) >= MAX_VIOLATIONS:
                break
        found.sort(key=lambda v: v.path)
        raise SchemaViolation(f"request body violates the route's schema at {len(found)} place(s)", found,
                              reason="schema")


class CompiledParamSchemas:
    """A route's path parameter schemas (`request.path_schema`: parameter name -> JSON Schema of its
    string value), each validator built once. A path parameter has no place in the body's schema, yet it
    is sent to the partner as much as a body field is: an id meant as `CMP-2024-17` must not carry an
    IMEI or a phone number there either."""

    __slots__ = ("_validators",)

    def __init__(self, schemas: Mapping[str, Mapping[str, Any]]) -> None:
        self._validators = {
            name: Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
            for name, schema in schemas.items()
        }

    def problem(self, name: str, value: str) -> str | None:
        """Why `value` does not fit parameter `name`'s schema (the keyword's rule, never the value), or
        None; a parameter without a schema always fits."""
        validator = self._validators.get(name)
        if validator is None:
            return None
        error = next(validator.iter_errors(value), None)
        return None if error is None else _reason(error)
