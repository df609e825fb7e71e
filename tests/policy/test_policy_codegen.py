"""The generated per-route functions (gateway/policy/codegen.py) against the reference engine.

For the bench route and every request route of the shipped profiles, over bodies shaped like the route
(its declared paths and schema properties) with adversarial substitutions (wrong types, missing and
extra fields, mixed arrays, Unicode keys, invalid identifiers): `validate`, `minimise_request` and the
fused `validate_request` + `minimise_validated` give the same canonical bytes, report, body and
refusal (type and violation paths) as the same policy with the generated functions switched off.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.policy import CompiledRoutePolicy, RoutePolicySpec, parse_field_path
from gateway.policy.codegen import GeneratedRoute
from gateway.profiles import example_pseudonymiser, load_profiles
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser

ROOT_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT_DIR / "bench"))
import policy_bench  # noqa: E402

SHIPPED = load_profiles(ROOT_DIR / "partner_profiles", pseudonymiser=example_pseudonymiser(), environ={})
ROUTES = [(f"{pid}/{route.id}", route) for pid, profile in sorted(SHIPPED.profiles.items()) for route in profile.routes]


def reference_of(policy: CompiledRoutePolicy, binder: Any) -> CompiledRoutePolicy:
    """The same route with the generated functions switched off: the reference engine alone."""
    reference = CompiledRoutePolicy(policy.spec, partner_id=policy.partner_id, pseudonymiser=binder)
    reference._generated = GeneratedRoute(None, None, None, ())  # type: ignore[misc]
    return reference


def outcome(call: Callable[[], Any]) -> Any:
    try:
        minimised = call()
    except GatewayError as exc:
        return ("refused", type(exc).__name__, sorted((v.path, v.reason) for v in exc.violations))
    if minimised is None:
        return ("ok",)
    try:
        canonical: Any = minimised.canonical_body()
    except GatewayError as exc:
        canonical = ("canonical refused", type(exc).__name__, [v.path for v in exc.violations])
    unchecked = None if minimised.unchecked_containers is None else list(minimised.unchecked_containers)
    return ("minimised", canonical, minimised.body, minimised.report, minimised.query, minimised.headers,
            unchecked)


def assert_same(policy: CompiledRoutePolicy, reference: CompiledRoutePolicy, body: Any,
                query: tuple[tuple[str, str], ...] = (), path: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None) -> None:
    path = path or {}
    headers = headers or {}
    assert outcome(lambda: policy.validate(body)) == outcome(lambda: reference.validate(body))
    expected = outcome(lambda: reference.minimise_request(body, query, path, headers))
    assert outcome(lambda: policy.minimise_request(body, query, path, headers)) == expected
    # The fused pair: the schema refusal from validate_request, the policy's from minimise_validated.
    try:
        reference.validate(body)
    except GatewayError:
        with pytest.raises(GatewayError) as fused_refusal:
            policy.validate_request(body)
        assert outcome(lambda: policy.validate(body)) == outcome(lambda: _raise(fused_refusal.value))
        return
    validated = policy.validate_request(body)
    assert outcome(lambda: policy.minimise_validated(validated, query, path, headers)) == expected
    # A validated body minimised twice (a retry) gives the same answer again.
    assert outcome(lambda: policy.minimise_validated(validated, query, path, headers)) == expected
    # Another route's policy does not take this one's walk.
    assert outcome(lambda: OTHER_POLICY.minimise_validated(validated, query, path, headers)) == outcome(
        lambda: OTHER_POLICY.minimise_request(body, query, path, headers))


OTHER_POLICY = CompiledRoutePolicy(RoutePolicySpec(unknown_fields="drop"), partner_id="other",
                                   pseudonymiser=Pseudonymiser(PartnerKeyring(bytes(32))))


def _raise(exc: BaseException) -> None:
    raise exc


# --- bodies shaped like a route, with adversarial substitutions ---

unicode_keys = st.sampled_from(["x", "Name", "na\u00efve", "e\u0301", "\u00e9", "\u65e5\u672c", "", "a.b", "[]",
                                "STRASSE", "stra\u00dfe"])
identifier_like = st.sampled_from(["+886912345678", "490154203237518", "490154203237519", "001a.2b3c.4d5e",
                                   "mei.hua.lin@example.com", "1988-11-02", "2024-05", "not a date", "", "0",
                                   "Call +886912345678 or 490154203237518 please", "89886920042507665810",
                                   "310150123456789"])
scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False)
           | st.text(max_size=8) | identifier_like)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(unicode_keys, inner, max_size=3), max_leaves=8)


def _shape(paths: list[tuple[str | None, ...]], schema: Any) -> Any:
    """A tree of names from the declared paths merged with the schema's properties."""
    tree: dict[Any, Any] = {}
    for segments in paths:
        node = tree
        for segment in segments:
            node = node.setdefault(segment, {})
    _merge_schema(tree, schema)
    return tree


def _merge_schema(tree: dict[Any, Any], schema: Any) -> None:
    if not isinstance(schema, dict):
        return
    for name, sub in (schema.get("properties") or {}).items():
        _merge_schema(tree.setdefault(name, {}), sub)
    if isinstance(schema.get("items"), dict):
        _merge_schema(tree.setdefault(None, {}), schema["items"])


def _values_for(tree: dict[Any, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    if not tree or depth > 6:
        return scalars | json_values
    if None in tree:
        element = _values_for(tree[None], depth + 1)
        return st.lists(element | scalars, max_size=4) | scalars
    fields = {name: _values_for(sub, depth + 1) for name, sub in tree.items()}
    shaped = st.fixed_dictionaries({}, optional=fields)
    with_extra = st.tuples(shaped, st.dictionaries(unicode_keys, json_values, max_size=2)).map(
        lambda pair: {**pair[1], **pair[0]})
    return st.one_of(shaped, shaped, with_extra, json_values)


def bodies_for(policy: CompiledRoutePolicy) -> st.SearchStrategy[Any]:
    paths = [parse_field_path(declared) for declared in policy.spec.request_body]
    shaped = _values_for(_shape(paths, policy.spec.schema))
    if policy.spec.schema is None:
        return shaped
    # Valid instances of the route's schema too, so the fused check says yes often enough to matter.
    return shaped | _valid_instances(policy.spec.schema)


def _valid_instances(schema: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values the schema accepts, most of the time (a small generator for the keywords routes use)."""
    if not isinstance(schema, dict) or depth > 6:
        return json_values
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength", 24)
        if "pattern" in schema:
            text = st.from_regex(schema["pattern"])
        elif schema.get("format") == "date":
            text = st.dates().map(lambda d: d.isoformat())
        elif schema.get("format") == "date-time":
            text = st.datetimes().map(lambda d: d.isoformat(timespec="seconds") + "Z")
        else:
            text = identifier_like | st.text(min_size=low, max_size=min(high, low + 12))
        return text.filter(lambda t: low <= len(t) <= high)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -(2**40)))
        high = schema.get("maximum", schema.get("exclusiveMaximum", 2**40))
        whole = st.integers(int(low) - 1, int(high) + 1)
        return whole if kind == "integer" else whole | st.floats(low, high)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(_valid_instances(schema.get("items"), depth + 1), min_size=low,
                        max_size=max(low, min(schema.get("maxItems", 4), 4)))
    if kind == "object":
        properties = schema.get("properties") or {}
        required = [name for name in schema.get("required") or () if name in properties]
        strategies = {name: _valid_instances(sub, depth + 1) for name, sub in properties.items()}
        shaped = st.fixed_dictionaries({name: strategies[name] for name in required},
                                       optional={n: s for n, s in strategies.items() if n not in required})
        if schema.get("additionalProperties", True) is not True:
            return shaped
        return shaped | st.tuples(shaped, st.dictionaries(unicode_keys, json_values, max_size=2)).map(
            lambda pair: {**pair[1], **pair[0]})
    return json_values


def shipped_request_policies() -> Iterator[tuple[str, CompiledRoutePolicy]]:
    for name, route in ROUTES:
        yield name, route.policy


EXAMPLE_BINDER = example_pseudonymiser()
BENCH_BINDER = Pseudonymiser(PartnerKeyring(bytes(32)))
BENCH = {mode: policy_bench.build_policy(mode) for mode in ("hmac", "fpe")}


def test_generated_functions_serve_the_bench_route_and_the_shipped_routes() -> None:
    # Guards the property tests below against passing vacuously (nothing generated, everything reference).
    for policy in BENCH.values():
        generated = policy.generated
        assert generated.check is not None
        assert generated.walk is not None
        assert generated.fused is not None
        body = policy_bench.ORDER
        assert generated.walk(body) is not None
        assert generated.fused(body) is not None
        assert generated.check(body)
    served = [name for name, policy in shipped_request_policies() if policy.generated.walk is not None]
    assert len(served) == len(ROUTES)


def test_shipped_examples_take_the_generated_path_and_agree() -> None:
    used = 0
    for _, route in ROUTES:
        reference = reference_of(route.policy, EXAMPLE_BINDER)
        for example in route.examples:
            request = example.request
            walk = route.policy.generated.walk
            if request.body is not None and walk is not None and walk(request.body) is not None:
                used += 1
            assert_same(route.policy, reference, request.body, request.query, request.path, request.headers)
    assert used > 0


@pytest.mark.parametrize("mode", ["hmac", "fpe"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bench_route_generated_equals_reference(mode: str, data: st.DataObject) -> None:
    policy = BENCH[mode]
    reference = reference_of(policy, BENCH_BINDER)
    body = data.draw(bodies_for(policy) | st.just(policy_bench.ORDER))
    assert_same(policy, reference, body, headers={"Idempotency-Key": "k", "Authorization": "x"})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_shipped_routes_generated_equal_reference(data: st.DataObject) -> None:
    _name, route = data.draw(st.sampled_from(ROUTES), label="route")
    reference = reference_of(route.policy, EXAMPLE_BINDER)
    body = data.draw(bodies_for(route.policy), label="body")
    assert_same(route.policy, reference, body)


@pytest.mark.parametrize("unknown_fields", ["drop", "reject"])
@pytest.mark.parametrize("free_text", ["redact", "reject"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_action_and_mode_generated_equals_reference(unknown_fields: str, free_text: str,
                                                          data: st.DataObject) -> None:
    spec = RoutePolicySpec(
        request_body={**BENCH["hmac"].spec.request_body,
                      **{path: action for path, action in _extra_actions().items()}},
        unknown_fields=unknown_fields, free_text=free_text,  # type: ignore[arg-type]
        schema={"type": "object", "additionalProperties": {"not": {"type": "boolean"}},
                "properties": {"tags": {"type": "array", "items": {"type": "string", "minLength": 1}},
                               "age": {"type": "integer", "minimum": 0, "exclusiveMaximum": 200},
                               "score": {"type": "number", "maximum": 10.5},
                               "kind": {"enum": ["a", "b", None]},
                               "flag": {"type": "boolean"}, "nothing": {"type": "null"}}})
    policy = CompiledRoutePolicy(spec, partner_id="p", pseudonymiser=BENCH_BINDER)
    assert policy.generated.fused is not None
    reference = reference_of(policy, BENCH_BINDER)
    assert_same(policy, reference, data.draw(bodies_for(policy)))


def _extra_actions() -> dict[str, Any]:
    from gateway.policy import parse_action

    return {
        "tags[]": parse_action("keep"),
        "age": parse_action({"generalise": {"age_band": 10}}),
        "where": parse_action({"generalise": {"location": 2}}),
        "card": parse_action({"mask": {"keep_last": 4}}),
        "kind": parse_action("drop"),
        "grid[][]": parse_action({"pseudonymise": {"type": "email", "mode": "hmac"}}),
        "notes[].text": parse_action({"keep": {"free_text": True}}),
        "\u65e5\u672c.x": parse_action("keep"),
    }


# --- strictjson.parse_json: the compact-echo proof against the exact stdlib check ---

json_keys = st.sampled_from(["a", "b", "a:b", "\u00e9", "k"])
big_ints = st.sampled_from([2**53, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**25, -(10**21)])
leaf_texts = st.one_of(st.integers(-(2**70), 2**70), big_ints, st.floats(allow_nan=False, allow_infinity=False),
                       st.text(max_size=5), st.booleans(), st.none()).map(
    lambda value: orjson_dumps_lenient(value))
compact_texts = st.recursive(
    leaf_texts,
    lambda inner: st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]")
    | st.lists(st.tuples(json_keys, inner), max_size=3).map(
        lambda pairs: "{" + ",".join(f"{orjson_dumps_lenient(k)}:{v}" for k, v in pairs) + "}"),
    max_leaves=10)


def orjson_dumps_lenient(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@settings(max_examples=500, deadline=None)
@given(compact_texts)
def test_parse_json_compact_proof_agrees_with_the_exact_check(text: str) -> None:
    """Texts with duplicate keys and integers past 53/64 bits, in the compact form whose echo may equal
    the input: parse_json refuses exactly when the stdlib check with strict hooks refuses."""
    from gateway.errors import MalformedRequest
    from gateway.strictjson import _slow_check, parse_json

    data = text.encode()
    try:
        _slow_check(data)
        exact_ok = True
    except MalformedRequest:
        exact_ok = False
    try:
        parse_json(data, max_depth=1000)
        fast_ok = True
    except MalformedRequest:
        fast_ok = False
    assert fast_ok == exact_ok


# --- arrays of like elements (the generated loop serves an element by the shape of an earlier one) ---

def _mostly(valid: list[Any], invalid: list[Any]) -> st.SearchStrategy[Any]:
    """A valid value about nine times in ten: one invalid value in an element makes the walk give up."""
    return st.sampled_from([*valid * (9 * len(invalid)), *invalid])


item_values = {"sku": _mostly(["SKU-1", "", "x"], [0, None]),
               "quantity": _mostly([1, 2, 2.0, 2**53], [0, -1, 1.5, True, "1"]),
               "unit_price": _mostly([12.5, 3, 0], [False, "9.5", None]),
               "weight_g": _mostly([120, 0, 1.0], [2.5, False, "1", None, [1]]),
               "title": json_values}
like_items = st.lists(st.permutations(["sku", "quantity", "unit_price", "weight_g", "title"]).flatmap(
    lambda order: st.fixed_dictionaries({name: item_values[name] for name in order})), min_size=2, max_size=5)


def _vary(items: list[dict[str, Any]], data: st.DataObject) -> list[Any]:
    """Like elements with some changed: a key swapped for another name, a key removed or added, a non-object."""
    out: list[Any] = []
    for element in items:
        change = data.draw(st.sampled_from(["same", "same", "same", "swap", "remove", "add", "scalar"]))
        element = dict(element)
        if change == "swap":
            element.pop(data.draw(st.sampled_from(sorted(element))))
            element[data.draw(st.sampled_from(["colour", "Title", "sku", "title"]))] = 1
        elif change == "remove":
            element.pop(data.draw(st.sampled_from(sorted(element))))
        elif change == "add":
            element["colour"] = 3
        elif change == "scalar":
            out.append(data.draw(scalars))
            continue
        out.append(element)
    return out


@pytest.mark.parametrize("mode", ["hmac"])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_like_array_elements_generated_equal_reference(mode: str, data: st.DataObject) -> None:
    """The bench route's items[] with elements sharing (or nearly sharing) one key set, valid and invalid
    values in later elements: the generated walk agrees with the reference engine (body, report in order,
    canonical bytes, refusals)."""
    policy = BENCH[mode]
    reference = reference_of(policy, BENCH_BINDER)
    items = _vary(data.draw(like_items), data)
    body = {**policy_bench.ORDER, "items": items}
    assert_same(policy, reference, body, headers={"Idempotency-Key": "k"})


def test_like_array_elements_take_the_shape_path() -> None:
    """Guards the property test above: the order's 8 items are served by shape after the first."""
    fused = BENCH["hmac"].generated.fused
    assert fused is not None
    source = BENCH["hmac"].generated.sources[-1]
    assert "len(e" in source
    assert "getter" in source
    walked = fused(policy_bench.ORDER)
    assert walked is not None
    assert walked[0]["items"] == [{"sku": item["sku"], "quantity": item["quantity"], "weight_g": item["weight_g"]}
                                  for item in policy_bench.ORDER["items"]]


def test_like_array_element_with_another_undeclared_name_is_not_served_by_shape() -> None:
    """An element as long as the shape's, with every declared name, but an undeclared name other than the
    shape's: served by the general loop. Pinned with a profile name (`name`, reported as `items[].name`),
    the one case where the records differ; with the shape's other name unchecked, the walk would drop that
    key silently. Also with no undeclared name in the shape (every name declared)."""
    policy = BENCH["hmac"]
    reference = reference_of(policy, BENCH_BINDER)
    first = {"sku": "a", "quantity": 1, "unit_price": 2.5, "weight_g": 3, "title": "t"}
    second = {"sku": "b", "quantity": 2, "unit_price": 1, "weight_g": 4, "name": "n"}
    plain = {"sku": "c", "quantity": 3, "unit_price": 1, "weight_g": 5}
    for items in ([first, second, first], [second, first, second], [plain, plain, first, second],
                  [plain, {**plain, "title": "t"}, plain]):
        body = {**policy_bench.ORDER, "items": items}
        assert_same(policy, reference, body, headers={"Idempotency-Key": "k"})
        dropped = policy.minimise_validated(policy.validate_request(body), (), {}, {}).report.dropped
        assert ("items[].name" in dropped) == (second in items)


def test_report_skips_the_kept_transformed_pass_only_where_no_path_is_recorded_both_ways() -> None:
    """`minimise_validated`'s plain finish takes transformed paths out of the kept ones only when the
    fused walk can record one path both ways (a transform or free text under an array) or a body path is
    spelt like a header's report path; a free-text field outside arrays is recorded kept or transformed,
    not both. Reports agree with the reference engine either way."""
    from gateway.policy import parse_action

    def route(body_policy: dict[str, str | dict[str, Any]]) -> CompiledRoutePolicy:
        return CompiledRoutePolicy(
            RoutePolicySpec(request_body={path: parse_action(action) for path, action in body_policy.items()},
                            request_headers={"X-Id": parse_action("keep")}, free_text="redact"),
            partner_id="p", pseudonymiser=BENCH_BINDER)

    free_text = {"keep": {"free_text": True}}
    imei = {"pseudonymise": {"type": "imei", "mode": "hmac"}}
    mail = "write to mei.hua.lin@example.com"
    cases: list[tuple[CompiledRoutePolicy, bool, list[Any]]] = [
        (BENCH["hmac"], False, []),
        (route({"note": free_text, "imei": imei}), False,
         [{"note": mail, "imei": None}, {"note": "plain", "imei": "490154203237518"}]),
        (route({"items[].imei": imei}), True, [{"items": [{"imei": None}, {"imei": "490154203237518"}]}]),
        (route({"notes[].text": free_text}), True, [{"notes": [{"text": "plain"}, {"text": mail}]}]),
        (route({"header:X-Id": free_text}), True, [{"header:X-Id": mail}]),
    ]
    for policy, pops, bodies in cases:
        assert policy.generated.fused is not None
        assert policy._finish_pops is pops
        assert policy.generated.fused_overlaps is (pops and "header:X-Id" not in policy.spec.request_body)
        for body in bodies:
            assert_same(policy, reference_of(policy, BENCH_BINDER), body, headers={"X-Id": "1"})
            report = policy.minimise_validated(policy.validate_request(body), (), {}, {"X-Id": "1"}).report
            assert not set(report.kept) & set(report.transformed)
    note = route({"note": free_text}).minimise_request({"note": mail}, (), {}, {}).report
    assert (note.kept, note.transformed) == ((), ("note",))


def test_pseudonym_counts_set_to_one_only_for_a_single_leaf_outside_arrays() -> None:
    """The generated walk sets a count to 1 (instead of incrementing it) only for an identifier type that
    one leaf of the route pseudonymises, outside any array; counts and their order equal the reference
    engine's when one type has several leaves or a leaf under an array."""
    from gateway.policy import parse_action

    phone = {"pseudonymise": {"type": "phone", "mode": "hmac"}}
    imei = {"pseudonymise": {"type": "imei", "mode": "hmac"}}
    mail = {"pseudonymise": {"type": "email", "mode": "hmac"}}
    spec = RoutePolicySpec(request_body={path: parse_action(action) for path, action in {
        "a.phone": phone, "b.phone": phone, "imei": imei, "mail": mail, "list[].mail": mail,
        "list[].phone": phone}.items()})
    policy = CompiledRoutePolicy(spec, partner_id="p", pseudonymiser=BENCH_BINDER)
    source = policy.generated.sources[-1]
    assert "counts['imei'] = 1" in source
    assert "counts['phone'] = 1" not in source
    assert "counts['email'] = 1" not in source
    reference = reference_of(policy, BENCH_BINDER)
    number, device, address = "+886912345678", "490154203237518", "mei.hua.lin@example.com"
    bodies: list[Any] = [
        {"imei": device, "a": {"phone": number}, "b": {"phone": number}, "mail": address},
        {"list": [{"mail": address, "phone": number}, {"phone": number}], "mail": address, "b": {"phone": number},
         "imei": device},
        {"b": {"phone": None}, "imei": None, "list": [{"mail": None}]},
    ]
    for body in bodies:
        assert_same(policy, reference, body)
        got = policy.minimise_validated(policy.validate_request(body), (), {}, {}).report.pseudonymised
        expected = reference.minimise_request(body, (), {}, {}).report.pseudonymised
        assert list(got.items()) == list(expected.items())


def test_non_finite_floats_leave_the_generated_path_or_are_found_in_caller_containers() -> None:
    """A body the generated walk served skips canonical_body's search for `null` (NaN and infinity come out
    of orjson as null): the walk hands a non-finite float in any value it outputs back to the reference
    engine, and the caller-supplied containers are tested at every depth. Outcomes and canonical bytes (or
    refusals) equal the reference engine's; the search is skipped only on the generated path."""
    from gateway.policy import parse_action

    spec = RoutePolicySpec(
        request_body={path: parse_action(action) for path, action in {
            "n": "keep", "u": "keep", "box": "keep", "note": {"keep": {"free_text": True}},
            "rows[].price": "keep", "rows[].sku": "keep", "where": {"generalise": {"location": 2}}}.items()},
        schema={"type": "object", "properties": {
            "n": {"type": "number"}, "rows": {"type": "array", "items": {"type": "object", "properties": {
                "price": {"type": "number"}, "sku": {"type": "string"}}}}}},
        free_text="redact")
    policy = CompiledRoutePolicy(spec, partner_id="p", pseudonymiser=BENCH_BINDER)
    assert policy.generated.fused is not None
    reference = reference_of(policy, BENCH_BINDER)
    nan, inf = float("nan"), float("inf")
    rows = [{"price": 1.5, "sku": "a"}, {"price": 2.5, "sku": "b"}, {"price": 3.0, "sku": "c"}]
    fine: dict[str, Any] = {"n": 1.5, "u": 2.5, "box": {"a": [1.5, {"b": 2.0}], "c": 0.5}, "note": "at the door",
                            "rows": rows}
    bad_values = [nan, inf, -inf]
    bodies: list[Any] = [fine]
    for bad in bad_values:
        bodies += [{**fine, "n": bad}, {**fine, "u": bad}, {**fine, "note": bad}, {**fine, "box": {"c": bad}},
                   {**fine, "box": {"a": [1.5, {"b": bad}]}}, {**fine, "box": [[bad]]},
                   {**fine, "rows": [{"price": 1.5, "sku": "a"}, {"price": bad, "sku": "b"}]},
                   {**fine, "rows": [{"price": bad, "sku": "a"}]}, {**fine, "where": bad}]
    for body in bodies:
        assert_same(policy, reference, body)
    served = policy.minimise_validated(policy.validate_request(fine), (), {}, {})
    assert served.finite_outside
    assert not reference.minimise_request(fine, (), {}, {}).finite_outside
    for body in bodies[1:]:
        # Whichever path served it, the NaN or infinity never comes out as `null` bytes.
        try:
            canonical = policy.minimise_validated(policy.validate_request(body), (), {}, {}).canonical_body()
        except GatewayError:
            continue
        assert b"null" not in canonical
