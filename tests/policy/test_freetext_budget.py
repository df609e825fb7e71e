"""The free-text scan budget: a request (or a response) has at most `free_text_max_chars` characters of
free text scanned, in all its free-text values; beyond, the policy refuses (422 `free-text-too-long`,
naming the path, never the text) without scanning. The scan runs on the event loop and costs up to a few
µs a character on digit-heavy text, so this bounds what one request can cost a worker. The generated
walk and the reference engine agree (the walk hands the refusal to the engine)."""

from __future__ import annotations

from typing import Any

import pytest
from test_policy_codegen import assert_same, reference_of

from gateway.errors import FreeTextTooLong, UpstreamError
from gateway.policy import CompiledRoutePolicy, RoutePolicySpec, engine, parse_action
from gateway.policy.freetext import FREE_TEXT_MAX_CHARS
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser

BINDER = Pseudonymiser(PartnerKeyring(bytes(range(32))))
FREE = parse_action({"keep": {"free_text": True}})
SCHEMA = {"type": "object", "properties": {"note": {"type": "string"},
                                           "lines": {"type": "array", "items": {"type": "string"}}}}
DIGITS = "box 12, 3;"  # ten characters with numbers and no identifier


def _policy(limit: int | None, mode: str = "redact", schema: Any = SCHEMA) -> CompiledRoutePolicy:
    extra = {} if limit is None else {"free_text_max_chars": limit}
    spec = RoutePolicySpec(request_body={"note": FREE, "lines[]": FREE}, request_query={"q": FREE},
                           response_body={"answer": FREE}, free_text=mode, schema=schema,  # type: ignore[arg-type]
                           **extra)  # type: ignore[arg-type]
    return CompiledRoutePolicy(spec, partner_id="carrier-budget", pseudonymiser=BINDER)


def _refusal(policy: CompiledRoutePolicy, body: Any, query: tuple[tuple[str, str], ...] = ()) -> FreeTextTooLong:
    with pytest.raises(FreeTextTooLong) as refused:
        policy.minimise_request(body, query, {}, {})
    return refused.value


def test_free_text_over_the_limit_is_refused_without_echoing_it() -> None:
    policy = _policy(100)
    assert policy.generated.walk is not None
    assert policy.minimise_request({"note": DIGITS * 10}, (), {}, {}).body == {"note": DIGITS * 10}
    refusal = _refusal(policy, {"note": DIGITS * 10 + "x"})
    assert refusal.status == 422
    assert refusal.type_uri.endswith(":free-text-too-long")
    assert [(v.path, v.reason) for v in refusal.violations] == [
        ("note", "more free text than the route scans (100 characters per request in all)")]
    assert DIGITS not in str(refusal.to_problem())


def test_the_limit_counts_every_free_text_value_of_a_request() -> None:
    """Many values each under any per-field bound (an array of goods descriptions) add up; so do the
    body and a free-text query parameter, also when the generated walk served the body."""
    policy = _policy(100)
    assert policy.minimise_request({"lines": [DIGITS * 5, DIGITS * 5]}, (), {}, {}).report.kept
    refusal = _refusal(policy, {"lines": [DIGITS * 5, DIGITS * 5, "x"]})
    assert [v.path for v in refusal.violations] == ["lines[]"]
    _refusal(policy, {"note": DIGITS * 6}, (("q", DIGITS * 5),))
    validated = policy.validate_request({"note": DIGITS * 6})
    assert validated.walked  # the fused walk served the body; the query still counts against what is left
    with pytest.raises(FreeTextTooLong):
        policy.minimise_validated(validated, (("q", DIGITS * 5),), {}, {})
    policy.minimise_validated(policy.validate_request({"note": DIGITS * 6}), (("q", DIGITS * 4),), {}, {})


def test_keys_of_free_text_objects_count_too() -> None:
    policy = _policy(100, schema=None)
    _refusal(policy, {"note": ["a", {"k" * 99: "b"}]})
    assert policy.minimise_request({"note": ["a", {"k" * 98: "b"}]}, (), {}, {})


def test_text_over_the_limit_is_never_scanned(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy(100, mode="reject")
    scanned: list[int] = []
    original = engine.scan

    def counting(text: str) -> list[Any]:
        scanned.append(len(text))
        return original(text)

    monkeypatch.setattr(engine, "scan", counting)
    _refusal(policy, {"lines": [DIGITS * 6, DIGITS * 6, DIGITS * 6]})
    assert scanned == [60]  # the reference engine's refusal: the first line only


def test_the_default_limit_applies_when_the_route_sets_none() -> None:
    policy = _policy(None)
    assert policy.spec.free_text_max_chars == FREE_TEXT_MAX_CHARS == 32768
    text = DIGITS * (FREE_TEXT_MAX_CHARS // len(DIGITS))
    policy.minimise_request({"note": text}, (), {}, {})
    _refusal(policy, {"note": text + "1" * (FREE_TEXT_MAX_CHARS - len(text) + 1)})


def test_a_partner_response_over_the_limit_is_refused() -> None:
    policy = _policy(100)
    assert policy.filter_response({"answer": DIGITS * 10}, {}).body == {"answer": DIGITS * 10}
    with pytest.raises(UpstreamError) as refused:
        policy.filter_response({"answer": DIGITS * 10 + "x"}, {})
    assert [v.path for v in refusal_violations(refused.value)] == ["answer"]


def refusal_violations(error: UpstreamError) -> list[Any]:
    return list(error.violations)


@pytest.mark.parametrize("mode", ["redact", "reject"])
@pytest.mark.parametrize(("body", "query"), [
    ({"note": DIGITS * 10}, ()),
    ({"note": DIGITS * 10 + "x"}, ()),
    ({"note": DIGITS * 9 + "+84912345678"}, ()),  # an identifier over the limit: refused either way
    ({"lines": [DIGITS * 5, "+84 912 345 678", DIGITS * 5]}, ()),
    ({"lines": [DIGITS * 5] * 3}, ()),
    ({"note": DIGITS * 6, "lines": [DIGITS * 4]}, ()),
    ({"note": DIGITS * 6}, (("q", DIGITS * 4),)),
    ({"note": DIGITS * 6}, (("q", DIGITS * 4 + "x"),)),
    ({"note": 5, "lines": [DIGITS * 20]}, ()),
])
def test_generated_walk_and_reference_engine_agree_on_the_limit(body: Any, query: tuple[tuple[str, str], ...],
                                                                mode: str) -> None:
    for schema in (SCHEMA, None):
        policy = _policy(100, mode=mode, schema=schema)
        assert policy.generated.walk is not None
        assert_same(policy, reference_of(policy, BINDER), body, query)
