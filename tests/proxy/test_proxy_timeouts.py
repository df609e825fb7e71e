"""The egress server's time limits through real sockets, each set short here:
- a request head that has begun must arrive whole within `request_head_timeout_seconds` (408, close);
- a body must arrive whole within `request_body_timeout_seconds` of the gateway starting to read it, a
  deadline for the whole body (a client trickling bytes faster than the limit is still cut off): 408,
  close, nothing forwarded, nothing recorded as a disclosure (a connection handed to aiohttp closes after
  its one answer, so no egress request is read there);
- a keep-alive connection idle for `keepalive_timeout_seconds` is closed, on the egress server (and a
  head handed to aiohttp that never completes, after that limit); the idle time counts from the last
  answer, and an active one stays open;
- an answer the client does not read for that long is dropped with its connection."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from proxy_harness import RAW_PHONE, FakePartner, GatewayHarness, request_id_for, running_harness, shipment_body
from test_proxy_http_server import SHIPMENT, Conn, assert_problem, shipment

from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from gateway.keys import GatewayKeys


def _harness_with(name: str, **limits: float) -> Any:
    """A fixture `name`: the proxy harness with these settings replaced."""

    async def fixture(
        settings: Settings, fake_partner: FakePartner, gateway_keys: GatewayKeys
    ) -> AsyncIterator[GatewayHarness]:
        async with running_harness(replace(settings, **limits), fake_partner, gateway_keys) as running:
            yield running

    return pytest.fixture(fixture, name=name)


quick_head = _harness_with("quick_head", request_head_timeout_seconds=0.3, request_body_timeout_seconds=5.0)
quick_body = _harness_with("quick_body", request_body_timeout_seconds=0.4)
quick_idle = _harness_with("quick_idle", keepalive_timeout_seconds=0.3)
quick_handoff = _harness_with("quick_handoff", request_body_timeout_seconds=0.4, keepalive_timeout_seconds=0.3)
# A limit short enough to outlive in a test, with room for a loaded machine between requests.
steady_idle = _harness_with("steady_idle", keepalive_timeout_seconds=1.0)


def _head(harness: GatewayHarness, framing: str, extra: str = "") -> bytes:
    return (
        f"POST {SHIPMENT} HTTP/1.1\r\nHost: gw\r\nAuthorization: {harness.auth()['Authorization']}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n{extra}\r\n"
    ).encode()


# -- head -------------------------------------------------------------------------------------------


async def test_a_trickled_head_gets_408_and_the_connection_closes(quick_head: GatewayHarness) -> None:
    async with Conn(quick_head) as conn:
        await conn.send(f"POST {SHIPMENT} HTTP/1.1\r\nHost: gw\r\n".encode())
        await asyncio.sleep(0.15)
        await conn.send(b"X-Slow: 1\r\n")  # still arriving, never finished
        _, status, headers, body = await conn.answer()
        problem = assert_problem(status, headers, body, 408)
        assert "X-Slow" not in json.dumps(problem)
        assert headers["connection"] == "close"
        assert await conn.closed_by_server()
    assert quick_head.partner.received == []


async def test_a_head_in_time_is_served_even_when_its_body_comes_later(quick_head: GatewayHarness) -> None:
    async with Conn(quick_head) as conn:
        request = shipment(quick_head)
        head, _, body = request.partition(b"\r\n\r\n")
        await conn.send(head[:20])
        await asyncio.sleep(0.1)
        await conn.send(head[20:] + b"\r\n\r\n")
        await asyncio.sleep(0.6)  # twice the head bound: the timer must have stopped with the head
        await conn.send(body)
        _, status, _, answer = await conn.answer()
        assert status == 200, answer
        # The connection stays usable: a second request on it is served too.
        await conn.send(shipment(quick_head))
        _, status, _, _ = await conn.answer()
        assert status == 200
    assert len(quick_head.partner.received) == 2


# -- body -------------------------------------------------------------------------------------------


async def _trickle(conn: Conn, data: bytes) -> None:
    """Sends `data` a few bytes at a time, each well within the body limit of the last, until done or
    the server closes."""
    try:
        for start in range(0, len(data), 4):
            await conn.send(data[start:start + 4])
            await asyncio.sleep(0.05)
    except (ConnectionError, OSError):
        return


async def _trickled_body_is_cut_off(conn: Conn, head: bytes, data: bytes) -> None:
    """Sends `head`, then `data` a few bytes at a time; the answer is the body deadline's 408, without a
    personal value, and the server closes the connection."""
    await conn.send(head)
    # Never more than 0.05 s between bytes, yet the whole body would take seconds: a deadline for the
    # whole body cuts it off where an idle limit between reads would not.
    trickling = asyncio.create_task(_trickle(conn, data))
    _, status, headers, body = await conn.answer()
    problem = assert_problem(status, headers, body, 408)
    assert problem["title"] == "Request body not received in time"
    assert RAW_PHONE.encode() not in body
    assert headers["connection"] == "close"
    assert await conn.closed_by_server()
    trickling.cancel()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_trickled_body_gets_408_however_steady_its_bytes(quick_body: GatewayHarness, framing: str) -> None:
    data = json.dumps(shipment_body()).encode()  # carries RAW_PHONE
    if framing == "chunked":
        head = _head(quick_body, "Transfer-Encoding: chunked")
        data = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 8]), data[i:i + 8]) for i in range(0, len(data), 8))
    else:
        head = _head(quick_body, f"Content-Length: {len(data)}")
    async with Conn(quick_body) as conn:
        await _trickled_body_is_cut_off(conn, head, data)
    assert quick_body.partner.received == []
    assert await quick_body.ledger_records(kind="disclosure") == []
    assert [r["status"] for r in await quick_body.ledger_records(kind="refusal")] == [408]


async def test_a_stalled_body_gets_408(quick_body: GatewayHarness) -> None:
    async with Conn(quick_body) as conn:
        await conn.send(_head(quick_body, "Transfer-Encoding: chunked") + b"10\r\n{\"order_id\": \"O")  # then nothing
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 408)
        assert await conn.closed_by_server()
    assert quick_body.partner.received == []


async def test_the_body_deadline_starts_with_100_continue(quick_body: GatewayHarness) -> None:
    data = json.dumps(shipment_body()).encode()
    async with Conn(quick_body) as conn:
        await conn.send(_head(quick_body, f"Content-Length: {len(data)}", "Expect: 100-continue\r\n"))
        interim = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await conn.send(data[:10])  # invited, then not sent
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 408)
    assert quick_body.partner.received == []


async def test_a_body_in_time_is_served_and_the_connection_kept(quick_body: GatewayHarness) -> None:
    request = shipment(quick_body)
    head, _, data = request.partition(b"\r\n\r\n")
    async with Conn(quick_body) as conn:
        for _ in range(2):
            await conn.send(head + b"\r\n\r\n" + data[:5])
            await conn.send(data[5:])
            _, status, headers, answer = await conn.answer()
            assert status == 200, answer
            assert "connection" not in headers
    assert len(quick_body.partner.received) == 2


# -- keep-alive idle --------------------------------------------------------------------------------


async def test_an_idle_keep_alive_connection_is_closed_after_the_limit(quick_idle: GatewayHarness) -> None:
    async with Conn(quick_idle) as conn:
        await conn.send(shipment(quick_idle))
        _, status, headers, _ = await conn.answer()
        assert status == 200
        assert "connection" not in headers  # kept alive ... until idle for 0.3 s
        assert await conn.closed_by_server()


async def test_a_head_for_another_path_never_completed_gets_408(quick_head: GatewayHarness) -> None:
    # The lean server reads every head before a hand-off, so its head deadline holds for ops and admin too.
    async with Conn(quick_head) as conn:
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Then: nothing\r\n")
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 408)
        assert await conn.closed_by_server()


async def test_a_handed_over_connection_ends_by_its_deadline(quick_handoff: GatewayHarness) -> None:
    # aiohttp has no body deadline and no keep-alive limit while a request is in progress: an admin body
    # that never ends would hold the connection for as long as the client likes. The hand-off's deadline
    # (body limit + keep-alive limit: 0.7 s here) ends it.
    auth = quick_handoff.auth(["gateway:admin"])["Authorization"]
    async with Conn(quick_handoff) as conn:
        await conn.send(
            f"POST /v1/admin/subjects/report HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"subject_id\"".encode()
        )
        assert await conn.closed_by_server()


async def test_an_active_keep_alive_connection_stays_open(steady_idle: GatewayHarness) -> None:
    async with Conn(steady_idle) as conn:
        # Six requests 0.3 s apart: the connection lives well past the 1 s limit, never idle that long.
        for n in range(6):
            await asyncio.sleep(0.3)
            await conn.send(shipment(steady_idle, extra=f"X-Request-Id: {request_id_for(f'act-{n}')}\r\n"))
            _, status, headers, _ = await conn.answer()
            assert (status, headers["x-request-id"]) == (200, request_id_for(f"act-{n}"))


async def test_idle_time_counts_from_the_answer_not_the_request(steady_idle: GatewayHarness) -> None:
    steady_idle.partner.mode = "hang"  # answered by the partner timeout (1.5 s): longer than the idle limit
    async with Conn(steady_idle) as conn:
        await conn.send(shipment(steady_idle))
        _, status, headers, _ = await conn.answer()
        assert status == 504
        assert "connection" not in headers
        steady_idle.partner.mode = "ok"
        # Idle for 0.6 s since the answer (2.1 s since the request): within the limit counted from the answer.
        await asyncio.sleep(0.6)
        await conn.send(shipment(steady_idle))
        _, status, _, _ = await conn.answer()
        assert status == 200


# -- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["request_head_timeout_seconds", "request_body_timeout_seconds", "keepalive_timeout_seconds"]
)
def test_the_timeouts_must_be_positive_finite_seconds(name: str) -> None:
    variable = f"GATEWAY_{name.upper()}"
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(ConfigError, match=name):
            load_settings(environ={variable: bad})
    with pytest.raises(ConfigError, match=variable):
        load_settings(environ={variable: "soon"})
    assert getattr(load_settings(environ={variable: "2.5"}), name) == 2.5


def test_the_timeout_defaults() -> None:
    defaults = load_settings(environ={})
    assert (
        defaults.request_head_timeout_seconds, defaults.request_body_timeout_seconds,
        defaults.keepalive_timeout_seconds,
    ) == (30.0, 30.0, 75.0)


async def test_an_answer_the_client_never_reads_is_dropped_after_the_idle_limit(quick_idle: GatewayHarness) -> None:
    quick_idle.partner.mode = "big"  # a 4 MB answer: more than the socket buffers hold
    gateway = quick_idle.gateway
    assert gateway.lean is not None
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(client, (gateway.host, gateway.port))
        await loop.sock_sendall(client, (
            f"GET /v1/partners/carrier-test/tracking/T-1 HTTP/1.1\r\nHost: gw\r\n"
            f"Authorization: {quick_idle.auth()['Authorization']}\r\nX-Purpose: delivery\r\n\r\n").encode())
        deadline = loop.time() + 10
        while not gateway.lean.connections:  # connected; the answer is on its way
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        # Never read: the gateway must let go of the connection (and the answer it buffers) by itself.
        while gateway.lean.connections:
            assert loop.time() < deadline, "the unread answer held its connection"
            await asyncio.sleep(0.05)
    finally:
        client.close()
    assert len(quick_idle.partner.received) == 1
