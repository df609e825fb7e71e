"""A blank data subject id (only white space or invisible format characters) names nobody: the egress
path refuses it (422, the subject path marked "required", no value echoed) before a disclosure is recorded
or a byte is sent, instead of checking and recording the reference every blank id shares (review-subjects
F4). Real gateway on real sockets, fake partner, SQLite ledger."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from proxy_harness import RAW_CUSTOMER, GatewayHarness, shipment_body
from test_proxy_e2e import assert_problem, post_shipment

BLANK_IDS = ["", "   ", "\u3000", "\t\n", "\u00a0\u2003", "\u200b", "\u200b \ufeff\u2060"]


async def _refusals(harness: GatewayHarness, count: int) -> list[dict[str, Any]]:
    """The ledger's refusal records once `count` of them landed (they are queued, not awaited)."""
    for _ in range(200):
        records = await harness.ledger_records(kind="refusal")
        if len(records) >= count:
            return records
        await asyncio.sleep(0.01)
    return await harness.ledger_records(kind="refusal")


@pytest.mark.parametrize("blank", BLANK_IDS)
async def test_a_blank_subject_id_is_refused_before_anything_is_recorded_or_sent(
    harness: GatewayHarness, blank: str
) -> None:
    body = shipment_body()
    body["recipient"]["customer_id"] = blank
    response = await post_shipment(harness, body)
    raw = await response.read()
    headers = {k.lower(): v for k, v in response.headers.items()}
    problem = assert_problem(response.status, headers, raw, 422)
    assert problem["violations"] == [{"path": "recipient.customer_id", "reason": "required"}]
    assert harness.partner.received == []
    assert await harness.ledger_records(kind="disclosure") == []
    [refusal] = await _refusals(harness, 1)
    assert (refusal["status"], refusal.get("subject_ref")) == (422, None)


async def test_a_real_id_with_surrounding_blanks_is_the_same_subject(harness: GatewayHarness) -> None:
    for spelling in (RAW_CUSTOMER, f" \u3000{RAW_CUSTOMER}\t"):
        body = shipment_body()
        body["recipient"]["customer_id"] = spelling
        response = await post_shipment(harness, body)
        assert response.status == 200, await response.read()
    records = await harness.ledger_records(kind="disclosure")
    assert {r["subject_ref"] for r in records} == {harness.keys.ledger.subject_ref(RAW_CUSTOMER)}
    assert json.dumps(records).find(RAW_CUSTOMER) == -1
