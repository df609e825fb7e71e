"""Crash safety (SIGKILL at random moments; every id a partner received is in the ledger and the ledger
verifies) and the behaviour of adaptive group commit (no added wait alone, batches under load, a failed
commit fails exactly its batch)."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from ledger_helpers import RecordingObserver, disclosure_draft, rogue_writer

from gateway.cli.ledger import verify_url
from gateway.errors import LedgerUnavailable
from gateway.keys import GatewayKeys
from gateway.ledger import LedgerQuery, open_ledger

CRASH_ITERATIONS = 20
WRITER_SCRIPT = Path(__file__).with_name("ledger_crash_writer.py")


@pytest.mark.slow
@pytest.mark.timeout(110)
async def test_sigkill_never_loses_a_disclosure_the_partner_saw(
    ledger_url: str, keys_dir: Path, gateway_keys: GatewayKeys
) -> None:
    received: list[str] = []

    async def partner(request: web.Request) -> web.Response:
        received.append((await request.read()).decode())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/disclose", partner)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rng = random.Random(1234)
    started = time.monotonic()
    try:
        for _ in range(CRASH_ITERATIONS):
            child = await asyncio.create_subprocess_exec(
                sys.executable, str(WRITER_SCRIPT), ledger_url, str(keys_dir),
                f"http://127.0.0.1:{port}/disclose", "crash-chain", "16",
                stdout=asyncio.subprocess.PIPE,
            )
            assert child.stdout is not None
            assert (await asyncio.wait_for(child.stdout.readline(), 20)).strip() == b"ready"
            await asyncio.sleep(rng.uniform(0.02, 0.3))
            child.send_signal(signal.SIGKILL)
            await child.wait()
    finally:
        await runner.cleanup()
    assert time.monotonic() - started < 100

    # The last writer was killed: its tail is unsigned and no writer holds the chain, which verify reports
    # (docs/ledger.md, "A writer that crashed") until the chain's writer runs again and signs it.
    report = await verify_url(ledger_url, gateway_keys.ledger.verify_key)
    assert report.ok or "no writer holds the chain now" in report.summary(), report.summary()
    restarted = open_ledger(ledger_url, gateway_keys.ledger, chain_id="crash-chain")
    await restarted.start()
    await restarted.close()
    report = await verify_url(ledger_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()
    ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="reader")
    await ledger.start()
    stored = {r["id"] for r in await ledger.query(LedgerQuery(kind="disclosure", limit=None))}
    await ledger.close()
    assert len(received) > CRASH_ITERATIONS  # the partner really saw traffic in most runs
    missing = set(received) - stored
    assert not missing, f"{len(missing)} disclosures reached the partner without a ledger record"


async def test_a_lone_append_commits_at_once_and_load_forms_batches(
    sqlite_url: str, gateway_keys: GatewayKeys
) -> None:
    observer = RecordingObserver()
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000,
                         observer=observer)
    await ledger.start()
    for i in range(5):
        await ledger.append(disclosure_draft(i, gateway_keys))
    assert observer.batches == [1, 1, 1, 1, 1]  # alone: one record, one commit, no waiting for company
    assert all(0 < seconds < 5 for _records, seconds in observer.commits)

    observer.commits.clear()

    async def writer(n: int) -> None:
        for i in range(20):
            await ledger.append(disclosure_draft(n * 100 + i, gateway_keys))

    await asyncio.gather(*(writer(n) for n in range(64)))
    assert sum(observer.batches) == 64 * 20
    assert len(observer.batches) < 64 * 20 / 8  # records that arrive during a commit share the next one
    assert observer.failures == []
    await ledger.close()


async def test_a_failed_commit_fails_exactly_its_batch_and_the_ledger_recovers(
    ledger_url: str, gateway_keys: GatewayKeys
) -> None:
    first = open_ledger(ledger_url, gateway_keys.ledger, chain_id="shared")
    await first.start()
    await first.append(disclosure_draft(0, gateway_keys))
    # A second writer ignoring the chain's lease takes sequences 2 and 3 behind the first's back.
    second = await rogue_writer(ledger_url, gateway_keys, "shared")
    assert (await second.append(disclosure_draft(1, gateway_keys))).sequence == 2
    await second.close()

    results = await asyncio.gather(*(first.append(disclosure_draft(i, gateway_keys)) for i in range(2, 7)),
                                   return_exceptions=True)
    assert all(isinstance(r, LedgerUnavailable) for r in results), results
    assert not first.writable()
    recovered = await first.append(disclosure_draft(7, gateway_keys))
    assert recovered.sequence == 4  # continues from the head as stored
    assert first.writable()
    await first.close()
    report = await verify_url(ledger_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()
    stored = [r["request_id"] for r in await _all(ledger_url, gateway_keys) if r["kind"] == "disclosure"]
    assert stored == ["req-0", "req-1", "req-7"]  # nothing of the failed batch was kept


async def _all(url: str, keys: GatewayKeys) -> list[dict[str, object]]:
    ledger = open_ledger(url, keys.ledger, chain_id="reader")
    await ledger.start()
    try:
        return await ledger.query(LedgerQuery(limit=None))
    finally:
        await ledger.close()
