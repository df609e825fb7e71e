"""The egress proxy end to end: real gateway on an ephemeral port, a fake partner recording exact bytes,
real SQLite ledger. Every refusal is checked for its status, its problem body and that the partner
received nothing."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import threading
from typing import Any

import aiohttp
import jwt
import pytest
from proxy_harness import (
    PARTNER_ID,
    PARTNER_TOKEN,
    RAW_CUSTOMER,
    RAW_IMEI,
    RAW_PHONE,
    GatewayHarness,
    request_id_for,
    shipment_body,
)

from gateway.config import sqlite_path
from gateway.errors import PayloadTooLarge
from gateway.ledger.sqlite_store import SqliteStore
from gateway.proxy.stages import SyncStage

SHIPMENT = f"/v1/partners/{PARTNER_ID}/shipments/S-1"
RAW_VALUES = (RAW_PHONE, RAW_IMEI, RAW_CUSTOMER, "kim@example.com", "450051234567890", "call me")


async def raw_http(harness: GatewayHarness, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send exact request bytes (no client normalisation) and read one response."""
    reader, writer = await asyncio.open_connection(harness.gateway.host, harness.gateway.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
        return status, headers, body
    finally:
        writer.close()


def assert_problem(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, body
    assert headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = json.loads(body)
    assert problem["status"] == expected
    assert {"type", "title", "detail"} <= problem.keys()
    for value in RAW_VALUES:
        assert value not in body.decode("utf-8")
    return problem


def metric_value(text: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus text exposition."""
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


async def post_shipment(harness: GatewayHarness, body: Any = None, **kwargs: Any) -> aiohttp.ClientResponse:
    headers = {**harness.auth(), "Content-Type": "application/json", **kwargs.pop("headers", {})}
    data = kwargs.pop("data", None)
    if data is None:
        data = json.dumps(shipment_body() if body is None else body).encode()
    return await harness.session.post(harness.url + kwargs.pop("path", SHIPMENT), data=data, headers=headers,
                                      **kwargs)


async def test_forwarded_request_carries_only_minimised_values(harness: GatewayHarness) -> None:
    caller_id = request_id_for("req-abc.1")
    response = await post_shipment(harness, headers={"X-Request-Id": caller_id, "Idempotency-Key": "k-1",
                                                     "Cookie": "session=caller", "X-Debug": "1"})
    body = await response.json()
    assert response.status == 200, body
    assert response.headers["X-Request-Id"] == caller_id
    # The response policy keeps the tracking number and re-identifies the phone; the rest is withheld.
    assert body == {"tracking_number": "T-1", "recipient": {"phone": RAW_PHONE}}

    assert len(harness.partner.received) == 1
    got = harness.partner.received[0]
    sent = json.loads(got.body)
    assert set(sent) == {"order_id", "recipient", "device", "items"}
    assert set(sent["recipient"]) == {"name", "phone", "country"}
    assert set(sent["device"]) == {"imei"}
    assert sent["items"] == [{"sku": "SKU-1"}]
    assert re.fullmatch(r"\+886\d+", sent["recipient"]["phone"])
    assert sent["recipient"]["phone"] != RAW_PHONE
    assert re.fullmatch(r"\d{15}", sent["device"]["imei"])
    assert sent["device"]["imei"] != RAW_IMEI
    everything = got.raw_path + "\n" + "\n".join(f"{k}: {v}" for k, v in got.headers) + "\n" + got.body.decode()
    for value in RAW_VALUES:
        assert value not in everything
    headers = harness.partner.headers_of()
    assert headers["authorization"] == f"Bearer {PARTNER_TOKEN}"
    assert harness.token([])[:20] not in everything
    assert "cookie" not in headers
    assert "x-debug" not in headers
    assert headers["idempotency-key"] == "k-1"
    assert headers["x-request-id"] == caller_id
    assert got.raw_path == "/api/shipments/S-1"

    disclosure_id = response.headers["X-Disclosure-Id"]
    records = await harness.ledger_records(disclosure_id=None, request_id=caller_id)
    by_kind = {r["kind"]: r for r in records}
    assert by_kind["disclosure"]["id"] == disclosure_id
    assert by_kind["disclosure"]["body_digest"] == harness.keys.ledger.body_digest(got.body)
    assert by_kind["disclosure"]["subject_ref"] == harness.keys.ledger.subject_ref(RAW_CUSTOMER)
    assert by_kind["disclosure"]["cross_border"] in (True, 1)
    assert "recipient.customer_id" in by_kind["disclosure"]["fields_dropped"]
    assert by_kind["outcome"]["disclosure_id"] == disclosure_id
    assert by_kind["outcome"]["status"] == 200
    # The outcome names the same subject, so the subject's access report can show how the call ended.
    assert by_kind["outcome"]["subject_ref"] == harness.keys.ledger.subject_ref(RAW_CUSTOMER)


async def test_request_id_is_replaced_when_unsafe(harness: GatewayHarness) -> None:
    response = await post_shipment(harness, headers={"X-Request-Id": "x" * 300})
    assert response.status == 200
    generated = response.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert harness.partner.headers_of()["x-request-id"] == generated


async def test_scope_missing_is_refused_and_recorded(harness: GatewayHarness) -> None:
    response = await post_shipment(harness, headers=harness.auth([f"disclose:{PARTNER_ID}:returns"]))
    problem = assert_problem(response.status, dict(response.headers.items()) | {"content-type": response.content_type},
                             await response.read(), 403)
    assert problem["type"].endswith("scope-missing")
    assert harness.partner.received == []
    refusals = await harness.ledger_records(kind="refusal")
    assert len(refusals) == 1
    assert refusals[0]["partner"] == PARTNER_ID
    assert refusals[0]["route"] == "create-shipment"
    assert refusals[0]["status"] == 403
    assert refusals[0]["caller"] == "order-service"


@pytest.mark.parametrize(
    ("name", "data", "content_type"),
    [
        ("schema violation", b"{}", "application/json"),
        ("wrong field type", b'{"order_id": 1, "recipient": {"customer_id": "c", "country": "KR"}}',
         "application/json"),
        ("malformed JSON", b'{"order_id": ', "application/json"),
        ("media type", b"order_id=1", "application/x-www-form-urlencoded"),
        ("over the body limit", b"x" * 4096, "application/json"),
    ],
)
async def test_a_caller_without_the_scope_learns_nothing_of_the_route(
    harness: GatewayHarness, name: str, data: bytes, content_type: str
) -> None:
    # The scope is checked right after the route is matched, before the body is read (review-auth F5):
    # whatever the body, a caller scoped for another partner only gets the one 403, never the route's
    # media types, limit or schema, and the ledger says scope-missing for the purpose it asked for.
    headers = harness.auth(["disclose:some-other-partner:delivery"]) | {"Content-Type": content_type}
    response = await harness.session.post(harness.url + SHIPMENT, data=data, headers=headers)
    body = await response.read()
    problem = assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()}, body, 403)
    assert problem["type"].endswith("scope-missing")
    assert "violations" not in problem
    assert harness.partner.received == []
    await asyncio.sleep(0.1)  # the refusal is queued behind the answer
    [refusal] = await harness.ledger_records(kind="refusal")
    assert (refusal["reason"], refusal["status"], refusal["purpose"], refusal["route"]) == (
        "scope-missing", 403, "delivery", "create-shipment")


@pytest.mark.parametrize(
    ("name", "data", "content_type", "expected"),
    [
        ("duplicate keys", b'{"order_id":"a","order_id":"b","recipient":{"customer_id":"c","country":"KR"}}',
         "application/json", 400),
        ("nested duplicate", b'{"order_id":"a","recipient":{"customer_id":"c","customer_id":"d","country":"KR"}}',
         "application/json", 400),
        ("NaN", b'{"order_id": NaN, "recipient": {"customer_id": "c", "country": "KR"}}', "application/json", 400),
        ("Infinity", b'{"order_id": "a", "n": Infinity}', "application/json", 400),
        ("deep nesting", b'{"order_id":"a","x":' + b"[" * 200 + b"]" * 200 + b"}", "application/json", 400),
        ("huge integer", b'{"order_id":"a","n":' + b"9" * 400 + b"}", "application/json", 400),
        ("huge float", b'{"order_id":"a","n":1e999}', "application/json", 400),
        ("UTF-16 body", json.dumps(shipment_body()).encode("utf-16"), "application/json", 400),
        ("UTF-16 declared", json.dumps(shipment_body()).encode("utf-16-le"), "application/json; charset=utf-16", 415),
        ("invalid UTF-8", b'{"order_id":"\xff\xfe"}', "application/json", 400),
        ("trailing garbage", json.dumps(shipment_body()).encode() + b"x", "application/json", 400),
        ("wrong media type", json.dumps(shipment_body()).encode(), "text/plain", 415),
        ("form media type", b"order_id=a", "application/x-www-form-urlencoded", 415),
        ("schema violation", b'{"order_id": 5}', "application/json", 422),
        ("invalid identifier", json.dumps(shipment_body(device={"imei": "490154203237519"})).encode(),
         "application/json", 422),
    ],
)
async def test_malformed_bodies_are_refused_and_nothing_is_forwarded(
    harness: GatewayHarness, name: str, data: bytes, content_type: str, expected: int
) -> None:
    response = await post_shipment(harness, data=data, headers={"Content-Type": content_type})
    headers = {k.lower(): v for k, v in response.headers.items()}
    assert_problem(response.status, headers, await response.read(), expected)
    assert harness.partner.received == [], name


async def test_body_one_byte_over_the_limit_with_content_length(harness: GatewayHarness) -> None:
    limit = 2048  # the test profile's limits.max_body_bytes
    padding = "x" * (limit + 1 - len(json.dumps({"order_id": ""})))
    data = json.dumps({"order_id": padding}).encode()
    assert len(data) == limit + 1
    response = await post_shipment(harness, data=data)
    assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read(), 413)
    # Exactly at the limit is read and parsed (then fails the schema for lack of a recipient).
    response = await post_shipment(harness, data=data[:-2] + b'"}'[1:])
    assert response.status != 413
    assert harness.partner.received == []


async def test_the_413_problem_is_built_only_when_refusing(
    harness: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []

    class CountedTooLarge(PayloadTooLarge):
        def __init__(self, detail: str, *args: Any, **kwargs: Any) -> None:
            built.append(detail)
            super().__init__(detail, *args, **kwargs)

    monkeypatch.setattr("gateway.proxy.stages.PayloadTooLarge", CountedTooLarge)
    response = await post_shipment(harness)
    assert response.status == 200, await response.text()
    assert built == []  # an accepted body builds no refusal
    response = await post_shipment(harness, data=b'{"order_id":"' + b"x" * 2048 + b'"}')
    problem = assert_problem(
        response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read(), 413)
    assert problem["detail"] == "the body exceeds 2048 bytes"
    assert built == ["the body exceeds 2048 bytes"]


async def test_stages_that_never_wait_are_called_without_a_coroutine(
    harness: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = harness.gateway.state.pipeline.stages
    sync = [stage for stage in stages if isinstance(stage, SyncStage)]
    assert [stage.name for stage in sync] == [
        "match_route", "authorize", "parse", "validate", "minimise", "prepare", "filter_response", "record_outcome"]

    async def awaited(self: SyncStage, ctx: object) -> None:
        raise AssertionError(f"{type(self).__name__} was awaited")

    for stage in sync:  # the runner must call their apply() directly
        monkeypatch.setattr(type(stage), "__call__", awaited)
    response = await post_shipment(harness)
    assert response.status == 200, await response.text()
    # A refusal raised by a synchronous step is answered as before.
    response = await post_shipment(harness, data=b'{"order_id": ')
    assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read(), 400)


async def test_body_one_byte_over_the_limit_chunked(harness: GatewayHarness) -> None:
    limit = 2048
    chunk = b"x" * 512

    async def chunks() -> Any:
        yield b'{"order_id":"'
        for _ in range(4):
            yield chunk  # 13 + 2048 bytes so far: over the limit before the body ends
        yield b'"}'

    response = await post_shipment(harness, data=chunks())
    assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read(), 413)
    # And an endless chunked body is cut off, not read to the end.
    status, headers, body = await raw_http(
        harness,
        b"POST " + SHIPMENT.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + harness.auth()["Authorization"].encode()
        + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n" % (limit + 1)) + b"a" * (limit + 1) + b"\r\n",
    )
    assert_problem(status, headers, body, 413)
    assert harness.partner.received == []


@pytest.mark.parametrize(
    "tail",
    [
        "shipments/..",
        "shipments/../shipments/S-1",
        "shipments/%2e%2e",
        "shipments/%2E%2E/%2e%2e/admin",
        "shipments/..%2fadmin",
        "shipments/S-1%2f..%2f..%2fadmin",
        "shipments/%252e%252e",
        "shipments/..;",
        "shipments/..%5cadmin",
        "shipments/..\\admin",
        "shipments/%EF%BC%8E%EF%BC%8E",
        "shipments/%00",
        "shipments/S-1%0d%0aX-Injected:%201",
        "shipments//S-1",
        "shipments/%ff",
        "shipments/S-1?lang=%0d%0aX-Injected:1",
    ],
)
async def test_path_traversal_and_control_characters_are_refused(harness: GatewayHarness, tail: str) -> None:
    data = json.dumps(shipment_body()).encode()
    request = (
        f"POST /v1/partners/{PARTNER_ID}/{tail} HTTP/1.1\r\nHost: x\r\n".encode("latin-1")
        + b"Authorization: " + harness.auth()["Authorization"].encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data
    )
    status, headers, body = await raw_http(harness, request)
    assert status in (400, 404), (tail, status, body)
    if headers.get("content-type", "").startswith("application/problem+json"):
        assert_problem(status, headers, body, status)
    assert harness.partner.received == []


async def test_crlf_in_a_forwarded_header_never_splits_the_partner_request(harness: GatewayHarness) -> None:
    # A header value cannot carry CR LF on the wire; a folded/injected line becomes a separate header,
    # which the route's header allowlist drops.
    data = json.dumps(shipment_body()).encode()
    request = (
        b"POST " + SHIPMENT.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + harness.auth()["Authorization"].encode()
        + b"\r\nIdempotency-Key: k-2\r\nX-Injected: 1\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(data)).encode() + b"\r\n\r\n" + data
    )
    status, _, _ = await raw_http(harness, request)
    assert status == 200
    headers = harness.partner.headers_of()
    assert "x-injected" not in headers
    assert headers["idempotency-key"] == "k-2"


async def test_unknown_partner_and_route_are_404_problems(harness: GatewayHarness) -> None:
    for path in ("/v1/partners/no-such-partner/shipments/S-1", f"/v1/partners/{PARTNER_ID}/nothing-here",
                 "/v1/elsewhere"):
        response = await harness.session.post(harness.url + path, data=b"{}", headers={
            **harness.auth(), "Content-Type": "application/json"})
        assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read(), 404)
    assert harness.partner.received == []


async def test_x_purpose_required_on_a_route_with_several_purposes(harness: GatewayHarness) -> None:
    url = f"{harness.url}/v1/partners/{PARTNER_ID}/tracking/T-1?lang=en&secret=1"
    response = await harness.session.get(url, headers=harness.auth())
    problem = assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()},
                             await response.read(), 400)
    assert problem["violations"][0]["path"] == "headers.X-Purpose"
    assert harness.partner.received == []
    response = await harness.session.get(url, headers={**harness.auth(), "X-Purpose": "returns"})
    assert response.status == 200
    assert await response.json() == {"status": "in_transit"}
    assert harness.partner.received[0].raw_path == "/api/tracking/T-1?lang=en"
    records = await harness.ledger_records(kind="disclosure")
    assert records[0]["purpose"] == "returns"


async def test_consent_missing_is_403_and_residency_not_allowed_is_451(harness: GatewayHarness) -> None:
    response = await harness.session.post(
        f"{harness.url}/v1/partners/{PARTNER_ID}/promotions", json={"customer_id": RAW_CUSTOMER, "segment": "a"},
        headers=harness.auth([f"disclose:{PARTNER_ID}:marketing"]),
    )
    problem = assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()},
                             await response.read(), 403)
    assert problem["type"].endswith("consent-required")
    body = shipment_body()
    body["recipient"]["country"] = "VN"  # no rule lets a VN resident's data go to a TW carrier
    response = await post_shipment(harness, body)
    assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read(), 451)
    assert harness.partner.received == []
    refusals = await harness.ledger_records(kind="refusal")
    assert sorted(r["status"] for r in refusals) == [403, 451]
    assert all(r["subject_ref"] == harness.keys.ledger.subject_ref(RAW_CUSTOMER) for r in refusals)


async def test_partner_redirect_is_502_and_not_followed(harness: GatewayHarness) -> None:
    harness.partner.mode = "redirect"
    response = await post_shipment(harness)
    headers = {k.lower(): v for k, v in response.headers.items()}
    assert_problem(response.status, headers, await response.read(), 502)
    assert "location" not in headers
    assert len(harness.partner.received) == 1
    outcomes = await harness.ledger_records(kind="outcome")
    assert outcomes[0]["status"] == 502


async def test_partner_that_never_answers_is_504(harness: GatewayHarness) -> None:
    harness.partner.mode = "hang"
    response = await post_shipment(harness)
    assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read(), 504)
    outcomes = await harness.ledger_records(kind="outcome")
    assert [o["status"] for o in outcomes] == [504]


async def test_partner_5xx_is_502_and_idempotent_routes_retry_with_a_record_per_try(harness: GatewayHarness) -> None:
    harness.partner.mode = "5xx"
    response = await post_shipment(harness)
    assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read(), 502)
    assert len(harness.partner.received) == 1  # not idempotent: one try
    response = await harness.session.get(f"{harness.url}/v1/partners/{PARTNER_ID}/tracking/T-1",
                                         headers={**harness.auth(), "X-Purpose": "delivery"})
    assert response.status == 502
    assert len(harness.partner.received) == 3  # idempotent, retries: 1
    disclosures = await harness.ledger_records(kind="disclosure", route="track")
    outcomes = await harness.ledger_records(kind="outcome", route="track")
    assert [d["attempt"] for d in disclosures] == [1, 2]
    assert sorted(o["disclosure_id"] for o in outcomes) == sorted(d["id"] for d in disclosures)


async def test_malformed_partner_answer_is_502(harness: GatewayHarness) -> None:
    harness.partner.mode = "malformed"
    response = await post_shipment(harness)
    assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read(), 502)


async def test_ledger_not_writable_is_503_and_nothing_is_forwarded(harness: GatewayHarness) -> None:
    await harness.gateway.state.services.ledger.close()
    response = await post_shipment(harness)
    problem = assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()},
                             await response.read(), 503)
    assert problem["type"].endswith("ledger-unavailable")
    assert harness.partner.received == []
    ready = await harness.session.get(harness.url + "/readyz")
    assert ready.status == 503
    text = await (await harness.session.get(harness.url + "/metrics")).text()
    assert metric_value(text, "gateway_ledger_errors_total") == 1.0


async def test_a_failed_disclosure_commit_leaves_a_refusal_in_the_ledger(harness: GatewayHarness) -> None:
    """A disclosure commit that failed (or timed out, and may land later) is answered 503 and followed in
    the ledger by a refusal for the same request: the ledger itself shows it was not forwarded."""
    store = harness.gateway.state.services.ledger.store
    assert isinstance(store, SqliteStore)
    real_write = store._write_on_thread
    failed: list[bool] = []

    def failing_once(rows: Any, checkpoints: Any, sync: bool) -> None:
        if not failed:
            failed.append(sync)
            raise sqlite3.OperationalError("disk I/O error")
        real_write(rows, checkpoints, sync)

    store._write_on_thread = failing_once  # type: ignore[method-assign]
    response = await post_shipment(harness)
    problem = assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()},
                             await response.read(), 503)
    assert problem["type"].endswith("ledger-unavailable")
    assert failed == [True]
    assert harness.partner.received == []
    refusals = await harness.ledger_records(kind="refusal")
    assert [(r["request_id"], r["status"], r["reason"]) for r in refusals] == [
        (response.headers["X-Request-Id"], 503, "ledger-commit-failed")]
    assert await harness.ledger_records(kind="disclosure") == []


async def test_a_retry_whose_disclosure_commit_fails_is_refused_with_its_attempt(harness: GatewayHarness) -> None:
    """Try 1 is recorded and forwarded (the partner answers 5xx); try 2's disclosure commit fails. The
    refusal names attempt 2, so the ledger does not say that try 1 was never sent."""
    store = harness.gateway.state.services.ledger.store
    assert isinstance(store, SqliteStore)
    real_write = store._write_on_thread
    durable_writes: list[bool] = []

    def second_durable_write_fails(rows: Any, checkpoints: Any, sync: bool) -> None:
        if sync:
            durable_writes.append(sync)
            if len(durable_writes) == 2:
                raise sqlite3.OperationalError("disk I/O error")
        real_write(rows, checkpoints, sync)

    store._write_on_thread = second_durable_write_fails  # type: ignore[method-assign]
    harness.partner.mode = "5xx"
    response = await harness.session.get(f"{harness.url}/v1/partners/{PARTNER_ID}/tracking/T-1",
                                         headers={**harness.auth(), "X-Purpose": "delivery"})
    assert response.status == 503
    assert len(harness.partner.received) == 1  # try 1 went out, try 2 did not
    disclosures = await harness.ledger_records(kind="disclosure", route="track")
    refusals = await harness.ledger_records(kind="refusal")
    assert [(d["request_id"], d["attempt"]) for d in disclosures] == [(response.headers["X-Request-Id"], 1)]
    assert [(r["request_id"], r["attempt"], r["status"]) for r in refusals] == [
        (response.headers["X-Request-Id"], 2, 503)]


async def test_the_answer_waits_for_the_disclosure_commit_but_not_for_the_outcome(harness: GatewayHarness) -> None:
    store = harness.gateway.state.services.ledger.store
    assert isinstance(store, SqliteStore)
    real_write = store._write_on_thread
    release = threading.Event()
    commits: list[bool] = []

    def held_write(rows: Any, checkpoints: Any, sync: bool) -> None:
        # On the store's writer thread: the outcome's own commit (no fsync) is held until the answer has
        # arrived; the disclosure's (fsynced) commit goes through.
        commits.append(sync)
        if not sync:
            release.wait()
        real_write(rows, checkpoints, sync)

    store._write_on_thread = held_write  # type: ignore[method-assign]
    # Decline the inline (no thread hop) unsynced commit, so that the outcome's commit can be held.
    store.write_unsynced_now = lambda rows, checkpoints: False  # type: ignore[method-assign]
    try:
        response = await asyncio.wait_for(post_shipment(harness), 10)
        assert response.status == 200
        # The disclosure was fsynced before the partner call; the outcome's commit (no fsync) lingers for
        # the next request's disclosure or starts and is held: either way the answer did not wait for it.
        assert commits[:1] == [True]
        assert True not in commits[1:]
        with sqlite3.connect(sqlite_path(harness.settings.ledger_url)) as conn:
            stored = [k for (k,) in conn.execute("SELECT kind FROM ledger_records ORDER BY sequence")]
        assert stored == ["disclosure"]  # answered while the outcome was still queued or held
    finally:
        release.set()  # never leave the writer thread blocked, whatever failed
    outcomes = await harness.ledger_records(kind="outcome")
    assert [o["disclosure_id"] for o in outcomes] == [response.headers["X-Disclosure-Id"]]


async def test_token_attacks_end_to_end(harness: GatewayHarness) -> None:
    good = harness.auth()["Authorization"]
    none_token = jwt.encode({"sub": "x", "iss": harness.settings.jwt_issuer, "aud": harness.settings.jwt_audience,
                             "exp": 9999999999, "scope": f"disclose:{PARTNER_ID}:delivery"}, None, algorithm="none")
    data = json.dumps(shipment_body()).encode()
    for headers in ([("Authorization", good), ("Authorization", good)],
                    [("Authorization", f"Bearer {none_token}")],
                    [("Authorization", "Bearer " + none_token.replace("eyJhbGciOiJub25lIi", "eyJhbGciOiJOb05lIi"))],
                    []):
        response = await harness.session.post(harness.url + SHIPMENT, data=data,
                                              headers=[*headers, ("Content-Type", "application/json")])
        assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()},
                       await response.read(), 401)
    assert harness.partner.received == []
    # Unauthenticated refusals are not recorded (the caller is unknown); metrics count them.
    assert await harness.ledger_records(kind="refusal") == []


async def test_ops_endpoints_and_metric_names(harness: GatewayHarness) -> None:
    assert (await harness.session.get(harness.url + "/healthz")).status == 200
    ready = await harness.session.get(harness.url + "/readyz")
    assert ready.status == 200
    spec = await (await harness.session.get(harness.url + "/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert (await post_shipment(harness)).status == 200
    await harness.session.post(harness.url + "/v1/partners/evil-9f8e7d/x", data=b"{}", headers=harness.auth())
    await post_shipment(harness, headers=harness.auth([]))
    text = await (await harness.session.get(harness.url + "/metrics")).text()
    for name in (
        "gateway_requests_total", "gateway_request_duration_seconds", "gateway_upstream_duration_seconds",
        "gateway_disclosures_total", "gateway_fields_dropped_total", "gateway_pseudonymised_total",
        "gateway_refusals_total", "gateway_ledger_commit_seconds", "gateway_ledger_batch_size",
        "gateway_ledger_errors_total", "gateway_ledger_late_commits_total", "gateway_profile_reloads_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert f'gateway_requests_total{{outcome="forwarded",partner="{PARTNER_ID}",route="create-shipment"}} 1.0' in text
    assert f'gateway_disclosures_total{{partner="{PARTNER_ID}",purpose="delivery"}} 1.0' in text
    assert f'gateway_pseudonymised_total{{partner="{PARTNER_ID}",type="imei"}} 1.0' in text
    assert f'gateway_refusals_total{{partner="{PARTNER_ID}",reason="scope-missing"}} 1.0' in text
    # The ledger reports each commit: one disclosure, its outcome and the scope refusal are 3 records.
    await harness.gateway.state.services.ledger.flush()
    text = await (await harness.session.get(harness.url + "/metrics")).text()
    assert metric_value(text, "gateway_ledger_batch_size_sum") == 3.0
    commits = metric_value(text, "gateway_ledger_batch_size_count")
    assert 1.0 <= commits <= 3.0
    assert metric_value(text, "gateway_ledger_commit_seconds_count") == commits
    assert metric_value(text, "gateway_ledger_commit_seconds_sum") > 0
    assert metric_value(text, "gateway_ledger_errors_total") == 0.0
    assert 'gateway_refusals_total{partner="-",reason="unknown-partner"} 1.0' in text
    assert "evil-9f8e7d" not in text
    for value in RAW_VALUES:
        assert value not in text
