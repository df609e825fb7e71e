"""The shipped partner profiles against the source policies they implement.

Loads the whole partner_profiles/ folder with the real loader and the real pseudonymiser (example key),
runs every example, and checks the promises of ../shared/seeds/ that a profile can break: which partner
categories exist, that promotion partners get no identifier at all, that the law-enforcement and
brand-protection routes send exactly the fields the Qstore policy lists, and that device identifiers
anywhere leave only as pseudonyms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import GatewayError
from gateway.policy import parse_field_path
from gateway.policy.actions import Drop, FieldAction, Keep, Pseudonymise, Reidentify
from gateway.profiles import (
    PartnerProfile,
    ProfileSet,
    Route,
    example_pseudonymiser,
    load_profiles,
    run_profile_examples,
)
from gateway.profiles.examples import run_example
from gateway.subjects.transfers import shipped_rules

PROFILES_DIR = Path(__file__).resolve().parents[2] / "partner_profiles"
SEED_FILES = {
    "000_e80baa8fcde87baa.txt",
    "001_19c790bd0e39c392.txt",
    "002_cbf0748c2ef0be3a.txt",
    "003_b790ea6f998d5eaf.txt",
    "004_98d049635a2e7642.txt",
}
DEVICE_IDENTIFIERS = {"imei", "imsi", "mac", "android_id", "iccid", "advertising_id"}
LOCATIONS = ("body", "query", "path", "headers")


@pytest.fixture(scope="module")
def shipped() -> ProfileSet:
    # An empty environment: the defaults written in the profiles are what ships.
    return load_profiles(PROFILES_DIR, pseudonymiser=example_pseudonymiser(), environ={})


def request_actions(route: Route) -> Iterator[tuple[str, str, FieldAction]]:
    for location in LOCATIONS:
        for path, action in route.policy.request_actions(location).items():
            yield location, path, action


def sent_body_fields(route: Route) -> set[str]:
    return {path for path, action in route.policy.request_actions("body").items() if not isinstance(action, Drop)}


def last_name(path: str) -> str:
    return path.split(".")[-1].removesuffix("[]").lower()


def by_category(profile_set: ProfileSet, category: str) -> list[PartnerProfile]:
    return [p for p in profile_set.profiles.values() if p.category == category]


def test_every_example_of_every_profile_passes(shipped: ProfileSet) -> None:
    failures = [
        f"{result.profile_id}/{result.route_id}: {result.name}: {result.reason}"
        for profile in shipped.profiles.values()
        for result in run_profile_examples(profile)
        if not result.passed
    ]
    assert failures == []


def test_every_profile_has_an_accepted_and_a_refused_example(shipped: ProfileSet) -> None:
    for profile in shipped.profiles.values():
        examples = [example for route in profile.routes for example in route.examples]
        assert len(examples) >= 2, profile.id
        assert any(example.expect is not None for example in examples), profile.id
        assert any(example.expect_error is not None for example in examples), profile.id


def test_a_wrong_expectation_is_caught(shipped: ProfileSet) -> None:
    """The example run is not vacuous: the same example with one expected value changed fails."""
    profile = shipped.profiles["payment-vietcombank"]
    route = profile.route("confirm-payment")
    good = next(example for example in route.examples if example.expect is not None)
    assert good.expect is not None
    body = dict(good.expect["body"])
    body["order"] = {**body["order"], "amount": 50001}
    wrong = dataclasses.replace(good, expect={**good.expect, "body": body})
    binder = example_pseudonymiser()
    assert run_example(profile.id, route, good, route.policy, binder).passed
    result = run_example(profile.id, route, wrong, route.policy, binder)
    assert not result.passed
    assert "order.amount" in result.reason


def test_categories_named_by_the_seeds_are_all_present(shipped: ProfileSet) -> None:
    categories = {profile.category for profile in shipped.profiles.values()}
    for category in ("analytics", "payment", "push", "sharing", "maps", "voice_investigation", "browser",
                     "promotion", "carrier", "customs", "sms", "law_enforcement", "brand_protection", "seller"):
        assert category in categories, category
    assert len(by_category(shipped, "maps")) >= 2


def test_qxpress_carriers_cover_every_country_of_its_table(shipped: ProfileSet) -> None:
    qxpress = [p for p in by_category(shipped, "carrier") if p.source.get("policy") == "002_cbf0748c2ef0be3a.txt"]
    # §3's table names carriers for these ten countries (its "Other Nations" row names no country).
    assert {p.jurisdiction for p in qxpress} == {"TW", "MY", "US", "SG", "ID", "IN", "JP", "CN", "KR", "HK"}
    for profile in qxpress:
        create = profile.route("create-shipment")
        sent = sent_body_fields(create)
        for party in ("sender", "recipient"):
            assert {f"{party}.name", f"{party}.phone"} <= sent, profile.id
            # The address as its leaves, never the open parent object (privacy review F2).
            assert {f"{party}.address.{leaf}" for leaf in ("line1", "line2", "city", "postal_code", "country")
                    } <= sent, profile.id
            assert f"{party}.address" not in sent, profile.id
        assert create.essential
        assert not create.allowed_during_hold
        # Delivery needs no e-mail and no customs number (that goes to the customs agency only).
        assert not any("email" in path or "customs" in path for path in sent), profile.id


def test_promotion_partners_receive_no_identifier_at_all(shipped: ProfileSet) -> None:
    personal = DEVICE_IDENTIFIERS | {"name", "address", "street_address", "phone", "email", "user_id", "id",
                                     "customer_id", "ip", "ip_addresses"}
    promotion = by_category(shipped, "promotion")
    assert promotion
    for profile in promotion:
        for route in profile.routes:
            assert route.subject is None, profile.id
            assert route.policy.unknown_fields == "reject", profile.id
            for location, path, action in request_actions(route):
                assert not isinstance(action, Pseudonymise | Reidentify), (profile.id, location, path)
                assert last_name(path) not in personal, (profile.id, location, path)
            for _location, action in ((loc, a) for loc in ("body", "headers")
                                      for a in route.policy.response_actions(loc).values()):
                assert not isinstance(action, Reidentify), profile.id


def test_promotion_payload_with_an_identifier_is_refused(shipped: ProfileSet) -> None:
    for profile in by_category(shipped, "promotion"):
        for route in profile.routes:
            accepted = next(example for example in route.examples if example.expect is not None)
            assert isinstance(accepted.request.body, dict)
            for field in ("imei", "android_id", "user_id", "name"):
                body = {**accepted.request.body, field: "9774d56d682e549c"}
                with pytest.raises(GatewayError) as refused:
                    route.policy.minimise_request(body, (), dict(accepted.request.path), {})
                assert refused.value.status == 422
                # an undeclared name is the caller's: refused under the marker, never echoed (review-privacy F3)
                assert [v.path for v in refused.value.violations] == ["*"]


def test_law_enforcement_sends_exactly_the_qstore_fields_with_a_legal_reference(shipped: ProfileSet) -> None:
    (profile,) = by_category(shipped, "law_enforcement")
    assert profile.source["policy"] == "003_b790ea6f998d5eaf.txt"
    for route in profile.routes:
        assert route.purposes == ("legal_obligation",)
        assert route.legal_basis == "legal_obligation"
        assert route.legal_reference_required
        assert route.policy.unknown_fields == "reject"
        # The three histories as the fields of each entry, never a whole open entry (privacy review F2).
        assert sent_body_fields(route) == {
            "name", "city", "postal_code", "phone", "email", "user_id_history", "ip_addresses",
            *(f"fraud_complaints[].{name}" for name in ("complaint_id", "date", "category", "status")),
            *(f"purchase_history[].{name}" for name in ("order", "date", "item", "amount")),
            *(f"listing_history[].{name}" for name in ("listing", "date", "item", "price")),
        }
        # Sent unchanged: an authority acts on the real values.
        assert all(isinstance(action, Keep | Drop) for action in route.policy.request_actions("body").values())


def test_brand_protection_sends_the_fixed_field_list(shipped: ProfileSet) -> None:
    (profile,) = by_category(shipped, "brand_protection")
    for route in profile.routes:
        assert route.policy.unknown_fields == "reject"
        assert sent_body_fields(route) == {"name", "street_address", "city", "postal_code", "country", "phone",
                                           "email", "company_name"}


def test_payment_institutions_get_order_number_and_amount(shipped: ProfileSet) -> None:
    generic = shipped.profiles["payment-institution-cn"]
    assert sent_body_fields(generic.route("confirm-payment")) == {"order_number", "amount", "currency"}
    onebox = shipped.profiles["payment-vietcombank"].route("confirm-payment")
    plain = {path for path in sent_body_fields(onebox) if not path.startswith("device.")}
    assert plain == {"order.number", "order.amount", "order.currency"}


def test_device_identifiers_are_pseudonymised_never_kept(shipped: ProfileSet) -> None:
    seen = 0
    for profile in shipped.profiles.values():
        for route in profile.routes:
            for location, path, action in request_actions(route):
                name = last_name(path)
                if name in DEVICE_IDENTIFIERS:
                    seen += 1
                    assert isinstance(action, Pseudonymise | Drop), (profile.id, location, path)
                    if isinstance(action, Pseudonymise):
                        assert action.id_type == name, (profile.id, path)
    assert seen >= 20  # the Onebox partners carry many; a rename that hides them should fail here


def test_identity_numbers_go_to_customs_only(shipped: ProfileSet) -> None:
    for profile in shipped.profiles.values():
        for route in profile.routes:
            for path in sent_body_fields(route):
                if last_name(path) in {"id_card_number", "customs_clearance_number"}:
                    assert profile.category == "customs", (profile.id, path)


def test_location_needs_consent_and_non_essential_routes_are_marked(shipped: ProfileSet) -> None:
    for profile in shipped.profiles.values():
        for route in profile.routes:
            if any(path.split(".")[0] == "location" for path in sent_body_fields(route)):
                assert route.consent_purpose == "location", (profile.id, route.id)
            if route.consent_purpose is not None:
                # Anything that needs consent is optional, so a minor needs a guardian's consent for it.
                assert not route.essential, (profile.id, route.id)
                assert route.consent_purpose in profile.consent_purposes


def test_onebox_consent_and_minors(shipped: ProfileSet) -> None:
    onebox = [p for p in shipped.profiles.values() if p.source.get("policy") == "000_e80baa8fcde87baa.txt"]
    assert len(onebox) == 9
    for profile in onebox:
        for route in profile.routes:
            assert route.essential == (profile.category == "payment"), (profile.id, route.id)
    assert shipped.profiles["analytics-infinity-valley"].route("ingest-usage").consent_purpose == "analytics"


def test_only_some_routes_may_run_during_a_hold(shipped: ProfileSet) -> None:
    allowed = {(p.id, r.id) for p in shipped.profiles.values() for r in p.routes if r.allowed_during_hold}
    for profile_id, route_id in allowed:
        route = shipped.profiles[profile_id].route(route_id)
        # Either it sends no body at all (tracking a parcel already paid) or it answers a legal obligation.
        assert route.policy.request_actions("body") == {} or route.legal_basis == "legal_obligation", route_id


def test_subject_and_residency_sources(shipped: ProfileSet) -> None:
    for profile in shipped.profiles.values():
        for route in profile.routes:
            assert route.residency is not None, (profile.id, route.id)
            if profile.category != "promotion":
                assert route.subject is not None, (profile.id, route.id)
            for source in (route.subject, route.residency):
                if source is not None and source.location == "body":
                    assert route.policy.spec.schema is not None
                    top = source.path.split(".")[0]
                    assert top in route.policy.spec.schema.get("required", ()), (profile.id, route.id, top)


def test_shipped_transfer_rules_allow_every_shipped_partner(shipped: ProfileSet) -> None:
    """The subjects' transfer rules and the profiles agree: each partner a policy names is reachable from
    the residency of that policy's users (Onebox: VN; QXPRESS: KR)."""
    rules = shipped_rules()
    residency_of = {"000_e80baa8fcde87baa.txt": "VN", "002_cbf0748c2ef0be3a.txt": "KR"}
    checked = 0
    for profile in shipped.profiles.values():
        residency = residency_of.get(profile.source.get("policy", ""))
        if residency is None:
            continue
        checked += 1
        assert rules.decide(residency, profile.id, profile.jurisdiction).allowed, profile.id
    assert checked >= 19
    # A partner the Onebox policy does not name abroad is refused for Vietnamese users.
    assert not rules.decide("VN", "carrier-us-ups", "US").allowed


def test_conventions(shipped: ProfileSet) -> None:
    for profile in shipped.profiles.values():
        assert Path(profile.source_file).stem == profile.id
        assert profile.source.get("policy") in SEED_FILES, profile.id
        assert profile.source.get("section"), profile.id
        assert profile.upstream.base_url == f"http://127.0.0.1:9900/{profile.id}"
        assert profile.upstream.auth is not None
        assert profile.limits.rate_per_second
        assert profile.limits.max_concurrency
    kinds = {p.upstream.auth.kind for p in shipped.profiles.values() if p.upstream.auth is not None}
    assert kinds == {"bearer", "header", "basic"}


def test_environment_overrides_base_url_and_credentials() -> None:
    environ = {"PARTNER_URL_MAPS_GOOGLE": "http://127.0.0.1:18080/google",
               "PARTNER_TOKEN_MAPS_GOOGLE": "staging-secret"}
    loaded = load_profiles(PROFILES_DIR, pseudonymiser=example_pseudonymiser(), environ=environ)
    upstream = loaded.profiles["maps-google"].upstream
    assert upstream.base_url == "http://127.0.0.1:18080/google"
    assert upstream.auth is not None
    assert upstream.auth.value == "Bearer staging-secret"
    assert "staging-secret" not in repr(upstream)


def test_every_shipped_free_text_field_is_a_bounded_string(shipped: ProfileSet) -> None:
    """Each kept free-text field of a shipped route is pinned in the route's schema to a string with a
    maxLength no longer than the route's scan limit: one value is refused by the schema before it is
    scanned, the route's `free_text_max_chars` bounds the sum over arrays (docs/profile-format.md)."""
    checked = 0
    for profile in shipped.profiles.values():
        for route in profile.routes:
            spec = route.policy.spec
            for path, action in spec.request_body.items():
                if not (isinstance(action, Keep) and action.free_text):
                    continue
                node = spec.schema
                for segment in parse_field_path(path):
                    assert isinstance(node, dict), (profile.id, route.id, path)
                    node = node["items"] if segment is None else node["properties"][segment]
                assert isinstance(node, dict)
                assert node.get("type") == "string", (profile.id, route.id, path)
                assert 0 < node.get("maxLength", 0) <= spec.free_text_max_chars, (profile.id, route.id, path)
                checked += 1
    assert checked >= 14
