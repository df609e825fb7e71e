"""Operating the gateway: profile reload (admin endpoint; good and bad sets), graceful shutdown with a
request in flight, the one JSON log line per request without personal values."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import structlog
from proxy_harness import PARTNER_ID, RAW_CUSTOMER, RAW_IMEI, RAW_PHONE, GatewayHarness, shipment_body

from gateway.ledger import LedgerQuery, open_ledger
from gateway.logs import configure_logging

SHIPMENT = f"/v1/partners/{PARTNER_ID}/shipments/S-1"


async def send_shipment(harness: GatewayHarness) -> int:
    response = await harness.session.post(
        harness.url + SHIPMENT, data=json.dumps(shipment_body()).encode(),
        headers={**harness.auth(), "Content-Type": "application/json"},
    )
    await response.read()
    return response.status


async def reload(harness: GatewayHarness, scopes: list[str]) -> tuple[int, dict[str, object]]:
    response = await harness.session.post(harness.url + "/v1/admin/reload", headers=harness.auth(scopes))
    return response.status, await response.json(content_type=None)


async def test_reload_swaps_a_good_set_and_refuses_a_bad_one(harness: GatewayHarness, profiles_dir: Path) -> None:
    refreezes: list[int] = []
    harness.gateway.state.after_reload = lambda: refreezes.append(1)  # `gateway serve` refreezes the heap here
    status, body = await reload(harness, [f"disclose:{PARTNER_ID}:delivery"])
    assert status == 403
    assert body["type"] == "urn:partner-data-gateway:problem:scope-missing"

    # A good change: the recipient's name is no longer sent.
    profile = profiles_dir / f"{PARTNER_ID}.yaml"
    original = profile.read_text(encoding="utf-8")
    profile.write_text(original.replace("        recipient.name: keep\n", "        recipient.name: drop\n"),
                       encoding="utf-8")
    status, body = await reload(harness, ["gateway:admin"])
    assert (status, body) == (200, {"result": "ok", "partners": 1, "routes": 3})
    assert refreezes == [1]
    assert await send_shipment(harness) == 200
    assert "name" not in json.loads(harness.partner.received[-1].body)["recipient"]

    # A bad set (a route with an unknown action): refused with file and line, the running set stays.
    profile.write_text(original.replace("        recipient.name: keep\n", "        recipient.name: publish\n"),
                       encoding="utf-8")
    status, body = await reload(harness, ["gateway:admin"])
    assert status == 422
    assert body["type"] == "urn:partner-data-gateway:problem:profiles-rejected"
    assert refreezes == [1]  # a refused set swaps nothing in
    assert any(f"{PARTNER_ID}.yaml" in v["path"] for v in body["violations"])  # type: ignore[union-attr]
    assert await send_shipment(harness) == 200
    assert "name" not in json.loads(harness.partner.received[-1].body)["recipient"]

    text = await (await harness.session.get(harness.url + "/metrics")).text()
    assert 'gateway_profile_reloads_total{result="ok"} 1.0' in text
    assert 'gateway_profile_reloads_total{result="error"} 1.0' in text


async def test_graceful_shutdown_drains_in_flight_requests_and_checkpoints_the_ledger(
    harness: GatewayHarness,
) -> None:
    harness.partner.mode = "slow"  # answers after 0.5 s
    in_flight = asyncio.create_task(send_shipment(harness))
    for _ in range(200):
        if harness.partner.received:
            break
        await asyncio.sleep(0.01)
    assert harness.partner.received, "the request did not reach the partner"
    await harness.gateway.stop()
    assert await in_flight == 200
    with pytest.raises(OSError):
        await asyncio.open_connection(harness.gateway.host, harness.gateway.port)

    ledger = open_ledger(harness.settings.ledger_url, harness.keys.ledger)
    await ledger.start()
    try:
        records = await ledger.query(LedgerQuery())
    finally:
        await ledger.close()
    kinds = [r["kind"] for r in records]
    assert kinds[:2] == ["disclosure", "outcome"]
    assert kinds[-1] == "checkpoint"  # written by the close at shutdown


async def test_one_json_log_line_per_request_without_personal_values(
    harness: GatewayHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info")
    try:
        capsys.readouterr()
        assert await send_shipment(harness) == 200
        response = await harness.session.get(
            f"{harness.url}/v1/partners/{PARTNER_ID}/tracking/{RAW_PHONE}?lang={RAW_IMEI}",
            headers={**harness.auth(), "X-Purpose": "delivery"})
        assert response.status == 200
        bad = json.dumps(shipment_body(device={"imei": RAW_IMEI[:-1] + "0"})).encode()
        response = await harness.session.post(harness.url + SHIPMENT, data=bad,
                                              headers={**harness.auth(), "Content-Type": "application/json"})
        assert response.status == 422
        await asyncio.sleep(0.05)
        err = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "request"]
    assert len(requests) == 3
    first = requests[0]
    assert first["status"] == 200
    assert first["caller"] == "order-service"
    assert first["partner"] == PARTNER_ID
    assert first["route"] == "create-shipment"
    assert first["fields_kept"] > 0
    assert first["fields_transformed"] == 2
    assert first["fields_dropped"] > 0
    assert isinstance(first["latency_ms"], float)
    assert requests[2]["status"] == 422
    for value in (RAW_PHONE, RAW_IMEI, RAW_IMEI[:-1] + "0", RAW_CUSTOMER, "kim@example.com", "Kim"):
        assert value not in err
