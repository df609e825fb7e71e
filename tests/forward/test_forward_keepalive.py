"""Calls on a kept-alive connection (the path with nothing to connect): timeouts, cancellation and bad
answers end the exchange exactly as on a fresh connection, and the connection is never reused after."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from forward_fakes import OK_RESPONSE, Limits, Profile, RawPartner, Responder, Route, Upstream

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.forward import UpstreamPool

MakePartner = Callable[[Responder], Awaitable[RawPartner]]
ROUTE = Route("/shipments/{shipment_id}")
BODY = b'{"order_id":"O-1"}'


def profile_for(url: str, total: float = 2.0) -> Profile:
    return Profile("carrier-test", Upstream(url, None, connect_timeout=0.5, total_timeout=total), Limits())


def scripted(*answers: bytes | str) -> Responder:
    """Answers in order, then OK for every further request."""
    queue = list(answers)
    return lambda _: queue.pop(0) if queue else OK_RESPONSE


async def send(pool: UpstreamPool, profile: Profile) -> int:
    answer = await pool.send(profile, ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    return answer.status


async def test_a_kept_alive_connection_that_stops_answering_times_out_and_is_dropped(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    partner = await raw_partner_factory(scripted(OK_RESPONSE, "hang"))
    profile = profile_for(partner.url, total=0.4)
    assert await send(pool, profile) == 200
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as refused:
        await send(pool, profile)
    assert refused.value.reason == "upstream-timeout"
    assert 0.3 < time.monotonic() - started < 1.5
    assert await send(pool, profile) == 200
    assert partner.connections == 2  # the timed-out connection was not reused


async def test_a_cancelled_call_on_a_kept_alive_connection_is_not_reused(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    partner = await raw_partner_factory(scripted(OK_RESPONSE, "hang"))
    profile = profile_for(partner.url)
    assert await send(pool, profile) == 200
    call = asyncio.create_task(send(pool, profile))
    while len(partner.received) < 2:
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await send(pool, profile) == 200
    assert partner.connections == 2


async def test_a_malformed_answer_on_a_kept_alive_connection_is_an_upstream_error(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    partner = await raw_partner_factory(scripted(OK_RESPONSE, b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"))
    profile = profile_for(partner.url)
    assert await send(pool, profile) == 200
    with pytest.raises(UpstreamError) as refused:
        await send(pool, profile)
    assert refused.value.reason == "upstream-malformed"
    assert await send(pool, profile) == 200
    assert partner.connections == 2


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"a\nb", b"\x00"])
async def test_a_partner_header_value_with_cr_lf_or_nul_is_an_upstream_error(
    pool: UpstreamPool, raw_partner_factory: MakePartner, value: bytes
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nX-Note: " + value + b"\r\nContent-Length: 2\r\n\r\n{}"
    partner = await raw_partner_factory(scripted(answer))
    with pytest.raises(UpstreamError) as refused:
        await send(pool, profile_for(partner.url))
    assert refused.value.reason == "upstream-malformed"


async def test_a_redirect_on_a_kept_alive_connection_is_refused(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    redirect = b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/\r\nContent-Length: 0\r\n\r\n"
    partner = await raw_partner_factory(scripted(OK_RESPONSE, redirect))
    profile = profile_for(partner.url)
    assert await send(pool, profile) == 200
    with pytest.raises(UpstreamError) as refused:
        await send(pool, profile)
    assert refused.value.reason == "upstream-redirect"


async def test_a_partner_without_keep_alive_gets_one_connection_per_call(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    # A late or repeated answer on a reused connection would reach the next caller (HTTP/1.1 cannot tell it
    # from the next answer); `keep_alive: false` closes every connection after its one call.
    partner = await raw_partner_factory(lambda _: OK_RESPONSE)
    kept = profile_for(partner.url)
    closed = Profile(
        "carrier-test", Upstream(partner.url, None, connect_timeout=0.5, total_timeout=2.0, keep_alive=False)
    )
    for _ in range(3):
        assert (await pool.send(kept, ROUTE, "POST", {"shipment_id": "S-1"}, (), {}, BODY)).status == 200
    assert partner.connections == 1
    assert all(b"\r\nConnection: close\r\n" not in request for request in partner.received)
    for _ in range(3):
        assert (await pool.send(closed, ROUTE, "POST", {"shipment_id": "S-1"}, (), {}, BODY)).status == 200
    assert partner.connections == 4
    assert all(b"\r\nConnection: close\r\n" in request for request in partner.received[3:])
