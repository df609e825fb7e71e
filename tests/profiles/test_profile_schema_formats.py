"""A `format` in a route schema is a promise only when this installation can check it: jsonschema treats an
unknown format as an annotation and accepts any string, so `format: uri` (or `date-time` without the
rfc3339-validator package, which the gateway now depends on) let an IMEI through a field the author
meant for a URL or a time stamp. The loader refuses such a schema, naming file, line and format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from profile_texts import ENV, VALID_PROFILE

from gateway.errors import SchemaViolation
from gateway.policy.schema import CHECKED_FORMATS, CompiledSchema, check_schema
from gateway.profiles import ProfileLoadError, load_profiles
from gateway.pseudonyms import Pseudonymiser

IMEI = "490154203237518"


def test_date_time_is_checked() -> None:
    assert "date-time" in CHECKED_FORMATS
    schema = CompiledSchema({"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}})
    schema.validate({"at": "2026-12-08T01:02:03Z"})
    with pytest.raises(SchemaViolation):
        schema.validate({"at": IMEI})


@pytest.mark.parametrize("schema", [
    {"type": "string", "format": "uri"},
    {"type": "object", "properties": {"link": {"type": "string", "format": "uri-reference"}}},
    {"type": "array", "items": {"anyOf": [{"format": "hostname"}, {"type": "integer"}]}},
    {"$defs": {"x": {"format": "iri"}}, "type": "object"},
])
def test_a_format_this_installation_cannot_check_is_refused(schema: dict[str, object]) -> None:
    problem = check_schema(schema)
    assert problem is not None
    assert "cannot check" in problem
    assert "pattern" in problem


def test_format_as_a_property_name_or_as_data_is_not_a_format() -> None:
    schema = {"type": "object", "properties": {"format": {"type": "string", "enum": ["a4", "letter"]}},
              "examples": [{"format": "uri"}], "default": {"format": "uri"}}
    assert check_schema(schema) is None


def test_the_loader_refuses_a_route_schema_with_an_unchecked_format(
        write_profile: Callable[..., Path], pseudonymiser: Pseudonymiser) -> None:
    needle = "          order_id: {type: string}\n"
    assert needle in VALID_PROFILE
    text = VALID_PROFILE.replace(needle, needle + "          link: {type: string, format: uri}\n", 1)
    folder = write_profile(text)
    with pytest.raises(ProfileLoadError) as caught:
        load_profiles(folder, pseudonymiser=pseudonymiser, environ=ENV)
    assert any("format uri" in str(problem) for problem in caught.value.problems)


@pytest.mark.parametrize("ref", ["http://schemas.example/order.json", "order.json#/x", "urn:x:order"])
def test_a_reference_outside_the_schema_is_refused(ref: str) -> None:
    """jsonschema resolves it only at the first request, which then fails, as every later one would."""
    problem = check_schema({"type": "object", "properties": {"o": {"$ref": ref}}})
    assert problem is not None
    assert "$ref" in problem


def test_a_local_reference_loads() -> None:
    assert check_schema({"$defs": {"id": {"type": "string", "pattern": "^[A-Z]{3}$"}},
                         "type": "object", "properties": {"o": {"$ref": "#/$defs/id"}},
                         "examples": [{"$ref": "http://not.a.ref/"}]}) is None
