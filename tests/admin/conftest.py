"""Fixtures for the admin and audit API tests (helpers in admin_helpers.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog
from admin_helpers import (
    AdminHarness,
    LogCapture,
    ThreadedGateway,
    admin_settings,
    start_recording_partner,
)
from aiohttp import web

from gateway.keys import GatewayKeys
from gateway.proxy import RunningGateway, start_gateway


@pytest.fixture
async def admin(tmp_path: Path, keys_dir: Path, gateway_keys: GatewayKeys) -> AsyncIterator[AdminHarness]:
    partner, partner_runner = await start_recording_partner()
    settings = admin_settings(tmp_path, keys_dir)
    gateway = await start_gateway(settings, environ={"PARTNER_URL_ANALYTICS_INFINITY_VALLEY": partner.url})
    session = aiohttp.ClientSession()
    try:
        yield AdminHarness(gateway, partner, gateway_keys, settings, session)
    finally:
        await session.close()
        await gateway.stop()
        await partner_runner.cleanup()


@pytest.fixture
def threaded_admin_gateway(tmp_path: Path, keys_dir: Path, gateway_keys: GatewayKeys) -> Iterator[ThreadedGateway]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway-under-test", daemon=True)
    thread.start()
    settings = admin_settings(tmp_path, keys_dir)

    async def start() -> tuple[RunningGateway, web.AppRunner]:
        partner, partner_runner = await start_recording_partner()
        gateway = await start_gateway(settings, environ={"PARTNER_URL_ANALYTICS_INFINITY_VALLEY": partner.url})
        return gateway, partner_runner

    gateway, partner_runner = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield ThreadedGateway(gateway.url, gateway_keys, settings)
    finally:
        async def stop() -> None:
            await gateway.stop()
            await partner_runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> Iterator[LogCapture]:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        yield LogCapture(events, caplog)
