"""Refusals that depend only on the request happen before the disclosure record (review-http findings 4
and 5), and a caller's X-Request-Id reaches the partner, the log line and the ledger only in a shape that
cannot carry a business key (finding 2). Real gateway on real sockets, fake partner, SQLite ledger."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
import uuid
from typing import Any

import pytest
from proxy_harness import PARTNER_ID, GatewayHarness, shipment_body
from test_proxy_e2e import assert_problem, raw_http

TRACK = f"/v1/partners/{PARTNER_ID}/tracking/"
SHIPMENT = f"/v1/partners/{PARTNER_ID}/shipments/S-1"


async def _records_when_queued(harness: GatewayHarness, kind: str, count: int) -> list[dict[str, Any]]:
    """The ledger's `kind` records once `count` of them landed (refusals are queued, not awaited)."""
    for _ in range(200):
        records = await harness.ledger_records(kind=kind)
        if len(records) >= count:
            return records
        await asyncio.sleep(0.01)
    return await harness.ledger_records(kind=kind)


async def _assert_refused_before_disclosure(harness: GatewayHarness) -> None:
    assert harness.partner.received == []
    refusals = await _records_when_queued(harness, "refusal", 1)
    assert [(r["status"], r["reason"]) for r in refusals] == [(400, "malformed-request")]
    assert await harness.ledger_records(kind="disclosure") == []
    assert await harness.ledger_records(kind="outcome") == []


def _track(harness: GatewayHarness, tail: bytes, extra: bytes = b"") -> bytes:
    return (
        b"GET " + TRACK.encode() + tail + b" HTTP/1.1\r\nHost: gw\r\nAuthorization: "
        + harness.auth()["Authorization"].encode() + b"\r\nX-Purpose: delivery\r\n" + extra + b"\r\n"
    )


def _shipment(harness: GatewayHarness, extra: bytes) -> bytes:
    data = json.dumps(shipment_body()).encode()
    return (
        b"POST " + SHIPMENT.encode() + b" HTTP/1.1\r\nHost: gw\r\nAuthorization: "
        + harness.auth()["Authorization"].encode() + b"\r\nContent-Type: application/json\r\n" + extra
        + b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data
    )


# Path parameters that route matching used to accept and the upstream client refuses: only dots and
# spaces, also after NFKC (a no-break space folds to a space, fullwidth dots to dots).
@pytest.mark.parametrize(
    "tail", [b"...", b"....", b"..%20", b"%20", b"..%C2%A0", b"%EF%BC%8E%EF%BC%8E%EF%BC%8E", b".%2e."]
)
async def test_a_dot_and_space_path_parameter_is_refused_before_the_disclosure(
    harness: GatewayHarness, tail: bytes
) -> None:
    status, headers, body = await raw_http(harness, _track(harness, tail))
    assert_problem(status, headers, body, 400)
    await _assert_refused_before_disclosure(harness)


@pytest.mark.parametrize(
    "value",
    [
        "k-\u00e9".encode(),  # UTF-8 inside Latin-1: was sent as the single byte e9
        "k-\u20ac".encode(),  # UTF-8 outside Latin-1: was refused inside Forward, after the disclosure
        b"k-\xe9",  # a raw Latin-1 byte
    ],
)
async def test_a_non_ascii_value_in_an_allowlisted_header_is_refused_before_the_disclosure(
    harness: GatewayHarness, value: bytes
) -> None:
    status, headers, body = await raw_http(harness, _shipment(harness, b"Idempotency-Key: " + value + b"\r\n"))
    problem = assert_problem(status, headers, body, 400)
    assert "Idempotency-Key" in problem["detail"]
    assert [v["path"] for v in problem["violations"]] == ["headers.Idempotency-Key"]
    assert value not in body
    assert b"k-" not in body
    await _assert_refused_before_disclosure(harness)


async def test_a_non_ascii_value_in_an_undeclared_header_is_dropped_not_refused(harness: GatewayHarness) -> None:
    extra = b"X-Note: J\xc3\xbcrgen\r\nIdempotency-Key: k-1\r\n"
    status, _, body = await raw_http(harness, _shipment(harness, extra))
    assert status == 200, body
    assert "x-note" not in harness.partner.headers_of()
    assert harness.partner.headers_of()["idempotency-key"] == "k-1"


async def test_the_request_is_built_and_checked_before_the_disclosure_even_if_matching_lets_it_through(
    harness: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Should route matching and the upstream client's segment rule ever drift apart again, the bytes for
    # the partner are still built (and refused) by the Prepare stage, before anything is recorded.
    monkeypatch.setattr("gateway.proxy.stages.decode_tail", lambda raw_tail: raw_tail)
    monkeypatch.setattr("gateway.profiles.matching.decode_segment", urllib.parse.unquote)
    status, headers, body = await raw_http(harness, _track(harness, b"..%20"))
    problem = assert_problem(status, headers, body, 400)
    assert [v["path"] for v in problem["violations"]] == ["path.tracking_number"]
    await _assert_refused_before_disclosure(harness)


# Caller ids in shapes that can carry a business key: a phone number, a phone and an IMEI, an order id,
# a dotted name, the old free-form shape, an uppercase trace-id, the all-zero trace-id, a braced UUID.
@pytest.mark.parametrize(
    "sent",
    [
        "886912345678",
        "886912345678.imei-490154203237518",
        "ORDER-2026-000123",
        "kim.lee.example.com",
        "req-abc.1",
        "4BF92F3577B34DA6A3CE929D0E0E4736",
        "0" * 32,
        "{123e4567-e89b-12d3-a456-426614174000}",
    ],
)
async def test_a_request_id_in_another_shape_is_replaced_and_never_propagated(
    harness: GatewayHarness, sent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, headers, body = await raw_http(harness, _track(harness, b"T-1", f"X-Request-Id: {sent}\r\n".encode()))
    assert status == 200, body
    used = headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", used)
    assert used != sent
    assert [r.headers for r in harness.partner.received] != []
    assert harness.partner.headers_of()["x-request-id"] == used
    assert all(sent not in f"{k}: {v}" for k, v in harness.partner.received[0].headers)
    disclosures = await harness.ledger_records(kind="disclosure")
    outcomes = await _records_when_queued(harness, "outcome", 1)
    assert {r["request_id"] for r in disclosures + outcomes} == {used}
    await asyncio.sleep(0.05)  # the log line is written just after the answer
    logged = capsys.readouterr()
    assert used in logged.out + logged.err
    assert sent not in logged.out + logged.err


@pytest.mark.parametrize(
    ("sent", "used"),
    [
        ("123e4567-e89b-12d3-a456-426614174000", "123e4567-e89b-12d3-a456-426614174000"),
        ("123E4567-E89B-12D3-A456-426614174000", "123e4567-e89b-12d3-a456-426614174000"),  # lowercased
        (str(uuid.UUID(int=7)), str(uuid.UUID(int=7))),  # any version, even the nil-like ones
        ("4bf92f3577b34da6a3ce929d0e0e4736", "4bf92f3577b34da6a3ce929d0e0e4736"),  # a W3C trace-id
    ],
)
async def test_a_uuid_or_trace_id_is_propagated(harness: GatewayHarness, sent: str, used: str) -> None:
    status, headers, body = await raw_http(harness, _track(harness, b"T-1", f"X-Request-Id: {sent}\r\n".encode()))
    assert status == 200, body
    assert headers["x-request-id"] == used
    assert harness.partner.headers_of()["x-request-id"] == used
    assert [r["request_id"] for r in await harness.ledger_records(kind="disclosure")] == [used]
