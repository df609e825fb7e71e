"""The SQLite ledger end to end: group-committed appends, chain, checkpoints, resume, verify."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from ledger_helpers import disclosure_draft

from gateway.cli.ledger import verify_url
from gateway.config import sqlite_path
from gateway.errors import LedgerUnavailable
from gateway.keys import GatewayKeys
from gateway.ledger import LedgerQuery, RecordDraft, open_ledger


async def test_concurrent_appends_are_durable_chained_and_verify(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=50,
                         max_batch_records=32)
    await ledger.start()
    assert ledger.writable()
    appended = await asyncio.gather(*(ledger.append(disclosure_draft(i, gateway_keys)) for i in range(300)))
    await ledger.close()
    sequences = sorted(a.sequence for a in appended)
    # Gapless except where checkpoints were interleaved; every id distinct.
    assert len({a.id for a in appended}) == 300
    assert sequences[0] == 1
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        rows = conn.execute("SELECT sequence, kind FROM ledger_records WHERE chain='w0' ORDER BY sequence").fetchall()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[-1][1] == "checkpoint"  # close() signs the head
    assert sum(1 for r in rows if r[1] == "checkpoint") >= 2
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()
    assert report.records == len(rows)


async def test_restart_resumes_the_same_chain(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    for round_ in range(3):
        ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0")
        await ledger.start()
        first = await ledger.append(disclosure_draft(round_, gateway_keys))
        await ledger.close()
        assert first.sequence == 1 + round_ * 2  # each round: one record and its closing checkpoint
    other = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w1")
    await other.start()
    assert (await other.append(disclosure_draft(9, gateway_keys))).sequence == 1
    await other.close()
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()
    assert [c.chain for c in report.chains] == ["w0", "w1"]


async def test_query_filters(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0")
    await ledger.start()
    for i in range(14):
        await ledger.append(disclosure_draft(i, gateway_keys, partner="acme" if i % 2 else "globex"))
    ref = gateway_keys.ledger.subject_ref("subscriber-3")
    found = await ledger.query(LedgerQuery(subject_ref=ref))
    assert {r["request_id"] for r in found} == {"req-3", "req-10"}
    acme = await ledger.query(LedgerQuery(partner="acme", kind="disclosure", limit=3))
    assert [r["request_id"] for r in acme] == ["req-1", "req-3", "req-5"]
    await ledger.close()


async def test_bad_drafts_are_refused_before_queueing(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0")
    await ledger.start()
    with pytest.raises(ValueError, match="subject_ref"):
        await ledger.append(RecordDraft(kind="disclosure", subject_ref="alice@example.com"))
    with pytest.raises(ValueError, match="kind"):
        await ledger.append(RecordDraft(kind="checkpoint"))
    with pytest.raises(TypeError, match="fields_sent"):
        await ledger.append(RecordDraft(kind="disclosure", fields_sent="a.b"))
    await ledger.close()
    with pytest.raises(LedgerUnavailable):
        await ledger.append(RecordDraft(kind="refusal"))


async def test_triggers_refuse_update_and_delete(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0")
    await ledger.start()
    await ledger.append(disclosure_draft(1, gateway_keys))
    await ledger.close()
    with sqlite3.connect(Path(sqlite_path(sqlite_url))) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE ledger_records SET partner='x'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM ledger_records")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM ledger_checkpoints")


async def test_a_checkpoint_follows_after_the_interval_without_more_traffic(
    sqlite_url: str, gateway_keys: GatewayKeys
) -> None:
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_seconds=0.2)
    await ledger.start()
    await ledger.append(disclosure_draft(1, gateway_keys))
    for _ in range(50):
        await asyncio.sleep(0.05)
        if await ledger.query(LedgerQuery(kind="checkpoint")):
            break
    checkpoints = await ledger.query(LedgerQuery(kind="checkpoint"))
    assert [c["sequence"] for c in checkpoints] == [2]
    await asyncio.sleep(0.5)  # nothing new to sign: no empty checkpoints
    assert len(await ledger.query(LedgerQuery(kind="checkpoint"))) == 1
    await ledger.close()


async def test_null_and_boolean_columns_are_stored_as_sqlite_null_and_integers(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """gateway.sqlitefile binds None and bool through adapters of its own (for speed): the stored types must
    stay NULL and INTEGER 1/0, and the hashes (computed before binding) must still verify."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0")
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys)._replace(cross_border=True, transfer_basis=None))
    await ledger.append(disclosure_draft(1, gateway_keys)._replace(cross_border=False))
    await ledger.close()
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        rows = conn.execute("SELECT typeof(cross_border), cross_border, typeof(transfer_basis), typeof(status) "
                            "FROM ledger_records WHERE kind = 'disclosure' ORDER BY sequence").fetchall()
    assert rows == [("integer", 1, "null", "null"), ("integer", 0, "null", "null")]
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()
