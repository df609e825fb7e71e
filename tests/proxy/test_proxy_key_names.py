"""Caller-chosen key, query and header names never reach the ledger or a problem body (review-privacy F3).

A map keyed by a phone number or an e-mail address (a contact book, `?kim@example.com=1`, a header
`X-Contact-...`) is ordinary; the names of undeclared fields are the caller's, so the ledger's
`fields_dropped` (append-only, hash-chained: it cannot be erased) and the 422 violations show an undeclared
field only under its declared parent's marker (`recipient.*`, `query:*`, `header:*`). Through the real
gateway, a fake partner and the SQLite ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from multidict import CIMultiDict
from proxy_harness import PARTNER_ID, PROFILE_YAML, GatewayHarness, shipment_body

PHONE = "+886912345678"
EMAIL = "kim.leak@example.com"

# One more route of the test carrier that refuses undeclared fields instead of dropping them.
STRICT_ROUTE = """
  - id: strict-order
    method: POST
    path: /orders
    purpose: delivery
    legal_basis: contract
    essential: true
    unknown_fields: reject
    free_text: redact
    request:
      body:
        order_id: keep
        note: {keep: {free_text: true}}
        contacts: drop
      query:
        lang: keep
    response:
      body:
        tracking_number: keep
"""


@pytest.fixture
def profiles_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "profiles"
    directory.mkdir()
    (directory / f"{PARTNER_ID}.yaml").write_text(PROFILE_YAML.rstrip() + "\n" + STRICT_ROUTE, encoding="utf-8")
    return directory


async def test_the_ledger_records_undeclared_names_only_under_their_parents_marker(harness: GatewayHarness) -> None:
    body = shipment_body()
    body["recipient"][PHONE] = "primary"  # a contact map keyed by phone
    body["device"][EMAIL] = True
    body["header:authorization"] = "x"  # cannot pass for a dropped header either
    headers = {**harness.auth(), f"X-Contact-{EMAIL.replace('@', '-at-')}": "1"}
    async with harness.session.post(f"{harness.url}/v1/partners/{PARTNER_ID}/shipments/S-1?{EMAIL}=x",
                                    json=body, headers=headers) as response:
        assert response.status == 200
    records = await harness.ledger_records()
    disclosure = next(record for record in records if record["kind"] == "disclosure")
    dropped = disclosure["fields_dropped"]
    everything = json.dumps(records, default=str)
    for value in (PHONE, EMAIL, "kim.leak", "x-contact", "header:authorization"):
        assert value not in everything
    # Names the profile writes are still reported by name; the caller's under the parent's marker.
    assert {"recipient.customer_id", "recipient.*", "device.*", "items[].*", "*", "query:*",
            "header:*"} <= set(dropped)
    assert all(path.endswith("*") or path.split(".")[-1].split("[")[0] in PROFILE_YAML for path in dropped)


async def test_a_refusal_of_undeclared_fields_names_only_their_parents(harness: GatewayHarness) -> None:
    body = {"order_id": "O-1", PHONE: "x", "contacts": {"a": 1}, EMAIL: {"note": "hi"}}
    async with harness.session.post(f"{harness.url}/v1/partners/{PARTNER_ID}/orders?{EMAIL}=1",
                                    json=body, headers=harness.auth()) as response:
        text = await response.text()
        assert response.status == 422
    assert all(value not in text for value in (PHONE, EMAIL, "kim.leak"))
    paths = {violation["path"] for violation in json.loads(text)["violations"]}
    assert paths == {"*", "query:*"}
    assert not harness.partner.received


async def test_a_header_sent_twice_is_named_only_when_the_route_declares_it(harness: GatewayHarness) -> None:
    contact = f"X-Contact-{EMAIL.replace('@', '-at-')}"
    for name, path in ((contact, "headers.*"), ("idempotency-key", "headers.Idempotency-Key")):
        headers = CIMultiDict(harness.auth())
        headers.add(name, "1")
        headers.add(name, "2")
        async with harness.session.post(f"{harness.url}/v1/partners/{PARTNER_ID}/shipments/S-1",
                                        json=shipment_body(), headers=headers) as response:
            text = await response.text()
            assert response.status == 400
        assert "kim.leak" not in text.lower()
        assert [v["path"] for v in json.loads(text)["violations"]] == [path]
    assert not harness.partner.received
