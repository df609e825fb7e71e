"""Fixtures for the upstream client tests: byte-level partners on 127.0.0.1 and a started pool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from forward_fakes import RawPartner, Responder

from gateway.forward import UpstreamPool


@pytest.fixture
async def raw_partner_factory() -> AsyncIterator[Callable[[Responder], Awaitable[RawPartner]]]:
    partners: list[RawPartner] = []

    async def make(responder: Responder) -> RawPartner:
        partner = RawPartner(responder)
        await partner.start()
        partners.append(partner)
        return partner

    yield make
    for partner in partners:
        await partner.close()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    upstream_pool = UpstreamPool(max_response_bytes=4096)
    await upstream_pool.start()
    yield upstream_pool
    await upstream_pool.close()
