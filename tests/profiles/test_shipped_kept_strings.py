"""Kept values next to device identifiers and in promotion aggregates are no side door (review-transforms
F2, F4).

On the routes of the device-identifier and promotion categories, every kept request value (body, query,
path parameter) is either free text scanned for identifiers (the route rejects or redacts one) or
constrained by its schema so that no raw IMEI, IMSI, ICCID, MAC, phone or e-mail fits. The walk over the
shipped profiles enforces that rule for every future field; the leak tests run the review's values (and
every probe at every kept leaf) through the compiled policies and show none reaches the partner raw; the
promotion tests show the aggregate bounds (cells of 0 or at least 10, whole months, region codes).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from gateway.errors import GatewayError
from gateway.policy import parse_field_path
from gateway.policy.actions import Keep, Pseudonymise
from gateway.profiles import ProfileSet, Route, example_pseudonymiser, load_profiles
from gateway.strictjson import parse_json

PROFILES_DIR = Path(__file__).resolve().parents[2] / "partner_profiles"
# The categories whose partners get device identifiers (as pseudonyms) or aggregates only; and any other
# route that pseudonymises a device identifier (payment-vietcombank gets MAC, IMEI, IMSI and Android ID
# pseudonyms for its risk checks; rv-transforms R1).
GUARDED = ("analytics", "push", "sharing", "maps", "browser", "voice_investigation", "promotion")
DEVICE_ID_TYPES = ("imei", "imsi", "iccid", "mac", "android_id", "advertising_id")

IMEI, IMSI, ICCID = "490154203237518", "450051234567890", "8984040000123456781"
MAC, MAC_BARE, PHONE, EMAIL = "00:1a:2b:3c:4d:5e", "001a2b3c4d5e", "+84912345678", "kim@example.com"
IDENTIFIERS = (IMEI, IMSI, ICCID, MAC, MAC_BARE, PHONE, EMAIL)
# How an identifier turns up in a field meant for something else: alone, after a model name, glued to
# an event-name or id prefix, in a path, upper-cased. (Not glued to a hex digit: the scanner reads
# `a001a2b3c4d5e` as one longer hex run, not a MAC, by design; docs/profile-format.md.)
WRAPS = ("{}", "SM-A525F {}", "x_{}", "z{}", "/track/{}", "CMP-{}", "OFR-{}", "{}.1", "vi-{}")
INTEGER_PROBES = (int(IMEI), int(IMSI))
# Identifiers as people write them (rv-transforms R2): national phone numbers without `+` or `00`, and
# IMEI, IMSI, phone and MAC split into dotted, dashed, spaced or underscored groups. The scanner does not
# read these as identifiers (docs/profile-format.md), so only a pattern shuts them out: they are tried
# against the schemas of unscanned kept values, not at scanned ones.
SHAPED = ("0912345678", "84912345678", "912345678", "0912.345.678", "091-234-5678", "0912 345 678",
          "84.912.345.678", "490154.203237.518", "452040.123456.789", "49-015420-323751-8", "001a2b-3c4d5e",
          "00-1a-2b-3c-4d-5e", "00_1a_2b_3c_4d_5e", "001a.2b3c.4d5e")
SHAPED_WRAPS = ("{}", "v{}", "1.0-{}", "1.0+{}", "call_{}", "m_{}", "en-{}", "CMP-{}", "TEL-{}", "{}x1",
                "OBX-2024-{}")
SPLIT_IDS = ("TEL-091234-5678", "MAC-001A2B-3C4D5E", "IMEI-490154-203237", "IMSI-452040-123456",
             "09123x45678", "91234x5678", "1.2.3 (0912345678)")


def probes() -> Iterator[str]:
    for identifier in IDENTIFIERS:
        for wrap in WRAPS:
            text = wrap.format(identifier)
            yield text
            yield text.upper()


def shaped_probes() -> Iterator[str]:
    for identifier in SHAPED:
        for wrap in SHAPED_WRAPS:
            text = wrap.format(identifier)
            yield text
            yield text.upper()
    yield from SPLIT_IDS


@pytest.fixture(scope="module")
def shipped() -> ProfileSet:
    return load_profiles(PROFILES_DIR, pseudonymiser=example_pseudonymiser(), environ={})


def guarded_routes(profile_set: ProfileSet) -> list[tuple[str, Route]]:
    return [(profile.id, route) for profile in profile_set.profiles.values() for route in profile.routes
            if profile.category in GUARDED or pseudonymises_a_device_identifier(route)]


def pseudonymises_a_device_identifier(route: Route) -> bool:
    spec = route.policy.spec
    actions = [*spec.request_body.values(), *spec.request_query.values(), *spec.request_path.values(),
               *spec.request_headers.values()]
    return any(isinstance(action, Pseudonymise) and action.id_type in DEVICE_ID_TYPES for action in actions)


def schema_node(schema: Any, path: str) -> Any:
    """The request schema node of a declared body path (None where the schema does not describe it)."""
    node = schema
    for segment in parse_field_path(path):
        if not isinstance(node, dict):
            return None
        node = node.get("items") if segment is None else node.get("properties", {}).get(segment)
    return node


def kept_leaves(route: Route) -> Iterator[tuple[str, str, Keep, Any]]:
    """(location, declared name, action, schema node) of every kept request value (body, query, path
    parameter, header)."""
    spec = route.policy.spec
    for path, action in spec.request_body.items():
        if isinstance(action, Keep):
            yield "body", path, action, schema_node(spec.schema, path)
    for name, action in spec.request_query.items():
        if isinstance(action, Keep):
            yield "query", name, action, None  # query parameters have no schema: free text only
    for name, action in spec.request_path.items():
        if isinstance(action, Keep):
            yield "path", name, action, (spec.path_schema or {}).get(name)
    for name, action in spec.request_headers.items():
        if isinstance(action, Keep):
            yield "header", name, action, None  # headers have no schema: free text only


def admitted_probes(node: Any) -> list[Any]:
    """The identifier probes the schema node lets through (all of them where there is no node)."""
    values: list[Any] = [*probes(), *shaped_probes(), *INTEGER_PROBES]
    if not isinstance(node, dict):
        return values
    validator = Draft202012Validator(node, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [value for value in values if validator.is_valid(value)]


def test_every_kept_value_next_to_identifiers_is_scanned_or_shut_by_its_schema(shipped: ProfileSet) -> None:
    """The rule for profile authors (docs/profile-format.md, "Kept strings next to identifiers"): on a
    guarded route a `keep` without `free_text` must have a schema no identifier fits."""
    unguarded: list[str] = []
    checked = 0
    for profile_id, route in guarded_routes(shipped):
        for location, name, action, node in kept_leaves(route):
            checked += 1
            if action.free_text:
                continue
            admitted = admitted_probes(node)
            if admitted:
                unguarded.append(f"{profile_id}/{route.id} {location}:{name} admits {admitted[0]!r}")
    assert unguarded == []
    assert checked >= 45


def test_the_walk_catches_an_unscanned_unconstrained_keep(shipped: ProfileSet) -> None:
    """The walk fails on the review's findings: the old `device.model: keep` with `{type: string}`, and
    a path parameter without a schema."""
    assert admitted_probes({"type": "string"})
    assert admitted_probes(None)
    assert admitted_probes({"type": "string", "pattern": "^[a-z][a-z0-9_]{0,39}$"})  # digits let an IMEI in
    assert admitted_probes({"type": "integer", "minimum": 0})  # an IMEI as a JSON number
    assert not admitted_probes({"type": "string", "pattern": "^[a-z]{2,3}(-[A-Z]{2})?$"})


def run_policy(route: Route, body: Any, path: dict[str, str] | None = None) -> tuple[str, str]:
    """("refused" | "sent", what the partner would receive: body and path parameters)."""
    policy = route.policy
    try:
        minimised = policy.minimise_validated(policy.validate_request(parse_json(orjson.dumps(body))), (),
                                              path or {}, {})
    except GatewayError:
        return "refused", ""
    return "sent", minimised.canonical_body().decode() + " " + orjson.dumps(dict(minimised.path_params)).decode()


def raw_identifiers_in(text: str) -> list[str]:
    folded = text.lower()
    return [identifier for identifier in IDENTIFIERS if identifier.lower() in folded]


def route_of(profile_set: ProfileSet, profile_id: str, route_id: str) -> Route:
    return next(route for route in profile_set.profiles[profile_id].routes if route.id == route_id)


USER = {"id": "u-1", "country": "VN"}
# The review's reproducer (f_profiles_plain_keep_leaks.py): each of these used to reach the partner with
# the raw identifier in it.
REVIEW_CASES = [
    ("analytics-infinity-valley", "ingest-usage", {
        "user": USER, "device": {"model": f"SM-A525F {IMEI}", "operator": IMSI, "os_version": MAC, "imei": IMEI},
        "app_version": PHONE, "events": [{"name": f"call {PHONE}"}]}, None),
    ("push-infinity-valley", "register-device", {
        "user": USER, "device": {"android_id": "9774d56d682e549c", "model": IMEI, "operator": IMSI}}, None),
    ("sharing-infinity-valley", "create-share", {
        "user": USER, "device": {"model": MAC}, "location": {"lat": 10.77, "lon": 106.7},
        "share": {"kind": "invite", "item_id": PHONE}}, None),
    ("maps-google", "nearby-lockers", {
        "user": USER, "device": {"model": IMEI, "os_version": MAC}, "location": {"lat": 10.7712, "lon": 106.7034}},
     None),
    ("browser-google", "browsing-context", {"user": USER, "device": {"model": IMEI, "os_version": IMSI}}, None),
    ("voice-investigation-vn", "recognise-voice-query", {
        "user": USER, "device": {"model": IMEI}, "voice": {"audio_ref": "vr_" + "a" * 16, "language": PHONE}},
     None),
    ("promotion-entrustors", "campaign-report", {
        "period": {"from": "2024-01-01", "to": "2024-01-01"}, "viewers": 1, "buyers": 1, "gender": {"female": 1},
        "coverage": [{"region": f"{EMAIL} {PHONE}", "viewers": 1}]}, {"campaign_id": IMEI}),
    ("promotion-qstore-offers", "offer-results", {
        "sent": 1, "opened": 1, "redeemed": 1, "by_country": [{"country": "KR", "redeemed": 1}]},
     {"offer_id": PHONE}),
]


@pytest.mark.parametrize(("profile_id", "route_id", "body", "path"), REVIEW_CASES,
                         ids=[case[0] for case in REVIEW_CASES])
def test_the_reviews_leaking_requests_are_refused(shipped: ProfileSet, profile_id: str, route_id: str,
                                                  body: Any, path: dict[str, str] | None) -> None:
    outcome, sent = run_policy(route_of(shipped, profile_id, route_id), body, path)
    assert (outcome, raw_identifiers_in(sent)) == ("refused", [])


def accepted_example(route: Route) -> tuple[Any, dict[str, str]]:
    example = next(example for example in route.examples if example.expect_error is None)
    return example.request.body, dict(example.request.path)


def set_leaf(body: Any, path: str, value: Any) -> Any:
    """A copy of `body` with the declared path set to `value` (in every array element; objects made)."""
    out = copy.deepcopy(body)

    def put(node: Any, segments: tuple[str | None, ...]) -> Any:
        if not segments:
            return value
        head, rest = segments[0], segments[1:]
        if head is None:
            items = node if isinstance(node, list) and node else [{}]
            return [put(item, rest) for item in items]
        node = node if isinstance(node, dict) else {}
        node[head] = put(node.get(head), rest)
        return node

    return put(out, parse_field_path(path))


def test_no_probe_at_any_kept_leaf_reaches_the_partner_raw(shipped: ProfileSet) -> None:
    """Every identifier probe, put in turn at every kept value of every guarded route's accepted example,
    is refused, redacted or shut out by the schema: the partner never receives it raw."""
    leaks: list[str] = []
    tried = 0
    for profile_id, route in guarded_routes(shipped):
        body, path = accepted_example(route)
        for location, name, _, _ in kept_leaves(route):
            if location in ("query", "header"):
                continue  # no guarded route keeps a query parameter or header (the walk above checks them)
            for probe in (*probes(), *INTEGER_PROBES):
                if location == "body":
                    outcome, sent = run_policy(route, set_leaf(body, name, probe), path)
                elif isinstance(probe, str):
                    outcome, sent = run_policy(route, body, {**path, name: probe})
                else:
                    continue
                tried += 1
                if outcome == "sent" and raw_identifiers_in(sent.replace(str(INTEGER_PROBES[1]), IMSI)):
                    leaks.append(f"{profile_id}/{route.id} {location}:{name} <- {probe!r}")
    assert leaks == []
    assert tried > 3000


def test_a_device_model_keeps_its_real_world_values(shipped: ProfileSet) -> None:
    """Failing closed must not refuse ordinary traffic: real device models, OS versions, operators,
    versions, event names and language tags pass unchanged."""
    route = route_of(shipped, "analytics-infinity-valley", "ingest-usage")
    devices = [("SM-A525F", "Android 13", "Viettel"), ("Pixel 7", "Android 14", "SK Telecom"),
               ("iPhone14,2", "iOS 17.4.1", "AT&T"), ("Redmi Note 12 Pro+", "MIUI 14", "中国移动"),
               ("moto g(30)", "Android 14 (UP1A.231005.007)", "T-Mobile")]
    for model, os_version, operator in devices:
        body = {"user": USER, "device": {"model": model, "os_version": os_version, "operator": operator},
                "app_version": "4.2.1-beta2", "events": [{"name": "open_locker_map", "count": 3},
                                                         {"name": "checkout_v2", "count": 1}]}
        outcome, sent = run_policy(route, body)
        assert outcome == "sent"
        assert orjson.loads(sent.split(" {")[0])["device"]["model"] == model
    voice = route_of(shipped, "voice-investigation-vn", "recognise-voice-query")
    for language in ("vi", "vi-VN", "zh-Hans-CN", "es-419", "yue-HK"):
        body = {"user": USER, "voice": {"audio_ref": "vr_" + "a" * 16, "language": language}}
        assert run_policy(voice, body)[0] == "sent", language


def campaign(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"period": {"from": "2024-05-01", "to": "2024-05-31"}, "viewers": 18234, "buyers": 412,
                            "gender": {"female": 9820, "male": 8011, "unknown": 403},
                            "coverage": [{"region": "VN-SG", "viewers": 11020}, {"region": "VN-HN", "viewers": 7214}]}
    body.update(changes)
    return body


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, "sent"),
    ({"buyers": 0}, "sent"),
    ({"buyers": 10}, "sent"),
    ({"buyers": 9}, "refused"),
    ({"buyers": 1}, "refused"),
    ({"gender": {"female": 1}}, "refused"),
    ({"coverage": [{"region": "VN-KT", "viewers": 3}]}, "refused"),
    ({"viewers": 10 ** 12}, "refused"),
    ({"period": {"from": "2024-05-14", "to": "2024-05-14"}}, "refused"),
    ({"period": {"from": "2024-02-01", "to": "2024-02-29"}}, "sent"),
    ({"period": {"from": "2024-04-01", "to": "2024-06-30"}}, "sent"),
    ({"coverage": [{"region": "Ho Chi Minh City", "viewers": 11020}]}, "refused"),
])
def test_promotion_aggregates_have_a_minimum_cell_whole_months_and_region_codes(
        shipped: ProfileSet, changes: dict[str, Any], expected: str) -> None:
    route = route_of(shipped, "promotion-entrustors", "campaign-report")
    assert run_policy(route, campaign(**changes), {"campaign_id": "CMP-2024-17"})[0] == expected


@pytest.mark.parametrize(("body", "offer_id", "expected"), [
    ({"sent": 12000, "opened": 4310, "redeemed": 388}, "OFR-5521", "sent"),
    ({"sent": 12000, "opened": 4310, "redeemed": 388, "by_country": [{"country": "BN", "redeemed": 1}]},
     "OFR-5521", "refused"),
    ({"sent": 5, "opened": 0, "redeemed": 0}, "OFR-5521", "refused"),
    ({"sent": 12000, "opened": 4310, "redeemed": 388}, "kim@example.com", "refused"),
    ({"sent": 12000, "opened": 4310, "redeemed": 388}, "OFR-49015420-3237518", "refused"),
])
def test_promotion_offer_results_have_a_minimum_cell_and_a_shaped_id(
        shipped: ProfileSet, body: dict[str, Any], offer_id: str, expected: str) -> None:
    route = route_of(shipped, "promotion-qstore-offers", "offer-results")
    assert run_policy(route, body, {"offer_id": offer_id})[0] == expected


def test_the_walk_catches_patterns_that_admit_national_or_split_identifiers() -> None:
    """rv-transforms R2: patterns bounding only the digit runs let a phone without `+`, or an IMEI, IMSI,
    phone or MAC split into groups, through; the walk's shaped probes catch each of them."""
    assert admitted_probes({"type": "string", "pattern": "^[0-9]{1,12}$"})  # any national phone
    assert admitted_probes({"type": "string", "pattern": r"^[0-9]{1,6}(\.[0-9]{1,6}){0,3}(-[a-z]{1,10}[0-9]{0,3})?$"})
    assert admitted_probes({"type": "string", "pattern": "^[A-Z]{2,5}-[0-9A-Z]{1,6}(-[0-9A-Z]{1,6})?$"})
    assert admitted_probes({"type": "string", "pattern": "^[0-9]{2,5}x[0-9]{2,5}$"})
    assert admitted_probes({"type": "string", "pattern": "^[a-z]{2,3}([-_][A-Za-z0-9]{1,8}){0,6}$"})  # a MAC


def analytics_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"user": USER, "device": {"model": "SM-A525F"}, "app_version": "4.2.1",
                            "events": [{"name": "open_locker_map", "count": 1}]}
    body.update(changes)
    return body


def clever_body(device: dict[str, str] | None = None, at: str = "2024-06-11T08:15:00Z") -> dict[str, Any]:
    return {"customer": {"id": "cg-20931", "country": "VN"},
            "device": {"os": "iOS 17", "screen": "1179x2556", "language": "vi", **(device or {})},
            "views": [{"page": "/services/moving", "at": at}]}


# rv-transforms R3: real-world values the first patterns refused (the whole request got a 422).
REAL_WORLD = [
    *[("analytics-infinity-valley", "ingest-usage", analytics_body(app_version=version), None)
      for version in ("1.2.3-beta.1", "2.0.0-rc.1", "v1.2.3", "1.2.3+45", "1.2.3-SNAPSHOT", "1.2.3 (456)",
                      "4.2.1-beta2", "2024.06.11", "1.0.0-alpha+001", "10.12.3.4")],
    *[("analytics-infinity-valley", "ingest-usage",
       analytics_body(events=[{"name": name, "count": 1}]), None)
      for name in ("level_10_complete", "firstOpen", "purchase_2fa", "checkout_v2", "tutorial_step_3")],
    *[("voice-investigation-vn", "recognise-voice-query",
       {"user": USER, "voice": {"audio_ref": "vr_" + "a" * 16, "language": language}}, None)
      for language in ("en_US", "en-us", "de-CH-1996", "ja-JP-u-ca-japanese", "sr-Latn-RS", "es-419")],
    *[("analytics-clever-affiliates", "page-views", clever_body({"language": language}), None)
      for language in ("en_US", "en-us", "pt-BR", "zh-Hant-TW")],
    *[("analytics-clever-affiliates", "page-views", clever_body(at=at), None)
      for at in ("2024-06-11T08:15:00.1234567Z", "2024-06-11T08:15:00.123456789Z",
                 "2024-06-11T08:15:00.5+07:00")],
    *[("analytics-clever-affiliates", "page-views", clever_body({"screen": screen}), None)
      for screen in ("1080x2400", "3840x2160", "720x1280")],
    *[("promotion-entrustors", "campaign-report", campaign(), {"campaign_id": campaign_id})
      for campaign_id in ("CMP-2024-17", "CMP-2024", "PROMO-SUMMER-2024")],
]


@pytest.mark.parametrize(("profile_id", "route_id", "body", "path"), REAL_WORLD,
                         ids=[f"{case[0]}-{index}" for index, case in enumerate(REAL_WORLD)])
def test_real_world_values_pass(shipped: ProfileSet, profile_id: str, route_id: str, body: Any,
                                path: dict[str, str] | None) -> None:
    assert run_policy(route_of(shipped, profile_id, route_id), body, path)[0] == "sent"


def test_a_time_stamp_is_rfc_3339(shipped: ProfileSet) -> None:
    """`views[].at` is `format: date-time`, which the gateway asserts (rfc3339-validator): an ISO 8601
    basic offset (`+0700`) is not RFC 3339 and is refused; the caller sends `+07:00`."""
    route = route_of(shipped, "analytics-clever-affiliates", "page-views")
    assert run_policy(route, clever_body(at="2024-06-11T08:15:00+0700"))[0] == "refused"
    assert run_policy(route, clever_body(at="2024-06-11T08:15:00.1234567890Z"))[0] == "refused"


# rv-transforms R1 and R2: values that reached the partner raw with a 200.
SPLIT_LEAKS = [
    *[("analytics-infinity-valley", "ingest-usage", analytics_body(app_version=version), None)
      for version in ("0912.345.678", "490154.203237.518", "452040.123456.789", "84.912.345.678",
                      "1.0-00-1a-2b-3c-4d-5e")],
    *[("analytics-infinity-valley", "ingest-usage",
       analytics_body(events=[{"name": name, "count": 1}]), None)
      for name in ("call_0912345678", "m_00_1a_2b_3c_4d_5e", "x_001a2b_3c4d5e")],
    *[("voice-investigation-vn", "recognise-voice-query",
       {"user": USER, "voice": {"audio_ref": "vr_" + "a" * 16, "language": language}}, None)
      for language in ("en-00-1a-2b-3c-4d-5e", "vi-0912-345-678")],
    ("analytics-clever-affiliates", "page-views", clever_body({"screen": "09123x45678"}), None),
    *[("promotion-entrustors", "campaign-report", campaign(), {"campaign_id": campaign_id})
      for campaign_id in ("TEL-091234-5678", "MAC-001A2B-3C4D5E", "IMEI-490154-203237")],
    *[("promotion-qstore-offers", "offer-results", {"sent": 12000, "opened": 4310, "redeemed": 388},
       {"offer_id": offer_id}) for offer_id in ("TEL-091234-5678", "MAC-001A2B-3C4D5E")],
    *[("payment-vietcombank", "confirm-payment",
       {"user": USER, "order": {"number": number, "amount": 50000, "currency": "VND"}}, None)
      for number in (IMEI, f"OBX {PHONE}", EMAIL, MAC, "0912345678", "OBX-2024-0912345678")],
]


@pytest.mark.parametrize(("profile_id", "route_id", "body", "path"), SPLIT_LEAKS,
                         ids=[f"{case[0]}-{index}" for index, case in enumerate(SPLIT_LEAKS)])
def test_split_and_national_identifiers_are_refused(shipped: ProfileSet, profile_id: str, route_id: str,
                                                    body: Any, path: dict[str, str] | None) -> None:
    assert run_policy(route_of(shipped, profile_id, route_id), body, path)[0] == "refused"


def test_the_payment_idempotency_key_reaches_the_bank_only_as_a_pseudonym(shipped: ProfileSet) -> None:
    """rv-transforms R1: the key was kept verbatim beside the device pseudonyms. It is now a one-way
    pseudonym: stable per key (the bank's deduplication still works), never the raw value."""
    policy = route_of(shipped, "payment-vietcombank", "confirm-payment").policy
    body = {"user": USER, "order": {"number": "OBX-2024-000981", "amount": 50000, "currency": "VND"},
            "device": {"imei": IMEI}}

    def sent_key(key: str) -> str:
        minimised = policy.minimise_validated(policy.validate_request(parse_json(orjson.dumps(body))), (), {},
                                              {"Idempotency-Key": key})
        return dict(minimised.headers)["Idempotency-Key"]

    assert IMEI not in sent_key(IMEI)
    assert sent_key(IMEI) == sent_key(IMEI)
    assert sent_key("pay-7f3a2c") != sent_key("pay-7f3a2d")


def test_no_shipped_route_forwards_an_idempotency_key_raw(shipped: ProfileSet) -> None:
    """rv-transforms R1: the carriers' create-shipment routes kept the caller's Idempotency-Key verbatim
    next to the fpe sender phone; every shipped key is now a one-way token pseudonym."""
    declared = [(profile.id, route.id, action) for profile in shipped.profiles.values() for route in profile.routes
                for name, action in route.policy.spec.request_headers.items() if name.lower() == "idempotency-key"]
    assert len(declared) == 11
    assert [entry for entry in declared if action_is_not_a_token_pseudonym(entry[2])] == []


def action_is_not_a_token_pseudonym(action: Any) -> bool:
    return not (isinstance(action, Pseudonymise) and action.id_type == "token")
