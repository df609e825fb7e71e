"""`reidentify` is bound to the exchange: a response turns back only the `fpe` pseudonyms its own request
sent the partner (CompiledRoutePolicy.issued_pseudonyms), never another subject's token or a token the
gateway never issued (FF1 decrypts any well-formed string to a real-looking identifier)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.errors import UpstreamError, UpstreamReidentifyRefused
from gateway.policy import NO_PSEUDONYMS_ISSUED, CompiledRoutePolicy, PolicyCompileError
from gateway.pseudonyms import Pseudonymiser

PARTNER = "carrier-test"  # as in tests/policy/conftest.py
MakePolicy = Callable[..., CompiledRoutePolicy]

PHONE_A = "+886912345678"
PHONE_B = "+886987654321"
FPE_PHONE = {"pseudonymise": {"type": "phone", "mode": "fpe"}}
REIDENTIFY_PHONE = {"reidentify": {"type": "phone"}}


def _shipment_policy(make_policy: MakePolicy, **extra: Any) -> CompiledRoutePolicy:
    return make_policy({"recipient.phone": FPE_PHONE, "recipient.name": "keep"},
                       response_body={"tracking": "keep", "recipient.phone": REIDENTIFY_PHONE}, **extra)


def _issued(policy: CompiledRoutePolicy, body: Any, **kwargs: Any) -> Any:
    minimised = policy.minimise_request(body, kwargs.get("query", ()), kwargs.get("path", {}),
                                        kwargs.get("headers", {}))
    return policy.issued_pseudonyms(minimised)


def _refused(policy: CompiledRoutePolicy, answer: Any, issued: Any) -> UpstreamReidentifyRefused:
    with pytest.raises(UpstreamReidentifyRefused) as caught:
        policy.filter_response(answer, {}, issued)
    return caught.value


def test_the_requests_own_token_is_reidentified_to_the_callers_value(
        make_policy: MakePolicy, pseudonymiser: Pseudonymiser) -> None:
    policy = _shipment_policy(make_policy)
    assert policy.reidentifies
    issued = _issued(policy, {"recipient": {"phone": "+886 912-345-678", "name": "Kim"}})
    token = pseudonymiser.pseudonymise(PARTNER, "phone", "fpe", PHONE_A)
    result = policy.filter_response({"tracking": "T", "recipient": {"phone": token}}, {}, issued)
    assert result.body == {"tracking": "T", "recipient": {"phone": PHONE_A}}  # normalised, as pseudonymised
    assert result.reidentified == {"recipient.phone": 1}
    assert result.report.transformed == ("recipient.phone",)


def test_another_subjects_token_is_refused_not_decrypted(
        make_policy: MakePolicy, pseudonymiser: Pseudonymiser) -> None:
    policy = _shipment_policy(make_policy)
    issued_for_b = _issued(policy, {"recipient": {"phone": PHONE_B}})
    token_of_a = pseudonymiser.pseudonymise(PARTNER, "phone", "fpe", PHONE_A)
    refusal = _refused(policy, {"tracking": "T", "recipient": {"phone": token_of_a}}, issued_for_b)
    assert refusal.status == 502
    assert refusal.reason == "upstream-reidentify"
    assert [v.path for v in refusal.violations] == ["recipient.phone"]
    problem = str(refusal.to_problem())
    assert PHONE_A not in problem
    assert token_of_a not in problem


def test_a_token_never_issued_is_refused(make_policy: MakePolicy) -> None:
    policy = _shipment_policy(make_policy)
    issued = _issued(policy, {"recipient": {"phone": PHONE_A}})
    # Phone-shaped, so FF1 would "decrypt" it to some stranger's real-looking number.
    _refused(policy, {"recipient": {"phone": "+886900000001"}}, issued)


def test_without_the_requests_tokens_every_token_is_refused(
        make_policy: MakePolicy, pseudonymiser: Pseudonymiser) -> None:
    policy = _shipment_policy(make_policy)
    token = pseudonymiser.pseudonymise(PARTNER, "phone", "fpe", PHONE_A)
    with pytest.raises(UpstreamReidentifyRefused):
        policy.filter_response({"recipient": {"phone": token}}, {})
    _refused(policy, {"recipient": {"phone": token}}, NO_PSEUDONYMS_ISSUED)


def test_one_unissued_token_fails_the_whole_answer(make_policy: MakePolicy, pseudonymiser: Pseudonymiser) -> None:
    policy = make_policy({"parties[].phone": FPE_PHONE},
                         response_body={"parties[].phone": REIDENTIFY_PHONE, "tracking": "keep"})
    issued = _issued(policy, {"parties": [{"phone": PHONE_A}, {"phone": PHONE_B}]})
    mine = [pseudonymiser.pseudonymise(PARTNER, "phone", "fpe", phone) for phone in (PHONE_A, PHONE_B)]
    ok = policy.filter_response({"parties": [{"phone": mine[1]}, {"phone": mine[0]}]}, {}, issued)
    assert ok.body == {"parties": [{"phone": PHONE_B}, {"phone": PHONE_A}]}
    assert ok.reidentified == {"parties[].phone": 2}
    stranger = pseudonymiser.pseudonymise(PARTNER, "phone", "fpe", "+886955555555")
    _refused(policy, {"parties": [{"phone": mine[0]}, {"phone": stranger}]}, issued)


def test_garbage_stays_a_response_policy_error(make_policy: MakePolicy) -> None:
    policy = _shipment_policy(make_policy)
    issued = _issued(policy, {"recipient": {"phone": PHONE_A}})
    with pytest.raises(UpstreamError) as caught:
        policy.filter_response({"recipient": {"phone": "not-a-token"}}, {}, issued)
    assert caught.value.reason == "response-policy"
    assert policy.filter_response({"recipient": {"phone": None}}, {}, issued).body == {"recipient": {"phone": None}}


def test_a_token_may_come_back_in_another_spelling(make_policy: MakePolicy, pseudonymiser: Pseudonymiser) -> None:
    policy = make_policy({"device.mac": {"pseudonymise": {"type": "mac", "mode": "fpe"}}},
                         response_body={"device.mac": {"reidentify": {"type": "mac"}}})
    issued = _issued(policy, {"device": {"mac": "00-1A-2B-3C-4D-5E"}})
    token = pseudonymiser.pseudonymise(PARTNER, "mac", "fpe", "00-1A-2B-3C-4D-5E")
    respelt = token.replace("-", ":").lower()
    assert respelt != token
    result = policy.filter_response({"device": {"mac": respelt}}, {}, issued)
    assert result.body == {"device": {"mac": "00-1A-2B-3C-4D-5E"}}  # the caller's own spelling


def test_tokens_of_query_path_and_headers_count_and_types_stay_apart(
        make_policy: MakePolicy, pseudonymiser: Pseudonymiser) -> None:
    policy = make_policy(None, query={"msisdn": FPE_PHONE}, headers={"X-Phone": FPE_PHONE},
                         path={"who": {"pseudonymise": {"type": "email", "mode": "fpe"}}},
                         response_body={"a": REIDENTIFY_PHONE, "b": {"reidentify": {"type": "email"}}},
                         response_headers={"X-Phone": REIDENTIFY_PHONE})
    issued = _issued(policy, None, query=[("msisdn", PHONE_A)], path={"who": "kim@example.com"},
                     headers={"x-phone": PHONE_B})
    fpe = pseudonymiser.pseudonymise
    result = policy.filter_response({"a": fpe(PARTNER, "phone", "fpe", PHONE_A),
                                     "b": fpe(PARTNER, "email", "fpe", "kim@example.com")},
                                    {"x-phone": fpe(PARTNER, "phone", "fpe", PHONE_B)}, issued)
    assert result.body == {"a": PHONE_A, "b": "kim@example.com"}
    assert result.headers == {"X-Phone": PHONE_B}
    assert result.reidentified == {"a": 1, "b": 1, "header:X-Phone": 1}
    # A phone token is not an e-mail pseudonym of this request, and vice versa.
    with pytest.raises(UpstreamError):
        policy.filter_response({"b": fpe(PARTNER, "phone", "fpe", PHONE_A)}, {}, issued)


def test_the_generated_walk_yields_the_same_tokens(make_policy: MakePolicy, pseudonymiser: Pseudonymiser) -> None:
    schema = {"type": "object", "properties": {"recipient": {"type": "object", "properties": {
        "phone": {"type": "string"}, "name": {"type": "string"}}}}}
    policy = _shipment_policy(make_policy, schema=schema)
    body = {"recipient": {"phone": PHONE_A, "name": "Kim"}}
    issued = policy.issued_pseudonyms(policy.minimise_validated(policy.validate_request(body), (), {}, {}))
    token = pseudonymiser.pseudonymise(PARTNER, "phone", "fpe", PHONE_A)
    assert policy.filter_response({"recipient": {"phone": token}}, {}, issued).body == {"recipient": {"phone": PHONE_A}}


def test_the_issued_tokens_never_show_in_a_repr(make_policy: MakePolicy, pseudonymiser: Pseudonymiser) -> None:
    policy = _shipment_policy(make_policy)
    issued = _issued(policy, {"recipient": {"phone": PHONE_A}})
    token = pseudonymiser.pseudonymise(PARTNER, "phone", "fpe", PHONE_A)
    assert token not in repr(issued)
    assert PHONE_A not in repr(issued)


@pytest.mark.parametrize("request_body", [
    None,  # the request sends no phone at all
    {"recipient.phone": {"pseudonymise": {"type": "phone", "mode": "hmac"}}},  # not reversible
    {"recipient.phone": {"pseudonymise": {"type": "email", "mode": "fpe"}}},  # another type
])
def test_reidentify_without_a_matching_fpe_leaf_is_refused_at_compile(
        make_policy: MakePolicy, request_body: Any) -> None:
    with pytest.raises(PolicyCompileError) as caught:
        make_policy(request_body, response_body={"recipient.phone": REIDENTIFY_PHONE})
    assert caught.value.section == ("response", "body")
    assert caught.value.key == "recipient.phone"
    assert "fpe" in caught.value.reason


def test_routes_without_reidentify_keep_nothing(make_policy: MakePolicy) -> None:
    policy = make_policy({"recipient.phone": FPE_PHONE}, response_body={"tracking": "keep"})
    assert not policy.reidentifies
