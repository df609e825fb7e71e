"""Helpers for the admin and audit API tests: the real gateway (create_app + add_admin_routes) with the
shipped partner profiles on an ephemeral loopback port, a fake analytics partner that records what it
receives, tokens minted with the development key, and a log capture to prove no raw subject id is logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.cli.token import mint_token
from gateway.config import Settings
from gateway.keys import GatewayKeys
from gateway.ledger import LedgerQuery
from gateway.proxy import RunningGateway

REPO = Path(__file__).resolve().parents[2]
SHIPPED_PROFILES = REPO / "partner_profiles"
# The shipped consent-gated route used end to end: Onebox statistics to Infinity Valley (VN).
ANALYTICS_PARTNER = "analytics-infinity-valley"
ANALYTICS_ROUTE = "ingest-usage"
ANALYTICS_PATH = "/v1/partners/analytics-infinity-valley/v1/usage"
ANALYTICS_CONSENT = "analytics"
RAW_SUBJECT = "u-100293-raw-subject"


def usage_body(subject_id: str = RAW_SUBJECT) -> dict[str, Any]:
    return {
        "user": {"id": subject_id, "country": "VN"},
        "device": {"model": "SM-A525F", "imei": "490154203237518"},
        "events": [{"name": "parcel_pickup", "count": 1}],
    }


@dataclass
class RecordingPartner:
    """A loopback partner that keeps every body it receives and accepts everything."""

    url: str = ""
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        return web.json_response({"accepted": True})


async def start_recording_partner() -> tuple[RecordingPartner, web.AppRunner]:
    partner = RecordingPartner()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", partner.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    partner.url = f"http://127.0.0.1:{runner.addresses[0][1]}/analytics"
    return partner, runner


def admin_settings(tmp_path: Path, keys_dir: Path) -> Settings:
    return replace(
        Settings(),
        listen="127.0.0.1:0",
        profiles_dir=SHIPPED_PROFILES,
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        keys_dir=keys_dir,
        dev_mode=True,
        checkpoint_every_seconds=3600.0,
        shutdown_grace_seconds=2.0,
    )


def dev_token(keys: GatewayKeys, settings: Settings, scopes: list[str], service: str) -> str:
    """A five-minute caller token signed with the development key, for the gateway under test."""
    assert keys.jwt_dev_private is not None
    return mint_token(keys.jwt_dev_private, subject=service, scopes=scopes,
                      issuer=settings.jwt_issuer, audience=settings.jwt_audience, ttl_seconds=300)


@dataclass
class AdminHarness:
    gateway: RunningGateway
    partner: RecordingPartner
    keys: GatewayKeys
    settings: Settings
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.gateway.url

    def token(self, scopes: list[str], service: str = "privacy-office") -> str:
        return dev_token(self.keys, self.settings, scopes, service)

    def auth(self, *scopes: str, service: str = "privacy-office") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(list(scopes), service)}"}

    async def ledger_records(self, **filters: Any) -> list[dict[str, Any]]:
        return await self.gateway.state.services.ledger.query(LedgerQuery(**filters))


@dataclass
class ThreadedGateway:
    """The gateway serving from its own thread and event loop, for synchronous clients (schemathesis)."""

    url: str
    keys: GatewayKeys
    settings: Settings


@dataclass
class LogCapture:
    """Every structlog event (the dict a renderer would write) and every stdlib log record of a test."""

    events: list[Any]
    caplog: pytest.LogCaptureFixture

    def text(self) -> str:
        return "\n".join([repr(event) for event in self.events] + [r.getMessage() for r in self.caplog.records])
