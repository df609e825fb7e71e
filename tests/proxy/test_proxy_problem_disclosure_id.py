"""A problem answer after a disclosure record carries that record's id (review-partner F9): when the
request was forwarded but the answer is a 502 or 504 (partner 5xx, malformed answer, timeout), the caller
learns that its data may have reached the partner and which ledger record says what was sent, the last
try's on a retried route. A refusal before any disclosure carries none. Real gateway, fake partner on
127.0.0.1, SQLite ledger."""

from __future__ import annotations

import json

import pytest
from proxy_harness import PARTNER_ID, GatewayHarness, shipment_body

SHIPMENT = f"/v1/partners/{PARTNER_ID}/shipments/S-1"
TRACK = f"/v1/partners/{PARTNER_ID}/tracking/T-1"


async def _ship(harness: GatewayHarness, scopes: list[str] | None = None) -> tuple[int, dict[str, str]]:
    response = await harness.session.post(harness.url + SHIPMENT, data=json.dumps(shipment_body()).encode(),
                                          headers={**harness.auth(scopes), "Content-Type": "application/json"})
    await response.read()
    return response.status, dict(response.headers)


@pytest.mark.parametrize(("mode", "status"), [("5xx", 502), ("malformed", 502), ("redirect", 502), ("hang", 504)])
async def test_a_forwarded_call_that_fails_names_its_disclosure(
        harness: GatewayHarness, mode: str, status: int) -> None:
    harness.partner.mode = mode
    got, headers = await _ship(harness)
    assert got == status
    assert headers["Content-Type"].startswith("application/problem+json")
    [disclosure] = await harness.ledger_records(kind="disclosure")
    assert headers["X-Disclosure-Id"] == disclosure["id"]
    assert len(harness.partner.received) == 1


async def test_a_retried_call_names_the_last_tries_disclosure(harness: GatewayHarness) -> None:
    harness.partner.mode = "5xx"
    response = await harness.session.get(harness.url + TRACK, headers={**harness.auth(), "X-Purpose": "delivery"})
    assert response.status == 502
    disclosures = await harness.ledger_records(kind="disclosure", route="track")
    [last] = [d for d in disclosures if d["attempt"] == 2]
    assert response.headers["X-Disclosure-Id"] == last["id"]


async def test_a_refusal_before_any_disclosure_names_none(harness: GatewayHarness) -> None:
    status, headers = await _ship(harness, scopes=[f"disclose:{PARTNER_ID}:returns"])
    assert status == 403
    assert "X-Disclosure-Id" not in headers
    assert await harness.ledger_records(kind="disclosure") == []
