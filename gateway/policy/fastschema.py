"""A fast yes/no JSON Schema (2020-12) check for the keywords route schemas use, compiled to closures.

jsonschema's validator costs hundreds of microseconds for a 1.5 KB order; the per-request budget of the
whole policy is tens. This module compiles the common subset (type, properties, required,
additionalProperties, items, enum, const, string/number/array/object bounds, pattern, format, allOf,
anyOf, oneOf, not) into one closure per schema node. It only answers "valid?": when it says no,
jsonschema runs to produce the violations, and jsonschema stays the authority (if it finds nothing, the
body is accepted). A schema using any other keyword is not compiled here at all (`compile_fast`
returns None) and jsonschema does all the work. Agreement with jsonschema is property-tested.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from jsonschema import Draft202012Validator

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "examples", "default", "deprecated",
                          "readOnly", "writeOnly", "$anchor"})
_STRING = ("minLength", "maxLength", "pattern")
_NUMBER = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_OBJECT = ("properties", "required", "additionalProperties", "minProperties", "maxProperties")
_ARRAY = ("items", "minItems", "maxItems")
_GENERIC = ("type", "enum", "const", "format", "allOf", "anyOf", "oneOf", "not")
_SUPPORTED = frozenset(_STRING + _NUMBER + _OBJECT + _ARRAY + _GENERIC) | _ANNOTATIONS
_FORMATS = Draft202012Validator.FORMAT_CHECKER
_JSON_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


class Unsupported(Exception):
    """The schema uses a keyword this compiler does not handle; use jsonschema alone."""


def _always(value: Any) -> bool:
    return True


def _json_equal(left: Any, right: Any) -> bool:
    """JSON equality as jsonschema defines it: true is not 1, 1 equals 1.0, containers compare deeply."""
    if type(left) is bool or type(right) is bool:
        return type(left) is type(right) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_json_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    return type(left) is type(right) and bool(left == right)


def _all(checks: list[Check]) -> Check:
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    frozen = tuple(checks)

    def check_all(value: Any) -> bool:
        for check in frozen:  # noqa: SIM110 - a plain loop is cheaper per call than all() over a generator
            if not check(value):
                return False
        return True
    return check_all


def _string_check(schema: Mapping[str, Any]) -> Check | None:
    low, high = schema.get("minLength"), schema.get("maxLength")
    pattern = re.compile(schema["pattern"]).search if "pattern" in schema else None
    if low is None and high is None and pattern is None:
        return None

    def check_string(value: str) -> bool:
        size = len(value)
        if (low is not None and size < low) or (high is not None and size > high):
            return False
        return pattern is None or pattern(value) is not None
    return check_string


def _number_check(schema: Mapping[str, Any]) -> Check | None:
    bounds = [schema.get(key) for key in _NUMBER]
    if all(bound is None for bound in bounds):
        return None
    minimum, maximum, exclusive_min, exclusive_max = bounds

    def check_number(value: float) -> bool:
        if minimum is not None and value < minimum:
            return False
        if maximum is not None and value > maximum:
            return False
        if exclusive_min is not None and value <= exclusive_min:
            return False
        return exclusive_max is None or value < exclusive_max
    return check_number


def _object_check(schema: Mapping[str, Any]) -> Check | None:
    if not any(key in schema for key in _OBJECT):
        return None
    properties = {name: _compile(sub) for name, sub in (schema.get("properties") or {}).items()}
    required = tuple(schema.get("required") or ())
    extra_schema = schema.get("additionalProperties", True)
    extra = None if extra_schema is True else _compile(extra_schema)
    low, high = schema.get("minProperties"), schema.get("maxProperties")
    lookup = properties.get

    def check_object(value: dict[str, Any]) -> bool:
        for name in required:
            if name not in value:
                return False
        if (low is not None and len(value) < low) or (high is not None and len(value) > high):
            return False
        for key, item in value.items():
            check = lookup(key)
            if check is None:
                if extra is not None and not extra(item):
                    return False
            elif not check(item):
                return False
        return True
    return check_object


def _array_check(schema: Mapping[str, Any]) -> Check | None:
    if not any(key in schema for key in _ARRAY):
        return None
    items = _compile(schema["items"]) if "items" in schema else None
    low, high = schema.get("minItems"), schema.get("maxItems")

    def check_array(value: list[Any]) -> bool:
        if (low is not None and len(value) < low) or (high is not None and len(value) > high):
            return False
        if items is not None:
            for item in value:
                if not items(item):
                    return False
        return True
    return check_array


def _generic_checks(schema: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    if "enum" in schema:
        allowed = tuple(schema["enum"])
        checks.append(lambda value: any(_json_equal(value, option) for option in allowed))
    if "const" in schema:
        constant = schema["const"]
        checks.append(lambda value: _json_equal(value, constant))
    if "format" in schema:
        name = schema["format"]
        checks.append(lambda value: _FORMATS.conforms(value, name))
    if "allOf" in schema:
        checks.append(_all([_compile(sub) for sub in schema["allOf"]]))
    if "anyOf" in schema:
        any_of = tuple(_compile(sub) for sub in schema["anyOf"])
        checks.append(lambda value: any(check(value) for check in any_of))
    if "oneOf" in schema:
        one_of = tuple(_compile(sub) for sub in schema["oneOf"])
        checks.append(lambda value: sum(1 for check in one_of if check(value)) == 1)
    if "not" in schema:
        negated = _compile(schema["not"])
        checks.append(lambda value: not negated(value))
    return checks


def _compile(schema: Any) -> Check:
    if schema is True:
        return _always
    if schema is False:
        return lambda value: False
    if not isinstance(schema, dict) or not _SUPPORTED.issuperset(schema):
        raise Unsupported
    declared = schema.get("type")
    types = set(_JSON_TYPES) if declared is None else {declared} if isinstance(declared, str) else set(declared)
    if not types <= set(_JSON_TYPES):
        raise Unsupported
    string, number = _string_check(schema), _number_check(schema)
    obj, array = _object_check(schema), _array_check(schema)
    # Per Python type of the instance: False (wrong type), None (no keyword applies) or the check.
    dispatch: dict[type, Check | bool | None] = {
        str: (string if "string" in types else False),
        dict: (obj if "object" in types else False),
        list: (array if "array" in types else False),
        bool: (None if "boolean" in types else False),
        type(None): (None if "null" in types else False),
        int: (number if types & {"integer", "number"} else False),
    }
    number_only = "number" in types
    integer_ok = "integer" in types
    generic_checks = _generic_checks(schema)
    if not generic_checks and len(types) == 1:
        special = _single_type(next(iter(types)), string, number, obj, array)
        if special is not None:
            return special
    generic = _all(generic_checks)

    def check_node(value: Any) -> bool:
        kind = type(value)
        if kind is float:
            # JSON Schema's integer is any number with a zero fraction, so 2.0 is an integer.
            if not (number_only or (integer_ok and value.is_integer())):
                return False
            if number is not None and not number(value):
                return False
        else:
            check = dispatch.get(kind, False)
            if check is False:
                return False
            if check is not None and check is not True and not check(value):
                return False
        return generic(value)
    return check_node


def _single_type(json_type: str, string: Check | None, number: Check | None, obj: Check | None,
                 array: Check | None) -> Check | None:
    """The common one-type nodes as one small closure each (most of a route schema's nodes)."""
    if json_type == "string":
        if string is None:
            return lambda value: type(value) is str
        return lambda value: type(value) is str and string(value)
    if json_type == "object":
        if obj is None:
            return lambda value: type(value) is dict
        return lambda value: type(value) is dict and obj(value)
    if json_type == "array":
        if array is None:
            return lambda value: type(value) is list
        return lambda value: type(value) is list and array(value)
    if json_type == "boolean":
        return lambda value: type(value) is bool
    return None


ANNOTATIONS = _ANNOTATIONS


def compile_check(schema: Any) -> Check:
    """The yes/no check of one schema node; raises `Unsupported` outside the compiled subset (for
    gateway/policy/codegen.py, which calls it for nodes it does not write out itself)."""
    try:
        return _compile(schema)
    except (re.error, TypeError):
        raise Unsupported from None


def compile_fast(schema: Mapping[str, Any]) -> Check | None:
    """A yes/no validity check equivalent to jsonschema's for `schema`, or None if it uses a keyword
    outside the compiled subset."""
    try:
        return _compile(schema)
    except (Unsupported, re.error, TypeError):
        return None
