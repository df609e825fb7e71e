"""What a partner's answer can put in front of the caller, through the real server and a raw partner on
127.0.0.1 that writes exact bytes (review-partner F2, F5), and partner credentials that cannot travel,
refused at start and at reload with the running set kept (F6).

- A response `keep` passes scalars only: an object or array under an allowlisted scalar name is dropped.
- The caller's answer carries one X-Disclosure-Id, X-Request-Id, Date and Server (the gateway's) and no
  partner cookie, Location or Content-Encoding, even from a profile set the loader did not check.
- A partner header value is passed when it is visible ASCII (space and tab allowed) and withheld
  otherwise (a non-ASCII byte, \\v, DEL), never re-encoded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from proxy_harness import (
    PARTNER_ID,
    PARTNER_TOKEN,
    PROFILE_YAML,
    FakePartner,
    GatewayHarness,
    partner_environ,
    running_harness,
    shipment_body,
)

from gateway.config import Settings
from gateway.keys import GatewayKeys
from gateway.profiles import ProfileLoadError
from gateway.proxy import start_gateway

SHIPMENT = f"/v1/partners/{PARTNER_ID}/shipments/S-1"
PHONE = "+886912345678"
SHIPMENT_RESPONSE = """\
    response:
      body:
        tracking_number: keep
        recipient.phone: {reidentify: {type: phone}}
      headers:
        Content-Type: keep
"""
assert SHIPMENT_RESPONSE in PROFILE_YAML


class RawPartner:
    """Answers every request with `answer` (exact bytes) and records the request heads it received."""

    def __init__(self) -> None:
        self.answer = b""
        self.heads: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/api"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(self.answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def json_answer(body: object, extra_headers: bytes = b"") -> bytes:
    data = json.dumps(body).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(data)).encode()
            + b"\r\n" + extra_headers + b"\r\n" + data)


@pytest.fixture
async def raw_partner() -> AsyncIterator[RawPartner]:
    partner = RawPartner()
    await partner.start()
    yield partner
    await partner.close()


StartGateway = Callable[[str], Awaitable[GatewayHarness]]


@pytest.fixture
async def gateway_with(settings: Settings, profiles_dir: Path, raw_partner: RawPartner,
                       gateway_keys: GatewayKeys) -> AsyncIterator[StartGateway]:
    """Starts the gateway in front of `raw_partner` with the shipment route's response section replaced."""
    async with AsyncExitStack() as stack:
        async def start(response_section: str) -> GatewayHarness:
            (profiles_dir / f"{PARTNER_ID}.yaml").write_text(
                PROFILE_YAML.replace(SHIPMENT_RESPONSE, response_section), encoding="utf-8")
            return await stack.enter_async_context(
                running_harness(settings, FakePartner(url=raw_partner.url), gateway_keys))
        yield start


async def post_raw(harness: GatewayHarness) -> tuple[int, list[tuple[str, str]], bytes, bytes]:
    """The shipment call as exact bytes; the answer's status, header lines (in order), raw head and body."""
    body = json.dumps(shipment_body()).encode()
    request = (f"POST {SHIPMENT} HTTP/1.1\r\nHost: gw\r\nAuthorization: {harness.auth()['Authorization']}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
               ).encode() + body
    reader, writer = await asyncio.open_connection(harness.gateway.host, harness.gateway.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        answer_body = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines[1:] if line)]
    return int(lines[0].split(" ")[1]), headers, head, answer_body


def named(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


async def test_a_subtree_under_a_kept_scalar_name_never_reaches_the_caller(gateway_with: StartGateway,
                                                                          raw_partner: RawPartner) -> None:
    harness = await gateway_with(SHIPMENT_RESPONSE.replace(
        "        tracking_number: keep\n", "        tracking_number: keep\n        status: keep\n"
                                           "        events[].facility: keep\n"))
    raw_partner.answer = json_answer({
        "tracking_number": {"recipient_phone": PHONE, "email": "kim@example.org", "imei": "490154203237518",
                            "home": {"lat": 25.03391, "lon": 121.56452}},
        "status": [f"{PHONE} called", {"ssn": "A123456789"}],
        "events": [{"facility": {"phone": PHONE}}, {"facility": "TPE-1"}],
    })
    status, _, _, body = await post_raw(harness)
    assert status == 200
    assert json.loads(body) == {"events": [{"facility": "TPE-1"}]}
    assert PHONE.encode() not in body


async def test_partner_header_values_pass_as_ascii_or_are_withheld(gateway_with: StartGateway,
                                                                   raw_partner: RawPartner) -> None:
    harness = await gateway_with(SHIPMENT_RESPONSE + "        X-Partner-Note: keep\n"
                                                 "        X-Partner-Latin: keep\n        X-Partner-Vt: keep\n"
                                                 "        X-Partner-Del: keep\n")
    raw_partner.answer = json_answer({"tracking_number": "T-1"}, b"X-Partner-Note: ok\tv1 (a note)\r\n"
                                     b"X-Partner-Latin: caf\xe9\r\nX-Partner-Vt: a\x0bb\r\nX-Partner-Del: a\x7fb\r\n")
    status, headers, head, body = await post_raw(harness)
    assert status == 200
    assert json.loads(body) == {"tracking_number": "T-1"}
    assert named(headers, "x-partner-note") == ["ok\tv1 (a note)"]
    for name in ("x-partner-latin", "x-partner-vt", "x-partner-del"):
        assert named(headers, name) == []
    assert all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head)


async def test_reserved_partner_headers_are_dropped_even_when_a_profile_declares_them(
        gateway_with: StartGateway, raw_partner: RawPartner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: a profile set that did not pass the loader's check (simulated by emptying the
    loader's list) still cannot hand the caller a forged X-Disclosure-Id, a cookie or a partner framing."""
    monkeypatch.setattr("gateway.profiles.loader.RESPONSE_HEADER_REFUSALS", {})
    names = ["x-disclosure-id", "x-request-id", "Set-Cookie", "Content-Encoding", "Date", "Server", "Location",
             "Upgrade", "Trailer", "Cache-Control", "Access-Control-Allow-Origin", "X-Partner-Note"]
    harness = await gateway_with(SHIPMENT_RESPONSE + "".join(
        f"        {name}: keep\n" for name in names))
    raw_partner.answer = json_answer({"tracking_number": "T-1"}, (
        b"x-disclosure-id: forged-disclosure\r\nx-request-id: forged-request\r\n"
        b"Set-Cookie: session=evil; Domain=.corp.example; Path=/\r\nContent-Encoding: gzip\r\n"
        b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\nServer: partner\r\nLocation: http://evil.example/\r\n"
        b"Upgrade: h2c\r\nTrailer: X-Foo\r\nCache-Control: public, max-age=86400\r\n"
        b"Access-Control-Allow-Origin: *\r\nX-Partner-Note: kept\r\n"))
    status, headers, head, body = await post_raw(harness)
    assert status == 200
    assert json.loads(body) == {"tracking_number": "T-1"}
    assert b"forged" not in head
    assert b"evil" not in head
    assert b"1970" not in head
    assert b"partner\r\n" not in head
    for name in ("x-disclosure-id", "x-request-id", "date", "server"):
        assert len(named(headers, name)) == 1, name
    for name in ("set-cookie", "content-encoding", "location", "upgrade", "trailer", "access-control-allow-origin"):
        assert named(headers, name) == [], name
    # The gateway's own caching instruction, never the partner's (rv-partner R2).
    assert named(headers, "cache-control") == ["no-store"]
    assert named(headers, "x-partner-note") == ["kept"]
    (disclosure,) = await harness.ledger_records(kind="disclosure")
    assert named(headers, "x-disclosure-id") == [disclosure["id"]]


async def test_a_credential_that_cannot_travel_refuses_the_start(settings: Settings, raw_partner: RawPartner) -> None:
    """Before: the gateway started and said ready, and every call to the partner was a 500."""
    environ = {**partner_environ(FakePartner(url=raw_partner.url)), "PARTNER_TOKEN_CARRIER_TEST": "abc\r\nX-In: 1"}
    with pytest.raises(ProfileLoadError) as caught:
        await start_gateway(settings, environ=environ)
    assert "upstream.auth.token: the credential must be visible ASCII" in str(caught.value)
    assert "X-In" not in str(caught.value)
    assert raw_partner.heads == []


async def test_a_reload_with_a_bad_credential_is_refused_and_the_running_set_stays(
        gateway_with: StartGateway, raw_partner: RawPartner) -> None:
    harness = await gateway_with(SHIPMENT_RESPONSE)
    raw_partner.answer = json_answer({"tracking_number": "T-1"})
    harness.gateway.state.environ["PARTNER_TOKEN_CARRIER_TEST"] = "tok\u20acen"
    async with harness.session.post(harness.url + "/v1/admin/reload", headers=harness.auth(["gateway:admin"])) as r:
        status, text = r.status, await r.text()
    assert status == 422
    assert "upstream.auth.token" in text
    assert "tok\u20acen" not in text
    assert "\\u20ac" not in text
    status, _, _, body = await post_raw(harness)
    assert (status, json.loads(body)) == (200, {"tracking_number": "T-1"})
    assert f"Authorization: Bearer {PARTNER_TOKEN}\r\n".encode() in raw_partner.heads[-1]
