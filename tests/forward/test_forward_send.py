"""UpstreamPool.send against partners on 127.0.0.1: the exact bytes that leave, and every failure mode."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from forward_fakes import OK_RESPONSE, Auth, Limits, Profile, RawPartner, Responder, Route, Upstream

from gateway.errors import MalformedRequest, UpstreamError, UpstreamTimeout
from gateway.forward import UpstreamPool

MakePartner = Callable[[Responder], Awaitable[RawPartner]]
ROUTE = Route("/shipments/{shipment_id}")
BODY = b'{"order_id":"O-1","recipient":{"phone":"+886900000000"}}'


def ok(_: bytes) -> bytes:
    return OK_RESPONSE


def profile_for(url: str, auth: Auth | None = None, total: float = 2.0, **limits: object) -> Profile:
    return Profile("carrier-test", Upstream(url, auth, connect_timeout=1.0, total_timeout=total), Limits(**limits))  # type: ignore[arg-type]


CALLER_HEADERS = {
    "Authorization": "Bearer caller-jwt-must-not-leak",
    "Cookie": "session=caller-cookie",
    "Connection": "keep-alive, X-Secret-Hop",
    "Keep-Alive": "timeout=5",
    "Transfer-Encoding": "chunked",
    "Proxy-Authorization": "Basic Y2FsbGVyOnNlY3JldA==",
    "TE": "trailers",
    "Upgrade": "websocket",
    "Host": "evil.example",
    "Content-Length": "999",
    "Idempotency-Key": "K-1",
}


def split_request(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"duplicate header {name}"
        headers[name.lower()] = value.strip()
    return lines[0], headers, body


async def test_exact_bytes_carry_the_partner_credential_and_nothing_of_the_caller(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    partner = await raw_partner_factory(ok)
    profile = profile_for(partner.url, Auth("bearer", "Authorization", "Bearer partner-token-123"))
    response = await pool.send(
        profile,
        ROUTE,
        "POST",
        {"shipment_id": "S 1"},
        [("lang", "en")],
        CALLER_HEADERS,
        BODY,
        request_id="req-42",
        content_type="application/json",
    )
    assert response.status == 200
    assert response.body == b'{"ok":true}'
    assert response.latency_s > 0
    request_line, headers, body = split_request(partner.received[0])
    assert request_line == "POST /shipments/S%201?lang=en HTTP/1.1"
    assert body == BODY
    assert headers == {
        "host": partner.url.removeprefix("http://"),
        "authorization": "Bearer partner-token-123",
        "content-type": "application/json",
        "content-length": str(len(BODY)),
        "x-request-id": "req-42",
        "idempotency-key": "K-1",
    }
    raw = partner.received[0]
    for leaked in (b"caller-jwt", b"caller-cookie", b"Y2FsbGVyOnNlY3JldA", b"evil.example", b"websocket", b"chunked"):
        assert leaked not in raw


async def test_header_credential_replaces_a_same_named_header_from_the_request(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    partner = await raw_partner_factory(ok)
    profile = profile_for(partner.url, Auth("header", "X-Api-Key", "partner-key"))
    await pool.send(profile, ROUTE, "GET", {"shipment_id": "S1"}, [], {"x-api-key": "caller-key"}, None)
    request_line, headers, body = split_request(partner.received[0])
    assert request_line == "GET /shipments/S1 HTTP/1.1"
    assert headers["x-api-key"] == "partner-key"
    assert b"caller-key" not in partner.received[0]
    assert "authorization" not in headers
    assert "content-type" not in headers
    assert body == b""


async def test_basic_credential_goes_out_as_the_loader_built_it(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    partner = await raw_partner_factory(ok)
    profile = profile_for(
        partner.url, Auth("basic", "Authorization", "Basic " + base64.b64encode("acme:s3cr\u00e9t".encode()).decode())
    )
    await pool.send(profile, ROUTE, "GET", {"shipment_id": "S1"}, [], {}, None)
    _, headers, _ = split_request(partner.received[0])
    assert headers["authorization"] == "Basic " + base64.b64encode("acme:s3cr\u00e9t".encode()).decode()


@pytest.mark.parametrize(
    "headers",
    [{"X-Note": "a\r\nX-Injected: 1"}, {"X-Note": "a\nb"}, {"X-Note": "a\x00b"}, {"X Bad": "1"}, {"X-Bad\r\n": "1"}],
)
async def test_header_injection_is_refused_and_nothing_is_sent(
    pool: UpstreamPool, raw_partner_factory: MakePartner, headers: dict[str, str]
) -> None:
    partner = await raw_partner_factory(ok)
    with pytest.raises(MalformedRequest):
        await pool.send(profile_for(partner.url), ROUTE, "POST", {"shipment_id": "S1"}, [], headers, BODY)
    assert partner.received == []


async def test_traversal_is_refused_before_any_connection(pool: UpstreamPool, raw_partner_factory: MakePartner) -> None:
    partner = await raw_partner_factory(ok)
    with pytest.raises(MalformedRequest):
        await pool.send(profile_for(partner.url), ROUTE, "POST", {"shipment_id": "%2e%2e"}, [], {}, BODY)
    assert partner.connections == 0


async def test_connections_are_kept_alive_between_calls(pool: UpstreamPool, raw_partner_factory: MakePartner) -> None:
    partner = await raw_partner_factory(ok)
    profile = profile_for(partner.url)
    for _ in range(5):
        await pool.send(profile, ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    assert len(partner.received) == 5
    assert partner.connections == 1


@pytest.mark.parametrize("status", [500, 502, 503, 404, 429])
async def test_partner_error_statuses_come_back_as_responses(
    pool: UpstreamPool, raw_partner_factory: MakePartner, status: int
) -> None:
    answer = f"HTTP/1.1 {status} Whatever\r\nContent-Length: 4\r\n\r\noops".encode()
    partner = await raw_partner_factory(lambda _: answer)
    response = await pool.send(profile_for(partner.url), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    assert (response.status, response.body) == (status, b"oops")


def reset(_: bytes) -> str:
    return "reset"


async def test_connection_closed_without_answer_is_an_upstream_error(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    partner = await raw_partner_factory(lambda _: None)
    with pytest.raises(UpstreamError) as info:
        await pool.send(profile_for(partner.url), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    assert info.value.reason == "upstream-reset"
    assert partner.url.split(":")[-1] not in info.value.detail


async def test_tcp_reset_is_an_upstream_error(pool: UpstreamPool) -> None:
    async def rst(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(rst, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UpstreamError):
            await pool.send(profile_for(f"http://127.0.0.1:{port}"), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    finally:
        server.close()
        await server.wait_closed()


async def test_refused_connection_is_an_upstream_error(pool: UpstreamPool) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamError) as info:
        await pool.send(profile_for(f"http://127.0.0.1:{port}"), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    assert info.value.reason == "upstream-connect"


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    ],
)
async def test_malformed_responses_are_upstream_errors(
    pool: UpstreamPool, raw_partner_factory: MakePartner, answer: bytes
) -> None:
    # The partner sends its answer then closes, so a truncated body cannot hang the test.
    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(len(BODY))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_and_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UpstreamError):
            await pool.send(profile_for(f"http://127.0.0.1:{port}"), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_partner_that_never_answers_times_out_within_the_profile_bound(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    partner = await raw_partner_factory(lambda _: "hang")
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await pool.send(profile_for(partner.url, total=0.5), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    assert 0.4 < time.monotonic() - started < 1.5


async def test_a_partner_that_trickles_its_body_times_out(pool: UpstreamPool) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        try:
            for _ in range(100):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await pool.send(
                profile_for(f"http://127.0.0.1:{port}", total=0.5), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY
            )
        assert time.monotonic() - started < 1.5
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def aiohttp_partners() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield serve
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_to_another_host_are_never_followed(
    pool: UpstreamPool, aiohttp_partners: Callable[[web.Application], Awaitable[str]], status: int
) -> None:
    other_hits: list[str] = []

    async def other(request: web.Request) -> web.Response:
        other_hits.append(request.path)
        return web.json_response({"stolen": True})

    other_app = web.Application()
    other_app.router.add_route("*", "/{tail:.*}", other)
    other_url = await aiohttp_partners(other_app)

    async def redirecting(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, headers={"Location": f"{other_url}/collect"})

    app = web.Application()
    app.router.add_post("/shipments/{shipment_id}", redirecting)
    url = await aiohttp_partners(app)
    with pytest.raises(UpstreamError) as info:
        await pool.send(profile_for(url), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    assert info.value.reason == "upstream-redirect"
    assert other_url not in info.value.detail
    assert other_hits == []


async def test_aiohttp_partner_receives_body_and_answers_json(
    pool: UpstreamPool, aiohttp_partners: Callable[[web.Application], Awaitable[str]]
) -> None:
    seen: list[tuple[str, bytes, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.match_info["shipment_id"], await request.read(), request.headers.get("Authorization")))
        return web.json_response({"tracking_number": "T-1"}, status=201)

    app = web.Application()
    app.router.add_post("/shipments/{shipment_id}", handler)
    url = await aiohttp_partners(app)
    profile = profile_for(url, Auth("bearer", "Authorization", "Bearer tok"))
    response = await pool.send(
        profile, ROUTE, "POST", {"shipment_id": "S-9"}, [], {}, BODY, content_type="application/json"
    )
    assert response.status == 201
    assert response.body == b'{"tracking_number": "T-1"}'
    assert response.headers["Content-Type"].startswith("application/json")
    assert seen == [("S-9", BODY, "Bearer tok")]


async def test_response_over_the_cap_with_content_length_is_refused(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    big = b"x" * 5000  # the pool fixture caps responses at 4096 bytes
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    partner = await raw_partner_factory(lambda _: answer)
    with pytest.raises(UpstreamError) as info:
        await pool.send(profile_for(partner.url), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    assert info.value.reason == "upstream-too-large"


async def test_chunked_response_over_the_cap_is_refused(pool: UpstreamPool, raw_partner_factory: MakePartner) -> None:
    chunk = b"y" * 1000
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"3e8\r\n" + chunk + b"\r\n"
    answer = answer + (b"3e8\r\n" + chunk + b"\r\n") * 5 + b"0\r\n\r\n"
    partner = await raw_partner_factory(lambda _: answer)
    with pytest.raises(UpstreamError) as info:
        await pool.send(profile_for(partner.url), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    assert info.value.reason == "upstream-too-large"


async def test_chunked_response_within_the_cap_is_reassembled(
    pool: UpstreamPool, raw_partner_factory: MakePartner
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    partner = await raw_partner_factory(lambda _: answer)
    response = await pool.send(profile_for(partner.url), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    assert response.body == b"hello world"


async def test_send_on_a_closed_pool_refuses(raw_partner_factory: MakePartner) -> None:
    partner = await raw_partner_factory(ok)
    closed = UpstreamPool()
    with pytest.raises(UpstreamError):
        await closed.send(profile_for(partner.url), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
    assert partner.connections == 0


def test_exchanges_work_on_uvloop_as_the_server_runs_them() -> None:
    # uvloop's transports are not asyncio.Transport subclasses; the client must not depend on that.
    import uvloop

    async def scenario() -> tuple[int, bytes, int]:
        from forward_fakes import RawPartner

        partner = RawPartner(lambda _: OK_RESPONSE)
        await partner.start()
        upstream_pool = UpstreamPool()
        await upstream_pool.start()
        try:
            profile = profile_for(partner.url)
            for _ in range(3):
                answer = await upstream_pool.send(profile, ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
            return answer.status, answer.body, partner.connections
        finally:
            await upstream_pool.close()
            await partner.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == (200, b'{"ok":true}', 1)


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    ],
)
async def test_interim_answers_are_skipped_and_close_is_honoured(
    pool: UpstreamPool, raw_partner_factory: MakePartner, answer: bytes, reused: bool
) -> None:
    partner = await raw_partner_factory(lambda _: answer)
    profile = profile_for(partner.url)
    for _ in range(2):
        response = await pool.send(profile, ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
        assert (response.status, response.body) == (200, b"ok")
    assert partner.connections == (1 if reused else 2)


async def test_body_read_until_close_without_length(pool: UpstreamPool) -> None:
    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(len(BODY))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_and_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        response = await pool.send(
            profile_for(f"http://127.0.0.1:{port}"), ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY
        )
        assert response.body == b"until close"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_partner_that_never_completes_the_handshake_times_out_on_the_connect_bound(pool: UpstreamPool) -> None:
    # A real listener that never accepts, its accept queue already full: Linux drops further SYNs, so a
    # new connection attempt hangs in the handshake until the profile's connect timeout (not the total).
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.2)  # let the kernel settle the fillers' handshakes into the queue
        profile = Profile(
            "carrier-test",
            Upstream(f"http://127.0.0.1:{port}", None, connect_timeout=0.3, total_timeout=5.0),
            Limits(),
        )
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout) as refused:
            await pool.send(profile, ROUTE, "POST", {"shipment_id": "S1"}, [], {}, BODY)
        elapsed = time.monotonic() - started
        assert refused.value.reason == "upstream-connect-timeout"
        assert elapsed < 4.0  # the connect bound ended it, far inside the 5 s total bound
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
