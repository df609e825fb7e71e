"""Tamper with a real SQLite file and a real PostgreSQL table in every way the issue lists, as an attacker
with the database owner's rights (triggers disabled), and check the verifier names the chain and the
first failing sequence."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ledger_helpers import disclosure_draft

from gateway.cli.ledger import verify_url
from gateway.config import sqlite_path
from gateway.keys import GatewayKeys
from gateway.ledger import RecordDraft, open_ledger
from gateway.ledger.records import COLUMNS, record_hash, record_to_row, row_to_record, sign_record
from gateway.ledger.verify import ExpectedHead, VerifyReport

COLUMNS_SQL = ", ".join(COLUMNS)


class Tamperer:
    """Raw access to the ledger tables with the protecting triggers out of the way."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._pg: asyncpg.Connection | None = None

    async def __aenter__(self) -> Tamperer:
        if self.url.startswith("sqlite"):
            self._sqlite = sqlite3.connect(sqlite_path(self.url), isolation_level=None)
            for name in ("records", "checkpoints"):
                for op in ("update", "delete"):
                    self._sqlite.execute(f"DROP TRIGGER IF EXISTS ledger_{name}_refuse_{op}")
        else:
            self._pg = await asyncpg.connect(self.url)
            await self._pg.execute("ALTER TABLE ledger_records DISABLE TRIGGER USER")
            await self._pg.execute("ALTER TABLE ledger_checkpoints DISABLE TRIGGER USER")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.close()

    async def execute(self, sql: str, *params: Any) -> None:
        if self._sqlite is not None:
            self._sqlite.execute(sql, params)
        else:
            assert self._pg is not None
            await self._pg.execute(_dollar(sql), *params)

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self._sqlite is not None:
            return list(self._sqlite.execute(sql, params))
        assert self._pg is not None
        return [tuple(r) for r in await self._pg.fetch(_dollar(sql), *params)]

    async def records(self, chain: str) -> list[dict[str, Any]]:
        rows = await self.fetch(f"SELECT {COLUMNS_SQL} FROM ledger_records WHERE chain = ? ORDER BY sequence", chain)
        return [row_to_record(r) for r in rows]

    async def insert(self, record: dict[str, Any]) -> None:
        marks = ", ".join("?" for _ in COLUMNS)
        await self.execute(f"INSERT INTO ledger_records ({COLUMNS_SQL}) VALUES ({marks})", *record_to_row(record))

    async def rechain(self, chain: str, start: int, resign: Ed25519PrivateKey | None = None) -> None:
        """Recompute prev_hash and hash from `start` on, as an attacker who knows the format would."""
        records = await self.records(chain)
        prev = next(r["hash"] for r in records if r["sequence"] == start - 1)
        await self.execute("DELETE FROM ledger_records WHERE chain = ? AND sequence >= ?", chain, start)
        for record in (r for r in records if r["sequence"] >= start):
            record["prev_hash"] = prev
            if resign is not None and record["kind"] == "checkpoint":
                record["signature"] = sign_record(record, resign)
            record["hash"] = record_hash(record)
            prev = record["hash"]
            await self.insert(record)


def _dollar(sql: str) -> str:
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _m: f"${next(counter)}", sql)


async def _fill(url: str, keys: GatewayKeys, *, chain: str, count: int, close: bool = True) -> None:
    ledger = open_ledger(url, keys.ledger, chain_id=chain, checkpoint_every_records=10)
    await ledger.start()
    for i in range(count):
        await ledger.append(disclosure_draft(i, keys))
    if close:
        await ledger.close()


@pytest.fixture
async def filled(ledger_url: str, gateway_keys: GatewayKeys) -> str:
    # w0: records 1-10, checkpoint 11, 12-21, checkpoint 22, 23-32, checkpoint 33, 34-43, checkpoint 44.
    await _fill(ledger_url, gateway_keys, chain="w0", count=40)
    await _fill(ledger_url, gateway_keys, chain="w1", count=5)
    return ledger_url


async def _verify(url: str, keys: GatewayKeys, *heads: ExpectedHead) -> VerifyReport:
    return await verify_url(url, keys.ledger.verify_key, heads)


def _only_failure(report: VerifyReport) -> tuple[str, int, str]:
    assert not report.ok
    assert len(report.failures) == 1, report.summary()
    failure = report.failures[0]
    return failure.chain, failure.sequence, failure.reason


async def test_untouched_ledger_verifies(filled: str, gateway_keys: GatewayKeys) -> None:
    report = await _verify(filled, gateway_keys)
    assert report.ok, report.summary()
    assert report.records == 44 + 6
    assert "w0:44:" in report.summary()
    assert "w1:6:" in report.summary()


async def test_changed_field(filled: str, gateway_keys: GatewayKeys) -> None:
    async with Tamperer(filled) as t:
        await t.execute("UPDATE ledger_records SET partner = 'other' WHERE chain = 'w0' AND sequence = 17")
    chain, sequence, reason = _only_failure(await _verify(filled, gateway_keys))
    assert (chain, sequence) == ("w0", 17)
    assert "changed" in reason


async def test_changed_field_with_rechained_hashes_is_caught_by_the_next_checkpoint(
    filled: str, gateway_keys: GatewayKeys
) -> None:
    async with Tamperer(filled) as t:
        await t.execute("UPDATE ledger_records SET purpose = 'marketing' WHERE chain = 'w0' AND sequence = 17")
        await t.rechain("w0", 17)
    chain, sequence, reason = _only_failure(await _verify(filled, gateway_keys))
    assert (chain, sequence) == ("w0", 22)
    assert "signature" in reason


async def test_deleted_record_in_the_middle(filled: str, gateway_keys: GatewayKeys) -> None:
    async with Tamperer(filled) as t:
        await t.execute("DELETE FROM ledger_records WHERE chain = 'w1' AND sequence = 3")
    chain, sequence, reason = _only_failure(await _verify(filled, gateway_keys))
    assert (chain, sequence) == ("w1", 3)
    assert "deleted" in reason


async def test_inserted_record(filled: str, gateway_keys: GatewayKeys) -> None:
    async with Tamperer(filled) as t:
        records = await t.records("w0")
        # Make room at 17 (two steps, so no primary key collides mid-statement), then insert a record
        # that links correctly to 16 and carries a correct hash of its own.
        await t.execute("UPDATE ledger_records SET sequence = -(sequence + 1) WHERE chain = 'w0' AND sequence >= 17")
        await t.execute("UPDATE ledger_records SET sequence = -sequence WHERE chain = 'w0' AND sequence < 0")
        forged = dict(records[16], id="f" * 32, sequence=17, prev_hash=records[15]["hash"], partner="fake")
        forged["hash"] = record_hash(forged)
        await t.insert(forged)
    chain, sequence, reason = _only_failure(await _verify(filled, gateway_keys))
    assert (chain, sequence) == ("w0", 17)
    assert "inserted" in reason


async def test_two_records_swapped(filled: str, gateway_keys: GatewayKeys) -> None:
    async with Tamperer(filled) as t:
        await t.execute("UPDATE ledger_records SET sequence = -1 WHERE chain = 'w0' AND sequence = 26")
        await t.execute("UPDATE ledger_records SET sequence = 26 WHERE chain = 'w0' AND sequence = 27")
        await t.execute("UPDATE ledger_records SET sequence = 27 WHERE chain = 'w0' AND sequence = -1")
    chain, sequence, reason = _only_failure(await _verify(filled, gateway_keys))
    assert (chain, sequence) == ("w0", 26)
    assert "reordered" in reason


async def test_truncated_tail_against_the_last_signed_checkpoint(filled: str, gateway_keys: GatewayKeys) -> None:
    async with Tamperer(filled) as t:
        await t.execute("DELETE FROM ledger_records WHERE chain = 'w0' AND sequence >= 40")
    chain, sequence, reason = _only_failure(await _verify(filled, gateway_keys))
    assert (chain, sequence) == ("w0", 40)
    assert "truncated" in reason


async def test_truncated_tail_with_its_checkpoint_needs_the_expected_head(
    filled: str, gateway_keys: GatewayKeys
) -> None:
    report = await _verify(filled, gateway_keys)
    head = next(c for c in report.chains if c.chain == "w0")
    expected = ExpectedHead("w0", head.last_sequence, head.head_hash)
    async with Tamperer(filled) as t:
        await t.execute("DELETE FROM ledger_records WHERE chain = 'w0' AND sequence >= 42")
        await t.execute("DELETE FROM ledger_checkpoints WHERE chain = 'w0' AND sequence >= 42")
    # w1 was written after w0 stopped: its checkpoint signed w0's head, which catches the cut by itself.
    chain, sequence, reason = _only_failure(await _verify(filled, gateway_keys))
    assert (chain, sequence) == ("w0", 42)
    assert "but checkpoint w1:6 signed its head at 44" in reason
    chain, sequence, reason = _only_failure(await _verify(filled, gateway_keys, expected))
    assert (chain, sequence) == ("w0", 42)


async def test_latest_chain_deleted_whole_needs_the_expected_head(filled: str, gateway_keys: GatewayKeys) -> None:
    report = await _verify(filled, gateway_keys)
    head = next(c for c in report.chains if c.chain == "w1")
    expected = ExpectedHead("w1", head.last_sequence, head.head_hash)
    async with Tamperer(filled) as t:
        await t.execute("DELETE FROM ledger_records WHERE chain = 'w1'")
        await t.execute("DELETE FROM ledger_checkpoints WHERE chain = 'w1'")
    # Nothing written since signed w1: the ledger is exactly as before w1 ran (documented); the recorded
    # head catches it.
    assert (await _verify(filled, gateway_keys)).ok
    chain, sequence, reason = _only_failure(await _verify(filled, gateway_keys, expected))
    assert (chain, sequence) == ("w1", 1)
    assert "truncated" in reason


async def test_forged_checkpoint(filled: str, gateway_keys: GatewayKeys) -> None:
    async with Tamperer(filled) as t:
        await t.execute("UPDATE ledger_records SET detail = '{\"records_since_previous\":1}' "
                        "WHERE chain = 'w0' AND sequence = 22")
        await t.rechain("w0", 22, resign=Ed25519PrivateKey.generate())
    chain, sequence, reason = _only_failure(await _verify(filled, gateway_keys))
    assert (chain, sequence) == ("w0", 22)
    assert "forged" in reason


async def test_forged_checkpoint_copy(filled: str, gateway_keys: GatewayKeys) -> None:
    async with Tamperer(filled) as t:
        (copy,) = await t.fetch("SELECT record FROM ledger_checkpoints WHERE chain = 'w1' AND sequence = 6")
        await t.execute("DELETE FROM ledger_checkpoints WHERE chain = 'w1' AND sequence = 6")
        import orjson

        record = orjson.loads(copy[0])
        record["signature"] = sign_record(record, Ed25519PrivateKey.generate())
        record["hash"] = record_hash(record)
        await t.execute("INSERT INTO ledger_checkpoints (chain, sequence, record) VALUES (?, ?, ?)",
                        "w1", 6, orjson.dumps(record).decode())
    chain, sequence, reason = _only_failure(await _verify(filled, gateway_keys))
    assert (chain, sequence) == ("w1", 6)
    assert "forged" in reason


async def test_restored_older_copy_is_caught_with_the_newer_head(filled: str, gateway_keys: GatewayKeys) -> None:
    async with Tamperer(filled) as t:
        await t.execute("CREATE TABLE old_records AS SELECT * FROM ledger_records")
        await t.execute("CREATE TABLE old_checkpoints AS SELECT * FROM ledger_checkpoints")
    await _fill(filled, gateway_keys, chain="w0", count=5)
    newer = await _verify(filled, gateway_keys)
    head = next(c for c in newer.chains if c.chain == "w0")
    assert head.last_sequence == 50
    async with Tamperer(filled) as t:
        await t.execute("DELETE FROM ledger_records")
        await t.execute("DELETE FROM ledger_checkpoints")
        await t.execute("INSERT INTO ledger_records SELECT * FROM old_records")
        await t.execute("INSERT INTO ledger_checkpoints SELECT * FROM old_checkpoints")
    assert (await _verify(filled, gateway_keys)).ok  # an older copy is internally consistent
    chain, sequence, reason = _only_failure(
        await _verify(filled, gateway_keys, ExpectedHead("w0", head.last_sequence, head.head_hash))
    )
    assert (chain, sequence) == ("w0", 45)
    assert "older copy" in reason


async def test_expected_head_with_a_different_hash(filled: str, gateway_keys: GatewayKeys) -> None:
    chain, sequence, reason = _only_failure(await _verify(filled, gateway_keys, ExpectedHead("w1", 4, "ab" * 32)))
    assert (chain, sequence) == ("w1", 4)
    assert "expected head" in reason


async def test_registry_records_are_chained_like_the_rest(ledger_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="reg")
    await ledger.start()
    ref = gateway_keys.ledger.subject_ref("+82-10-1234-5678")
    await ledger.append(RecordDraft(kind="registry", action="consent_withdraw", subject_ref=ref, purpose="marketing",
                                    reason="subject request"))
    await ledger.close()
    assert (await _verify(ledger_url, gateway_keys)).ok
