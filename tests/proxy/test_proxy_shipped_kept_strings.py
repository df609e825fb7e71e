"""The shipped promotion, browser, analytics and payment profiles through the real gateway
(review-transforms F2, F4; rv-transforms R1-R3): a raw identifier in a kept value next to identifiers (a
device model, a campaign id in the partner's URL, a region, an app version or order number, whole or split
into groups) or a cell of fewer than 10 people is refused with 422 and never reaches the fake partner; the
ordinary report, device context, SemVer pre-release versions and payment pass, and the payment's
Idempotency-Key reaches the bank only as a pseudonym."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from proxy_harness import FakePartner, GatewayHarness

from gateway.config import Settings
from gateway.keys import GatewayKeys
from gateway.proxy import start_gateway

SHIPPED = Path(__file__).resolve().parents[2] / "partner_profiles"
PROFILES = ("promotion-entrustors", "browser-google", "analytics-infinity-valley", "payment-vietcombank")
IMEI, IMSI = "490154203237518", "452040123456789"
REPORT = {"period": {"from": "2024-05-01", "to": "2024-05-31"}, "viewers": 18234, "buyers": 412,
          "gender": {"female": 9820, "male": 8011, "unknown": 403},
          "coverage": [{"region": "VN-SG", "viewers": 11020}, {"region": "VN-HN", "viewers": 7214}]}


@pytest.fixture
def profiles_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "profiles"
    directory.mkdir()
    for name in PROFILES:
        shutil.copy(SHIPPED / f"{name}.yaml", directory / f"{name}.yaml")
    return directory


@pytest.fixture
async def shipped_harness(settings: Settings, fake_partner: FakePartner,
                          gateway_keys: GatewayKeys) -> AsyncIterator[GatewayHarness]:
    environ = {f"PARTNER_URL_{name.upper().replace('-', '_')}": f"{fake_partner.url}/{name}" for name in PROFILES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gateway = await start_gateway(settings, environ=environ)
    session = aiohttp.ClientSession(auto_decompress=False)
    try:
        yield GatewayHarness(gateway, fake_partner, gateway_keys, settings, session)
    finally:
        await session.close()
        await gateway.stop()


async def post(harness: GatewayHarness, partner: str, purpose: str, path: str, body: object) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {harness.token([f'disclose:{partner}:{purpose}'])}"}
    async with harness.session.post(f"{harness.url}/v1/partners/{partner}{path}", json=body,
                                    headers=headers) as response:
        return response.status, await response.text()


async def test_a_campaign_report_passes_and_identifiers_or_small_cells_never_reach_the_partner(
        shipped_harness: GatewayHarness) -> None:
    harness = shipped_harness
    status, text = await post(harness, "promotion-entrustors", "promotion_reporting",
                              "/v1/campaigns/CMP-2024-17/reports", REPORT)
    assert status == 200, text
    [received] = harness.partner.received
    assert received.raw_path == "/api/promotion-entrustors/v1/campaigns/CMP-2024-17/reports"
    assert json.loads(received.body) == REPORT

    refused = [
        (f"/v1/campaigns/{IMEI}/reports", REPORT, "path:campaign_id"),
        ("/v1/campaigns/CMP-2024-17/reports",
         {**REPORT, "coverage": [{"region": "kim@example.com +84912345678", "viewers": 11020}]}, "coverage[0].region"),
        ("/v1/campaigns/CMP-2024-17/reports", {**REPORT, "coverage": [{"region": "VN-KT", "viewers": 1}]},
         "coverage[0].viewers"),
        ("/v1/campaigns/CMP-2024-17/reports", {**REPORT, "period": {"from": "2024-05-14", "to": "2024-05-14"}},
         "period.from"),
    ]
    for path, body, where in refused:
        status, text = await post(harness, "promotion-entrustors", "promotion_reporting", path, body)
        assert status == 422, (path, text)
        problem = json.loads(text)
        assert where in [violation["path"] for violation in problem["violations"]], problem
        assert IMEI not in text
        assert "kim@example.com" not in text
    assert len(harness.partner.received) == 1  # none of the refused reports reached the partner


async def test_a_raw_imei_or_imsi_beside_the_device_pseudonyms_never_reaches_the_partner(
        shipped_harness: GatewayHarness) -> None:
    harness = shipped_harness
    good = {"user": {"id": "u-100293", "country": "VN"},
            "device": {"model": "SM-A525F", "os_version": "Android 13", "screen": "1080x2400", "imei": IMEI}}
    status, text = await post(harness, "browser-google", "browsing", "/v1/browsing/context", good)
    assert status == 200, text
    [received] = harness.partner.received
    sent = json.loads(received.body)["device"]
    assert sent["model"] == "SM-A525F"
    assert sent["imei"] != IMEI

    for device in ({"model": f"SM-A525F {IMEI}"}, {"model": "SM-A525F", "os_version": IMSI}):
        status, text = await post(harness, "browser-google", "browsing", "/v1/browsing/context",
                                  {**good, "device": device})
        assert status == 422, text
        assert json.loads(text)["type"].endswith(":identifier-in-free-text")
        assert IMEI not in text
        assert IMSI not in text
    assert len(harness.partner.received) == 1
    assert not any(IMEI.encode() in r.body or IMSI.encode() in r.body for r in harness.partner.received)


async def test_real_versions_pass_and_split_identifiers_never_reach_the_partner(
        shipped_harness: GatewayHarness) -> None:
    harness = shipped_harness
    admin = {"Authorization": f"Bearer {harness.token(['gateway:admin'])}"}
    async with harness.session.post(f"{harness.url}/v1/admin/subjects/consent", headers=admin,
                                    json={"subject_id": "u-100293", "purpose": "analytics", "action": "grant"}) as r:
        assert r.status == 200, await r.text()
    user = {"id": "u-100293", "country": "VN"}

    def usage(version: str) -> dict[str, object]:
        return {"user": user, "device": {"model": "SM-A525F"}, "app_version": version,
                "events": [{"name": "level_10_complete", "count": 1}]}

    for version in ("1.2.3-beta.1", "2.0.0-rc.1"):
        status, text = await post(harness, "analytics-infinity-valley", "analytics", "/v1/usage", usage(version))
        assert status == 200, text
        assert json.loads(harness.partner.received[-1].body)["app_version"] == version
    forwarded = len(harness.partner.received)
    for version in ("0912.345.678", "490154.203237.518"):
        status, text = await post(harness, "analytics-infinity-valley", "analytics", "/v1/usage", usage(version))
        assert status == 422, text
        assert version not in text
    for campaign_id in ("TEL-091234-5678", "MAC-001A2B-3C4D5E", "IMEI-490154-203237"):
        status, text = await post(harness, "promotion-entrustors", "promotion_reporting",
                                  f"/v1/campaigns/{campaign_id}/reports", REPORT)
        assert status == 422, text
        assert campaign_id not in text
    assert len(harness.partner.received) == forwarded


async def test_the_payment_gets_no_raw_identifier_beside_the_device_pseudonyms(
        shipped_harness: GatewayHarness) -> None:
    harness = shipped_harness
    headers = {"Authorization": f"Bearer {harness.token(['disclose:payment-vietcombank:payment'])}",
               "Idempotency-Key": IMEI}
    url = f"{harness.url}/v1/partners/payment-vietcombank/v1/payments"
    body = {"user": {"id": "u-100293", "country": "VN"},
            "order": {"number": "OBX-2024-000981", "amount": 50000, "currency": "VND"}, "device": {"imei": IMEI}}
    async with harness.session.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
    [received] = harness.partner.received
    assert IMEI.encode() not in received.body
    key = harness.partner.headers_of()["idempotency-key"]
    assert key
    assert IMEI not in key
    for number in (IMEI, "0912345678", "kim@example.com"):
        async with harness.session.post(url, json={**body, "order": {**body["order"], "number": number}},
                                        headers=headers) as response:
            assert response.status == 422
            assert number not in await response.text()
    assert len(harness.partner.received) == 1
