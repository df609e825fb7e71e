"""Free text end to end: through the real gateway, an identifier in a kept free-text field never reaches
the partner, even next to another number (privacy review F5) or in a spelling the validators accept
(F1). The harness profile gains a `delivery_note: {keep: {free_text: true}}` on create-shipment
(`free_text: redact`), and a scan limit (`free_text_max_chars: 600`) under its 2048-byte body limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from proxy_harness import PARTNER_ID, PROFILE_YAML, RAW_IMEI, GatewayHarness, shipment_body

SHIPMENT = f"/v1/partners/{PARTNER_ID}/shipments/S-1"
_BODY_ORDER_ID = "      body:\n        order_id: keep\n"
_FREE_TEXT_MODE = "    free_text: redact\n"


@pytest.fixture
def profiles_dir(tmp_path: Path) -> Path:
    assert PROFILE_YAML.count(_BODY_ORDER_ID) == 1  # create-shipment's body actions
    assert PROFILE_YAML.count(_FREE_TEXT_MODE) == 1  # create-shipment's mode
    profile = PROFILE_YAML.replace(
        _BODY_ORDER_ID, _BODY_ORDER_ID + "        delivery_note: {keep: {free_text: true}}\n").replace(
        _FREE_TEXT_MODE, _FREE_TEXT_MODE + "    free_text_max_chars: 600\n")
    directory = tmp_path / "profiles"
    directory.mkdir()
    (directory / f"{PARTNER_ID}.yaml").write_text(profile, encoding="utf-8")
    return directory


@pytest.mark.parametrize(("note", "secrets", "expected"), [
    ("Box 12 490154203237518", [RAW_IMEI], "Box 12 [redacted:imei]"),
    ("call 0084 912 345 678 or tab imei 4901542\t03237518, mac 001a2b3c4d5e",
     ["912 345 678", "03237518", "001a2b3c4d5e"],
     "call [redacted:phone] or tab imei [redacted:imei], mac [redacted:mac]"),
])
async def test_partner_never_receives_an_identifier_from_a_delivery_note(
        harness: GatewayHarness, note: str, secrets: list[str], expected: str) -> None:
    async with harness.session.post(f"{harness.url}{SHIPMENT}", json=shipment_body(delivery_note=note),
                                    headers=harness.auth()) as response:
        assert response.status == 200, await response.text()
    [received] = harness.partner.received
    for secret in secrets:
        assert secret.encode() not in received.body
    assert f'"delivery_note":"{expected}"'.encode() in received.body


async def test_a_delivery_note_over_the_scan_limit_is_refused_unscanned_and_unforwarded(
        harness: GatewayHarness) -> None:
    """One request's free text is scanned up to the route's `free_text_max_chars`: a longer note, under
    the body limit, is refused with 422 `free-text-too-long` naming the path only, before anything
    reaches the partner (the scan runs on the event loop, so its cost per request is bounded)."""
    note = "box 12, 3;" * 59 + " +84 912 345 678"  # 606 characters, digit-heavy, ending in a phone
    async with harness.session.post(f"{harness.url}{SHIPMENT}", json=shipment_body(delivery_note=note),
                                    headers=harness.auth()) as response:
        text = await response.text()
        assert response.status == 422, text
    problem = json.loads(text)
    assert problem["type"].endswith(":free-text-too-long")
    assert problem["violations"] == [{"path": "delivery_note", "reason": "more free text than the route scans "
                                                                         "(600 characters per request in all)"}]
    assert "box 12" not in text
    assert "912" not in text
    assert not harness.partner.received
    async with harness.session.post(f"{harness.url}{SHIPMENT}", json=shipment_body(delivery_note=note[-600:]),
                                    headers=harness.auth()) as response:
        assert response.status == 200, await response.text()
    [received] = harness.partner.received
    assert b"912 345 678" not in received.body  # within the limit: scanned and redacted as ever
