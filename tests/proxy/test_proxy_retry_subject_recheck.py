"""A retry of an idempotent route is a new disclosure, so it re-runs the subject check first: a hold or a
consent withdrawal made durable (through the admin API) while the earlier try is in flight stops the
retry. The earlier try keeps its disclosure and outcome, the retry gets a refusal record with its attempt
number and nothing more reaches the partner; the caller gets the subject refusal (review-subjects F3).
Real gateway on real sockets, a fake partner that fails the first try slowly, SQLite ledger."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from proxy_harness import PARTNER_ID, PROFILE_YAML, RAW_CUSTOMER, GatewayHarness, shipment_body

SHIPMENT = f"/v1/partners/{PARTNER_ID}/shipments/S-1"
PROMO = f"/v1/partners/{PARTNER_ID}/promotions"
FIRST_TRY_SECONDS = 0.6  # the partner holds the first try this long, then answers 502


@pytest.fixture
def profiles_dir(tmp_path: Path) -> Path:
    # The harness profile with its subject routes made idempotent (retries: 1), so a failed try is retried.
    text = PROFILE_YAML.replace("idempotent: false", "idempotent: true")
    directory = tmp_path / "profiles"
    directory.mkdir()
    (directory / f"{PARTNER_ID}.yaml").write_text(text, encoding="utf-8")
    return directory


class SlowlyFailingPartner:
    """Answers the first request after FIRST_TRY_SECONDS with 502, every later one at once with 200."""

    def __init__(self) -> None:
        self.url = ""
        self.received: list[bytes] = []
        self.first_try_arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.read())
        if len(self.received) == 1:
            self.first_try_arrived.set()
            await asyncio.sleep(FIRST_TRY_SECONDS)
            return web.json_response({"error": "busy"}, status=502)
        return web.json_response({"tracking_number": "T-1", "accepted": True})


@pytest.fixture
async def fake_partner() -> AsyncIterator[SlowlyFailingPartner]:
    partner = SlowlyFailingPartner()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", partner.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    partner.url = f"http://127.0.0.1:{runner.addresses[0][1]}/api"
    yield partner
    await runner.cleanup()


async def _admin(harness: GatewayHarness, what: str, body: dict[str, Any]) -> None:
    token = harness.token(["gateway:admin"], subject="privacy-office")
    response = await harness.session.post(f"{harness.url}/v1/admin/subjects/{what}", json=body,
                                          headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200, await response.read()


async def _records(harness: GatewayHarness) -> list[dict[str, Any]]:
    """This subject's records once the queued refusal landed (refusals and outcomes are not awaited)."""
    subject_ref = harness.keys.ledger.subject_ref(RAW_CUSTOMER)
    for _ in range(200):
        records = await harness.ledger_records(subject_ref=subject_ref)
        if any(r["kind"] == "refusal" for r in records):
            break
        await asyncio.sleep(0.01)
    return sorted(records, key=lambda r: r["time"])


async def _send_and_change_meanwhile(
    harness: GatewayHarness, path: str, body: dict[str, Any], headers: dict[str, str],
    change: tuple[str, dict[str, Any]],
) -> tuple[int, dict[str, Any]]:
    partner: SlowlyFailingPartner = harness.partner  # type: ignore[assignment]
    request = asyncio.create_task(harness.session.post(
        harness.url + path, data=json.dumps(body).encode(),
        headers={**headers, "Content-Type": "application/json"},
    ))
    await asyncio.wait_for(partner.first_try_arrived.wait(), 5)
    await _admin(harness, *change)  # durable before it answers, while try 1 is still at the partner
    response = await request
    return response.status, await response.json(content_type=None)


def _shape(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["kind"], r.get("action") or r.get("attempt"), r.get("status")) for r in records]


async def test_a_hold_placed_during_the_first_try_stops_the_retry(harness: GatewayHarness) -> None:
    status, problem = await _send_and_change_meanwhile(
        harness, SHIPMENT, shipment_body(), harness.auth(),
        ("hold", {"subject_id": RAW_CUSTOMER, "action": "place", "reason": "correction_pending"}),
    )
    assert status == 403
    assert problem["type"].endswith("subject-on-hold")
    assert len(harness.partner.received) == 1  # type: ignore[attr-defined]
    records = await _records(harness)
    assert _shape(records) == [
        ("disclosure", 1, None),
        ("registry", "hold_placed", None),
        ("outcome", 1, 502),
        ("refusal", 2, 403),
    ]
    assert records[-1]["reason"] == "subject_on_hold"


async def test_a_consent_withdrawal_during_the_first_try_stops_the_retry(harness: GatewayHarness) -> None:
    await _admin(harness, "consent", {"subject_id": RAW_CUSTOMER, "purpose": "marketing", "action": "grant"})
    status, problem = await _send_and_change_meanwhile(
        harness, PROMO, {"customer_id": RAW_CUSTOMER, "segment": "s1"},
        harness.auth([f"disclose:{PARTNER_ID}:marketing"]),
        ("consent", {"subject_id": RAW_CUSTOMER, "purpose": "marketing", "action": "withdraw"}),
    )
    assert status == 403
    assert problem["type"].endswith("consent-required")
    assert len(harness.partner.received) == 1  # type: ignore[attr-defined]
    records = await _records(harness)
    assert _shape(records)[1:] == [
        ("disclosure", 1, None),
        ("registry", "consent_withdrawn", None),
        ("outcome", 1, 502),
        ("refusal", 2, 403),
    ]
    assert records[-1]["reason"] == "consent_withdrawn"


async def test_without_a_change_the_retry_still_goes_out(harness: GatewayHarness) -> None:
    response = await harness.session.post(harness.url + SHIPMENT, json=shipment_body(), headers=harness.auth())
    assert response.status == 200, await response.read()
    assert len(harness.partner.received) == 2  # type: ignore[attr-defined]
    disclosures = await harness.ledger_records(kind="disclosure")
    assert [d["attempt"] for d in disclosures] == [1, 2]


async def test_an_unreadable_registry_at_the_retry_fails_closed(harness: GatewayHarness) -> None:
    # The registry goes away (closed, as at a shutdown) while try 1 is at the partner: the re-check cannot
    # read the subject's status, so the retry is not sent (500), and the ledger says so for attempt 2.
    partner: SlowlyFailingPartner = harness.partner  # type: ignore[assignment]
    request = asyncio.create_task(harness.session.post(harness.url + SHIPMENT, json=shipment_body(),
                                                       headers=harness.auth()))
    await asyncio.wait_for(partner.first_try_arrived.wait(), 5)
    await harness.gateway.state.services.subjects.close()
    response = await request
    assert response.status == 500, await response.read()
    assert len(partner.received) == 1
    records = await _records(harness)
    assert _shape(records) == [("disclosure", 1, None), ("outcome", 1, 502), ("refusal", 2, 500)]
