"""The key-set metrics through the real gateway's /metrics: loads by result, the time of the last good
load and the number of usable keys, with a JWKS URL on 127.0.0.1 that fails and recovers, and with the
development key."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest
from aiohttp import web
from proxy_harness import FakePartner, GatewayHarness, running_harness

from gateway.auth import key_thumbprint, public_jwk
from gateway.config import Settings
from gateway.keys import GatewayKeys


@dataclass
class Jwks:
    keys: list[dict[str, object]]
    status: int = 200
    fetches: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": self.keys}, status=self.status)


@pytest.fixture
async def jwks(gateway_keys: GatewayKeys) -> AsyncIterator[tuple[Jwks, str]]:
    assert gateway_keys.jwt_dev_public is not None
    # The development key published as a JWKS: harness tokens carry its thumbprint as kid.
    member = {**public_jwk(gateway_keys.jwt_dev_public), "kid": key_thumbprint(gateway_keys.jwt_dev_public)}
    server = Jwks(keys=[member])
    app = web.Application()
    app.router.add_get("/jwks.json", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield server, f"http://127.0.0.1:{runner.addresses[0][1]}/jwks.json"
    await runner.cleanup()


async def scrape(harness: GatewayHarness) -> dict[str, float]:
    text = await (await harness.session.get(harness.url + "/metrics")).text()
    found = re.findall(r"^(gateway_jwks_[a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.MULTILINE)
    return {name: float(value) for name, value in found}


OK = 'gateway_jwks_refreshes_total{result="ok"}'
ERROR = 'gateway_jwks_refreshes_total{result="error"}'
LAST = "gateway_jwks_last_success_timestamp_seconds"
KEYS = "gateway_jwks_keys"


async def wait_for(harness: GatewayHarness, name: str, value: float) -> dict[str, float]:
    deadline = time.monotonic() + 5
    while (metrics := await scrape(harness))[name] < value:
        assert time.monotonic() < deadline, metrics
        await asyncio.sleep(0.02)
    return metrics


async def test_failed_refreshes_and_the_age_of_the_key_set_are_exported(
    settings: Settings, fake_partner: FakePartner, gateway_keys: GatewayKeys, jwks: tuple[Jwks, str],
) -> None:
    server, url = jwks
    url_settings = replace(settings, jwt_keys=url, jwks_cache_seconds=0.2, jwks_refresh_min_interval_seconds=0.05)
    started = time.time()
    async with running_harness(url_settings, fake_partner, gateway_keys) as harness:
        metrics = await scrape(harness)
        assert (metrics[OK], metrics[ERROR], metrics[KEYS]) == (1, 0, 1)  # the fetch at start
        assert started - 1 <= metrics[LAST] <= time.time()
        first_success = metrics[LAST]
        token = harness.auth()

        # The identity provider fails: each stale-set refresh (started by a request) counts an error, and
        # the last success stays where it was while the old set keeps serving.
        server.status = 503
        for failures in (1, 2):
            await asyncio.sleep(0.25)
            assert (await harness.session.get(harness.url + "/v1/admin/partners", headers=token)).status == 403
            metrics = await wait_for(harness, ERROR, failures)
        assert metrics[ERROR] == 2
        assert server.fetches == 3
        assert (metrics[OK], metrics[LAST], metrics[KEYS]) == (1, first_success, 1)

        # It recovers, now publishing no usable key: a good load (the document was obtained) with 0 keys.
        server.status = 200
        published, server.keys = server.keys, []
        await asyncio.sleep(0.25)
        await harness.session.get(harness.url + "/v1/admin/partners", headers=token)
        metrics = await wait_for(harness, OK, 2)
        assert metrics[ERROR] == 2
        assert metrics[LAST] > first_success
        assert metrics[KEYS] == 0
        server.keys = published


async def test_the_key_file_read_at_start_counts_as_a_good_load(harness: GatewayHarness) -> None:
    metrics = await scrape(harness)  # the development key
    assert (metrics[OK], metrics[ERROR], metrics[KEYS]) == (1, 0, 1)
    assert metrics[LAST] > 0
