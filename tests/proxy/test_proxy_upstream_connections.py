"""The upstream connection pool seen through the whole gateway (review-partner F4, F8): with no
`max_concurrency` in the profile, Admit enforces the pool's default cap, so a call beyond it leaves a
refusal record and no disclosure; a kept-alive connection the partner closes as a call is written fails
with `upstream-reset-idle`, retried once on a new connection on an idempotent route (each try its own
disclosure and outcome) and never on the others. Real gateway, a byte-level partner on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from proxy_harness import PARTNER_ID, PROFILE_YAML, GatewayHarness, shipment_body

from gateway import forward

TRACK = f"/v1/partners/{PARTNER_ID}/tracking/T-1"
SHIPMENT = f"/v1/partners/{PARTNER_ID}/shipments/S-1"
ANSWER = b'{"status":"in_transit","tracking_number":"T-1"}'
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)


class ConnectionClosingPartner:
    """Answers the first request on each connection; on a second one it closes without a byte, as a
    partner whose keep-alive timer fired just as the request arrived does. `hold` delays every answer."""

    def __init__(self) -> None:
        self.url = ""
        self.requests = 0
        self.connections = 0
        self.hold: asyncio.Event | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/api"

    async def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for index in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.requests += 1
                if index == 1:
                    return
                if self.hold is not None:
                    await self.hold.wait()
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@pytest.fixture
def profiles_dir(tmp_path: Path) -> Path:
    # No retries (so a retry seen here is the stale-connection one) and no concurrency limit.
    text = PROFILE_YAML.replace("  retries: 1\n", "  retries: 0\n").replace("  max_concurrency: 16\n", "")
    directory = tmp_path / "profiles"
    directory.mkdir()
    (directory / f"{PARTNER_ID}.yaml").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
async def fake_partner() -> AsyncIterator[ConnectionClosingPartner]:
    partner = ConnectionClosingPartner()
    await partner.start()
    yield partner
    await partner.close()


async def _records(harness: GatewayHarness, count: int) -> list[dict[str, Any]]:
    """Every record once `count` landed (outcomes and refusals are queued, not awaited)."""
    for _ in range(300):
        records = await harness.ledger_records()
        if len(records) >= count:
            break
        await asyncio.sleep(0.01)
    return sorted(records, key=lambda r: (r["time"], r.get("attempt") or 0))


def _track_headers(harness: GatewayHarness) -> dict[str, str]:
    return {**harness.auth(), "X-Purpose": "delivery"}


def _shape(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["kind"], r.get("attempt"), r.get("status"), r.get("reason")) for r in records]


async def test_a_stale_connection_on_an_idempotent_route_is_retried_once_on_a_new_connection(
    harness: GatewayHarness,
) -> None:
    first = await harness.session.get(harness.url + TRACK, headers=_track_headers(harness))
    assert first.status == 200
    second = await harness.session.get(harness.url + TRACK, headers=_track_headers(harness))
    assert second.status == 200, await second.read()
    partner: ConnectionClosingPartner = harness.partner  # type: ignore[assignment]
    assert (partner.requests, partner.connections) == (3, 2)
    assert _shape((await _records(harness, 6))[2:]) == [
        ("disclosure", 1, None, None),
        ("outcome", 1, 502, "upstream-reset-idle"),
        ("disclosure", 2, None, None),
        ("outcome", 2, 200, None),
    ]


async def test_the_retry_after_a_stale_connection_skips_the_other_idle_connections(harness: GatewayHarness) -> None:
    """Two calls in flight at once leave two kept-alive connections, both closed by the partner on their
    next request: the retry must open a new connection, not take the other (equally stale) idle one
    (review rv-partner R1: it did, and the call failed with 502 although a new connection would answer)."""
    partner: ConnectionClosingPartner = harness.partner  # type: ignore[assignment]
    partner.hold = asyncio.Event()
    calls = [asyncio.ensure_future(harness.session.get(harness.url + TRACK, headers=_track_headers(harness)))
             for _ in range(2)]
    for _ in range(300):
        if partner.requests == 2:
            break
        await asyncio.sleep(0.01)
    partner.hold.set()
    assert [r.status for r in await asyncio.gather(*calls)] == [200, 200]
    assert partner.connections == 2
    third = await harness.session.get(harness.url + TRACK, headers=_track_headers(harness))
    assert third.status == 200, await third.read()
    assert (partner.requests, partner.connections) == (4, 3)
    assert _shape((await _records(harness, 8))[4:]) == [
        ("disclosure", 1, None, None),
        ("outcome", 1, 502, "upstream-reset-idle"),
        ("disclosure", 2, None, None),
        ("outcome", 2, 200, None),
    ]


async def test_a_stale_connection_on_a_route_not_marked_idempotent_is_not_retried(harness: GatewayHarness) -> None:
    first = await harness.session.post(harness.url + SHIPMENT, json=shipment_body(), headers=harness.auth())
    assert first.status == 200
    second = await harness.session.post(harness.url + SHIPMENT, json=shipment_body(), headers=harness.auth())
    assert second.status == 502
    partner: ConnectionClosingPartner = harness.partner  # type: ignore[assignment]
    assert partner.requests == 2
    assert _shape((await _records(harness, 4))[2:]) == [
        ("disclosure", 1, None, None),
        ("outcome", 1, 502, "upstream-reset-idle"),
    ]


async def test_without_max_concurrency_admission_refuses_at_the_pool_cap_before_any_disclosure(
    settings: Any, fake_partner: ConnectionClosingPartner, gateway_keys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy_harness import running_harness

    monkeypatch.setattr(forward, "DEFAULT_MAX_CONCURRENCY", 2)
    fake_partner.hold = asyncio.Event()
    async with running_harness(settings, fake_partner, gateway_keys) as harness:  # type: ignore[arg-type]
        held = [
            asyncio.ensure_future(harness.session.get(harness.url + TRACK, headers=_track_headers(harness)))
            for _ in range(2)
        ]
        while fake_partner.requests < 2:
            await asyncio.sleep(0.01)
        refused = await harness.session.get(harness.url + TRACK, headers=_track_headers(harness))
        assert refused.status == 429
        fake_partner.hold.set()
        assert [(await call).status for call in held] == [200, 200]
        records = await _records(harness, 5)
    kinds = sorted((r["kind"], r.get("status"), r.get("reason")) for r in records)
    assert kinds == [
        ("disclosure", None, None),
        ("disclosure", None, None),
        ("outcome", 200, None),
        ("outcome", 200, None),
        ("refusal", 429, "concurrency-limit"),
    ]
    assert fake_partner.connections == 2
