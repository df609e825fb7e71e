"""The lean egress HTTP/1.1 server (gateway.proxy.httpserver) through real sockets: keep-alive and
HTTP/1.0 close, pipelining order, body limits with both framings, header limits, malformed requests,
Expect: 100-continue, the raw target, duplicate headers, request ids, the hand-off of other paths to
aiohttp on the same connection (pipelined: test_proxy_pipelined_handoff.py), and shutdown of idle
connections (time limits: test_proxy_timeouts.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import pytest
import structlog
from proxy_harness import PARTNER_ID, RAW_CUSTOMER, RAW_IMEI, RAW_PHONE, GatewayHarness, request_id_for, shipment_body

from gateway.logs import configure_logging

SHIPMENT = f"/v1/partners/{PARTNER_ID}/shipments/S-1"
LIMIT = 2048  # the test profile's limits.max_body_bytes


class Conn:
    """A raw client connection to the gateway that reads answers one at a time; `async with Conn(harness)
    as conn:` connects, and closes on the way out."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def __init__(self, harness: GatewayHarness) -> None:
        self._address = (harness.gateway.host, harness.gateway.port)

    async def __aenter__(self) -> Conn:
        self.reader, self.writer = await asyncio.open_connection(*self._address)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[str, int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ")[0], int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 10) if length else b""
        return version, status, headers, body

    async def closed_by_server(self) -> bool:
        """True when the server closed its side (EOF) without sending anything more."""
        try:
            rest = await asyncio.wait_for(self.reader.read(1), 10)
        except ConnectionResetError:
            return True
        return rest == b""

    def close(self) -> None:
        self.writer.close()


def shipment(harness: GatewayHarness, *, version: str = "1.1", extra: str = "", body: bytes | None = None) -> bytes:
    data = json.dumps(shipment_body()).encode() if body is None else body
    return (
        f"POST {SHIPMENT} HTTP/{version}\r\nHost: gw\r\nAuthorization: {harness.auth()['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
    ).encode() + data


def assert_problem(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, body
    assert headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = json.loads(body)
    assert problem["status"] == expected
    assert {"type", "title", "detail"} <= problem.keys()
    return problem


async def test_keep_alive_serves_egress_then_an_ops_request_closes_the_connection(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        for n in range(2):
            await conn.send(shipment(harness, extra=f"X-Request-Id: {request_id_for(f'ka-{n}')}\r\n"))
            version, status, headers, body = await conn.answer()
            assert (version, status) == ("HTTP/1.1", 200), body
            assert headers["x-request-id"] == request_id_for(f"ka-{n}")
            assert "connection" not in headers
            assert json.loads(body)["tracking_number"] == "T-1"
        # Another endpoint on the same connection: handed to aiohttp's server, which answers it and closes.
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        _, status, headers, body = await conn.answer()
        assert status == 200
        assert headers["connection"] == "close"
        assert json.loads(body) == {"status": "ok"}
        assert await conn.closed_by_server()
    assert len(harness.partner.received) == 2


async def test_ops_request_split_across_reads_is_handed_over_whole(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        await conn.send(b"GET /rea")
        await asyncio.sleep(0.05)
        await conn.send(b"dyz HTTP/1.1\r\nHo")
        await asyncio.sleep(0.05)
        await conn.send(b"st: gw\r\n\r\n")
        _, status, _, body = await conn.answer()
        assert status == 200, body
        assert json.loads(body)["status"] == "ready"


async def test_http_1_0_closes_unless_keep_alive_is_asked(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        await conn.send(shipment(harness, version="1.0"))
        version, status, headers, _ = await conn.answer()
        # The server's own version in the status line; so the close is said, 1.1's default being to persist.
        assert (version, status, headers["connection"]) == ("HTTP/1.1", 200, "close")
        assert await conn.closed_by_server()
    async with Conn(harness) as conn:
        for _ in range(2):
            await conn.send(shipment(harness, version="1.0", extra="Connection: keep-alive\r\n"))
            version, status, headers, _ = await conn.answer()
            assert (version, status) == ("HTTP/1.1", 200)
            assert headers["connection"].lower() == "keep-alive"


async def test_connection_close_is_honoured(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        await conn.send(shipment(harness, extra="Connection: close\r\n") + shipment(harness))
        _, status, headers, _ = await conn.answer()
        assert status == 200
        assert headers["connection"] == "close"
        assert await conn.closed_by_server()  # the request after `Connection: close` is not read
    assert len(harness.partner.received) == 1


async def test_pipelined_requests_are_answered_in_order(harness: GatewayHarness) -> None:
    harness.partner.mode = "slow"  # the first answer takes longest: order must still hold
    async with Conn(harness) as conn:
        unknown = f"GET /v1/partners/{PARTNER_ID}/nothing-here HTTP/1.1\r\nHost: gw\r\nAuthorization: " \
                  f"{harness.auth()['Authorization']}\r\nX-Request-Id: {request_id_for('p-1')}\r\n\r\n".encode()
        first, last = (shipment(harness, extra=f"X-Request-Id: {request_id_for(f'p-{n}')}\r\n") for n in (0, 2))
        await conn.send(first + unknown + last)
        answers = [await conn.answer() for _ in range(3)]
        assert [a[2]["x-request-id"] for a in answers] == [request_id_for(f"p-{n}") for n in range(3)]
        assert [a[1] for a in answers] == [200, 404, 200]
        assert_problem(answers[1][1], answers[1][2], answers[1][3], 404)


async def test_declared_body_over_the_limit_is_refused_before_it_is_sent(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        # Only the head: the 413 must come without the gateway waiting for (or reading) the body.
        await conn.send(
            f"POST {SHIPMENT} HTTP/1.1\r\nHost: gw\r\nAuthorization: {harness.auth()['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n".encode()
        )
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 413)
        assert headers["connection"] == "close"
        assert await conn.closed_by_server()
    assert harness.partner.received == []


async def test_endless_chunked_body_is_cut_off_near_the_limit(harness: GatewayHarness) -> None:
    sent = 0
    async with Conn(harness) as conn:
        await conn.send(
            f"POST {SHIPMENT} HTTP/1.1\r\nHost: gw\r\nAuthorization: {harness.auth()['Authorization']}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"400\r\n" + b"a" * 0x400 + b"\r\n"

        async def stream() -> None:
            nonlocal sent
            try:
                for _ in range(64 * 1024):  # up to 64 MiB if nobody stopped it
                    await conn.send(chunk)
                    sent += 0x400
            except (ConnectionError, OSError):
                return

        streaming = asyncio.create_task(stream())
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 413)
        assert await conn.closed_by_server()
        await asyncio.wait_for(streaming, 10)
    # The gateway stopped reading long before the client ran out of body (socket buffers aside).
    assert sent < 16 * 1024 * 1024
    assert harness.partner.received == []


async def test_chunked_body_within_the_limit_is_read(harness: GatewayHarness) -> None:
    data = json.dumps(shipment_body()).encode()
    framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (data[:100], data[100:])) + b"0\r\n\r\n"
    async with Conn(harness) as conn:
        await conn.send(
            f"POST {SHIPMENT} HTTP/1.1\r\nHost: gw\r\nAuthorization: {harness.auth()['Authorization']}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + framed
        )
        _, status, headers, body = await conn.answer()
        assert status == 200, body
        assert "connection" not in headers  # body read to its end: the connection stays usable
        await conn.send(shipment(harness))
        assert (await conn.answer())[1] == 200


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ("".join(f"X-Filler-{n}: v\r\n" for n in range(200)), 431),
        ("X-Big: " + "b" * 9000 + "\r\n", 431),
    ],
)
async def test_header_limits(harness: GatewayHarness, head: str, expected: int) -> None:
    async with Conn(harness) as conn:
        await conn.send(f"GET {SHIPMENT} HTTP/1.1\r\nHost: gw\r\n{head}\r\n".encode())
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, expected)
        assert await conn.closed_by_server()


async def test_endless_header_is_refused_without_waiting_for_its_end(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        await conn.send(f"GET {SHIPMENT} HTTP/1.1\r\nX-Endless: ".encode())
        for _ in range(40):  # 160 KiB, never ended
            await conn.send(b"e" * 4096)
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 431)


async def test_target_too_long_is_414(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        await conn.send(f"GET {SHIPMENT}?q={'a' * 9000} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 414)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        f"POST {SHIPMENT} HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n".encode(),
        f"POST {SHIPMENT} HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".encode(),
        f"GET {SHIPMENT} HTTP/1.1\r\nX-Bad: a\x01b\r\n\r\n".encode(),
        f"GET {SHIPMENT} HTTP/1.1\r\n folded: line\r\n\r\n".encode(),
        f"GET {SHIPMENT} HTTP/9.9\r\n\r\n".encode(),
        f"POST {SHIPMENT} HTTP/1.1\r\nContent-Type: text/plain\r\ncontent-type: application/json\r\n\r\n".encode(),
        f"GET {SHIPMENT} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".encode(),
        f"POST {SHIPMENT} HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n".encode(),
    ],
)
async def test_malformed_requests_are_400_problems_and_close(harness: GatewayHarness, request_bytes: bytes) -> None:
    async with Conn(harness) as conn:
        await conn.send(request_bytes)
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 400)
        assert headers["connection"] == "close"
        assert await conn.closed_by_server()
    assert harness.partner.received == []


async def test_malformed_chunk_framing_is_400(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        await conn.send(
            f"POST {SHIPMENT} HTTP/1.1\r\nHost: gw\r\nAuthorization: {harness.auth()['Authorization']}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + b"zz\r\n{}\r\n0\r\n\r\n"
        )
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 400)
        assert await conn.closed_by_server()
    assert harness.partner.received == []


async def test_expect_100_continue(harness: GatewayHarness) -> None:
    data = json.dumps(shipment_body()).encode()
    auth = harness.auth()["Authorization"]
    head = (
        f"POST {SHIPMENT} HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    async with Conn(harness) as conn:
        await conn.send(head)
        interim = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await conn.send(data)
        _, status, _, body = await conn.answer()
        assert status == 200, body
    # Refused before the body is needed: no 100 Continue, the refusal, and the connection closes.
    async with Conn(harness) as conn:
        await conn.send(head.replace(auth.encode(), b"Bearer nope"))
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 401)
        assert await conn.closed_by_server()
    async with Conn(harness) as conn:
        await conn.send(head.replace(b"100-continue", b"something-else"))
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 417)


async def test_raw_target_reaches_the_route_checks_as_sent(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        # A normalising server would route this to /healthz; the egress checks must see the dot segments.
        await conn.send(
            f"GET /v1/partners/{PARTNER_ID}/../../healthz HTTP/1.1\r\nHost: gw\r\n"
            f"Authorization: {harness.auth()['Authorization']}\r\n\r\n".encode()
        )
        _, status, headers, body = await conn.answer()
        assert status in (400, 404)
        assert_problem(status, headers, body, status)


async def test_duplicate_authorization_and_purpose_are_seen_whatever_their_case(harness: GatewayHarness) -> None:
    auth = harness.auth()["Authorization"]
    async with Conn(harness) as conn:
        await conn.send(shipment(harness, extra=f"authorization: {auth}\r\n"))
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 401)
        await conn.send(
            f"GET /v1/partners/{PARTNER_ID}/tracking/T-1 HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\n"
            "X-Purpose: delivery\r\nx-purpose: returns\r\n\r\n".encode()
        )
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 400)
    assert harness.partner.received == []


async def test_idle_keep_alive_connection_is_closed_at_shutdown(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        await conn.send(shipment(harness))
        assert (await conn.answer())[1] == 200
        await asyncio.wait_for(harness.gateway.stop(), 10)
        assert await conn.closed_by_server()


async def test_no_personal_value_in_logs_or_refusals_of_bad_requests(
    harness: GatewayHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("debug")
    bodies: list[bytes] = []
    try:
        capsys.readouterr()
        for request in (
            f"GET /v1/partners/{PARTNER_ID}/tracking/{RAW_PHONE} HTTP/1.1\r\nX-Bad: {RAW_IMEI}\x01\r\n\r\n".encode(),
            f"GET /v1/partners/{PARTNER_ID}/{RAW_CUSTOMER} HTTP/1.1\r\n{'X-F: ' + RAW_PHONE * 700}\r\n\r\n".encode(),
            f"POST {SHIPMENT}?c={RAW_CUSTOMER} HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            .encode(),
        ):
            async with Conn(harness) as conn:
                await conn.send(request)
                _, status, _, body = await conn.answer()
                assert status in (400, 431)
                bodies.append(body)
        await asyncio.sleep(0.05)
        err = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
    assert "http_request_refused" in err
    for value in (RAW_PHONE, RAW_IMEI, RAW_CUSTOMER):
        assert value not in err
        for body in bodies:
            assert value.encode() not in body


async def test_invalid_transfer_coding_on_an_authorised_request_is_refused(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        await conn.send(
            f"POST {SHIPMENT} HTTP/1.1\r\nHost: gw\r\nAuthorization: {harness.auth()['Authorization']}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n{}".encode()
        )
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 400)
        assert await conn.closed_by_server()
    assert harness.partner.received == []


async def test_whitespace_after_a_header_value_is_not_part_of_it(harness: GatewayHarness) -> None:
    async with Conn(harness) as conn:
        request = shipment(harness, extra=f"X-Request-Id: {request_id_for('ws-1')} \t\r\n")
        # ... and after the token of Authorization (the line before Content-Type).
        await conn.send(request.replace(b"\r\nContent-Type", b" \r\nContent-Type"))
        _, status, headers, body = await conn.answer()
        assert status == 200, body
        assert headers["x-request-id"] == request_id_for("ws-1")


async def test_ops_request_sent_while_an_egress_request_is_in_flight_is_answered_after_it(
    harness: GatewayHarness,
) -> None:
    harness.partner.mode = "slow"  # 0.5 s
    async with Conn(harness) as conn:
        await conn.send(shipment(harness, extra=f"X-Request-Id: {request_id_for('fl-0')}\r\n"))
        for _ in range(200):
            if harness.partner.received:
                break
            await asyncio.sleep(0.01)
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        _, status, headers, _ = await conn.answer()
        assert (status, headers["x-request-id"]) == (200, request_id_for("fl-0"))
        _, status, _, body = await conn.answer()
        assert (status, json.loads(body)) == (200, {"status": "ok"})


# -- the review's findings (/work/notes/review-http.md 1, 6, 7, 8) ------------------------------------------

TRACKING = f"/v1/partners/{PARTNER_ID}/tracking/T-1"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"


async def _nothing_forwarded_or_recorded(harness: GatewayHarness) -> None:
    assert harness.partner.received == []
    assert await harness.ledger_records(kind="disclosure") == []
    assert await harness.ledger_records(kind="refusal") == []  # refused before authentication


async def test_a_connection_handed_to_aiohttp_closes_after_its_answer(harness: GatewayHarness) -> None:
    # So an egress request is never read by aiohttp's parser (no head deadline there, a malformed body
    # dropped without an answer): here one pipelined behind an ops request, its chunked body malformed.
    egress = (
        f"POST {SHIPMENT} HTTP/1.1\r\nHost: gw\r\nAuthorization: {harness.auth()['Authorization']}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n"
    ).encode()
    for ops in (HEALTHZ, b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"):
        async with Conn(harness) as conn:
            await conn.send(ops + egress)
            _, status, headers, body = await conn.answer()
            assert (status, json.loads(body)) == (200, {"status": "ok"})
            assert headers.get("connection", "close") == "close"
            assert await conn.closed_by_server()
    await _nothing_forwarded_or_recorded(harness)


async def test_no_request_bytes_in_any_log_of_a_handed_over_connection(
    harness: GatewayHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info")
    written = io.StringIO()
    handler = logging.StreamHandler(written)  # the default formatter writes a record's exception and traceback
    logging.getLogger().addHandler(handler)
    try:
        capsys.readouterr()
        # A malformed egress request pipelined behind an ops request (its raw target and a header value
        # quoted by aiohttp's parser error), a malformed ops head (refused by the lean server, which reads
        # every head before a hand-off), and an admin request whose chunked body aiohttp itself refuses.
        pipelined = HEALTHZ + (
            f"GET /v1/partners/{PARTNER_ID}/tracking/J\u00fcrgen-{RAW_PHONE} HTTP/1.1\r\nHost: gw\r\n"
            f"X-Imei: {RAW_IMEI}\x01\r\n\r\n"
        ).encode()
        ops = f"GET /metrics?c={RAW_CUSTOMER} HTTP/1.1\r\nHost: gw\r\nX-Mail: kim@example.com {RAW_PHONE}\x01\r\n\r\n"
        admin = (
            f"POST /v1/admin/subjects/report?c={RAW_CUSTOMER} HTTP/1.1\r\nHost: gw\r\nX-Mail: kim@example.com\r\n"
            f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{RAW_PHONE}\r\n{RAW_IMEI}\r\n"
        )
        answers = []
        for request in (pipelined, ops.encode(), admin.encode()):
            async with Conn(harness) as conn:
                await conn.send(request)
                answers.append(await conn.answer())
                assert await conn.closed_by_server()
        await asyncio.sleep(0.05)
        logged = written.getvalue() + capsys.readouterr().err
    finally:
        logging.getLogger().removeHandler(handler)
        structlog.reset_defaults()
    assert [status for _, status, _, _ in answers] == [200, 400, 400]
    for _, status, headers, body in answers[1:]:
        assert_problem(status, headers, body, 400)
        assert headers["connection"] == "close"
        for value in (RAW_PHONE, RAW_IMEI, RAW_CUSTOMER, "kim@example.com"):
            assert value.encode() not in body
    # aiohttp's record of the refused admin body is there, reduced to its exception's type.
    assert "log record withheld (may quote the request): error=BadHttpMessage" in logged
    assert "Traceback" not in logged
    for value in (RAW_PHONE, RAW_IMEI, RAW_CUSTOMER, "kim@example.com", "rgen"):
        assert value not in logged
    await _nothing_forwarded_or_recorded(harness)


async def test_a_client_that_half_closes_after_its_requests_gets_the_answers(harness: GatewayHarness) -> None:
    harness.partner.mode = "slow"  # the answers are owed well after the client's FIN arrives
    async with Conn(harness) as conn:
        ids = [request_id_for(f"hc-{n}") for n in range(2)]
        await conn.send(b"".join(shipment(harness, extra=f"X-Request-Id: {rid}\r\n") for rid in ids))
        conn.writer.write_eof()
        for n in range(2):
            _, status, headers, body = await conn.answer()
            assert (status, headers["x-request-id"]) == (200, request_id_for(f"hc-{n}")), body
        assert await conn.closed_by_server()
    assert len(harness.partner.received) == 2


async def test_a_half_close_mid_body_or_while_idle_closes_without_forwarding(harness: GatewayHarness) -> None:
    request = shipment(harness)
    async with Conn(harness) as conn:
        await conn.send(request[:-10])  # the body's last bytes never come
        conn.writer.write_eof()
        _, status, headers, body = await conn.answer()
        assert_problem(status, headers, body, 400)
        assert await conn.closed_by_server()
    async with Conn(harness) as conn:
        await conn.send(shipment(harness))
        assert (await conn.answer())[1] == 200
        conn.writer.write_eof()  # nothing owed: closed at once, not after the idle limit
        assert await asyncio.wait_for(conn.closed_by_server(), 2)
    assert len(harness.partner.received) == 1
    for _ in range(100):
        if harness.gateway.lean is None or not harness.gateway.lean.connections:
            break
        await asyncio.sleep(0.01)
    assert harness.gateway.lean is not None
    assert not harness.gateway.lean.connections


@pytest.mark.parametrize(
    ("request_line", "extra", "expected"),
    [
        (f"GET {TRACKING} HTTP/2.0", "", 505),
        (f"GET {TRACKING} HTTP/0.9", "", 505),
        (f"GET {TRACKING}", "", 505),  # no version: llhttp reads it as HTTP/0.9
        ("GET /healthz HTTP/2.0", "", 505),  # refused before the hand-off too
        (f"GET {TRACKING} HTTP/1.1", "no-host", 400),
        (f"POST {SHIPMENT} HTTP/1.1", "Transfer-Encoding: gzip, chunked\r\n", 501),
        (f"POST {SHIPMENT} HTTP/1.1", "Transfer-Encoding: gzip\r\n", 400),
        (f"POST {SHIPMENT} HTTP/1.0", "Transfer-Encoding: chunked\r\n", 400),
    ],
)
async def test_versions_host_and_transfer_codings_outside_http_1_1_are_refused(
    harness: GatewayHarness, request_line: str, extra: str, expected: int
) -> None:
    host = "" if extra == "no-host" else "Host: gw\r\n"
    extra = "" if extra == "no-host" else extra
    body = b"" if "Transfer-Encoding" not in extra else b"2\r\n{}\r\n0\r\n\r\n"
    head = (
        f"{request_line}\r\n{host}Authorization: {harness.auth()['Authorization']}\r\nX-Purpose: delivery\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    )
    async with Conn(harness) as conn:
        await conn.send(head.encode() + body)
        version, status, headers, answer = await conn.answer()
        assert version == "HTTP/1.1"
        problem = assert_problem(status, headers, answer, expected)
        slugs = {505: "http-version-not-supported", 501: "transfer-coding-not-implemented", 400: "malformed-request"}
        assert problem["type"].endswith(slugs[expected])
        assert headers["connection"] == "close"
        assert await conn.closed_by_server()
    await _nothing_forwarded_or_recorded(harness)


# -- the second review's findings (/work/notes/review-http2.md 1, 2, 3) ---------------------------------------


@pytest.mark.parametrize(
    "request_line",
    [
        "GET http://xn--kim-886912345678-.gw/x HTTP/1.1",  # aiohttp's request building failed on its host
        f"GET http://gw{TRACKING} HTTP/1.1",  # absolute form of an egress target
        "GET http://gw/healthz HTTP/1.1",
        "CONNECT gw:443 HTTP/1.1",  # authority form
        "OPTIONS * HTTP/1.1",  # asterisk form
        "GET * HTTP/1.1",
    ],
)
async def test_a_target_that_is_not_a_path_is_refused_by_the_lean_server(
    harness: GatewayHarness, request_line: str
) -> None:
    server = harness.gateway.runner.server
    assert server is not None
    handled = server.requests_count
    async with Conn(harness) as conn:
        auth = harness.auth()["Authorization"]
        await conn.send(f"{request_line}\r\nHost: gw\r\nAuthorization: {auth}\r\n\r\n".encode())
        version, status, headers, body = await conn.answer()
        assert version == "HTTP/1.1"
        problem = assert_problem(status, headers, body, 400)
        assert problem["type"].endswith("malformed-request")
        assert headers["connection"] == "close"
        assert b"886912345678" not in body
        assert b"gw" not in body
        assert await conn.closed_by_server()
    await _nothing_forwarded_or_recorded(harness)
    assert server.requests_count == handled  # never handed to aiohttp


async def test_the_asyncio_logger_keeps_no_exception_text(capsys: pytest.CaptureFixture[str]) -> None:
    # asyncio's "Exception in callback" (and "Task exception was never retrieved") records quote the
    # exception's text: an IDNA error quotes the host label, i.e. request bytes.
    configure_logging("info")
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    logging.getLogger().addHandler(handler)
    try:
        capsys.readouterr()

        def fail() -> None:
            raise UnicodeError("IDNA does not round-trip", f"xn--kim-{RAW_PHONE}-".encode())

        asyncio.get_running_loop().call_soon(fail)
        await asyncio.sleep(0.05)
        logged = written.getvalue() + capsys.readouterr().err
    finally:
        logging.getLogger().removeHandler(handler)
        structlog.reset_defaults()
    assert "log record withheld (may quote the request): error=UnicodeError" in logged
    assert RAW_PHONE not in logged
    assert "Traceback" not in logged


async def test_a_handed_over_request_followed_by_a_half_close_gets_its_answer(harness: GatewayHarness) -> None:
    # The FIN right behind the request (printf | nc -N, a shell pipe): aiohttp alone closes at the FIN and
    # drops the answer while the handler still runs.
    for _ in range(3):
        async with Conn(harness) as conn:
            conn.writer.write(HEALTHZ)
            conn.writer.write_eof()
            _, status, headers, body = await conn.answer()
            assert (status, json.loads(body)) == (200, {"status": "ok"})
            assert headers["connection"] == "close"
            assert await conn.closed_by_server()
    # Behind an egress request still being answered, so the FIN is read after the hand-off.
    harness.partner.mode = "slow"
    async with Conn(harness) as conn:
        conn.writer.write(shipment(harness, extra=f"X-Request-Id: {request_id_for('fin-0')}\r\n") + HEALTHZ)
        conn.writer.write_eof()
        _, status, headers, _ = await conn.answer()
        assert (status, headers["x-request-id"]) == (200, request_id_for("fin-0"))
        _, status, _, body = await conn.answer()
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert await conn.closed_by_server()


async def test_an_aiohttp_without_what_the_hand_off_reads_is_refused_at_start() -> None:
    # The hand-off builds aiohttp's request handler from web.Server's private _loop and _kwargs: an
    # aiohttp that renamed them must stop the gateway at start, not fail its first /healthz.
    from aiohttp import web

    from gateway.proxy.httpserver import _HandedOverHandler

    class Renamed:
        _loop = None

    with pytest.raises(RuntimeError, match="_loop/_kwargs"):
        _HandedOverHandler.check(Renamed())  # type: ignore[arg-type]
    _HandedOverHandler.check(web.Server(lambda request: None))  # type: ignore[arg-type,return-value]
