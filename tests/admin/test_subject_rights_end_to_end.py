"""Subject rights enforced at the moment of disclosure, end to end through the real gateway and the shipped
profiles: legal requests need a legal reference that lands in the ledger, a hold stops every route but
those a profile allows during a hold, a minor without guardian consent only reaches essential routes, and
a consent withdrawal made on one replica stops the very next request on another replica (PostgreSQL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from admin_helpers import (
    RecordingPartner,
    admin_settings,
    dev_token,
    start_recording_partner,
)

from gateway.config import Settings
from gateway.keys import GatewayKeys
from gateway.ledger import LedgerQuery
from gateway.proxy import RunningGateway, start_gateway

PARTNERS = ("law-enforcement-kr", "carrier-tw-hct", "analytics-infinity-valley", "payment-vietcombank")
LEGAL_PATH = "/v1/partners/law-enforcement-kr/v1/requests/CASE-2026-114/responses"
SHIPMENT_PATH = "/v1/partners/carrier-tw-hct/v1/shipments"
TRACKING_PATH = "/v1/partners/carrier-tw-hct/v1/shipments/TW123456789"
USAGE_PATH = "/v1/partners/analytics-infinity-valley/v1/usage"
SUBJECT = "qx-c-55102"


def partner_environ(base_url: str) -> dict[str, str]:
    return {f"PARTNER_URL_{p.upper().replace('-', '_')}": f"{base_url}/{p}" for p in PARTNERS}


def legal_body(**extra: Any) -> dict[str, Any]:
    return {
        "subject_id": SUBJECT, "name": "Kim Min-jun", "city": "Seoul", "postal_code": "06234",
        "phone": "+821012345678", "email": "minjun@example.com", "user_id_history": ["mj_kim", "mjk2020"],
        "ip_addresses": ["203.0.113.7"], **extra,
    }


def shipment_body() -> dict[str, Any]:
    return {
        "customer": {"id": SUBJECT, "country": "KR"},
        "shipment_ref": "QX-240611-tw-0042",
        "sender": {"name": "Seoul Beauty Store", "phone": "+821098765432",
                   "address": {"line1": "45 Teheran-ro 10-gil", "city": "Seoul", "postal_code": "06234",
                               "country": "KR"}},
        "recipient": {"name": "Chen Mei-Ling", "phone": "+886912345678",
                      "address": {"line1": "No. 7, Sec. 5, Xinyi Rd.", "city": "Taipei", "postal_code": "110",
                                  "country": "TW"}},
        "parcel": {"weight_g": 1250, "pieces": 1},
    }


def usage_body() -> dict[str, Any]:
    return {"user": {"id": SUBJECT, "country": "VN"}, "device": {"model": "SM-A525F", "imei": "490154203237518"},
            "events": [{"name": "parcel_pickup", "count": 1}]}


@dataclass
class Rig:
    gateways: list[RunningGateway]
    partner: RecordingPartner
    keys: GatewayKeys
    settings: Settings
    session: aiohttp.ClientSession

    def headers(self, *scopes: str, **extra: str) -> dict[str, str]:
        token = dev_token(self.keys, self.settings, list(scopes), "order-service")
        return {"Authorization": f"Bearer {token}", **extra}

    async def call(self, method: str, path: str, body: Any = None, *, replica: int = 0,
                   headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        data = None if body is None else orjson.dumps(body)
        if data is not None:
            headers = {**headers, "Content-Type": "application/json"}
        async with self.session.request(method, self.gateways[replica].url + path, data=data,
                                        headers=headers) as response:
            raw = await response.read()
            return response.status, (orjson.loads(raw) if raw else {}), dict(response.headers)

    async def admin(self, endpoint: str, body: dict[str, Any], *, replica: int = 0) -> int:
        status, _, _ = await self.call("POST", f"/v1/admin/subjects/{endpoint}", body, replica=replica,
                                       headers=self.headers("gateway:admin", "gateway:audit"))
        return status

    async def records(self, **filters: Any) -> list[dict[str, Any]]:
        return await self.gateways[0].state.services.ledger.query(LedgerQuery(**filters))


@pytest.fixture
async def rig(tmp_path: Path, keys_dir: Path, gateway_keys: GatewayKeys,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    async for value in _rig([admin_settings(tmp_path, keys_dir)], gateway_keys, monkeypatch):
        yield value


@pytest.fixture
async def pg_replicas(tmp_path: Path, keys_dir: Path, gateway_keys: GatewayKeys, pg_url: str,
                      monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    # Two replicas on one PostgreSQL, each on its own ledger chain (as two `gateway serve` hosts run).
    replica = replace(admin_settings(tmp_path, keys_dir), ledger_url=pg_url)
    async for value in _rig([replica, replica], gateway_keys, monkeypatch):
        yield value


async def _rig(settings_list: list[Settings], gateway_keys: GatewayKeys,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    partner, partner_runner = await start_recording_partner()
    base = partner.url.rsplit("/", 1)[0]
    gateways: list[RunningGateway] = []
    session = aiohttp.ClientSession()
    try:
        for index, settings in enumerate(settings_list):
            monkeypatch.setenv("GATEWAY_LEDGER_CHAIN_SUFFIX", f"replica{index}")
            gateways.append(await start_gateway(settings, environ=partner_environ(base)))
        yield Rig(gateways, partner, gateway_keys, settings_list[0], session)
    finally:
        await session.close()
        for gateway in gateways:
            await gateway.stop()
        await partner_runner.cleanup()


async def test_legal_request_needs_a_reference_and_records_it(rig: Rig) -> None:
    scope = "disclose:law-enforcement-kr:legal_obligation"
    status, problem, _ = await rig.call("POST", LEGAL_PATH, legal_body(), headers=rig.headers(scope))
    assert status == 403
    assert problem["type"].endswith("legal-reference-required")
    status, _, _ = await rig.call("POST", LEGAL_PATH, legal_body(),
                                  headers=rig.headers(scope, **{"X-Legal-Reference": "  \t "}))
    assert status == 403
    assert rig.partner.bodies == []

    reference = "Seoul Central District Prosecutors' Office 2026-Hyeong-1142"
    status, _, headers = await rig.call("POST", LEGAL_PATH, legal_body(),
                                        headers=rig.headers(scope, **{"X-Legal-Reference": reference}))
    assert status == 200
    sent = orjson.loads(rig.partner.bodies[-1])
    # The partner receives the canonical re-serialisation: sorted keys, no white space.
    assert rig.partner.bodies[-1] == orjson.dumps(sent, option=orjson.OPT_SORT_KEYS)
    # Only fields the Qstore policy lists, unchanged; the internal subject id stays home.
    assert set(sent) == {"name", "city", "postal_code", "phone", "email", "user_id_history", "ip_addresses"}
    [record] = await rig.records(kind="disclosure", partner="law-enforcement-kr")
    assert record["id"] == headers["X-Disclosure-Id"]
    assert record["legal_reference"] == reference
    assert record["purpose"] == "legal_obligation"
    refusals = await rig.records(kind="refusal", partner="law-enforcement-kr")
    assert len(refusals) == 2
    assert {r["reason"] for r in refusals} == {"legal_reference_missing"}

    # Anything the policy does not list is refused, not silently dropped.
    status, problem, _ = await rig.call("POST", LEGAL_PATH, legal_body(account_balance=1200),
                                        headers=rig.headers(scope, **{"X-Legal-Reference": reference}))
    assert status == 422
    assert [v["path"] for v in problem["violations"]] == ["*"]  # undeclared: never named (review-privacy F3)
    assert len(rig.partner.bodies) == 1


async def test_a_legal_reference_is_recorded_only_where_required_and_never_holds_an_identifier(rig: Rig) -> None:
    """Privacy review F7: the header is caller-chosen text stored verbatim in the append-only ledger."""
    leak = "kim.leak@example.com +886912345678"
    # A route that needs no reference ignores the header: nothing of it is recorded.
    status, _, _ = await rig.call("POST", SHIPMENT_PATH, shipment_body(),
                                  headers=rig.headers("disclose:carrier-tw-hct:delivery",
                                                      **{"X-Legal-Reference": leak}))
    assert status == 200
    [record] = await rig.records(kind="disclosure", partner="carrier-tw-hct")
    assert record.get("legal_reference") is None

    # A legal route refuses a reference holding an identifier (422, naming only the kind); nothing is sent.
    scope = "disclose:law-enforcement-kr:legal_obligation"
    status, problem, _ = await rig.call("POST", LEGAL_PATH, legal_body(),
                                        headers=rig.headers(scope, **{"X-Legal-Reference": f"Case 2026-1 {leak}"}))
    assert status == 422
    assert problem["type"].endswith("identifier-in-free-text")
    assert problem["violations"] == [{"path": "header:X-Legal-Reference",
                                      "reason": "holds an identifier: email, phone"}]
    assert "kim.leak" not in orjson.dumps(problem).decode()
    assert rig.partner.bodies[1:] == []
    [refusal] = await rig.records(kind="refusal", partner="law-enforcement-kr")
    assert refusal["reason"] == "legal_reference_identifier"
    everything = orjson.dumps(await rig.records()).decode()
    assert "kim.leak" not in everything
    assert "886912345678" not in everything


async def test_a_hold_stops_disclosure_except_routes_allowed_during_a_hold(rig: Rig) -> None:
    scope = rig.headers("disclose:carrier-tw-hct:delivery")
    assert (await rig.call("POST", SHIPMENT_PATH, shipment_body(), headers=scope))[0] == 200
    assert await rig.admin("hold", {"subject_id": SUBJECT, "action": "place", "reason": "correction"}) == 200

    status, problem, _ = await rig.call("POST", SHIPMENT_PATH, shipment_body(), headers=scope)
    assert status == 403
    assert problem["type"].endswith("subject-on-hold")
    assert SUBJECT not in orjson.dumps(problem).decode()
    # Tracking a parcel already handed over sends only the carrier's tracking number: allowed.
    status, _, _ = await rig.call(
        "GET", f"{TRACKING_PATH}?customer_id={SUBJECT}&customer_country=KR", headers=scope)
    assert status == 200
    assert rig.partner.bodies[-1] == b""

    assert await rig.admin("hold", {"subject_id": SUBJECT, "action": "lift"}) == 200
    assert (await rig.call("POST", SHIPMENT_PATH, shipment_body(), headers=scope))[0] == 200
    assert [r["reason"] for r in await rig.records(kind="refusal")] == ["subject_on_hold"]


async def test_a_minor_without_guardian_consent_reaches_only_essential_routes(rig: Rig) -> None:
    usage = rig.headers("disclose:analytics-infinity-valley:analytics")
    delivery = rig.headers("disclose:carrier-tw-hct:delivery")
    assert await rig.admin("consent", {"subject_id": SUBJECT, "purpose": "analytics", "action": "grant"}) == 200
    assert await rig.admin("minor", {"subject_id": SUBJECT, "minor": True, "guardian_consent": False}) == 200

    status, problem, _ = await rig.call("POST", USAGE_PATH, usage_body(), headers=usage)
    assert status == 403
    assert problem["type"].endswith("minor-guardian-consent-required")
    assert (await rig.call("POST", SHIPMENT_PATH, shipment_body(), headers=delivery))[0] == 200

    assert await rig.admin("minor", {"subject_id": SUBJECT, "minor": True, "guardian_consent": True}) == 200
    assert (await rig.call("POST", USAGE_PATH, usage_body(), headers=usage))[0] == 200
    registry = await rig.records(kind="registry")
    assert [r["action"] for r in registry] == ["consent_granted", "minor_set", "minor_set"]
    assert all(SUBJECT not in orjson.dumps(r).decode() for r in registry)


@pytest.mark.postgres
async def test_withdrawal_on_one_replica_stops_the_next_request_on_another(pg_replicas: Rig) -> None:
    rig = pg_replicas
    usage = rig.headers("disclose:analytics-infinity-valley:analytics")
    grant = {"subject_id": SUBJECT, "purpose": "analytics", "action": "grant"}
    assert await rig.admin("consent", grant, replica=0) == 200
    assert (await rig.call("POST", USAGE_PATH, usage_body(), headers=usage, replica=1))[0] == 200

    withdraw = {**grant, "action": "withdraw"}
    assert await rig.admin("consent", withdraw, replica=0) == 200
    # No cache between replicas: the request that starts after the withdrawal returned is refused.
    status, problem, _ = await rig.call("POST", USAGE_PATH, usage_body(), headers=usage, replica=1)
    assert status == 403
    assert problem["type"].endswith("consent-required")
    assert len(rig.partner.bodies) == 1
    chains = {r["chain"] for r in await rig.records()}
    assert len(chains) == 2, "each replica writes its own chain"
