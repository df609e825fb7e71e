"""Property tests: each fast path of the policy hot path against the straightforward path it replaces."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, MalformedRequest, Violation
from gateway.policy import CompiledRoutePolicy, PolicyCompileError, RoutePolicySpec, freetext, parse_action
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser
from gateway.strictjson import canonical_dumps

PSEUDONYMISER = Pseudonymiser(PartnerKeyring(bytes(range(32))))

hex_pairs = st.lists(st.text("0123456789abcdefABCDEF", min_size=2, max_size=2), min_size=6, max_size=6)
colon_macs = st.tuples(hex_pairs, st.lists(st.sampled_from(":-"), min_size=5, max_size=5)).map(
    lambda parts: "".join(pair + sep for pair, sep in zip(parts[0], [*parts[1], ""], strict=True)))
dotted_macs = st.text("0123456789abcdef", min_size=12, max_size=12).map(
    lambda h: f"{h[:4]}.{h[4:8]}.{h[8:]}")
noise = st.text(st.sampled_from("0123456789abcdefXYZ:-. "), max_size=12)
mac_texts = st.tuples(noise, colon_macs | dotted_macs, noise).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(mac_texts, noise, st.text(max_size=40)))
def test_scan_with_mac_prefilter_equals_scan_without(text: str) -> None:
    fast = freetext.scan(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(freetext, "may_hold_mac", lambda _text: True)
        assert freetext.scan(text) == fast


marked_texts = st.text(st.sampled_from("ab @+:-.0123456789\u0663"), max_size=24)
near_identifiers = st.sampled_from(["a@b.c", "x@y", "+1", "+12", "+1234567", "a.b", "1.", "12", "1:2", "1-2", "@", "+",
                                    ".", "9", "", "aa:bb:cc:dd:ee:ff", "001a.2b3c.4d5e", "490154203237518"])


@settings(max_examples=600, deadline=None)
@given(st.one_of(mac_texts, noise, marked_texts, near_identifiers, st.text(max_size=40),
                 st.tuples(noise, near_identifiers, noise).map("".join)))
def test_scan_ascii_precheck_equals_scan_without(text: str) -> None:
    """scan's ASCII pre-check (fewer than two of '@+:-.' and digits: no identifier) changes no answer."""
    assert freetext.scan(text) == freetext._scan(text)


@settings(max_examples=300, deadline=None)
@given(mac_texts)
def test_mac_prefilter_passes_every_mac_the_pattern_finds(text: str) -> None:
    if freetext._MAC_PAIRS.search(text) is not None or freetext._MAC_DOTTED.search(text) is not None:
        assert freetext.may_hold_mac(text)


def test_mac_prefilter_passes_both_spellings() -> None:
    assert freetext.may_hold_mac("device 00:1a:2b:3c:4d:5e")
    assert freetext.may_hold_mac("device 001a.2b3c.4d5e")
    assert not freetext.may_hold_mac("Please leave the parcel at the door.")


# --- MinimisedRequest.canonical_body (keys of allowlisted objects not re-checked) vs canonical_dumps ---

CANONICAL_POLICY = CompiledRoutePolicy(
    RoutePolicySpec(request_body={
        "order.id": parse_action("keep"),
        "order.meta": parse_action("keep"),
        "recipient.address": parse_action("keep"),
        "recipient.imei": parse_action({"pseudonymise": {"type": "imei", "mode": "hmac"}}),
        "items[].sku": parse_action("keep"),
        "items[].note": parse_action({"keep": {"free_text": True}}),
        "tags[]": parse_action("keep"),
        "where": parse_action({"generalise": {"location": 1}}),
    }, free_text="redact"),
    partner_id="carrier-canonical", pseudonymiser=PSEUDONYMISER,
)
awkward_keys = st.sampled_from(["a", "A", "b", "\u00e9", "e\u0301", "\u00c9", "Stra\u00dfe", "STRASSE", "lat", "lon"])
edge_numbers = st.sampled_from([float("nan"), float("inf"), -float("inf"), 2**53, 2**63 - 1, 2**63, -(2**63) - 1,
                                2**64, 0.1, -0.0])
awkward_scalars = (st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | edge_numbers
                   | st.text(max_size=6) | st.sampled_from(["490154203237518", "+886912345678"]))
awkward_values = st.recursive(awkward_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    awkward_keys | st.integers(0, 2), inner, max_size=4), max_leaves=12)
# Free text is text: numbers under a free-text action are refused (review-privacy F6), so the note is
# strings, nulls and booleans in awkward containers.
awkward_texts = st.recursive(st.none() | st.booleans() | st.text(max_size=6)
                             | st.sampled_from(["490154203237518", "+886912345678"]),
                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                                 awkward_keys | st.integers(0, 2), inner, max_size=4), max_leaves=12)
awkward_bodies = st.fixed_dictionaries({}, optional={
    "order": st.fixed_dictionaries({}, optional={"id": awkward_values, "meta": awkward_values, "x": awkward_values}),
    "recipient": st.fixed_dictionaries({}, optional={"address": awkward_values,
                                                     "imei": st.just("490154203237518")}),
    "items": st.lists(st.fixed_dictionaries({}, optional={"sku": awkward_values, "note": awkward_texts}),
                      max_size=3),
    "tags": awkward_values,
    "where": st.fixed_dictionaries({"lat": st.floats(-90, 90), "lon": st.floats(-180, 180)}),
})


def _outcome(produce: Callable[[], bytes]) -> bytes | tuple[str, list[Violation]]:
    try:
        return produce()
    except GatewayError as exc:
        return (type(exc).__name__, list(exc.violations))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(awkward_bodies)
def test_canonical_body_equals_canonical_dumps(body: dict[str, Any]) -> None:
    minimised = CANONICAL_POLICY.minimise_request(body, (), {}, {})
    assert minimised.unchecked_containers is not None
    assert _outcome(minimised.canonical_body) == _outcome(lambda: canonical_dumps(minimised.body))


def test_canonical_body_still_refuses_colliding_caller_keys() -> None:
    minimised = CANONICAL_POLICY.minimise_request({"recipient": {"address": {"City": 1, "city": 2}}}, (), {}, {})
    with pytest.raises(MalformedRequest):
        minimised.canonical_body()
    nan = CANONICAL_POLICY.minimise_request({"order": {"id": float("nan")}}, (), {}, {})
    with pytest.raises(MalformedRequest):
        nan.canonical_body()


def test_declared_names_that_collide_are_refused_when_compiling() -> None:
    for first, second in (("recipient.Phone", "recipient.phone"), ("caf\u00e9", "cafe\u0301")):
        with pytest.raises(PolicyCompileError, match="differ only by case or Unicode form"):
            CompiledRoutePolicy(RoutePolicySpec(request_body={first: parse_action("keep"),
                                                              second: parse_action("keep")}),
                                partner_id="p", pseudonymiser=PSEUDONYMISER)


def test_non_ascii_declared_names_keep_the_full_canonical_check() -> None:
    policy = CompiledRoutePolicy(RoutePolicySpec(request_body={"stra\u00dfe": parse_action("keep")}),
                                 partner_id="p", pseudonymiser=PSEUDONYMISER)
    minimised = policy.minimise_request({"stra\u00dfe": "x"}, (), {}, {})
    assert minimised.unchecked_containers is None
    assert minimised.canonical_body() == canonical_dumps(minimised.body)


paths = st.lists(st.text(max_size=6), max_size=4).map(tuple)


@settings(max_examples=100, deadline=None)
@given(paths, paths, paths, st.dictionaries(st.text(max_size=5), st.integers(0, 9), max_size=3), st.none() | paths,
       st.booleans())
def test_slot_constructors_equal_the_dataclass_constructors(kept: tuple[str, ...], transformed: tuple[str, ...],
                                                            dropped: tuple[str, ...], counts: dict[str, int],
                                                            unchecked: tuple[Any, ...] | None,
                                                            finite: bool) -> None:
    """engine._new_report / _new_minimised / _new_validated build the same frozen values as the classes'
    own __init__, and the values stay frozen."""
    import dataclasses

    from gateway.policy import engine

    report = engine._new_report(kept, transformed, dropped, counts)
    assert report == engine.MinimisationReport(kept, transformed, dropped, counts)
    assert dataclasses.astuple(report) == dataclasses.astuple(engine.MinimisationReport(kept, transformed, dropped,
                                                                                         counts))
    minimised = engine._new_minimised({"a": 1}, (("q", "1"),), {"p": "2"}, {"H": "3"}, report, unchecked, finite)
    expected = engine.MinimisedRequest({"a": 1}, (("q", "1"),), {"p": "2"}, {"H": "3"}, report, unchecked, finite)
    assert minimised == expected
    assert minimised.unchecked_containers == unchecked
    assert minimised.finite_outside is finite
    policy = CompiledRoutePolicy(RoutePolicySpec(), partner_id="p", pseudonymiser=PSEUDONYMISER)
    validated = engine._new_validated(policy, {"a": 1}, None)
    assert (validated.policy, validated.body, validated.walked) == (policy, {"a": 1}, None)
    for value, name in ((report, "kept"), (minimised, "body"), (validated, "body")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)


header_names = st.sampled_from(["Idempotency-Key", "idempotency-key", "IDEMPOTENCY-KEY", "Authorization", "X-Trace",
                                "x-trace", "Cookie"]) | st.text(max_size=6)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(header_names, st.text(max_size=4), max_size=4), min_size=1, max_size=4))
def test_remembered_header_names_change_nothing(requests: list[dict[str, str]]) -> None:
    """A policy that has seen header names before (and remembers what each resolves to) minimises the
    same as a fresh one; the memory of caller-chosen names stays bounded."""
    spec = RoutePolicySpec(request_headers={"Idempotency-Key": parse_action("keep"),
                                            "X-Trace": parse_action({"pseudonymise": {"type": "token"}})})
    seasoned = CompiledRoutePolicy(spec, partner_id="p", pseudonymiser=PSEUDONYMISER)

    def outcome(policy: CompiledRoutePolicy, headers: dict[str, str]) -> Any:
        try:
            got = policy.minimise_request(None, (), {}, headers)
        except GatewayError as exc:  # an empty X-Trace is not a token
            return type(exc).__name__, [(v.path, v.reason) for v in exc.violations]
        return got.headers, got.report

    for headers in requests:
        fresh = CompiledRoutePolicy(spec, partner_id="p", pseudonymiser=PSEUDONYMISER)
        expected = outcome(fresh, headers)
        for _ in range(2):
            assert outcome(seasoned, headers) == expected


def test_remembered_header_names_are_bounded() -> None:
    from gateway.policy import engine

    policy = CompiledRoutePolicy(RoutePolicySpec(request_headers={"A": parse_action("keep")}), partner_id="p",
                                 pseudonymiser=PSEUDONYMISER)
    for n in range(engine._NAME_CACHE_MAX + 50):
        minimised = policy.minimise_request(None, (), {}, {f"X-{n}": "v", "a": "1"})
        assert minimised.report.dropped == ("header:*",)  # the caller's header name is never reported
        assert minimised.headers == {"A": "1"}
    assert len(policy._request_header_names) == engine._NAME_CACHE_MAX


case_keys = st.sampled_from(["a", "A", "ab", "aB", "Ab", "AB", "x_1", "X_1", "", "\u00e9", "\u00c9", "k"])
case_values = st.recursive(awkward_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    case_keys | st.integers(0, 2), inner, max_size=5), max_leaves=14)


@settings(max_examples=400, deadline=None)
@given(st.lists(case_values.filter(lambda value: isinstance(value, dict | list)), max_size=3))
def test_known_keys_dump_equals_canonical_dumps_for_mixed_case_keys(containers: list[Any]) -> None:
    """canonical_dumps_with_known_keys (keys of the given containers only, upper case folded only when
    present) gives canonical_dumps' bytes or its refusal."""
    from gateway.strictjson import canonical_dumps_with_known_keys

    body = {"c": containers}
    assert _outcome(lambda: canonical_dumps_with_known_keys(body, containers)) == _outcome(
        lambda: canonical_dumps(body))


def test_known_keys_dump_remembers_a_bounded_number_of_plain_key_sequences() -> None:
    """The canonical key check remembers the key sequences it accepted (at most _PLAIN_KEYS_MAX, each at
    most _PLAIN_KEYS_MAX_CHARS characters), never one it refused; remembered or not, the outcome is
    canonical_dumps' bytes or its refusal."""
    from gateway import strictjson

    remembered = strictjson._plain_key_sequences
    remembered.clear()
    long_keys = {"k" * 300: 1, "j" * 300: 2}
    clashing = [{"a": 1, "A": 2}, {"\u00e9": 1}, {"e\u0301": 1, "\u00e9": 2}, {"a": {"b": 1, "B": 2}}]
    for _ in range(2):  # the second round finds the accepted sequences remembered
        for container in [long_keys, *clashing, *({f"x{n}": n, "y": [n]} for n in range(300))]:
            body = {"c": container}
            known = functools.partial(strictjson.canonical_dumps_with_known_keys, body, [container])
            assert _outcome(known) == _outcome(functools.partial(canonical_dumps, body))
    assert len(remembered) == strictjson._PLAIN_KEYS_MAX
    assert ("x0", "y") in remembered
    assert ("a",) in remembered  # the outer object of {"a": {"b": 1, "B": 2}}: its values are still checked
    for refused in (tuple(long_keys), ("a", "A"), ("b", "B")):
        assert refused not in remembered
    remembered.clear()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text("[]{}\"a:,", max_size=80).map(str.encode))
def test_opening_bracket_count_equals_two_counts(data: bytes) -> None:
    """parse_json's depth pre-check counts both opening brackets by the length two deletions take off."""
    from gateway.strictjson import opening_brackets

    assert opening_brackets(data) == data.count(b"[") + data.count(b"{")


def test_generated_walk_reports_undeclared_keys_under_a_marker_and_remembers_no_caller_name() -> None:
    """An undeclared key is reported under its object's marker (`a.*`, `*`), never by its name, unless the
    profile writes that name (a schema property); the generated walk's path tables hold profile names only,
    so nothing the caller chose is remembered across requests (review-privacy F3)."""
    schema = {"type": "object", "properties": {"a": {"type": "object"}, "listed": {"type": "string"}}}
    policy = CompiledRoutePolicy(RoutePolicySpec(request_body={"a.b": parse_action("keep")}, schema=schema),
                                 partner_id="p", pseudonymiser=PSEUDONYMISER)
    assert policy.generated.walk is not None
    assert policy.generated.fused is not None
    names = [f"+88691234{n:04d}" for n in range(300)] + ["kim@example.com", "header:authorization"]
    for round_ in range(2):
        body = {"a": {"b": 1, **dict.fromkeys(names, round_)}, **dict.fromkeys(names, round_), "listed": "x"}
        for minimised in (policy.minimise_request(body, (), {}, {}),
                          policy.minimise_validated(policy.validate_request(body), (), {}, {})):
            assert minimised.body == {"a": {"b": 1}}
            assert minimised.report.dropped == ("a.*", "*", "listed")
    profile_paths = {"a", "b", "listed", "a.a", "a.b", "a.listed"}
    for walk in (policy.generated.walk, policy.generated.fused):
        tables = [value.__self__ for name, value in inspect.getclosurevars(walk).nonlocals.items()
                  if name.startswith("unknown_get")]
        assert tables
        assert all(set(table.values()) <= profile_paths for table in tables)
    for source in policy.generated.sources:
        assert all(text not in source for text in ("+886", "kim@"))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40) | st.text("ab .:-0123456789\u0663\u0967\uff11", max_size=30))
def test_mac_prefilter_equals_the_plain_counts(text: str) -> None:
    """may_hold_mac equals the plain separator counts."""
    assert freetext.may_hold_mac(text) == (text.count(":") + text.count("-") >= 5 or text.count(".") >= 2)


def _date_by_pattern(value: str, precision: str) -> str:
    from gateway.policy.actions import _DATE, NotGeneralisable, _days_in_month

    match = _DATE.match(value)
    if match is None or (match.group(3) is not None and not 1 <= int(match.group(3)) <= _days_in_month(
            int(match.group(1)), int(match.group(2)))):
        raise NotGeneralisable("a date must be ISO 8601 (YYYY-MM-DD, or a date-time)")
    return match.group(1) if precision == "year" else f"{match.group(1)}-{match.group(2)}"


date_like = st.text("0123456789-T:Z \u0663", min_size=8, max_size=12) | st.dates().map(str) | st.sampled_from(
    ["1988-11-02", "1988-00-02", "1988-13-02", "1988-1a-02", "19881102xx", "1988-11-0\u0663", "1988-11-02T10:00Z",
     "1988-11-02\n", "1988-1-022", "+988-11-02", "1988-11-+2", "1988-0-102", "1988-11-28", "1988-11-29",
     "1988-02-29", "1988-02-30", "1988-11-31", "1988-11-00", "1988-11-99", "1900-02-29", "2000-02-29"])


@settings(max_examples=500, deadline=None)
@given(date_like, st.sampled_from(["year", "month"]))
def test_plain_date_fast_path_equals_the_pattern(value: str, precision: str) -> None:
    from gateway.policy.actions import NotGeneralisable, generalise_date

    def outcome(call: Callable[[], str]) -> Any:
        try:
            return call()
        except NotGeneralisable as exc:
            return ("refused", str(exc))

    assert outcome(lambda: generalise_date(value, precision)) == outcome(lambda: _date_by_pattern(value, precision))


@settings(max_examples=500, deadline=None)
@given(date_like | st.integers() | st.none(), st.sampled_from(["year", "month"]))
def test_bound_date_generaliser_equals_generalise_date(value: Any, precision: str) -> None:
    """The generated walk's date function (fast path written into the one call) answers as generalise_date."""
    from gateway.policy.actions import NotGeneralisable, date_generaliser, generalise_date

    def outcome(call: Callable[[], str]) -> Any:
        try:
            return call()
        except NotGeneralisable as exc:
            return ("refused", str(exc))

    assert outcome(lambda: date_generaliser(precision)(value)) == outcome(lambda: generalise_date(value, precision))


_FINISH_SPEC_BODY = {"a": parse_action("keep"), "n[].x": parse_action("keep"), "n[].y": parse_action("drop"),
                     "n[].w": parse_action({"pseudonymise": {"type": "phone"}}),
                     "p": parse_action({"pseudonymise": {"type": "phone"}}),
                     "q": parse_action({"keep": {"free_text": True}}),
                     "Ü": parse_action("keep")}
_FINISH_HEADERS = ({}, {"Idempotency-Key": parse_action("keep")},
                   {"Idempotency-Key": parse_action("keep"), "X-Ref": parse_action("keep")})
finish_bodies = st.fixed_dictionaries({}, optional={
    "a": st.none() | st.integers() | st.dictionaries(st.sampled_from(["k", "K", "m"]), st.integers(), max_size=2),
    "n": st.lists(st.fixed_dictionaries({}, optional={"x": st.none() | st.text(max_size=3) | st.lists(st.integers(),
                                                                                                          max_size=2),
                                                      "y": st.integers(), "z": st.integers(),
                                                      "w": st.none() | st.just("+886912345678")}), max_size=3),
    "p": st.none() | st.sampled_from(["+886912345678", "+14155550123"]),
    "q": st.sampled_from(["call +886912345678", "plain note"]), "Ü": st.integers(), "extra": st.integers()})
finish_headers = st.dictionaries(st.sampled_from(["Idempotency-Key", "idempotency-key", "X-Ref", "x-ref",
                                                  "Authorization", "User-Agent"]) | st.text(max_size=4),
                                 st.text(max_size=4), max_size=5)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(finish_bodies, finish_headers, st.sampled_from(range(len(_FINISH_HEADERS))), st.booleans())
def test_plain_finish_equals_the_general_finish(body: dict[str, Any], headers: dict[str, str], which: int,
                                                 ascii_only: bool) -> None:
    """minimise_validated's inline finish (a generated walk's outcome, no query or path parameters, only
    plain-keep headers) gives exactly what the general `_finish` gives: body, headers, report (order
    included), the caller-supplied containers and the canonical bytes."""
    declared = {k: v for k, v in _FINISH_SPEC_BODY.items() if not (ascii_only and not k.isascii())}
    spec = RoutePolicySpec(request_body=declared, request_headers=_FINISH_HEADERS[which], free_text="redact")
    fast = CompiledRoutePolicy(spec, partner_id="p", pseudonymiser=PSEUDONYMISER)
    general = CompiledRoutePolicy(spec, partner_id="p", pseudonymiser=PSEUDONYMISER)
    general._kept_header_paths = None  # the general finish only
    assert fast._kept_header_paths is not None

    def outcome(policy: CompiledRoutePolicy) -> Any:
        validated = policy.validate_request(body)
        assert validated.walked  # the generated walk served this body
        got = policy.minimise_validated(validated, (), {}, headers)
        unchecked = None if got.unchecked_containers is None else list(got.unchecked_containers)
        try:
            canonical: Any = got.canonical_body()
        except GatewayError as exc:
            canonical = (type(exc).__name__, [(v.path, v.reason) for v in exc.violations])
        return (got.body, got.query, got.path_params, got.headers, got.report, unchecked, canonical)

    for _ in range(2):  # the second time with the header names remembered
        assert outcome(fast) == outcome(general)
