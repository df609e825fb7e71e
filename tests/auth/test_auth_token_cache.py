"""The verified-token cache: a repeated token costs a lookup, yet the cache never accepts what
verification would refuse (expiry, key-set change, header checks), and it stays bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from auth_token_helpers import AUDIENCE, ISSUER, Signer, bearer

from gateway.auth import CallerAuthenticator, KeyProvider, keyset_from_pem
from gateway.config import Settings
from gateway.errors import Unauthenticated
from gateway.keys import GatewayKeys


@pytest.fixture
def pem_path(ed_signer: Signer, write_pem: Callable[[Signer], Path]) -> Path:
    return write_pem(ed_signer)


@pytest.fixture
def auth(pem_path: Path, make_settings: Callable[..., Settings], gateway_keys: GatewayKeys) -> CallerAuthenticator:
    return CallerAuthenticator.from_settings(
        make_settings(jwt_keys=str(pem_path), jwt_leeway_seconds=0), gateway_keys
    )


async def test_repeated_token_is_served_from_the_cache(ed_signer: Signer, auth: CallerAuthenticator) -> None:
    token = ed_signer.token()
    first = await auth.authenticate(bearer(token))
    # The very same Caller object comes back: no second verification built a new one.
    assert await auth.authenticate(bearer(token)) is first
    assert await auth.authenticate([f"bearer   {token} "]) is first
    assert auth.cached_tokens == 1
    other = await auth.authenticate(bearer(ed_signer.token(jti="other")))
    assert other is not first
    assert auth.cached_tokens == 2


async def test_header_checks_still_apply_to_cached_tokens(ed_signer: Signer, auth: CallerAuthenticator) -> None:
    token = ed_signer.token()
    await auth.authenticate(bearer(token))
    for authorization, reason in (([f"Bearer {token}"] * 2, "header-count"), ([f"Basic {token}"], "scheme")):
        with pytest.raises(Unauthenticated) as info:
            await auth.authenticate(authorization)
        assert info.value.reason == reason


async def test_refused_tokens_are_not_cached(other_ed_signer: Signer, auth: CallerAuthenticator) -> None:
    token = other_ed_signer.token(headers={"kid": None})
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(bearer(token))
    assert auth.cached_tokens == 0


async def test_cached_token_is_evicted_at_its_exp(ed_signer: Signer, auth: CallerAuthenticator) -> None:
    exp = int(time.time()) + 2
    token = ed_signer.token(exp=exp)
    first = await auth.authenticate(bearer(token))
    assert await auth.authenticate(bearer(token)) is first
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.05)
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(bearer(token))
    assert info.value.reason == "expired"
    assert auth.cached_tokens == 0


async def test_key_set_change_drops_cached_tokens(
    ed_signer: Signer, other_ed_signer: Signer, pem_path: Path, make_settings: Callable[..., Settings],
    gateway_keys: GatewayKeys,
) -> None:
    auth = CallerAuthenticator.from_settings(
        make_settings(jwt_keys=str(pem_path), jwks_refresh_min_interval_seconds=0.01), gateway_keys
    )
    token = ed_signer.token()
    first = await auth.authenticate(bearer(token))
    await asyncio.sleep(0.02)
    await auth.keys.refresh()  # same file, same key: the cache stays
    assert await auth.authenticate(bearer(token)) is first
    pem_path.write_bytes(other_ed_signer.public_pem())  # the operator replaces the key
    await asyncio.sleep(0.02)
    await auth.keys.refresh()
    assert auth.cached_tokens == 0
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(bearer(token))
    assert info.value.reason == "unknown-key"  # the token's kid was the old key's thumbprint
    assert await auth.authenticate(bearer(other_ed_signer.token()))


async def test_cache_is_bounded(ed_signer: Signer, pem_path: Path) -> None:
    keyset = keyset_from_pem(pem_path.read_bytes(), frozenset({"EdDSA"}), "test")
    provider = KeyProvider(None, keyset, cache_seconds=60, min_refresh_interval=60, description="test")
    auth = CallerAuthenticator(provider, issuer=ISSUER, audience=AUDIENCE, algorithms=["EdDSA"],
                               leeway_seconds=0, cache_entries=8)
    tokens = [ed_signer.token(jti=f"t{n}") for n in range(20)]
    for token in tokens:
        await auth.authenticate(bearer(token))
        assert auth.cached_tokens <= 8
    # The newest tokens are the ones kept; the oldest are verified afresh and still accepted.
    newest = await auth.authenticate(bearer(tokens[-1]))
    assert await auth.authenticate(bearer(tokens[-1])) is newest
    assert (await auth.authenticate(bearer(tokens[0]))).token_id == "t0"


async def test_cache_is_much_cheaper_than_verification(ed_signer: Signer, auth: CallerAuthenticator) -> None:
    # Fresh tokens force verification; the same token again is a lookup. Best of 5 rounds, so the
    # other processes on the shared cores do not decide the outcome.
    rounds, per_round = 5, 40
    tokens = [[ed_signer.token(jti=f"r{r}-{n}") for n in range(per_round)] for r in range(rounds)]

    async def timed(batch: list[str]) -> float:
        started = time.perf_counter()
        for token in batch:
            await auth.authenticate(bearer(token))
        return (time.perf_counter() - started) / len(batch)

    cold = min([await timed(batch) for batch in tokens])
    warm = min([await timed([tokens[0][0]] * per_round) for _ in range(rounds)])
    assert warm * 5 < cold, (warm, cold)


async def test_nbf_is_honoured_through_the_cache(
    ed_signer: Signer, pem_path: Path, make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    auth = CallerAuthenticator.from_settings(
        make_settings(jwt_keys=str(pem_path), jwt_leeway_seconds=1), gateway_keys
    )
    nbf = int(time.time()) + 3
    early = ed_signer.token(nbf=nbf)
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(bearer(early))
    assert info.value.reason == "not-yet-valid"
    assert auth.cached_tokens == 0
    await asyncio.sleep(max(0.0, nbf - 1 - time.time()) + 0.05)
    caller = await auth.authenticate(bearer(early))  # inside the leeway now
    assert await auth.authenticate(bearer(early)) is caller

