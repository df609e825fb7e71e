"""Records sealed again after a failed commit keep their append order however the failures are reported
(review-ledger9 finding 1), and retries that fail together are split in halves, not one by one (finding 3).
Real SQLite files and real PostgreSQL schemas."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from ledger_helpers import RecordingObserver, disclosure_draft
from test_ledger_retry_isolation_restart import chain_rows, outcome, refuse_in_store

from gateway.cli.ledger import verify_url
from gateway.errors import LedgerUnavailable
from gateway.keys import GatewayKeys
from gateway.ledger import open_ledger


async def stall_inserts_of(pg_url: str, request_id: str) -> None:
    """A trigger that makes every INSERT of a record with `request_id` hang in the server for 5 s (the
    watchdog cuts it first)."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f"""
            CREATE OR REPLACE FUNCTION stall_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.request_id = '{request_id}' THEN PERFORM pg_sleep(5); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER stall_inserts BEFORE INSERT ON ledger_records
                FOR EACH ROW EXECUTE FUNCTION stall_inserts();""")
    finally:
        await conn.close()


async def test_outcomes_of_pipelined_commits_cut_by_the_watchdog_are_written_again_in_append_order(
        pg_url: str, gateway_keys: GatewayKeys) -> None:
    """Finding 1: commit 1 (outcome `first`) hangs in the server and commit 2 (outcome `second`) is pipelined
    behind it. On the watchdog, PostgresStore.abandon() reports commit 2 (never sent) before commit 1 is
    given up on; both outcomes are sealed again, `first` before `second`, each with its own append time."""
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=0.5,
                         checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    await stall_inserts_of(pg_url, "first")
    lost: list[str] = []
    ledger.append_unawaited(outcome("first"), on_failure=lambda: lost.append("first"))
    d1 = asyncio.ensure_future(ledger.append(disclosure_draft(1, gateway_keys)))  # commit 1: hangs
    await asyncio.sleep(0.1)
    ledger.append_unawaited(outcome("second"), on_failure=lambda: lost.append("second"))
    d2 = asyncio.ensure_future(ledger.append(disclosure_draft(2, gateway_keys)))  # commit 2, pipelined
    for pending in (d1, d2):
        with pytest.raises(LedgerUnavailable):
            await pending
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("DROP TRIGGER stall_inserts ON ledger_records")
    finally:
        await conn.close()
    await asyncio.wait_for(ledger.flush(), 20)
    rows = sorted(await chain_rows(ledger), key=lambda r: r["sequence"])
    await asyncio.wait_for(ledger.close(), 20)
    assert lost == []
    outcomes = [r for r in rows if r.get("request_id") in ("first", "second")]
    assert [r["request_id"] for r in outcomes] == ["first", "second"], rows
    assert outcomes[0]["time"] < outcomes[1]["time"], outcomes  # each keeps its own append time
    report = await verify_url(pg_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_a_failed_retry_is_split_in_halves_so_one_refused_record_costs_few_transactions(
        ledger_url: str, gateway_keys: GatewayKeys, caplog: pytest.LogCaptureFixture) -> None:
    """Finding 3: among 500 outcomes re-queued after a failed commit, one the store always refuses. Their
    retry fails, and is split in halves until the refused record is alone: about 2 log2(500) transactions,
    not one per outcome (which kept disclosures waiting behind 500 serial commits). Only the refused record
    is reported lost, once; the others are stored in append order."""
    caplog.set_level(logging.WARNING, logger="gateway.ledger")
    observer = RecordingObserver()
    ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=100_000,
                         observer=observer)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    await refuse_in_store(ledger_url, "poison")
    lost: list[str] = []
    names = [f"o{i}" for i in range(500)]
    names.insert(317, "poison")
    for name in names:
        ledger.append_unawaited(outcome(name), on_failure=lambda name=name: lost.append(name))
    with pytest.raises(LedgerUnavailable):
        await ledger.append(disclosure_draft(1, gateway_keys))  # shares the poison's first commit
    committed_before = len(observer.commits)
    failed_before = sum("ledger commit failed" in r.getMessage() for r in caplog.records)
    later = await asyncio.wait_for(ledger.append(disclosure_draft(2, gateway_keys)), 30)
    await asyncio.wait_for(ledger.flush(), 30)
    committed = len(observer.commits) - committed_before
    failed = sum("ledger commit failed" in r.getMessage() for r in caplog.records) - failed_before
    rows = sorted(await chain_rows(ledger), key=lambda r: r["sequence"])
    await asyncio.wait_for(ledger.close(), 10)
    assert lost == ["poison"]
    stored = [r["request_id"] for r in rows if r["kind"] != "checkpoint"]
    assert stored == ["req-0", *(n for n in names if n != "poison"), "req-2"], stored[:5]
    assert later.sequence == 502
    # One split per level (log2(501) < 9) commits one half and fails the other, then the poison fails
    # alone until its retries are used up. One by one, it was 500 commits.
    assert committed <= 24, committed
    assert failed <= 24, failed
    report = await verify_url(ledger_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_a_retry_cut_by_the_watchdog_is_tried_record_by_record_not_halved(
        pg_url: str, gateway_keys: GatewayKeys, caplog: pytest.LogCaptureFixture) -> None:
    """A record whose commit hangs every time costs a commit timeout per try, so a retry the watchdog cut
    is not halved (a hang per level): each record is tried alone, as before the halving. The hanging record
    is cut three times (its first commit, the shared retry, its own) and reported lost once; the others
    are stored in append order."""
    caplog.set_level(logging.WARNING, logger="gateway.ledger")
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=0.3,
                         checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    await stall_inserts_of(pg_url, "slow")
    lost: list[str] = []
    names = ["a", "b", "slow", "c", "d", "e"]
    for name in names:
        ledger.append_unawaited(outcome(name), on_failure=lambda name=name: lost.append(name))
    with pytest.raises(LedgerUnavailable):
        await ledger.append(disclosure_draft(1, gateway_keys))
    await asyncio.wait_for(ledger.flush(), 30)
    cuts = sum("ledger commit took longer" in r.getMessage() for r in caplog.records)
    rows = sorted(await chain_rows(ledger), key=lambda r: r["sequence"])
    await asyncio.wait_for(ledger.close(), 30)
    assert lost == ["slow"]
    assert [r["request_id"] for r in rows if r["kind"] != "checkpoint"] == ["req-0", "a", "b", "c", "d", "e"]
    assert cuts == 3, cuts
