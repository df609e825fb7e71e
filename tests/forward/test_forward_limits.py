"""Per-partner admission: token bucket and concurrency cap refuse at once (429), never queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from forward_fakes import OK_RESPONSE, Limits, Profile, RawPartner, Responder, Route, Upstream

from gateway.errors import RateLimited
from gateway.forward import PartnerLimiter, UpstreamPool

MakePartner = Callable[[Responder], Awaitable[RawPartner]]


async def test_concurrency_cap_refuses_the_call_beyond_it_and_frees_on_exit() -> None:
    limiter = PartnerLimiter(None, None, 2)
    async with limiter, limiter:
        assert limiter.in_flight == 2
        started = time.monotonic()
        with pytest.raises(RateLimited) as info:
            async with limiter:
                pass
        assert time.monotonic() - started < 0.05  # refused at once, not queued
        assert info.value.status == 429
        assert info.value.reason == "concurrency-limit"
    assert limiter.in_flight == 0
    async with limiter:
        assert limiter.in_flight == 1


async def test_a_failing_call_frees_its_slot() -> None:
    limiter = PartnerLimiter(None, None, 1)
    with pytest.raises(ValueError, match="boom"):
        async with limiter:
            raise ValueError("boom")
    assert limiter.in_flight == 0


async def test_token_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    limiter = PartnerLimiter(20.0, 3, None)
    for _ in range(3):
        async with limiter:
            pass
    with pytest.raises(RateLimited) as info:
        async with limiter:
            pass
    assert info.value.reason == "rate-limit"
    await asyncio.sleep(0.06)  # 20/s: one token per 50 ms
    async with limiter:
        pass
    with pytest.raises(RateLimited):
        async with limiter:
            pass


async def test_refused_by_concurrency_does_not_spend_a_token() -> None:
    limiter = PartnerLimiter(1000.0, 1, 1)
    async with limiter:
        with pytest.raises(RateLimited):
            async with limiter:
                pass
    await asyncio.sleep(0.01)
    async with limiter:
        pass


async def test_no_limits_admits_everything() -> None:
    limiter = PartnerLimiter(None, None, None)
    for _ in range(1000):
        async with limiter:
            pass


async def test_pool_limiter_is_per_partner_and_caps_real_in_flight_calls(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    release = asyncio.Event()
    partner = await raw_partner_factory(lambda _: OK_RESPONSE)
    route = Route("/x/{id}")
    slow = Profile("slow-partner", Upstream(partner.url, None), Limits(max_concurrency=1))
    other = Profile("other-partner", Upstream(partner.url, None), Limits(max_concurrency=1))

    async def held_call() -> int:
        async with pool.limiter(slow):
            response = await pool.send(slow, route, "GET", {"id": "1"}, [], {}, None)
            await release.wait()
            return response.status

    task = asyncio.create_task(held_call())
    while pool.limiter(slow).in_flight == 0:
        await asyncio.sleep(0.001)
    with pytest.raises(RateLimited):
        async with pool.limiter(slow):
            pass
    # Another partner's budget is untouched.
    async with pool.limiter(other):
        assert (await pool.send(other, route, "GET", {"id": "2"}, [], {}, None)).status == 200
    release.set()
    assert await task == 200
    async with pool.limiter(slow):
        pass


async def test_reload_with_same_limits_keeps_the_limiter_and_new_limits_replace_it(pool: UpstreamPool) -> None:
    first = Profile("p", Upstream("http://127.0.0.1:9", None), Limits(rate_per_second=1.0, burst=1))
    async with pool.limiter(first):
        pass
    same = Profile("p", Upstream("http://127.0.0.1:9", None), Limits(rate_per_second=1.0, burst=1))
    with pytest.raises(RateLimited):  # the bucket state survived the reload
        async with pool.limiter(same):
            pass
    raised = Profile("p", Upstream("http://127.0.0.1:9", None), Limits(rate_per_second=100.0, burst=5))
    async with pool.limiter(raised):
        pass
