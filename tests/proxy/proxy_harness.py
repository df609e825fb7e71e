"""The egress proxy tests' harness: a fake partner that records the exact bytes it receives, a test
partner profile pointing at it, and the real gateway on an ephemeral port. A uniquely named module (not
conftest) so the test modules can import it when the whole suite runs; conftest.py exposes the fixtures."""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.cli.token import mint_token
from gateway.config import Settings
from gateway.keys import GatewayKeys
from gateway.proxy import RunningGateway, start_gateway

PARTNER_TOKEN = "partner-secret-7f3a"
PARTNER_ID = "carrier-test"

# A courier in TW: a shipment route (one purpose, not idempotent), a tracking route (two purposes,
# idempotent, retried once), a route needing consent, and a legal-obligation route.
PROFILE_YAML = """
id: carrier-test
name: Test carrier
category: carrier
jurisdiction: TW
description: Fake partner for the proxy tests.
upstream:
  base_url: ${PARTNER_URL_CARRIER_TEST}
  auth:
    type: bearer
    token: ${PARTNER_TOKEN_CARRIER_TEST}
  timeouts: {connect: 1.0, total: 1.5}
  retries: 1
limits:
  max_body_bytes: 2048
  rate_per_second: 1000
  burst: 1000
  max_concurrency: 16
consent_purposes: [marketing]
routes:
  - id: create-shipment
    method: POST
    path: /shipments/{shipment_id}
    purpose: delivery
    legal_basis: contract
    subject: {from: body, path: recipient.customer_id}
    residency: {from: body, path: recipient.country}
    consent: null
    essential: true
    allowed_during_hold: false
    idempotent: false
    legal_reference_required: false
    media_types: [application/json]
    unknown_fields: drop
    free_text: redact
    request:
      schema:
        type: object
        required: [order_id, recipient]
        properties:
          order_id: {type: string}
          recipient:
            type: object
            required: [customer_id, country]
            properties:
              customer_id: {type: string}
              country: {type: string}
              name: {type: string}
              phone: {type: string}
          device:
            type: object
            properties:
              imei: {type: string}
          items:
            type: array
            items: {type: object}
      body:
        order_id: keep
        recipient.name: keep
        recipient.phone: {pseudonymise: {type: phone, mode: fpe}}
        recipient.country: keep
        recipient.customer_id: drop
        device.imei: {pseudonymise: {type: imei, mode: hmac}}
        items[].sku: keep
      path:
        shipment_id: keep
      headers:
        Idempotency-Key: keep
    response:
      body:
        tracking_number: keep
        recipient.phone: {reidentify: {type: phone}}
      headers:
        Content-Type: keep
  - id: track
    method: GET
    path: /tracking/{tracking_number}
    purposes: [delivery, returns]
    legal_basis: contract
    essential: true
    allowed_during_hold: true
    idempotent: true
    legal_reference_required: false
    media_types: [application/json]
    unknown_fields: drop
    request:
      query:
        lang: keep
      path:
        tracking_number: keep
    response:
      body:
        status: keep
      headers:
        Content-Type: keep
  - id: promo
    method: POST
    path: /promotions
    purpose: marketing
    legal_basis: consent
    subject: {from: body, path: customer_id}
    consent: marketing
    essential: false
    allowed_during_hold: false
    idempotent: false
    legal_reference_required: false
    media_types: [application/json]
    unknown_fields: drop
    request:
      schema:
        type: object
        required: [customer_id]
        properties:
          customer_id: {type: string}
          segment: {type: string}
      body:
        segment: keep
    response:
      body:
        accepted: keep
"""

# A raw identifier used in requests: none of these may reach the partner.
RAW_PHONE = "+886912345678"
RAW_IMEI = "490154203237518"
RAW_CUSTOMER = "CUSTOMER-42"


@dataclass
class Received:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class FakePartner:
    """An aiohttp server on 127.0.0.1 that records every request byte for byte and answers per `mode`."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    mode: str = "ok"  # ok | 5xx | redirect | hang | slow | malformed | big (a 4 MB tracking answer)
    # When set, the shipment answer carries this as recipient.phone instead of echoing the token it got.
    reply_phone: str | None = None
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.method, request.raw_path, list(request.headers.items()), body))
        if self.mode == "5xx":
            return web.json_response({"error": "down"}, status=503)
        if self.mode == "redirect":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
        if self.mode == "hang":
            await asyncio.sleep(30)
        if self.mode == "slow":
            await asyncio.sleep(0.5)
        if self.mode == "malformed":
            return web.Response(body=b'{"tracking_number": "T-1",', content_type="application/json")
        if "/tracking/" in request.path and self.mode == "big":
            return web.json_response({"status": "x" * 4_000_000})
        if "/tracking/" in request.path:
            return web.json_response({"status": "in_transit", "courier_note": "left at door"})
        if request.path.endswith("/promotions"):
            return web.json_response({"accepted": True})
        sent: dict[str, Any] = {}
        if body:
            import json

            sent = json.loads(body)
        # Echo the (pseudonymised) phone back, as a partner's confirmation would, plus a field that the
        # response policy does not allow.
        return web.json_response({
            "tracking_number": "T-1",
            "recipient": {"phone": self.reply_phone or sent.get("recipient", {}).get("phone")},
            "internal_cost": 12.5,
        })

    def headers_of(self, index: int = -1) -> dict[str, str]:
        return {k.lower(): v for k, v in self.received[index].headers}


@pytest.fixture
async def fake_partner() -> AsyncIterator[FakePartner]:
    partner = FakePartner()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", partner.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    partner.url = f"http://127.0.0.1:{port}/api"
    partner.runner = runner
    yield partner
    await runner.cleanup()


@pytest.fixture
def profiles_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "profiles"
    directory.mkdir()
    (directory / f"{PARTNER_ID}.yaml").write_text(PROFILE_YAML, encoding="utf-8")
    return directory


@pytest.fixture
def settings(tmp_path: Path, keys_dir: Path, profiles_dir: Path) -> Settings:
    return replace(
        Settings(),
        listen="127.0.0.1:0",
        profiles_dir=profiles_dir,
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        keys_dir=keys_dir,
        dev_mode=True,
        checkpoint_every_seconds=3600.0,
        shutdown_grace_seconds=5.0,
    )


@dataclass
class GatewayHarness:
    gateway: RunningGateway
    partner: FakePartner
    keys: GatewayKeys
    settings: Settings
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.gateway.url

    def token(self, scopes: list[str], subject: str = "order-service") -> str:
        assert self.keys.jwt_dev_private is not None
        return mint_token(
            self.keys.jwt_dev_private, subject=subject, scopes=scopes, issuer=self.settings.jwt_issuer,
            audience=self.settings.jwt_audience, ttl_seconds=300,
        )

    def auth(self, scopes: list[str] | None = None) -> dict[str, str]:
        chosen = scopes if scopes is not None else [f"disclose:{PARTNER_ID}:delivery", f"disclose:{PARTNER_ID}:returns"]
        return {"Authorization": f"Bearer {self.token(chosen)}"}

    async def ledger_records(self, **filters: Any) -> list[dict[str, Any]]:
        from gateway.ledger import LedgerQuery

        return await self.gateway.state.services.ledger.query(LedgerQuery(**filters))


def partner_environ(partner: FakePartner) -> dict[str, str]:
    return {"PARTNER_URL_CARRIER_TEST": partner.url, "PARTNER_TOKEN_CARRIER_TEST": PARTNER_TOKEN}


@asynccontextmanager
async def running_harness(
    settings: Settings, fake_partner: FakePartner, gateway_keys: GatewayKeys
) -> AsyncIterator[GatewayHarness]:
    """A gateway on `settings` in front of the fake partner, and a client session; stopped on exit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gateway = await start_gateway(settings, environ=partner_environ(fake_partner))
    session = aiohttp.ClientSession(auto_decompress=False)
    try:
        yield GatewayHarness(gateway, fake_partner, gateway_keys, settings, session)
    finally:
        await session.close()
        await gateway.stop()


@pytest.fixture
async def harness(
    settings: Settings, fake_partner: FakePartner, gateway_keys: GatewayKeys
) -> AsyncIterator[GatewayHarness]:
    async with running_harness(settings, fake_partner, gateway_keys) as running:
        yield running


def request_id_for(label: str) -> str:
    """A caller's X-Request-Id named by `label`, in a shape the gateway propagates (a UUID; it replaces
    any other shape with one of its own)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, label))


def shipment_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_id": "O-1001",
        "recipient": {"customer_id": RAW_CUSTOMER, "country": "KR", "name": "Kim", "phone": RAW_PHONE,
                      "email": "kim@example.com"},
        "device": {"imei": RAW_IMEI, "imsi": "450051234567890"},
        "items": [{"sku": "SKU-1", "price": 10}],
        "note": "call me",
    }
    body.update(overrides)
    return body
