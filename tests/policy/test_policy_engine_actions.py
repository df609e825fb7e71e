"""The compiled policy engine: every action, nested and array paths, deny by default, unknown_fields
reject, free text in both modes, query/path/headers, responses, and the report (paths only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.errors import (
    FieldNotAllowed,
    IdentifierInFreeText,
    InvalidIdentifier,
    SchemaViolation,
    UpstreamError,
)
from gateway.policy import CompiledRoutePolicy, PolicyCompileError
from gateway.pseudonyms import Pseudonymiser

PARTNER = "carrier-test"  # as in tests/policy/conftest.py

MakePolicy = Callable[..., CompiledRoutePolicy]
IMEI = "490154203237518"
PHONE = "+84912345678"


def minimise(policy: CompiledRoutePolicy, body: Any, **kwargs: Any) -> Any:
    return policy.minimise_request(body, kwargs.get("query", ()), kwargs.get("path", {}), kwargs.get("headers", {}))


def test_deny_by_default_keeps_only_named_fields(make_policy: MakePolicy) -> None:
    policy = make_policy({"order.id": "keep", "order.total": "keep"})
    result = minimise(policy, {"order": {"id": "O-1", "total": 5, "note": "x"}, "user": {"name": "An"}})
    assert result.body == {"order": {"id": "O-1", "total": 5}}
    assert result.report.kept == ("order.id", "order.total")
    assert set(result.report.dropped) == {"order.*", "*"}  # undeclared names are never written


def test_parent_keep_keeps_the_subtree(make_policy: MakePolicy) -> None:
    policy = make_policy({"address": "keep"})
    body = {"address": {"line1": "1 Main St", "geo": {"lat": 1.0}}, "other": 1}
    assert minimise(policy, body).body == {"address": body["address"]}


def test_drop_is_reported_and_removed(make_policy: MakePolicy) -> None:
    policy = make_policy({"user.id": "drop", "order": "keep"})
    result = minimise(policy, {"user": {"id": "u-1"}, "order": 1})
    assert result.body == {"order": 1}  # an object left empty is omitted
    assert result.report.dropped == ("user.id",)


def test_arrays_apply_to_every_element(make_policy: MakePolicy) -> None:
    policy = make_policy({"items[].sku": "keep", "items[].tags[]": "keep", "matrix[][]": "keep"})
    body = {"items": [{"sku": "A", "price": 3, "tags": ["x", "y"]}, {"sku": "B"}], "matrix": [[1, 2], [3]]}
    result = minimise(policy, body)
    assert result.body == {"items": [{"sku": "A", "tags": ["x", "y"]}, {"sku": "B"}], "matrix": [[1, 2], [3]]}
    assert result.report.dropped == ("items[].*",)
    assert "items[].sku" in result.report.kept


def test_top_level_array_body(make_policy: MakePolicy) -> None:
    policy = make_policy({"[].id": "keep"})
    assert minimise(policy, [{"id": 1, "x": 2}, {"id": 3}]).body == [{"id": 1}, {"id": 3}]


def test_wrong_shape_is_treated_as_an_unknown_field(make_policy: MakePolicy) -> None:
    policy = make_policy({"recipient.phone": "keep", "items[].sku": "keep"})
    result = minimise(policy, {"recipient": "free text with a secret", "items": {"sku": "A"}})
    assert result.body == {}
    assert set(result.report.dropped) == {"recipient", "items"}
    with pytest.raises(FieldNotAllowed):
        minimise(make_policy({"recipient.phone": "keep"}, unknown_fields="reject"), {"recipient": "x"})


@pytest.mark.parametrize("mode", ["hmac", "fpe"])
def test_pseudonymise_binds_the_partner_key(make_policy: MakePolicy, pseudonymiser: Pseudonymiser, mode: str) -> None:
    policy = make_policy({"device.imei": {"pseudonymise": {"type": "imei", "mode": mode}},
                          "phone": {"pseudonymise": {"type": "phone", "mode": mode}}})
    result = minimise(policy, {"device": {"imei": IMEI}, "phone": PHONE})
    assert result.body == {"device": {"imei": pseudonymiser.pseudonymise(PARTNER, "imei", mode, IMEI)},
                           "phone": pseudonymiser.pseudonymise(PARTNER, "phone", mode, PHONE)}
    assert result.body["device"]["imei"] != IMEI
    assert result.report.pseudonymised == {"imei": 1, "phone": 1}
    assert set(result.report.transformed) == {"device.imei", "phone"}
    assert result.report.kept == ()


def test_invalid_identifier_is_refused_with_its_path(make_policy: MakePolicy) -> None:
    policy = make_policy({"device.imei": {"pseudonymise": {"type": "imei", "mode": "hmac"}},
                          "items[].mac": {"pseudonymise": {"type": "mac", "mode": "hmac"}}})
    with pytest.raises(InvalidIdentifier) as caught:
        minimise(policy, {"device": {"imei": "490154203237519"}, "items": [{"mac": "not-a-mac"}]})
    assert {v.path for v in caught.value.violations} == {"device.imei", "items[].mac"}
    assert "490154203237519" not in str(caught.value.to_problem())


def test_generalise_location_date_age(make_policy: MakePolicy) -> None:
    policy = make_policy({
        "loc": {"generalise": {"location": 2}}, "pair": {"generalise": {"location": 1}},
        "text": {"generalise": {"location": 0}}, "born": {"generalise": {"date": "month"}},
        "seen": {"generalise": {"date": "year"}}, "age": {"generalise": {"age_band": 10}},
    })
    body = {"loc": {"lat": 10.7712, "lon": -106.7034, "accuracy": 3}, "pair": [1.26, 2.04],
            "text": "10.6,-20.4", "born": "1990-05-17", "seen": "2024-01-05T10:00:00Z", "age": 34}
    result = minimise(policy, body)
    assert result.body == {"loc": {"lat": 10.77, "lon": -106.7}, "pair": [1.3, 2.0], "text": "11,-20",
                           "born": "1990-05", "seen": "2024", "age": "30-39"}
    assert set(result.report.transformed) == set(body)


@pytest.mark.parametrize(("field", "value"), [("loc", "north"), ("born", "17/05/1990"), ("age", -3), ("age", "34")])
def test_generalise_refuses_a_value_of_the_wrong_shape(make_policy: MakePolicy, field: str, value: Any) -> None:
    policy = make_policy({"loc": {"generalise": {"location": 2}}, "born": {"generalise": {"date": "month"}},
                          "age": {"generalise": {"age_band": 10}}})
    with pytest.raises(SchemaViolation) as caught:
        minimise(policy, {field: value})
    assert caught.value.violations[0].path == field


def test_mask_keeps_the_last_characters(make_policy: MakePolicy) -> None:
    policy = make_policy({"card": {"mask": {"keep_last": 4}}, "short": {"mask": {"keep_last": 4, "char": "#"}},
                          "all": {"mask": {"keep_last": 0}}})
    result = minimise(policy, {"card": "4111111111111111", "short": "123", "all": 12345})
    # A fixed width (8 mask characters, then the kept ones), so the length of the value never shows.
    assert result.body == {"card": "********1111", "short": "############", "all": "********"}


def test_null_passes_as_null(make_policy: MakePolicy) -> None:
    policy = make_policy({"imei": {"pseudonymise": {"type": "imei", "mode": "hmac"}}, "age": {"generalise":
                                                                                             {"age_band": 5}}})
    assert minimise(policy, {"imei": None, "age": None}).body == {"imei": None, "age": None}


def test_unknown_fields_reject_names_every_path(make_policy: MakePolicy) -> None:
    policy = make_policy({"a": "keep", "items[].sku": "keep"}, query={"lang": "keep"}, unknown_fields="reject")
    with pytest.raises(FieldNotAllowed) as caught:
        minimise(policy, {"a": 1, "b": 2, "items": [{"sku": 1, "price": 2}]}, query=[("lang", "vi"), ("debug", "1")])
    assert caught.value.status == 422
    assert {v.path for v in caught.value.violations} == {"*", "items[].*", "query:*"}


def test_unknown_headers_are_dropped_even_in_reject_mode(make_policy: MakePolicy) -> None:
    policy = make_policy({"a": "keep"}, headers={"Idempotency-Key": "keep"}, unknown_fields="reject")
    result = minimise(policy, {"a": 1}, headers={"idempotency-key": "k1", "Authorization": "Bearer t", "Cookie": "c"})
    assert result.headers == {"Idempotency-Key": "k1"}
    assert set(result.report.dropped) == {"header:*"}


def test_query_and_path_parameters(make_policy: MakePolicy, pseudonymiser: Pseudonymiser) -> None:
    policy = make_policy(query={"lang": "keep", "phone": {"pseudonymise": {"type": "phone", "mode": "hmac"}}},
                         path={"shipment_id": "keep", "msisdn": {"pseudonymise": {"type": "phone", "mode": "hmac"}}})
    result = minimise(policy, None, query=[("lang", "vi"), ("phone", PHONE), ("lang", "en"), ("x", "1")],
                      path={"shipment_id": "S-1", "msisdn": PHONE})
    token = pseudonymiser.pseudonymise(PARTNER, "phone", "hmac", PHONE)
    assert result.query == (("lang", "vi"), ("phone", token), ("lang", "en"))
    assert result.path_params == {"shipment_id": "S-1", "msisdn": token}
    assert result.body is None
    assert "query:*" in result.report.dropped
    assert {"query:phone", "path:msisdn"} <= set(result.report.transformed)


def test_free_text_redact_mode(make_policy: MakePolicy) -> None:
    policy = make_policy({"note": {"keep": {"free_text": True}}}, free_text="redact")
    note = (f"Call {PHONE} or mail an.nguyen@example.com; phone IMEI {IMEI}, MAC 00:1A:2B:3C:4D:5E, "
            "ICCID 8984040000123456781, IMSI 452040123456789. Order 123456789012345 is fine.")
    result = minimise(policy, {"note": note})
    text = result.body["note"]
    for secret in (PHONE, "an.nguyen@example.com", IMEI, "00:1A:2B:3C:4D:5E", "8984040000123456781",
                   "452040123456789"):
        assert secret not in text
    for label in ("phone", "email", "imei", "mac", "iccid", "imsi"):
        assert f"[redacted:{label}]" in text
    assert "Order 123456789012345 is fine." in text  # 15 digits without a Luhn digit or known MCC: not an id
    assert result.report.transformed == ("note",)


def test_free_text_without_identifiers_is_kept(make_policy: MakePolicy) -> None:
    policy = make_policy({"note": {"keep": {"free_text": True}}}, free_text="reject")
    result = minimise(policy, {"note": "Leave at the door, gate code 4411."})
    assert result.body == {"note": "Leave at the door, gate code 4411."}
    assert result.report.kept == ("note",)


def test_free_text_reject_mode(make_policy: MakePolicy) -> None:
    policy = make_policy({"notes[].text": {"keep": {"free_text": True}}}, free_text="reject")
    with pytest.raises(IdentifierInFreeText) as caught:
        minimise(policy, {"notes": [{"text": "ok"}, {"text": f"my imei is {IMEI}"}]})
    assert caught.value.violations[0].path == "notes[].text"
    assert "imei" in caught.value.violations[0].reason
    assert IMEI not in str(caught.value.to_problem())


def test_response_filter_and_reidentify(make_policy: MakePolicy, pseudonymiser: Pseudonymiser) -> None:
    token = pseudonymiser.pseudonymise(PARTNER, "phone", "fpe", PHONE)
    policy = make_policy({"recipient.phone": {"pseudonymise": {"type": "phone", "mode": "fpe"}}},
                         response_body={"tracking": "keep", "recipient.phone": {"reidentify": {"type": "phone"}}},
                         response_headers={"Content-Type": "keep"}, unknown_fields="reject")
    issued = policy.issued_pseudonyms(minimise(policy, {"recipient": {"phone": PHONE}}))
    result = policy.filter_response({"tracking": "T1", "recipient": {"phone": token}, "internal": 1},
                                    {"content-type": "application/json", "Set-Cookie": "s"}, issued)
    assert result.body == {"tracking": "T1", "recipient": {"phone": pseudonymiser.reidentify(PARTNER, "phone", token)}}
    assert result.headers == {"Content-Type": "application/json"}
    assert "*" in result.report.dropped  # never a refusal: the caller did nothing wrong
    with pytest.raises(UpstreamError) as caught:
        policy.filter_response({"recipient": {"phone": "not-a-token"}}, {}, issued)
    assert caught.value.reason == "response-policy"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"a": "keep", "a.b": "keep"}, "already has an action"),
        ({"a.b": "keep", "a": "keep"}, "overlaps"),
        ({"a[].b": "keep", "a.c": "keep"}, "an object and an array"),
        ({"a.c": "keep", "a[].b": "keep"}, "an array and an object"),
        ({"a..b": "keep"}, "empty name"),
        ({"a[0]": "keep"}, "[]"),
        ({"a": {"reidentify": {"type": "phone"}}}, "responses only"),
    ],
)
def test_policy_compile_errors(make_policy: MakePolicy, body: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyCompileError) as caught:
        make_policy(body)
    assert problem in caught.value.reason


def test_header_names_declared_twice(make_policy: MakePolicy) -> None:
    with pytest.raises(PolicyCompileError):
        make_policy(headers={"X-A": "keep", "x-a": "drop"})


def test_schema_violations_name_paths_not_values(make_policy: MakePolicy) -> None:
    schema = {"type": "object", "required": ["order", "location"], "additionalProperties": False,
              "properties": {"order": {"type": "object", "properties": {"country": {"pattern": "^[A-Z]{2}$"}}},
                             "location": {"type": "object"}}}
    policy = make_policy({"order": "keep"}, schema=schema)
    policy.validate({"order": {"country": "VN"}, "location": {}})
    with pytest.raises(SchemaViolation) as caught:
        policy.validate({"order": {"country": "secret-value"}, "extra": 1})
    paths = {v.path for v in caught.value.violations}
    assert paths == {"order.country", "location", "*"}  # "extra" is the caller's name: never echoed
    assert "secret-value" not in str(caught.value.to_problem())


def test_schema_violations_below_undeclared_keys_never_echo_the_key(make_policy: MakePolicy) -> None:
    """An instance key the schema does not declare (a map keyed by phone or e-mail) shows as `*` in a
    violation path; declared property names stay readable (review-privacy F3)."""
    schema = {"type": "object", "properties": {"contacts": {"type": "object", "additionalProperties": {
        "type": "object", "required": ["kind"], "properties": {"kind": {"type": "string"}}}}}}
    policy = make_policy({"contacts": "keep"}, schema=schema)
    body = {"contacts": {PHONE: {"kind": 1}, "kim@example.com": {}}}
    with pytest.raises(SchemaViolation) as caught:
        policy.validate(body)
    assert {v.path for v in caught.value.violations} == {"contacts.*.kind"}
    problem = str(caught.value.to_problem())
    assert all(text not in problem for text in (PHONE, "kim@"))
    with pytest.raises(SchemaViolation):
        policy.validate_request(body)


@pytest.mark.parametrize("unknown_fields", ["drop", "reject"])
def test_undeclared_key_names_are_never_reported_or_echoed(make_policy: MakePolicy, unknown_fields: str) -> None:
    """Names of undeclared keys, query parameters and headers are the caller's (review-privacy F3): reported
    under their parent's marker, in the report (the ledger's fields_dropped) and in refusals alike; a key
    spelt like a report path cannot pass for one."""
    policy = make_policy({"recipient.name": "keep", "items[].sku": "keep"}, query={"lang": "keep"},
                         headers={"Idempotency-Key": "keep"}, unknown_fields=unknown_fields)
    body = {"recipient": {"name": "Kim", PHONE: "primary"}, "items": [{"sku": "A", "kim@example.com": 1}],
            "header:authorization": "x", "query:lang": "y"}
    query = [("lang", "vi"), ("kim@example.com", "1")]
    headers = {"X-Contact-kim-at-example.com": "1", "Idempotency-Key": "k"}
    if unknown_fields == "reject":
        with pytest.raises(FieldNotAllowed) as caught:
            minimise(policy, body, query=query, headers=headers)
        assert {v.path for v in caught.value.violations} == {"recipient.*", "items[].*", "*", "query:*"}
        problem = str(caught.value.to_problem())
        assert all(text not in problem for text in (PHONE, "kim", "header:authorization"))
        return
    result = minimise(policy, body, query=query, headers=headers)
    assert result.body == {"recipient": {"name": "Kim"}, "items": [{"sku": "A"}]}
    assert set(result.report.dropped) == {"recipient.*", "items[].*", "*", "query:*", "header:*"}
    validated = policy.minimise_validated(policy.validate_request(body), query, {}, headers)
    assert validated.report == result.report


@pytest.mark.parametrize("value", [int(IMEI), 8.5, {PHONE: "call"}, {"x": {"kim@example.com": 1}}, [1, "a"]])
@pytest.mark.parametrize("mode", ["redact", "reject"])
def test_free_text_is_text_a_number_or_an_identifier_in_a_key_is_refused(make_policy: MakePolicy, value: Any,
                                                                         mode: str) -> None:
    """Free text is scanned as text: a number under a free-text action (an IMEI or phone written as a JSON
    number) and an object key holding an identifier are refused in both modes (review-privacy F6)."""
    policy = make_policy({"note": {"keep": {"free_text": True}}}, free_text=mode)
    with pytest.raises(SchemaViolation if not isinstance(value, dict) else IdentifierInFreeText) as caught:
        minimise(policy, {"note": value})
    assert caught.value.violations[0].path == "note"
    problem = str(caught.value.to_problem())
    assert all(text not in problem for text in (IMEI, PHONE, "kim@"))
    with pytest.raises(type(caught.value)):
        policy.minimise_validated(policy.validate_request({"note": value}), (), {}, {})


def test_free_text_keeps_null_booleans_and_plain_containers(make_policy: MakePolicy) -> None:
    policy = make_policy({"note": {"keep": {"free_text": True}}}, free_text="redact")
    for value in (None, True, ["ok", None], {"door": "leave at the door"}):
        assert minimise(policy, {"note": value}).body == {"note": value}
    assert minimise(policy, {"note": [f"imei {IMEI}"]}).body == {"note": ["imei [redacted:imei]"]}


def test_the_undeclared_marker_cannot_be_declared(make_policy: MakePolicy) -> None:
    with pytest.raises(PolicyCompileError, match="reserved"):
        make_policy({"recipient.*": "keep"})
