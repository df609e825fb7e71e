"""The response parser's bounds against a hostile partner (review-partner F3, F7, F8, F10): a chunked body
is held in one buffer, every byte of it as received counts against the response cap (each chunk at least
64 bytes), chunk-size lines are bounded, a bare-LF head or an unknown 1xx fails at once, interim answers
are bounded, the partner's Keep-Alive timeout is honoured, and a connection whose request had not fully
left when the answer came is not reused. Real sockets where the behaviour is end to end; the parser's
own memory is measured with tracemalloc on a connection fed directly."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest
from forward_fakes import OK_RESPONSE, Limits, Profile, RawPartner, Responder, Route, Upstream

from gateway import forward
from gateway.errors import RateLimited, UpstreamError
from gateway.forward import UpstreamPool

MakePartner = Callable[[Responder], Awaitable[RawPartner]]
ROUTE = Route("/x/{id}")
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


def profile_for(url: str, total: float = 3.0) -> Profile:
    return Profile("carrier-test", Upstream(url, None, connect_timeout=0.5, total_timeout=total), Limits())


async def call(pool: UpstreamPool, profile: Profile) -> forward.UpstreamResponse:
    return await pool.send(profile, ROUTE, "GET", {"id": "1"}, [], {}, None)


async def failure_of(pool: UpstreamPool, partner: RawPartner) -> str:
    with pytest.raises(UpstreamError) as refused:
        await call(pool, profile_for(partner.url))
    return refused.value.reason


class _Transport:
    """Just enough of a transport for a connection fed by hand."""

    def __init__(self, unsent: int = 0) -> None:
        self.unsent = unsent

    def write(self, data: bytes) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def abort(self) -> None:
        pass


async def test_one_byte_chunks_are_held_in_one_buffer_not_one_object_each() -> None:
    connection = forward._Connection()
    connection.connection_made(_Transport())  # type: ignore[arg-type]
    answer = connection.exchange(b"GET / HTTP/1.1\r\n\r\n", False, 64 * 1024 * 1024)
    connection.data_received(CHUNKED_HEAD)
    segment = b"1\r\nx\r\n" * 10_000
    tracemalloc.start()
    try:
        for _ in range(20):  # 200,000 one-byte chunks, 1.2 MB on the wire
            connection.data_received(segment)
        connection.data_received(b"0\r\n\r\n")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert answer.result().body == b"x" * 200_000
    # One bytes object per chunk (about 34 bytes each, plus the list) came to ~8 MB here.
    assert peak < 1_000_000


async def test_a_chunked_answer_is_not_kept_by_the_connection_after_it_was_handed_over() -> None:
    """The partner's unfiltered answer (fields the response policy drops among them) must not stay in a
    kept-alive connection's buffers while it idles in the pool (final review Q1)."""
    connection = forward._Connection()
    connection.connection_made(_Transport())  # type: ignore[arg-type]
    answer = connection.exchange(b"GET / HTTP/1.1\r\n\r\n", False, 64 * 1024 * 1024)
    connection.data_received(CHUNKED_HEAD + b"10\r\n" + b"s" * 16 + b"\r\n0\r\n\r\n")
    assert answer.result().body == b"s" * 16
    assert answer.result().reusable
    assert not connection._body
    assert not connection._buffer


async def test_chunk_extensions_and_framing_count_against_the_cap(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    # 1,000 bytes of data (the cap is 4,096) in 20 chunks whose size lines carry 200-byte extensions:
    # 5 KiB on the wire.
    chunk = b"32;e=" + b"a" * 195 + b"\r\n" + b"y" * 50 + b"\r\n"
    partner = await raw_partner_factory(lambda _: CHUNKED_HEAD + chunk * 20 + b"0\r\n\r\n")
    assert await failure_of(pool, partner) == "upstream-too-large"


async def test_a_long_chunk_extension_is_refused(pool: UpstreamPool, raw_partner_factory: MakePartner) -> None:
    partner = await raw_partner_factory(lambda _: CHUNKED_HEAD + b"2;e=" + b"a" * 300 + b"\r\nok\r\n0\r\n\r\n")
    assert await failure_of(pool, partner) == "upstream-malformed"


async def test_tiny_chunks_are_charged_a_minimum_each(pool: UpstreamPool, raw_partner_factory: MakePartner) -> None:
    # 500 one-byte chunks: 3,000 bytes on the wire, under the 4,096 cap, but 500 x 64 charged.
    partner = await raw_partner_factory(lambda _: CHUNKED_HEAD + b"1\r\nx\r\n" * 500 + b"0\r\n\r\n")
    assert await failure_of(pool, partner) == "upstream-too-large"


async def test_ordinary_chunks_extensions_and_trailers_still_parse(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    body = b'{"status":"in transit","items":["' + b"z" * 1500 + b'"]}'
    pieces = [body[i : i + 700] for i in (0, 700, 1400)]
    chunks = b"".join(b"%x;name=value\r\n" % len(piece) + piece + b"\r\n" for piece in pieces)
    partner = await raw_partner_factory(lambda _: CHUNKED_HEAD + chunks + b"0\r\nX-Checksum: abc\r\n\r\n")
    answer = await call(pool, profile_for(partner.url))
    assert answer.body == body
    assert "X-Checksum" not in answer.headers


async def test_trailers_are_bounded(pool: UpstreamPool, raw_partner_factory: MakePartner) -> None:
    big = UpstreamPool(max_response_bytes=1024 * 1024)
    await big.start()
    try:
        trailers = b"X-T: " + b"t" * 100 + b"\r\n"
        partner = await raw_partner_factory(lambda _: CHUNKED_HEAD + b"2\r\nok\r\n0\r\n" + trailers * 700 + b"\r\n")
        assert await failure_of(big, partner) == "upstream-malformed"
    finally:
        await big.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 11\n\n{\"ok\":true}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\n\r\n{\"ok\":true}",
        b"HTTP/1.1 199 Odd\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" * 17 + OK_RESPONSE,
    ],
    ids=["bare LF head", "one bare LF", "unknown 1xx", "17 interim answers"],
)
async def test_heads_that_never_complete_fail_at_once_not_at_the_timeout(
    pool: UpstreamPool, raw_partner_factory: MakePartner, answer: bytes
) -> None:
    # The partner keeps the connection open: before, each of these waited for the total timeout (504).
    partner = await raw_partner_factory(lambda _: answer)
    assert await failure_of(pool, partner) == "upstream-malformed"


async def test_registered_interim_answers_are_still_skipped(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    interim = b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 8
    partner = await raw_partner_factory(lambda _: interim + OK_RESPONSE)
    assert (await call(pool, profile_for(partner.url))).status == 200


def test_keep_alive_parameters() -> None:
    seconds = forward._keepalive_seconds
    assert seconds(b",timeout=5, max=100") == 4.0
    assert seconds(b",timeout=1") == 0.5
    assert seconds(b",timeout=0") == 0.0
    assert seconds(b",max=0") == 0.0
    assert seconds(b",timeout=3600") == forward._KEEPALIVE_SECONDS
    assert seconds(b",timeout=abc, foo=1") == forward._KEEPALIVE_SECONDS


@pytest.mark.parametrize("keep_alive", [b"timeout=0", b"timeout=5, max=0"])
async def test_a_connection_the_partner_will_not_keep_is_not_reused(
    pool: UpstreamPool, raw_partner_factory: MakePartner, keep_alive: bytes
) -> None:
    answer = OK_RESPONSE.replace(b"\r\n\r\n", b"\r\nKeep-Alive: " + keep_alive + b"\r\n\r\n", 1)
    partner = await raw_partner_factory(lambda _: answer)
    profile = profile_for(partner.url)
    assert (await call(pool, profile)).status == 200
    assert (await call(pool, profile)).status == 200
    assert partner.connections == 2


async def test_the_partner_keep_alive_timeout_bounds_the_idle_time(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    answer = OK_RESPONSE.replace(b"\r\n\r\n", b"\r\nKeep-Alive: timeout=2\r\n\r\n", 1)
    partner = await raw_partner_factory(lambda _: answer)
    assert (await call(pool, profile_for(partner.url))).status == 200
    (idle,) = pool._channels["carrier-test"]._idle
    assert idle.keepalive_s == 1.0


async def test_an_answer_that_came_before_the_request_had_left_does_not_make_the_connection_reusable() -> None:
    transport = _Transport(unsent=65536)  # part of the request still waits to be written
    connection = forward._Connection()
    connection.connection_made(transport)  # type: ignore[arg-type]
    answer = connection.exchange(b"POST / HTTP/1.1\r\n\r\n", False, 4096)
    connection.data_received(OK_RESPONSE)
    assert answer.result().status == 200
    assert not answer.result().reusable
    transport.unsent = 0
    answer = connection.exchange(b"POST / HTTP/1.1\r\n\r\n", False, 4096)
    connection.data_received(OK_RESPONSE)
    assert answer.result().reusable


async def test_a_reused_connection_closed_before_any_answer_byte_has_its_own_reason(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    # The partner answers the first request on a connection and closes on the second one without a byte,
    # as a partner whose idle timer fired while the call was on its way does.
    seen: list[int] = []

    def responder(_: bytes) -> bytes | None:
        seen.append(partner.connections)
        return OK_RESPONSE if seen.count(partner.connections) == 1 else None

    partner = await raw_partner_factory(responder)
    profile = profile_for(partner.url)
    assert (await call(pool, profile)).status == 200
    with pytest.raises(UpstreamError) as refused:
        await call(pool, profile)
    assert refused.value.reason == "upstream-reset-idle"
    # A fresh connection that closes without answering keeps the plain reason.
    fresh = await raw_partner_factory(lambda _: None)
    assert await failure_of(pool, fresh) == "upstream-reset"


async def test_a_burst_does_not_open_more_connections_than_the_cap(
    raw_partner_factory: MakePartner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forward, "DEFAULT_MAX_CONCURRENCY", 3)
    partner = await raw_partner_factory(lambda _: OK_RESPONSE)
    pool = UpstreamPool()
    await pool.start()
    try:
        burst = (call(pool, profile_for(partner.url)) for _ in range(8))
        results = await asyncio.gather(*burst, return_exceptions=True)
    finally:
        await pool.close()
    assert sum(1 for r in results if isinstance(r, forward.UpstreamResponse)) == 3
    assert partner.connections == 3  # before: every call of the burst connected (8)


async def test_admission_enforces_the_default_cap_when_the_profile_sets_none(
    pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forward, "DEFAULT_MAX_CONCURRENCY", 2)
    limiter = pool.limiter(Profile("uncapped", Upstream("http://127.0.0.1:9", None), Limits()))
    async with limiter, limiter:
        with pytest.raises(RateLimited):
            async with limiter:
                pass
