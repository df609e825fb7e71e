"""Property tests (hypothesis): what the policy lets out, and the fast schema check against jsonschema."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gateway.errors import GatewayError
from gateway.policy import CompiledRoutePolicy, RoutePolicySpec, parse_action
from gateway.policy.fastschema import compile_fast
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser, luhn_check_digit
from gateway.strictjson import canonical_dumps, parse_json

PARTNER = "carrier-prop"
PSEUDONYMISER = Pseudonymiser(PartnerKeyring(bytes(range(7, 39))))
POLICY = CompiledRoutePolicy(
    RoutePolicySpec(request_body={
        "order.id": parse_action("keep"),
        "recipient.imei": parse_action({"pseudonymise": {"type": "imei", "mode": "hmac"}}),
        "recipient.phone": parse_action({"pseudonymise": {"type": "phone", "mode": "fpe"}}),
        "items[].sku": parse_action("keep"),
        "items[].note": parse_action({"keep": {"free_text": True}}),
        "secret": parse_action("drop"),
    }, free_text="redact"),
    partner_id=PARTNER, pseudonymiser=PSEUDONYMISER,
)
DECLARED = ("order.id", "recipient.imei", "recipient.phone", "items[].sku", "items[].note")

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["order", "id", "items", "sku", "note", "x", "Secret", "secret", "recipient"])
    | st.text(max_size=6),
    inner, max_size=5), max_leaves=25)
imeis = st.text("0123456789", min_size=14, max_size=14).map(lambda body: body + luhn_check_digit(body))
phones = st.integers(10**8, 10**9 - 1).map(lambda n: f"+8491{n}")


def paths_of(value: Any, prefix: str = "") -> set[str]:
    """Every object key path of `value` in the declared form (`items[].sku`)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            found |= {path} | paths_of(item, path)
    elif isinstance(value, list):
        for item in value:
            found |= paths_of(item, f"{prefix}[]")
    return found


def allowed(path: str) -> bool:
    """A declared path, an object on the way to one, or inside a kept subtree of one."""
    return any(path == d or d.startswith(path + ".") or d.startswith(path + "[]") or path.startswith(d + ".")
               or path.startswith(d + "[]") for d in DECLARED)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.dictionaries(st.sampled_from(["order", "recipient", "items", "secret", "other", "Order"]), json_values,
                            max_size=6))
@example(body={"items": [{"note": {"Secret": None, "secret": None}}]})  # a kept subtree whose keys collide by case
def test_output_never_holds_a_key_outside_the_allowlist(body: dict[str, Any]) -> None:
    try:
        result = POLICY.minimise_request(body, (), {}, {})
        # The bytes the proxy would send: keys of a kept subtree that differ only by case are refused here.
        sent = result.canonical_body()
    except GatewayError:
        return  # refusing is always allowed
    assert all(allowed(path) for path in paths_of(result.body)), paths_of(result.body)
    assert orjson.loads(sent) == result.body


@settings(max_examples=80, deadline=None)
@given(imei=imeis, phone=phones, sku=st.text(max_size=10), extra=json_values)
def test_no_pseudonymised_value_appears_in_the_output(imei: str, phone: str, sku: str, extra: Any) -> None:
    body = {"recipient": {"imei": imei, "phone": phone, "name": extra},
            "items": [{"sku": sku, "note": f"call me at {phone}, device {imei}"}], "other": extra}
    result = POLICY.minimise_request(parse_json(orjson.dumps(body)), (), {}, {})
    sent = canonical_dumps(result.body).decode()
    assert imei not in sent
    assert phone not in sent
    assert phone[1:] not in sent
    assert result.report.pseudonymised == {"imei": 1, "phone": 1}


SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "required": ["a"], "additionalProperties": False,
     "properties": {"a": {"type": "integer", "minimum": 0, "exclusiveMaximum": 10},
                    "b": {"type": "string", "minLength": 1, "maxLength": 3, "pattern": "^[a-c]+$"},
                    "c": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": ["number", "null"]}}}},
    {"type": ["object", "array"], "properties": {"x": {"enum": [1, "1", True, None, [1]]}},
     "items": {"const": 1}, "minProperties": 1},
    {"anyOf": [{"type": "string", "format": "date"}, {"type": "boolean"}], "not": {"const": False}},
    {"oneOf": [{"type": "integer"}, {"type": "number", "maximum": 5}]},
    {"type": "object", "properties": {"e": {"type": "string", "format": "email"}},
     "additionalProperties": {"type": "integer"}},
    {"allOf": [{"type": "number", "minimum": -1.5}, {"maximum": 2}]},
]
instances = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 12) | st.sampled_from([0.0, 2.0, 1.5, -1.5, 9.99, 10.0])
    | st.sampled_from(["", "a", "abc", "abcd", "d", "2024-01-05", "2024-13-01", "x@example.com", "1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "c", "x", "e", "z"]),
                                                                inner, max_size=4),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, len(SCHEMAS) - 1), instance=instances)
def test_fast_schema_check_agrees_with_jsonschema(index: int, instance: Any) -> None:
    schema = SCHEMAS[index]
    fast = compile_fast(schema)
    assert fast is not None
    reference = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    assert fast(instance) == reference.is_valid(instance)


def test_unsupported_keywords_fall_back_to_jsonschema() -> None:
    assert compile_fast({"type": "object", "patternProperties": {"^x": {"type": "string"}}}) is None
    assert compile_fast({"$ref": "#/$defs/a", "$defs": {"a": {}}}) is None
