"""Re-identification is bound to the exchange (review-partner F1), through the real server: a partner that
answers a call about subject B with subject A's token (A on hold meanwhile), or with a phone-shaped token
the gateway never issued, gets nothing decrypted: the caller receives 502 `upstream-reidentify` naming the
field, the outcome record and the metrics say so, and no phone (A's or a stranger's) reaches the caller or
the ledger. The request's own token still comes back as the caller's value, and that is recorded too.
Real gateway, fake partner on 127.0.0.1, SQLite ledger."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from proxy_harness import PARTNER_ID, RAW_CUSTOMER, RAW_PHONE, GatewayHarness, shipment_body

SHIPMENT = f"/v1/partners/{PARTNER_ID}/shipments/S-1"
CUSTOMER_B = "CUSTOMER-77"
PHONE_B = "+886987654321"
NEVER_ISSUED = "+886900000001"  # phone-shaped: FF1 would "decrypt" it to some stranger's number


async def _ship(harness: GatewayHarness, customer: str, phone: str) -> tuple[int, dict[str, str], bytes]:
    body = shipment_body()
    body["recipient"].update(customer_id=customer, phone=phone)
    response = await harness.session.post(harness.url + SHIPMENT, data=json.dumps(body).encode(),
                                          headers={**harness.auth(), "Content-Type": "application/json"})
    return response.status, dict(response.headers), await response.read()


async def _outcome_of(harness: GatewayHarness, disclosure_id: str) -> dict[str, Any]:
    """The outcome of `disclosure_id` once it landed (outcomes are queued, not awaited)."""
    for _ in range(200):
        outcomes = [r for r in await harness.ledger_records(kind="outcome") if r["disclosure_id"] == disclosure_id]
        if outcomes:
            [outcome] = outcomes
            return outcome
        await asyncio.sleep(0.01)
    raise AssertionError("no outcome recorded")


def _sample(text: str, result: str) -> float:
    prefix = "gateway_reidentifications_total{"
    for line in text.splitlines():
        if line.startswith(prefix) and f'result="{result}"' in line and 'route="create-shipment"' in line:
            return float(line.split()[-1])
    return 0.0


def _assert_refused(status: int, headers: dict[str, str], body: bytes, *secrets: str) -> dict[str, Any]:
    assert status == 502, body
    problem: dict[str, Any] = json.loads(body)
    assert problem["type"].endswith("upstream-reidentify")
    assert [v["path"] for v in problem["violations"]] == ["recipient.phone"]
    for secret in secrets:
        assert secret not in body.decode()
    assert headers.get("X-Disclosure-Id")  # the request did leave: the caller can tell, and which record
    return problem


async def test_another_subjects_token_is_not_reidentified_even_during_a_hold(harness: GatewayHarness) -> None:
    status, _, body = await _ship(harness, RAW_CUSTOMER, RAW_PHONE)
    assert status == 200
    assert json.loads(body)["recipient"]["phone"] == RAW_PHONE  # the request's own token comes back
    token_a = json.loads(harness.partner.received[-1].body)["recipient"]["phone"]
    assert token_a != RAW_PHONE

    admin = harness.token(["gateway:admin"], subject="privacy-office")
    hold = await harness.session.post(f"{harness.url}/v1/admin/subjects/hold",
                                      json={"subject_id": RAW_CUSTOMER, "action": "place", "reason": "dispute"},
                                      headers={"Authorization": f"Bearer {admin}"})
    assert hold.status == 200
    assert (await _ship(harness, RAW_CUSTOMER, RAW_PHONE))[0] == 403

    harness.partner.reply_phone = token_a  # the partner answers B's call with A's token
    status, headers, body = await _ship(harness, CUSTOMER_B, PHONE_B)
    _assert_refused(status, headers, body, RAW_PHONE, token_a)

    disclosure_id = headers["X-Disclosure-Id"]
    [disclosure] = [r for r in await harness.ledger_records(kind="disclosure") if r["id"] == disclosure_id]
    assert disclosure["subject_ref"] == harness.keys.ledger.subject_ref(CUSTOMER_B)
    outcome = await _outcome_of(harness, disclosure_id)
    assert outcome["status"] == 502
    assert outcome["reason"] == "upstream-reidentify"
    assert outcome["detail"] == {"reidentify_refused": ["recipient.phone"]}
    everything = json.dumps(await harness.ledger_records())
    assert RAW_PHONE not in everything
    assert token_a not in everything


async def test_a_token_the_gateway_never_issued_is_not_decrypted(harness: GatewayHarness) -> None:
    harness.partner.reply_phone = NEVER_ISSUED
    stranger = harness.gateway.state.services.pseudonymiser.reidentify(PARTNER_ID, "phone", NEVER_ISSUED)
    status, headers, body = await _ship(harness, RAW_CUSTOMER, RAW_PHONE)
    _assert_refused(status, headers, body, stranger, NEVER_ISSUED, RAW_PHONE)
    text = await (await harness.session.get(harness.url + "/metrics")).text()
    assert _sample(text, "refused") == 1
    assert _sample(text, "done") == 0


async def test_the_requests_own_token_is_reidentified_and_recorded(harness: GatewayHarness) -> None:
    status, headers, body = await _ship(harness, RAW_CUSTOMER, RAW_PHONE)
    assert status == 200
    assert json.loads(body) == {"tracking_number": "T-1", "recipient": {"phone": RAW_PHONE}}
    outcome = await _outcome_of(harness, headers["X-Disclosure-Id"])
    assert outcome["status"] == 200
    assert outcome["detail"] == {"reidentified": {"recipient.phone": 1}}
    assert RAW_PHONE not in json.dumps(await harness.ledger_records())
    text = await (await harness.session.get(harness.url + "/metrics")).text()
    assert _sample(text, "done") == 1
    assert _sample(text, "refused") == 0
