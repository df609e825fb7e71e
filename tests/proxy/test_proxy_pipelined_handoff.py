"""Requests for other endpoints pipelined with egress requests on one connection, through real sockets:
the egress server answers its requests, then hands the connection to aiohttp from the first byte of the
other request, however the bytes fell into reads (one write, a Content-Length or chunked body spread
over several reads, a head split across reads, blank lines between requests); every answer comes in
the order asked, and aiohttp closes the connection after answering that one request (what was pipelined
behind it is not answered: the client sends it again on a new connection)."""

from __future__ import annotations

import asyncio
import json

from proxy_harness import GatewayHarness, request_id_for, shipment_body
from test_proxy_http_server import SHIPMENT, Conn, shipment

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
READYZ = b"GET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n"


def _chunked(harness: GatewayHarness, request_id: str) -> tuple[bytes, bytes]:
    """A shipment with a chunked body: its head and its framed body."""
    data = json.dumps(shipment_body()).encode()
    framed = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 100]), data[i:i + 100]) for i in range(0, len(data), 100))
    head = (
        f"POST {SHIPMENT} HTTP/1.1\r\nHost: gw\r\nAuthorization: {harness.auth()['Authorization']}\r\n"
        f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nX-Request-Id: {request_id}\r\n\r\n"
    ).encode()
    return head, framed + b"0\r\n\r\n"


async def _expect_shipment(conn: Conn, request_id: str) -> None:
    _, status, headers, body = await conn.answer()
    assert (status, headers.get("x-request-id")) == (200, request_id), body
    assert json.loads(body)["tracking_number"] == "T-1"


async def _expect_ops(conn: Conn, expected: dict[str, str]) -> None:
    """The answer of the handed-over request, the last one on the connection."""
    _, status, headers, body = await conn.answer()
    assert status == 200, body
    assert {k: v for k, v in json.loads(body).items() if k in expected} == expected
    assert headers["connection"] == "close"
    assert await conn.closed_by_server()


async def test_egress_then_healthz_in_one_write(harness: GatewayHarness) -> None:
    harness.partner.mode = "slow"  # the egress answer takes longest: it must still come first
    async with Conn(harness) as conn:
        await conn.send(shipment(harness, extra=f"X-Request-Id: {request_id_for('eh-0')}\r\n") + HEALTHZ)
        await _expect_shipment(conn, request_id_for("eh-0"))
        await _expect_ops(conn, {"status": "ok"})
    assert len(harness.partner.received) == 1


async def test_healthz_then_egress_in_one_write(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        await conn.send(HEALTHZ + shipment(harness, extra=f"X-Request-Id: {request_id_for('he-1')}\r\n"))
        await _expect_ops(conn, {"status": "ok"})  # the egress request is never read by aiohttp
    assert harness.partner.received == []
    assert await harness.ledger_records(kind="disclosure") == []


async def test_two_egress_requests_then_two_ops_requests_in_one_write(harness: GatewayHarness) -> None:
    harness.partner.mode = "slow"
    first, second = (shipment(harness, extra=f"X-Request-Id: {request_id_for(f'ee-{n}')}\r\n") for n in range(2))
    async with Conn(harness) as conn:
        await conn.send(first + second + READYZ + HEALTHZ)
        await _expect_shipment(conn, request_id_for("ee-0"))
        await _expect_shipment(conn, request_id_for("ee-1"))
        await _expect_ops(conn, {"status": "ready"})  # and the connection closes: /healthz is not answered
    assert len(harness.partner.received) == 2


async def test_chunked_egress_then_healthz_in_one_write(harness: GatewayHarness) -> None:
    head, body = _chunked(harness, request_id_for("ch-0"))
    async with Conn(harness) as conn:
        await conn.send(head + body + HEALTHZ)
        await _expect_shipment(conn, request_id_for("ch-0"))
        await _expect_ops(conn, {"status": "ok"})


async def test_blank_lines_between_pipelined_requests(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        await conn.send(shipment(harness, extra=f"X-Request-Id: {request_id_for('bl-0')}\r\n") + b"\r\n\r\n" + HEALTHZ)
        await _expect_shipment(conn, request_id_for("bl-0"))
        await _expect_ops(conn, {"status": "ok"})


async def test_content_length_body_over_several_reads_then_healthz(harness: GatewayHarness) -> None:
    request = shipment(harness, extra=f"X-Request-Id: {request_id_for('cl-0')}\r\n")
    head, _, data = request.partition(b"\r\n\r\n")
    async with Conn(harness) as conn:
        await conn.send(head + b"\r\n\r\n" + data[:100])
        await asyncio.sleep(0.05)
        await conn.send(data[100:200])
        await asyncio.sleep(0.05)
        await conn.send(data[200:] + HEALTHZ)
        await _expect_shipment(conn, request_id_for("cl-0"))
        await _expect_ops(conn, {"status": "ok"})


async def test_chunked_body_over_several_reads_then_healthz(harness: GatewayHarness) -> None:
    head, body = _chunked(harness, request_id_for("cr-0"))
    async with Conn(harness) as conn:
        await conn.send(head + body[:150])
        await asyncio.sleep(0.05)
        await conn.send(body[150:-3])  # the last read starts inside the final chunk's framing
        await asyncio.sleep(0.05)
        await conn.send(body[-3:] + HEALTHZ)
        await _expect_shipment(conn, request_id_for("cr-0"))
        await _expect_ops(conn, {"status": "ok"})


async def test_egress_head_split_across_reads_then_healthz_then_egress(harness: GatewayHarness) -> None:
    first = shipment(harness, extra=f"X-Request-Id: {request_id_for('sp-0')}\r\n")
    async with Conn(harness) as conn:
        await conn.send(first[:40])
        await asyncio.sleep(0.05)
        await conn.send(first[40:] + HEALTHZ[:10])
        await asyncio.sleep(0.05)
        await conn.send(HEALTHZ[10:] + shipment(harness, extra=f"X-Request-Id: {request_id_for('sp-2')}\r\n"))
        await _expect_shipment(conn, request_id_for("sp-0"))
        await _expect_ops(conn, {"status": "ok"})
    assert len(harness.partner.received) == 1
