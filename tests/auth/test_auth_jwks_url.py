"""JWKS URL key source against a real aiohttp JWKS server on 127.0.0.1: first fetch, rotation, the
rate-limited refresh on unknown kids, stale-set refresh, failures keeping the last good set, failing closed
without one, and no redirects."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from auth_token_helpers import Signer, bearer

from gateway.auth import CallerAuthenticator
from gateway.config import Settings
from gateway.errors import Unauthenticated
from gateway.keys import GatewayKeys


@dataclass
class JwksServer:
    """A JWKS endpoint whose answer a test changes at will; counts the fetches it serves."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    body: bytes | None = None  # overrides the JSON answer (garbage, half a document)
    delay: float = 0.0
    fetches: int = 0
    chunked: bool = True  # in_pieces: chunked framing, else Content-Length
    declared_length: int | None = None  # in_pieces: a Content-Length other than the body's
    piece_delay: float = 0.05  # in_pieces: the pause between the two pieces
    split_at: int | None = None  # in_pieces: where the first piece ends (default: half way)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.body is not None:
            return web.Response(body=self.body, status=self.status, content_type="application/json")
        return web.json_response({"keys": self.keys}, status=self.status)

    async def in_pieces(self, request: web.Request) -> web.StreamResponse:
        """The JWKS written in two pieces 50 ms apart, chunked or with Content-Length (`chunked`), as a
        document bigger than one segment or TLS record arrives over a real network."""
        self.fetches += 1
        body = self.body if self.body is not None else json.dumps({"keys": self.keys}).encode()
        response = web.StreamResponse(status=self.status, headers={"Content-Type": "application/json"})
        if self.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = self.declared_length if self.declared_length is not None else len(body)
        await response.prepare(request)
        half = len(body) // 2 if self.split_at is None else self.split_at
        await response.write(body[:half])
        await asyncio.sleep(self.piece_delay)
        await response.write(body[half:])
        if self.declared_length is not None and self.declared_length > len(body) and request.transport:
            request.transport.close()  # the connection drops before the declared length arrived
            return response
        await response.write_eof()
        return response

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        raise web.HTTPFound("/jwks.json")


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    app = web.Application()
    app.router.add_get("/jwks.json", server.handle)
    app.router.add_get("/moved", server.redirect)
    app.router.add_get("/pieces.json", server.in_pieces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/jwks.json"
    yield server
    await runner.cleanup()


@pytest.fixture
def url_auth(
    jwks_server: JwksServer, make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> Callable[..., CallerAuthenticator]:
    """An authenticator on the test server's JWKS URL (call `start()` yourself); settings as keywords."""

    def build(**overrides: Any) -> CallerAuthenticator:
        overrides.setdefault("jwt_keys", jwks_server.url)
        return CallerAuthenticator.from_settings(make_settings(**overrides), gateway_keys)

    return build


async def reason_of(auth: CallerAuthenticator, token: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(bearer(token))
    return info.value.reason


async def test_fetches_at_start_and_verifies(
    jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer, es_signer: Signer,
    rsa_signer: Signer,
) -> None:
    jwks_server.keys = [ed_signer.jwk("ed"), es_signer.jwk("es"), rsa_signer.jwk("rsa")]
    auth = url_auth()
    await auth.start()
    try:
        assert jwks_server.fetches == 1
        for signer, kid in ((ed_signer, "ed"), (es_signer, "es"), (rsa_signer, "rsa")):
            assert (await auth.authenticate(bearer(signer.token(headers={"kid": kid})))).service == "orders-service"
        assert jwks_server.fetches == 1  # served from the cached set
        assert await reason_of(auth, es_signer.token(headers={"kid": "ed"})) == "algorithm"
    finally:
        await auth.close()


async def test_rotation_with_rate_limited_refresh(
    jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
    other_ed_signer: Signer,
) -> None:
    jwks_server.keys = [ed_signer.jwk("2025-01")]
    auth = url_auth(jwks_refresh_min_interval_seconds=0.5)
    await auth.start()
    try:
        new_token = other_ed_signer.token(headers={"kid": "2025-02"})
        # The issuer rotates: the new key is published a moment before it signs its first token.
        jwks_server.keys = [ed_signer.jwk("2025-01"), other_ed_signer.jwk("2025-02")]
        # Within the minimum interval since the first fetch the unknown kid does not trigger a fetch.
        assert await reason_of(auth, new_token) == "unknown-key"
        assert jwks_server.fetches == 1
        await asyncio.sleep(0.55)
        assert (await auth.authenticate(bearer(new_token))).service == "orders-service"
        assert jwks_server.fetches == 2
        # Old and new keys both verify during the overlap.
        assert await auth.authenticate(bearer(ed_signer.token(headers={"kid": "2025-01"})))

        # A flood of unknown kids (an attacker probing) costs at most one fetch per interval.
        await asyncio.sleep(0.55)
        results = await asyncio.gather(
            *(auth.authenticate(bearer(ed_signer.token(headers={"kid": f"probe-{n}"}))) for n in range(50)),
            return_exceptions=True,
        )
        assert all(isinstance(r, Unauthenticated) and r.reason == "unknown-key" for r in results)
        assert jwks_server.fetches == 3
        for n in range(20):
            assert await reason_of(auth, ed_signer.token(headers={"kid": f"again-{n}"})) == "unknown-key"
        assert jwks_server.fetches == 3
    finally:
        await auth.close()


async def test_retired_key_stops_verifying_after_a_stale_refresh(
    jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
    other_ed_signer: Signer,
) -> None:
    jwks_server.keys = [ed_signer.jwk("old"), other_ed_signer.jwk("new")]
    auth = url_auth(jwks_cache_seconds=0.2, jwks_refresh_min_interval_seconds=0.1)
    await auth.start()
    try:
        old_token = ed_signer.token(headers={"kid": "old"})
        assert await auth.authenticate(bearer(old_token))
        assert auth.cached_tokens == 1
        jwks_server.keys = [other_ed_signer.jwk("new")]  # the old key is withdrawn (e.g. compromised)
        await asyncio.sleep(0.25)
        # The set is stale: this request is still answered from the verified-token cache while a
        # background refresh runs; the new set drops the cache.
        assert await auth.authenticate(bearer(old_token))
        await _wait_for(lambda: jwks_server.fetches == 2)
        await _wait_for(lambda: auth.cached_tokens == 0)
        assert await reason_of(auth, old_token) == "unknown-key"
        assert await auth.authenticate(bearer(other_ed_signer.token(headers={"kid": "new"})))
    finally:
        await auth.close()


async def test_unchanged_refresh_keeps_the_token_cache(
    jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    jwks_server.keys = [ed_signer.jwk("k")]
    auth = url_auth(jwks_cache_seconds=0.1, jwks_refresh_min_interval_seconds=0.05)
    await auth.start()
    try:
        token = ed_signer.token(headers={"kid": "k"})
        first = await auth.authenticate(bearer(token))
        await asyncio.sleep(0.15)
        assert await auth.authenticate(bearer(token)) is first
        await _wait_for(lambda: jwks_server.fetches == 2)
        assert auth.cached_tokens == 1
        assert await auth.authenticate(bearer(token)) is first
    finally:
        await auth.close()


@pytest.mark.parametrize("failure", ["status-500", "status-404", "not-json", "not-a-jwks", "slow"])
async def test_failed_refresh_keeps_the_last_good_set(
    failure: str, jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jwks_server.keys = [ed_signer.jwk("k")]
    auth = url_auth(jwks_cache_seconds=0.1, jwks_refresh_min_interval_seconds=0.05)
    await auth.start()
    try:
        if failure == "status-500":
            jwks_server.status = 500
        elif failure == "status-404":
            jwks_server.status = 404
        elif failure == "not-json":
            jwks_server.body = b"<html>maintenance</html>"
        elif failure == "not-a-jwks":
            jwks_server.body = b'{"error": "maintenance"}'
        else:
            monkeypatch.setattr("gateway.auth.JWKS_FETCH_TIMEOUT_SECONDS", 0.2)
            await auth.close()  # a new session picks up the shorter timeout
            jwks_server.delay = 1.0
        await asyncio.sleep(0.15)
        # Fresh tokens (no cache hit) still verify against the last good set, before and after the
        # failed refresh.
        for n in range(3):
            assert await auth.authenticate(bearer(ed_signer.token(headers={"kid": "k"}, jti=f"t{n}")))
            await asyncio.sleep(0.3 if failure == "slow" else 0.06)
        assert jwks_server.fetches >= 2
        assert auth.keys.keyset is not None
        assert set(auth.keys.keyset.by_kid) == {"k"}
    finally:
        await auth.close()


X25519_MEMBER = {"kty": "OKP", "crv": "X25519", "kid": "ecdh", "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}


@pytest.mark.parametrize(
    ("published", "skipped"),
    [
        ([], []),
        ([{"kty": "oct", "k": "c2VjcmV0", "kid": "k"}], [(0, "symmetric-key")]),
        ([{"private": True}], [(0, "private-key-material")]),
        ([{"new": True}, X25519_MEMBER], [(1, "invalid-key")]),
        ([{"new": True}, {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB", "alg": "RS256"}], [(1, "invalid-key")]),
        ([{"new": True}, {"new": True, "kid": "new"}], [(0, "duplicate-kid"), (1, "duplicate-kid")]),
        ([{"new": True}, "not a key", {"kty": "EC", "kid": 7}], [(1, "not-an-object"), (2, "bad-kid")]),
    ],
    ids=["empty", "symmetric", "private", "x25519", "bad-rsa", "duplicate-kid", "odd-members"],
)
async def test_a_withdrawn_key_is_dropped_whatever_else_the_new_set_holds(
    published: list[Any], skipped: list[tuple[int, str]], jwks_server: JwksServer,
    url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer, other_ed_signer: Signer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # review-auth F2: a reload that obtained a well-formed JWKS installs what it yields. Before, an
    # empty set or one member the gateway could not use kept the old set, so a leaked key stayed trusted
    # and the new key was never learned.
    jwks_server.keys = [ed_signer.jwk("k")]
    auth = url_auth(jwks_cache_seconds=0.1, jwks_refresh_min_interval_seconds=0.05)
    await auth.start()
    try:
        cached = ed_signer.token(headers={"kid": "k"})
        assert await auth.authenticate(bearer(cached))
        members: list[Any] = []
        for member in published:
            if member == {"private": True}:
                member = {**ed_signer.jwk("k"), "d": "AAAA"}
            elif isinstance(member, dict) and member.get("new"):
                member = other_ed_signer.jwk("new")
            members.append(member)
        jwks_server.keys = members  # the leaked key "k" is withdrawn
        caplog.clear()
        await asyncio.sleep(0.15)
        await auth.keys.refresh()
        assert jwks_server.fetches >= 2
        assert auth.keys.keyset is not None
        usable = {"new"} if any(isinstance(m, dict) and m.get("kid") == "new" for m in members) else set()
        if skipped and skipped[0][1] == "duplicate-kid":
            usable = set()  # two members claim the kid: neither is trusted
        assert set(auth.keys.keyset.by_kid) == usable
        expected = "unknown-key" if usable else "keys-unavailable"
        assert await reason_of(auth, cached) == expected  # the verified-token cache is dropped too
        assert await reason_of(auth, ed_signer.token(headers={"kid": "k"}, jti="fresh")) == expected
        if usable:
            assert await auth.authenticate(bearer(other_ed_signer.token(headers={"kid": "new"})))
        logged = [(r.index, r.reason) for r in caplog.records if r.getMessage().startswith("jwt key skipped")]
        assert logged == skipped
        assert any("no usable key" in r.getMessage() for r in caplog.records) == (not usable)
    finally:
        await auth.close()


async def test_keys_come_back_after_an_empty_set(
    jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    jwks_server.keys = [ed_signer.jwk("k")]
    auth = url_auth(jwks_refresh_min_interval_seconds=0.05)
    await auth.start()
    try:
        jwks_server.keys = []
        await asyncio.sleep(0.06)
        await auth.keys.refresh()
        assert await reason_of(auth, ed_signer.token(headers={"kid": "k"})) == "keys-unavailable"
        jwks_server.keys = [ed_signer.jwk("k2")]
        await asyncio.sleep(0.06)
        # An empty set is no reason to wait for jwks_cache_seconds: a token makes it load again.
        assert await auth.authenticate(bearer(ed_signer.token(headers={"kid": "k2"})))
    finally:
        await auth.close()


async def test_fails_closed_without_any_good_set(
    jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    jwks_server.status = 503
    auth = url_auth(jwks_refresh_min_interval_seconds=0.2)
    await auth.start()  # does not raise: the gateway can start while its identity provider is down
    try:
        token = ed_signer.token(headers={"kid": "k"})
        assert await reason_of(auth, token) == "keys-unavailable"
        assert await reason_of(auth, ed_signer.token(headers={"kid": None})) == "keys-unavailable"
        assert jwks_server.fetches == 1  # rate limit applies to failed fetches as well
        jwks_server.status = 200
        jwks_server.keys = [ed_signer.jwk("k")]
        await asyncio.sleep(0.25)
        assert await auth.authenticate(bearer(token))
        assert jwks_server.fetches == 2
    finally:
        await auth.close()


async def test_authenticate_without_start_fetches_once(
    jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    jwks_server.keys = [ed_signer.jwk("k")]
    auth = url_auth()
    try:
        results = await asyncio.gather(
            *(auth.authenticate(bearer(ed_signer.token(headers={"kid": "k"}, jti=f"c{n}"))) for n in range(10))
        )
        assert {caller.service for caller in results} == {"orders-service"}
        assert jwks_server.fetches == 1
    finally:
        await auth.close()


async def test_redirects_are_not_followed(
    jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    jwks_server.keys = [ed_signer.jwk("k")]
    auth = url_auth(jwt_keys=jwks_server.url.replace("/jwks.json", "/moved"))
    await auth.start()
    try:
        assert await reason_of(auth, ed_signer.token(headers={"kid": "k"})) == "keys-unavailable"
        assert jwks_server.fetches == 1  # only the redirect itself was requested
    finally:
        await auth.close()


async def test_unreachable_url_fails_closed(
    url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    auth = url_auth(jwt_keys=f"http://127.0.0.1:{port}/jwks.json")
    await auth.start()
    try:
        assert await reason_of(auth, ed_signer.token(headers={"kid": "k"})) == "keys-unavailable"
    finally:
        await auth.close()


async def test_oversized_jwks_is_refused(
    jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    jwks_server.keys = [ed_signer.jwk("k"), {"kty": "unknown", "pad": "x" * (1 << 20)}]
    auth = url_auth()
    await auth.start()
    try:
        assert await reason_of(auth, ed_signer.token(headers={"kid": "k"})) == "keys-unavailable"
    finally:
        await auth.close()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_a_jwks_arriving_in_pieces_is_read_to_its_end(
    chunked: bool, jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
    other_ed_signer: Signer,
) -> None:
    # review-auth F1: a single read() returned only the first piece, so the set never loaded (every token
    # refused) and later rotations and withdrawals were never applied.
    jwks_server.chunked = chunked
    jwks_server.keys = [ed_signer.jwk("old")]
    auth = url_auth(jwt_keys=jwks_server.url.replace("/jwks.json", "/pieces.json"),
                    jwks_refresh_min_interval_seconds=0.05)
    await auth.start()
    try:
        assert auth.keys.keyset is not None
        assert await auth.authenticate(bearer(ed_signer.token(headers={"kid": "old"})))
        jwks_server.keys = [other_ed_signer.jwk("new")]  # a rotation, also read in pieces
        await asyncio.sleep(0.06)
        assert await auth.authenticate(bearer(other_ed_signer.token(headers={"kid": "new"})))
        assert jwks_server.fetches == 2
    finally:
        await auth.close()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_a_jwks_over_the_bound_in_pieces_is_refused(
    chunked: bool, jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    jwks_server.chunked = chunked
    jwks_server.keys = [ed_signer.jwk("k"), {"kty": "unknown", "pad": "x" * (1 << 20)}]
    auth = url_auth(jwt_keys=jwks_server.url.replace("/jwks.json", "/pieces.json"))
    await auth.start()
    try:
        assert await reason_of(auth, ed_signer.token(headers={"kid": "k"})) == "keys-unavailable"
    finally:
        await auth.close()


async def test_a_declared_length_over_the_bound_is_refused_before_the_body(
    jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    # The answer declares more than 1 MiB: refused on its Content-Length, without waiting for (or
    # trusting) the first bytes of the body, which here happen to be a whole valid JWKS.
    jwks_server.chunked = False
    jwks_server.body = json.dumps({"keys": [ed_signer.jwk("k")]}).encode()
    jwks_server.declared_length = (1 << 20) + 1
    jwks_server.split_at = len(jwks_server.body)
    jwks_server.piece_delay = 1.5
    auth = url_auth(jwt_keys=jwks_server.url.replace("/jwks.json", "/pieces.json"))
    started = time.monotonic()
    await auth.start()
    try:
        assert time.monotonic() - started < 1.0
        assert auth.keys.keyset is None
        assert await reason_of(auth, ed_signer.token(headers={"kid": "k"})) == "keys-unavailable"
    finally:
        await auth.close()


async def test_a_body_cut_short_keeps_the_last_good_set(
    jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
    other_ed_signer: Signer,
) -> None:
    jwks_server.keys = [ed_signer.jwk("k")]
    auth = url_auth(jwt_keys=jwks_server.url.replace("/jwks.json", "/pieces.json"),
                    jwks_refresh_min_interval_seconds=0.05)
    await auth.start()
    try:
        # The server declares more than it sends: the body ends early (the document was not obtained).
        jwks_server.chunked = False
        jwks_server.keys = [other_ed_signer.jwk("new")]
        jwks_server.declared_length = len(json.dumps({"keys": jwks_server.keys})) + 10
        await asyncio.sleep(0.06)
        assert await reason_of(auth, other_ed_signer.token(headers={"kid": "new"})) == "unknown-key"
        assert jwks_server.fetches == 2
        assert auth.keys.keyset is not None
        assert set(auth.keys.keyset.by_kid) == {"k"}
    finally:
        await auth.close()


async def _timed(auth: CallerAuthenticator, token: str) -> tuple[str, float]:
    started = time.monotonic()
    try:
        return (await auth.authenticate(bearer(token))).service, time.monotonic() - started
    except Unauthenticated as exc:
        return exc.reason, time.monotonic() - started


@pytest.mark.parametrize("have_keys", [True, False], ids=["unknown-kids", "no-key-set-yet"])
async def test_callers_arriving_during_a_load_share_it(
    have_keys: bool, jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    # review-auth F4: the interval was measured from the start of a load and each caller queued on the
    # lock found it passed once the load took longer than the interval, so n queued callers made n
    # fetches one after the other (the last waited n x the fetch time).
    jwks_server.keys = [ed_signer.jwk("k")]
    if not have_keys:
        jwks_server.status = 503  # the first load fails: every caller needs a load
    auth = url_auth(jwks_refresh_min_interval_seconds=0.2)
    await auth.start()
    try:
        assert jwks_server.fetches == 1
        await asyncio.sleep(0.25)
        jwks_server.delay = 0.4  # a load slower than the interval
        results = await asyncio.gather(
            *(_timed(auth, ed_signer.token(headers={"kid": f"probe-{n}"})) for n in range(6)))
        expected = "unknown-key" if have_keys else "keys-unavailable"
        assert {reason for reason, _ in results} == {expected}
        assert jwks_server.fetches == 2  # one load, shared by all six
        assert max(elapsed for _, elapsed in results) < 0.8
        # The interval runs from the end of that load: the next unknown kid does not load again...
        assert (await _timed(auth, ed_signer.token(headers={"kid": "right-after"})))[0] == expected
        assert jwks_server.fetches == 2
        # ... until the interval has passed.
        jwks_server.delay = 0.0
        await asyncio.sleep(0.25)
        assert (await _timed(auth, ed_signer.token(headers={"kid": "later"})))[0] == expected
        assert jwks_server.fetches == 3
    finally:
        await auth.close()


async def test_a_cancelled_caller_does_not_cancel_the_shared_load(
    jwks_server: JwksServer, url_auth: Callable[..., CallerAuthenticator], ed_signer: Signer,
    other_ed_signer: Signer,
) -> None:
    jwks_server.keys = [ed_signer.jwk("k")]
    auth = url_auth(jwks_refresh_min_interval_seconds=0.05)
    await auth.start()
    try:
        await asyncio.sleep(0.06)
        jwks_server.keys = [ed_signer.jwk("k"), other_ed_signer.jwk("new")]
        jwks_server.delay = 0.3
        token = other_ed_signer.token(headers={"kid": "new"})
        first = asyncio.ensure_future(auth.authenticate(bearer(token)))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(auth.authenticate(bearer(token)))
        await asyncio.sleep(0.05)
        first.cancel()  # e.g. its client went away
        assert (await second).service == "orders-service"
        assert jwks_server.fetches == 2
    finally:
        await auth.close()


@pytest.mark.parametrize("name", ["jwks_refresh_min_interval_seconds", "jwks_cache_seconds"])
def test_the_jwks_intervals_must_be_positive_finite_seconds(name: str) -> None:
    from gateway.config import load_settings
    from gateway.errors import ConfigError

    variable = f"GATEWAY_{name.upper()}"
    for bad in ("0", "-5", "nan", "inf"):
        with pytest.raises(ConfigError, match=f"setting {name}: must be a positive number of seconds"):
            load_settings(environ={variable: bad})
    with pytest.raises(ConfigError, match=name):
        load_settings(environ={}, **{name: 0})
    assert getattr(load_settings(environ={variable: "0.5"}), name) == 0.5


async def _wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
