"""A request head that has begun must arrive whole within `request_head_timeout_seconds`: a client that
trickles header bytes gets 408 and the connection is closed; a head that completes in time is served,
however long its body then takes (the body is bounded by the route's limits, not by this timer)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from proxy_harness import FakePartner, GatewayHarness, running_harness
from test_proxy_http_server import SHIPMENT, Conn, assert_problem, shipment

from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from gateway.keys import GatewayKeys


@pytest.fixture
async def quick_harness(
    settings: Settings, fake_partner: FakePartner, gateway_keys: GatewayKeys
) -> AsyncIterator[GatewayHarness]:
    quick = replace(settings, request_head_timeout_seconds=0.3)
    async with running_harness(quick, fake_partner, gateway_keys) as running:
        yield running


async def test_a_trickled_head_gets_408_and_the_connection_closes(quick_harness: GatewayHarness) -> None:
    async with Conn(quick_harness) as conn:
        await conn.send(f"POST {SHIPMENT} HTTP/1.1\r\nHost: gw\r\n".encode())
        await asyncio.sleep(0.15)
        await conn.send(b"X-Slow: 1\r\n")  # still arriving, never finished
        _, status, headers, body = await conn.answer()
        problem = assert_problem(status, headers, body, 408)
        assert "X-Slow" not in json.dumps(problem)
        assert headers["connection"] == "close"
        assert await conn.closed_by_server()
    assert quick_harness.partner.received == []


async def test_a_head_in_time_is_served_even_when_its_body_comes_later(quick_harness: GatewayHarness) -> None:
    async with Conn(quick_harness) as conn:
        request = shipment(quick_harness)
        head, _, body = request.partition(b"\r\n\r\n")
        await conn.send(head[:20])
        await asyncio.sleep(0.1)
        await conn.send(head[20:] + b"\r\n\r\n")
        await asyncio.sleep(0.6)  # twice the head bound: the timer must have stopped with the head
        await conn.send(body)
        _, status, _, answer = await conn.answer()
        assert status == 200, answer
        # The connection stays usable: a second request on it is served too.
        await conn.send(shipment(quick_harness))
        _, status, _, _ = await conn.answer()
        assert status == 200
    assert len(quick_harness.partner.received) == 2


def test_the_head_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="request_head_timeout_seconds"):
        load_settings(environ={"GATEWAY_REQUEST_HEAD_TIMEOUT_SECONDS": "0"})
    assert load_settings(environ={"GATEWAY_REQUEST_HEAD_TIMEOUT_SECONDS": "2.5"}).request_head_timeout_seconds == 2.5
