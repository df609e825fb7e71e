"""Per-partner admission: token bucket and concurrency cap refuse at once (429), never queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from forward_fakes import OK_RESPONSE, Auth, Limits, Profile, RawPartner, Responder, Route, Upstream

from gateway.errors import RateLimited
from gateway.forward import PartnerLimiter, UpstreamPool

MakePartner = Callable[[Responder], Awaitable[RawPartner]]


async def held_call(pool: UpstreamPool, profile: Profile, route: Route, release: asyncio.Event) -> asyncio.Task[int]:
    """A real call to `profile`'s partner that keeps its limiter slot until `release` is set (its task
    returns the partner's status); returns once the slot is taken."""

    async def call() -> int:
        async with pool.limiter(profile):
            response = await pool.send(profile, route, "GET", {"id": "1"}, [], {}, None)
            await release.wait()
            return response.status

    task = asyncio.create_task(call())
    while pool.limiter(profile).in_flight == 0:
        await asyncio.sleep(0.001)
    return task


async def test_concurrency_cap_refuses_the_call_beyond_it_and_frees_on_exit() -> None:
    limiter = PartnerLimiter(None, None, 2)
    async with limiter, limiter:
        assert limiter.in_flight == 2
        started = time.monotonic()
        with pytest.raises(RateLimited) as info:
            async with limiter:
                pass
        # Refused at once, not queued (queued, it would wait for slots this task holds: forever). The bound
        # only has to tell those apart, with room for a loaded CI machine.
        assert time.monotonic() - started < 0.5
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

    task = await held_call(pool, slow, route, release)
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


async def test_reload_with_same_limits_keeps_the_limiter_and_new_limits_retune_it(pool: UpstreamPool) -> None:
    first = Profile("p", Upstream("http://127.0.0.1:9", None), Limits(rate_per_second=1.0, burst=1))
    async with pool.limiter(first):
        pass
    same = Profile("p", Upstream("http://127.0.0.1:9", None), Limits(rate_per_second=1.0, burst=1))
    with pytest.raises(RateLimited):  # the bucket state survived the reload
        async with pool.limiter(same):
            pass
    raised = Profile("p", Upstream("http://127.0.0.1:9", None), Limits(rate_per_second=100.0, burst=5))
    with pytest.raises(RateLimited):  # a raised limit does not hand out a fresh bucket...
        async with pool.limiter(raised):
            pass
    await asyncio.sleep(0.03)
    async with pool.limiter(raised):  # ...it refills at the new rate (100/s: a token per 10 ms)
        pass


async def test_a_reload_that_changes_only_the_upstream_keeps_the_bucket(pool: UpstreamPool) -> None:
    # A rotated credential or a new timeout must not reopen the partner's budget.
    limits = Limits(rate_per_second=1.0, burst=2)
    before = Profile("p", Upstream("http://127.0.0.1:9", Auth("bearer", "Authorization", "Bearer one")), limits)
    for _ in range(2):
        async with pool.limiter(before):
            pass
    rotated = Profile("p", Upstream("http://127.0.0.1:9", Auth("bearer", "Authorization", "Bearer two")), limits)
    with pytest.raises(RateLimited) as info:
        async with pool.limiter(rotated):
            pass
    assert info.value.reason == "rate-limit"


async def test_a_lowered_burst_caps_the_carried_bucket_and_a_first_rate_starts_full(pool: UpstreamPool) -> None:
    unlimited = Profile("p", Upstream("http://127.0.0.1:9", None), Limits())
    for _ in range(10):
        async with pool.limiter(unlimited):
            pass
    limited = Profile("p", Upstream("http://127.0.0.1:9", None), Limits(rate_per_second=0.5, burst=3))
    for _ in range(3):  # no rate was counted before, so the new bucket starts full
        async with pool.limiter(limited):
            pass
    with pytest.raises(RateLimited):
        async with pool.limiter(limited):
            pass
    big = Profile("p", Upstream("http://127.0.0.1:9", None), Limits(rate_per_second=0.5, burst=50))
    with pytest.raises(RateLimited):  # an empty bucket stays empty when the burst grows
        async with pool.limiter(big):
            pass
    lowered = PartnerLimiter(0.5, 50, None)
    lowered.retune(0.5, 2, None)
    for _ in range(2):
        async with lowered:
            pass
    with pytest.raises(RateLimited):  # a full bucket of 50 is cut to the new burst of 2
        async with lowered:
            pass


async def test_calls_in_flight_stay_counted_across_a_reload_that_changes_the_limits(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    release = asyncio.Event()
    partner = await raw_partner_factory(lambda _: OK_RESPONSE)
    route = Route("/x/{id}")
    before = Profile("p", Upstream(partner.url, None), Limits(max_concurrency=1))

    task = await held_call(pool, before, route, release)
    reloaded = Profile("p", Upstream(partner.url, None, total_timeout=5.0), Limits(max_concurrency=1))
    with pytest.raises(RateLimited) as info:  # the call admitted before the reload still holds the slot
        async with pool.limiter(reloaded):
            pass
    assert info.value.reason == "concurrency-limit"
    release.set()
    assert await task == 200
    assert pool.limiter(reloaded).in_flight == 0
    async with pool.limiter(reloaded):
        assert (await pool.send(reloaded, route, "GET", {"id": "2"}, [], {}, None)).status == 200


async def test_reloads_do_not_accumulate_retired_channels(pool: UpstreamPool) -> None:
    for timeout in range(1, 50):
        profile = Profile("p", Upstream("http://127.0.0.1:9", None, total_timeout=float(timeout)), Limits())
        async with pool.limiter(profile):
            pass
    assert len(pool._retired) <= 1  # channels with nothing in flight are forgotten at the next swap
