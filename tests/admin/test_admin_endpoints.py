"""The admin and audit API end to end: real gateway, real SQLite ledger and registry, loopback sockets.

Covers scopes (401/403), partners, the registry changes and their ledger records, the consent withdrawal
taking effect on the shipped consent-gated route, holds and minors, the access report, strict bodies,
a ledger that cannot record (503, nothing changed), and that no raw subject id appears in any response
body or log line.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
from admin_helpers import (
    ANALYTICS_CONSENT,
    ANALYTICS_PARTNER,
    ANALYTICS_PATH,
    ANALYTICS_ROUTE,
    RAW_SUBJECT,
    AdminHarness,
    LogCapture,
    usage_body,
)

PROBLEM = "application/problem+json"
DISCLOSE = f"disclose:{ANALYTICS_PARTNER}:analytics"


async def call(h: AdminHarness, method: str, path: str, *, headers: dict[str, str] | None = None,
               json: Any = None, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    async with h.session.request(method, h.url + path, headers=headers, json=json, data=data) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def admin_post(h: AdminHarness, path: str, body: Any, *scopes: str) -> tuple[int, Any]:
    status, headers, raw = await call(h, "POST", path, headers=h.auth(*(scopes or ("gateway:admin",))), json=body)
    assert RAW_SUBJECT.encode() not in raw
    if status >= 400:
        assert headers["Content-Type"].startswith(PROBLEM)
    return status, orjson.loads(raw)


async def disclose(h: AdminHarness, subject_id: str = RAW_SUBJECT) -> tuple[int, Any]:
    status, _, raw = await call(h, "POST", ANALYTICS_PATH, headers=h.auth(DISCLOSE, service="stats-service"),
                                json=usage_body(subject_id))
    return status, orjson.loads(raw)


# -- scopes ------------------------------------------------------------------------------------------------
READ_ENDPOINTS = [("GET", "/v1/admin/partners", None), ("GET", f"/v1/admin/partners/{ANALYTICS_PARTNER}", None),
                  ("GET", "/v1/admin/disclosures", None),
                  ("POST", "/v1/admin/subjects/report", {"subject_id": RAW_SUBJECT})]
CHANGE_ENDPOINTS = [
    ("POST", "/v1/admin/subjects/consent", {"subject_id": RAW_SUBJECT, "purpose": "analytics", "action": "withdraw"}),
    ("POST", "/v1/admin/subjects/hold", {"subject_id": RAW_SUBJECT, "action": "lift"}),
    ("POST", "/v1/admin/subjects/minor", {"subject_id": RAW_SUBJECT, "minor": False, "guardian_consent": False}),
]


async def test_every_admin_endpoint_needs_a_token_and_its_scope(admin: AdminHarness) -> None:
    for method, path, body in READ_ENDPOINTS + CHANGE_ENDPOINTS:
        status, headers, raw = await call(admin, method, path, json=body)
        assert status == 401, path
        assert headers["Content-Type"].startswith(PROBLEM)
        assert "WWW-Authenticate" in headers
        status, _, raw = await call(admin, method, path, json=body, headers={"Authorization": "Bearer not.a.jwt"})
        assert status == 401, path
        status, _, raw = await call(admin, method, path, json=body, headers=admin.auth(DISCLOSE))
        assert status == 403, path
        assert orjson.loads(raw)["type"].endswith("scope-missing")
    for method, path, body in READ_ENDPOINTS:
        for scope in ("gateway:audit", "gateway:admin"):
            status, headers, raw = await call(admin, method, path, json=body, headers=admin.auth(scope))
            assert status == 200, (path, scope, raw)
            # Subject data, disclosure listings: never kept by a cache on the way (rv-transforms R5).
            assert headers.get("Cache-Control") == "no-store", path
    for method, path, body in CHANGE_ENDPOINTS:
        status, _, raw = await call(admin, method, path, json=body, headers=admin.auth("gateway:audit"))
        assert status == 403, path
        status, _, raw = await call(admin, method, path, json=body, headers=admin.auth("gateway:admin"))
        assert status == 200, (path, raw)


# -- partners ----------------------------------------------------------------------------------------------
async def test_partners_list_every_loaded_profile_with_its_routes(admin: AdminHarness) -> None:
    status, _, raw = await call(admin, "GET", "/v1/admin/partners", headers=admin.auth("gateway:audit"))
    assert status == 200
    partners = orjson.loads(raw)["partners"]
    loaded = admin.gateway.state.pipeline.profiles.profiles
    assert [p["id"] for p in partners] == sorted(loaded)
    analytics = next(p for p in partners if p["id"] == ANALYTICS_PARTNER)
    assert analytics["jurisdiction"] == "VN"
    assert analytics["category"] == "analytics"
    route = next(r for r in analytics["routes"] if r["id"] == ANALYTICS_ROUTE)
    assert route == {
        "id": ANALYTICS_ROUTE, "method": "POST", "path": "/v1/usage", "purposes": ["analytics"],
        "legal_basis": "consent", "consent_purpose": "analytics", "essential": False, "allowed_during_hold": False,
        "legal_reference_required": False, "idempotent": False, "media_types": ["application/json"],
    }
    # Upstream URLs and credentials are operator matters, not part of the audit view.
    assert b"upstream" not in raw
    assert b"dev-analytics-infinity-valley-token" not in raw

    status, _, raw = await call(admin, "GET", f"/v1/admin/partners/{ANALYTICS_PARTNER}",
                                headers=admin.auth("gateway:audit"))
    assert status == 200
    assert orjson.loads(raw) == analytics
    status, headers, raw = await call(admin, "GET", "/v1/admin/partners/no-such-partner",
                                      headers=admin.auth("gateway:audit"))
    assert status == 404
    assert headers["Content-Type"].startswith(PROBLEM)


# -- consent, through to the egress route ------------------------------------------------------------------
async def test_consent_withdrawn_through_the_api_refuses_the_next_disclosure(
    admin: AdminHarness, captured_logs: LogCapture
) -> None:
    subject_ref = admin.keys.ledger.subject_ref(RAW_SUBJECT)
    status, _ = await disclose(admin)
    assert status == 403, "no consent recorded yet"
    assert admin.partner.bodies == []

    status, granted = await admin_post(admin, "/v1/admin/subjects/consent",
                                       {"subject_id": RAW_SUBJECT, "purpose": ANALYTICS_CONSENT, "action": "grant"})
    assert status == 200
    assert granted["subject_ref"] == subject_ref
    assert granted["event"]["event"] == "consent_granted"
    assert granted["event"]["source"] == "admin:privacy-office"
    status, _ = await disclose(admin)
    assert status == 200
    assert len(admin.partner.bodies) == 1

    status, withdrawn = await admin_post(
        admin, "/v1/admin/subjects/consent",
        {"subject_id": RAW_SUBJECT, "purpose": ANALYTICS_CONSENT, "action": "withdraw"})
    assert status == 200
    assert withdrawn["event"]["event"] == "consent_withdrawn"
    status, problem = await disclose(admin)
    assert status == 403
    assert problem["type"].endswith("consent-required")
    assert len(admin.partner.bodies) == 1, "nothing reached the partner after the withdrawal"

    # Each change is a `registry` record in the ledger, written before it took effect, with the id the
    # API answered; the refusal is a `refusal` record.
    records = await admin.ledger_records(kind="registry", subject_ref=subject_ref)
    assert [(r["id"], r["action"], r["caller"]) for r in records] == [
        (granted["ledger_record"]["id"], "consent_granted", "admin:privacy-office"),
        (withdrawn["ledger_record"]["id"], "consent_withdrawn", "admin:privacy-office"),
    ]
    assert records[1]["detail"]["consent_purpose"] == ANALYTICS_CONSENT
    refusals = await admin.ledger_records(kind="refusal", subject_ref=subject_ref)
    assert refusals
    assert refusals[-1]["reason"] == "consent_withdrawn"
    assert RAW_SUBJECT not in captured_logs.text()
    assert any(e.get("event") == "admin_request" and e.get("endpoint") == "subject_consent"
               for e in captured_logs.events)


async def test_grant_needs_a_loaded_consent_purpose_but_a_withdrawal_never_is_lost(admin: AdminHarness) -> None:
    status, problem = await admin_post(admin, "/v1/admin/subjects/consent",
                                       {"subject_id": RAW_SUBJECT, "purpose": "analytic", "action": "grant"})
    assert status == 422
    assert problem["violations"] == [{"path": "purpose", "reason": "not a consent purpose of any loaded profile"}]
    status, body = await admin_post(admin, "/v1/admin/subjects/consent",
                                    {"subject_id": RAW_SUBJECT, "purpose": "retired-purpose", "action": "withdraw"})
    assert status == 200
    assert body["event"]["consent_purpose"] == "retired-purpose"
    # Accepted (nothing lost) but flagged: it changes no route's consent, e.g. a misspelt purpose.
    assert body["purpose_declared"] is False
    status, body = await admin_post(admin, "/v1/admin/subjects/consent",
                                    {"subject_id": RAW_SUBJECT, "purpose": ANALYTICS_CONSENT, "action": "withdraw"})
    assert status == 200
    assert body["purpose_declared"] is True


# -- holds and minors --------------------------------------------------------------------------------------
async def test_hold_and_minor_status_take_effect_on_the_egress_route(admin: AdminHarness) -> None:
    await admin_post(admin, "/v1/admin/subjects/consent",
                     {"subject_id": RAW_SUBJECT, "purpose": ANALYTICS_CONSENT, "action": "grant"})
    status, placed = await admin_post(admin, "/v1/admin/subjects/hold",
                                      {"subject_id": RAW_SUBJECT, "action": "place", "reason": "correction_pending"})
    assert status == 200
    assert placed["event"]["hold_reason"] == "correction_pending"
    status, problem = await disclose(admin)
    assert status == 403
    assert problem["type"].endswith("subject-on-hold")
    status, lifted = await admin_post(admin, "/v1/admin/subjects/hold", {"subject_id": RAW_SUBJECT, "action": "lift"})
    assert status == 200
    assert lifted["event"]["event"] == "hold_lifted"
    assert (await disclose(admin))[0] == 200

    status, minor = await admin_post(admin, "/v1/admin/subjects/minor",
                                     {"subject_id": RAW_SUBJECT, "minor": True, "guardian_consent": False})
    assert status == 200
    assert minor["event"]["minor"] is True
    status, problem = await disclose(admin)
    assert status == 403
    assert problem["type"].endswith("minor-guardian-consent-required")
    await admin_post(admin, "/v1/admin/subjects/minor",
                     {"subject_id": RAW_SUBJECT, "minor": True, "guardian_consent": True})
    assert (await disclose(admin))[0] == 200

    actions = [r["action"] for r in await admin.ledger_records(
        kind="registry", subject_ref=admin.keys.ledger.subject_ref(RAW_SUBJECT))]
    assert actions == ["consent_granted", "hold_placed", "hold_lifted", "minor_set", "minor_set"]


# -- the access report -------------------------------------------------------------------------------------
async def test_access_report_names_recipients_fields_and_times_never_the_raw_id(
    admin: AdminHarness, captured_logs: LogCapture
) -> None:
    await admin_post(admin, "/v1/admin/subjects/consent",
                     {"subject_id": RAW_SUBJECT, "purpose": ANALYTICS_CONSENT, "action": "grant"})
    status, headers, _ = await call(admin, "POST", ANALYTICS_PATH, headers=admin.auth(DISCLOSE),
                                    json=usage_body())
    assert status == 200
    assert (await disclose(admin, "another-person"))[0] == 403  # no consent: not in our subject's report

    status, report = await admin_post(admin, "/v1/admin/subjects/report", {"subject_id": RAW_SUBJECT},
                                      "gateway:audit")
    assert status == 200
    assert report["subject_ref"] == admin.keys.ledger.subject_ref(RAW_SUBJECT)
    [entry] = report["disclosures"]
    assert (entry["partner"], entry["route"], entry["purpose"]) == (ANALYTICS_PARTNER, ANALYTICS_ROUTE, "analytics")
    assert "device.imei" in entry["fields_sent"] + entry["fields_transformed"]
    assert entry["disclosure_id"] == headers["X-Disclosure-Id"]
    assert entry["outcome_status"] == 200  # the outcome record carries the subject reference too
    assert entry["time"]
    [recipient] = report["recipients_to_notify_of_a_correction"]
    assert recipient["partner"] == ANALYTICS_PARTNER
    assert "device.imei" in recipient["fields"]
    assert [c["consent_purpose"] for c in report["consents"]] == [ANALYTICS_CONSENT]
    assert RAW_SUBJECT not in captured_logs.text()


async def test_access_report_after_a_prune_says_it_is_complete_only_since_the_cut(admin: AdminHarness) -> None:
    await admin_post(admin, "/v1/admin/subjects/consent",
                     {"subject_id": RAW_SUBJECT, "purpose": ANALYTICS_CONSENT, "action": "grant"})
    assert (await disclose(admin))[0] == 200
    status, report = await admin_post(admin, "/v1/admin/subjects/report", {"subject_id": RAW_SUBJECT},
                                      "gateway:audit")
    assert status == 200
    assert report["complete_since"] is None
    assert len(report["recipients_to_notify_of_a_correction"]) == 1

    await asyncio.sleep(0.01)
    result = await admin.gateway.state.services.ledger.prune(datetime.now(UTC))
    assert result.removed > 0
    status, report = await admin_post(admin, "/v1/admin/subjects/report", {"subject_id": RAW_SUBJECT},
                                      "gateway:audit")
    assert status == 200
    # The disclosure is gone with the prune: the empty list must not read as "nobody to notify".
    assert report["recipients_to_notify_of_a_correction"] == []
    [prune] = await admin.ledger_records(kind="prune")
    assert report["complete_since"] == prune["detail"]["before"]


# -- strict bodies -----------------------------------------------------------------------------------------
async def test_bodies_are_parsed_strictly_and_refusals_name_fields_not_values(admin: AdminHarness) -> None:
    path = "/v1/admin/subjects/consent"
    good = {"subject_id": RAW_SUBJECT, "purpose": ANALYTICS_CONSENT, "action": "grant"}
    cases: list[tuple[Any, int, list[dict[str, str]] | None]] = [
        ({**good, "note": RAW_SUBJECT}, 422, [{"path": "note", "reason": "unknown field"}]),
        ({**good, RAW_SUBJECT: 1}, 422, [{"path": "$", "reason": "unknown field"}]),
        ({"purpose": ANALYTICS_CONSENT, "action": "grant"}, 422, [{"path": "subject_id", "reason": "required"}]),
        ({**good, "action": "revoke"}, 422, [{"path": "action", "reason": "expected one of grant, withdraw"}]),
        ({**good, "subject_id": 42}, 422, [{"path": "subject_id", "reason": "expected string"}]),
        ({**good, "subject_id": "   "}, 422, None),
        ({**good, "purpose": "Analytics!"}, 422, None),
        ([good], 422, None),
    ]
    for body, expected, violations in cases:
        status, problem = await admin_post(admin, path, body)
        assert status == expected, body
        if violations is not None:
            assert problem["violations"] == violations
    hold = "/v1/admin/subjects/hold"
    status, problem = await admin_post(admin, hold, {"subject_id": RAW_SUBJECT, "action": "place"})
    assert status == 422
    assert problem["violations"] == [{"path": "reason", "reason": "required"}]
    status, problem = await admin_post(admin, hold, {"subject_id": RAW_SUBJECT, "action": "lift", "reason": "dispute"})
    assert status == 422
    assert problem["violations"] == [{"path": "reason", "reason": "not allowed with this action"}]
    status, problem = await admin_post(admin, "/v1/admin/subjects/minor",
                                       {"subject_id": RAW_SUBJECT, "minor": False, "guardian_consent": True})
    assert status == 422
    assert problem["violations"][0]["path"] == "guardian_consent"

    raw_cases: list[tuple[bytes, str, int]] = [
        (b'{"subject_id": "a", "subject_id": "b", "purpose": "analytics", "action": "grant"}', "application/json", 400),
        (b'{"subject_id": NaN}', "application/json", 400),
        (b'\xff\xfe{}', "application/json", 400),
        (orjson.dumps(good), "text/plain", 415),
        (b'{"subject_id": "' + b"x" * 20_000 + b'"}', "application/json", 413),
    ]
    for data, content_type, expected in raw_cases:
        headers = {**admin.auth("gateway:admin"), "Content-Type": content_type}
        status, resp_headers, raw = await call(admin, "POST", path, headers=headers, data=data)
        assert status == expected, data[:40]
        assert resp_headers["Content-Type"].startswith(PROBLEM)
        assert b"x" * 100 not in raw
    assert await admin.ledger_records(kind="registry") == [], "no refused request changed anything"


# -- the ledger cannot record ------------------------------------------------------------------------------
async def test_a_change_the_ledger_cannot_record_is_503_and_changes_nothing(admin: AdminHarness) -> None:
    services = admin.gateway.state.services
    subject_ref = admin.keys.ledger.subject_ref(RAW_SUBJECT)
    await services.ledger.close()
    for path, body in [
        ("/v1/admin/subjects/consent", {"subject_id": RAW_SUBJECT, "purpose": ANALYTICS_CONSENT, "action": "grant"}),
        ("/v1/admin/subjects/hold", {"subject_id": RAW_SUBJECT, "action": "place", "reason": "dispute"}),
        ("/v1/admin/subjects/minor", {"subject_id": RAW_SUBJECT, "minor": True, "guardian_consent": False}),
    ]:
        status, problem = await admin_post(admin, path, body)
        assert status == 503, path
        assert problem["type"].endswith("ledger-unavailable")
    record = await services.subjects.record(subject_ref)
    assert record.consents == ()
    assert not record.on_hold
    assert not record.minor
    assert record.events == ()


async def test_concurrent_changes_each_get_their_own_ledger_record(admin: AdminHarness) -> None:
    bodies = [{"subject_id": f"person-{i}", "purpose": ANALYTICS_CONSENT, "action": "grant"} for i in range(20)]
    results = await asyncio.gather(*(admin_post(admin, "/v1/admin/subjects/consent", b) for b in bodies))
    assert all(status == 200 for status, _ in results)
    ids = {body["ledger_record"]["id"] for _, body in results}
    assert len(ids) == 20
    assert {r["id"] for r in await admin.ledger_records(kind="registry")} == ids


def test_adding_the_admin_routes_twice_changes_nothing() -> None:
    from gateway.config import Settings
    from gateway.proxy import create_app
    from gateway.proxy.admin import add_admin_routes

    app = create_app(Settings())
    add_admin_routes(app)
    count = len(list(app.router.routes()))
    add_admin_routes(app)
    assert len(list(app.router.routes())) == count


# -- who did it: attributable admin calls ----------------------------------------------------------------
async def test_reload_and_refused_admin_calls_are_logged_with_their_caller(
    admin: AdminHarness, captured_logs: LogCapture
) -> None:
    status, _, _ = await call(admin, "POST", "/v1/admin/reload", headers=admin.auth("gateway:admin", service="ops"))
    assert status == 200
    status, _, _ = await call(admin, "POST", "/v1/admin/reload",
                              headers=admin.auth("disclose:x:y", service="orders-service"))
    assert status == 403
    status, _, _ = await call(admin, "GET", "/v1/admin/partners",
                              headers=admin.auth("disclose:x:y", service="orders-service"))
    assert status == 403
    lines = [(e.get("endpoint"), e.get("caller"), e.get("status"))
             for e in captured_logs.events if e.get("event") == "admin_request"]
    assert lines == [("reload", "ops", 200), ("reload", "orders-service", 403), ("partners", "orders-service", 403)]


async def test_registry_changes_by_different_admin_services_keep_different_sources(admin: AdminHarness) -> None:
    services = ["ops+oncall", "ops@oncall", "ops_oncall", "svc-" + "a" * 150 + "1", "svc-" + "a" * 150 + "2"]
    sources = []
    for service in services:
        status, _, raw = await call(
            admin, "POST", "/v1/admin/subjects/hold", headers=admin.auth("gateway:admin", service=service),
            json={"subject_id": RAW_SUBJECT, "action": "place", "reason": "correction_pending"})
        assert status == 200, raw
        sources.append(orjson.loads(raw)["event"]["source"])
    assert sources[2] == "admin:ops_oncall", "a name the label can spell stays readable"
    assert len(set(sources)) == len(services), sources
    records = await admin.ledger_records(kind="registry")
    assert [r["caller"] for r in records] == sources
