"""An attacker with write access to the database but without the signing key (report-subjects F1): demoting
checkpoints to unsigned records and recomputing the hashes, deleting a whole chain, adding a fabricated
chain. Each was accepted (`ledger OK ... (signed through 0)`); each must fail now, on SQLite and PostgreSQL,
while legitimate ledgers (fresh, restarted, CLI-style short chains, pruned, a live writer) still verify."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import disclosure_draft
from test_ledger_tamper_detection import Tamperer

from gateway.cli.ledger import verify_url
from gateway.keys import GatewayKeys
from gateway.ledger import RecordDraft, open_ledger
from gateway.ledger.records import GENESIS_HASH, record_hash, seal
from gateway.ledger.verify import ExpectedHead, VerifyReport


async def _write(url: str, keys: GatewayKeys, chain: str, count: int, *, every: int = 5,
                 close: bool = True) -> object:
    ledger = open_ledger(url, keys.ledger, chain_id=chain, checkpoint_every_records=every)
    await ledger.start()
    for i in range(count):
        await ledger.append(disclosure_draft(i, keys))
    if close:
        await ledger.close()
    return ledger


async def _cli_change(url: str, keys: GatewayKeys) -> None:
    """What `gateway subject consent withdraw` writes: one registry record on its own short chain."""
    ledger = open_ledger(url, keys.ledger, chain_id="gw-subject-cli")
    await ledger.start()
    await ledger.append(RecordDraft(kind="registry", caller="cli", subject_ref=keys.ledger.subject_ref("user-1"),
                                    action="consent_withdraw", reason="subject-request"))
    await ledger.close()


async def _verify(url: str, keys: GatewayKeys, *, accept: tuple[ExpectedHead, ...] = ()) -> VerifyReport:
    return await verify_url(url, keys.ledger.verify_key, (), accept)


async def _reinsert_demoted(db: Tamperer, records: list[dict[str, Any]]) -> None:
    """rewrite.py's core: the records inserted again with every checkpoint turned into an unsigned outcome
    and every hash recomputed from the genesis hash (the caller deleted the originals)."""
    prev = GENESIS_HASH
    for record in records:
        if record["kind"] == "checkpoint":
            record["kind"] = "outcome"
            record.pop("signature")
            record.pop("detail")
        record["prev_hash"] = prev
        record.pop("hash")
        record["hash"] = prev = record_hash(record)
        await db.insert(record)


async def _forge_chain(db: Tamperer, keys: GatewayKeys) -> str:
    """forge_chain.py's core: a new chain `gw-old-replica` from the genesis hash, two back-dated unsigned
    registry records; returns its head hash."""
    prev = GENESIS_HASH
    for sequence, stamp in ((1, "2026-01-01T00:00:01.000000Z"), (2, "2026-01-01T00:00:02.000000Z")):
        sealed = seal(RecordDraft(kind="registry", caller="cli", subject_ref=keys.ledger.subject_ref("u"),
                                  action="consent_grant"),
                      record_id=f"{sequence:032x}", chain="gw-old-replica", sequence=sequence, time=stamp,
                      prev_hash=prev)
        prev = sealed.hash
        await db.insert(sealed.record)
    return prev


@pytest.fixture
async def deployed(ledger_url: str, gateway_keys: GatewayKeys) -> str:
    """A gateway chain that wrote before and after a CLI consent withdrawal (so its later checkpoints have
    seen the CLI chain), as in a deployment where the gateway keeps serving."""
    gateway = await _write(ledger_url, gateway_keys, "gw-main", 12, close=False)
    await _cli_change(ledger_url, gateway_keys)
    for i in range(8):
        await gateway.append(disclosure_draft(100 + i, gateway_keys))  # type: ignore[attr-defined]
    await gateway.close()  # type: ignore[attr-defined]
    return ledger_url


async def test_legitimate_ledger_verifies(deployed: str, gateway_keys: GatewayKeys) -> None:
    report = await _verify(deployed, gateway_keys)
    assert report.ok, report.summary()
    assert "signed through" not in report.summary()  # every chain ends in a signed checkpoint


async def test_demoted_checkpoints_with_recomputed_hashes_fail(deployed: str, gateway_keys: GatewayKeys) -> None:
    # rewrite.py: change a record, turn every checkpoint into an unsigned record, recompute every hash and
    # delete the checkpoint copies.
    async with Tamperer(deployed) as db:
        records = await db.records("gw-main")
        await db.execute("DELETE FROM ledger_records WHERE chain = ?", "gw-main")
        await db.execute("DELETE FROM ledger_checkpoints WHERE chain = ?", "gw-main")
        next(record for record in records if record["sequence"] == 3)["partner"] = "someone-else"
        await _reinsert_demoted(db, records)
    report = await _verify(deployed, gateway_keys)
    assert not report.ok
    failure = next(f for f in report.failures if f.chain == "gw-main")
    # The CLI chain's checkpoint signed gw-main's head as it was; and nothing is signed any more anyway.
    assert "rewritten" in failure.reason or "covered by no signed checkpoint" in failure.reason, failure
    assert "someone-else" not in report.summary()


async def test_one_demoted_checkpoint_breaks_the_next_ones_count(deployed: str, gateway_keys: GatewayKeys) -> None:
    async with Tamperer(deployed) as db:
        records = await db.records("gw-main")
        first = next(r for r in records if r["kind"] == "checkpoint")
        await db.execute("DELETE FROM ledger_checkpoints WHERE chain = ? AND sequence = ?", "gw-main",
                         first["sequence"])
        await db.execute("DELETE FROM ledger_records WHERE chain = ? AND sequence >= ?", "gw-main",
                         first["sequence"])
        prev = first["prev_hash"]
        for record in (r for r in records if r["sequence"] >= first["sequence"]):
            if record is first:
                record["kind"] = "outcome"
                record.pop("signature")
                record.pop("detail")
            record["prev_hash"] = prev
            record.pop("hash")
            record["hash"] = prev = record_hash(record)
            await db.insert(record)
    report = await _verify(deployed, gateway_keys)
    failure = next(f for f in report.failures if f.chain == "gw-main")
    # The next signed checkpoint signed the old prev_hash: it no longer verifies.
    second = next(r for r in records if r["kind"] == "checkpoint" and r["sequence"] > first["sequence"])
    assert failure.sequence == second["sequence"], failure
    assert "signature does not verify" in failure.reason


async def test_signed_record_count_catches_a_removed_checkpoint(deployed: str, gateway_keys: GatewayKeys) -> None:
    # Even a rewrite whose later checkpoints were signed again (as if with the key) is caught by the count
    # each checkpoint signed: drop the first checkpoint, renumber and rechain the rest, re-sign the others.
    import orjson

    from gateway.ledger.records import sign_record

    key = gateway_keys.ledger.signing_key
    assert key is not None
    async with Tamperer(deployed) as db:
        records = await db.records("gw-main")
        first = next(r for r in records if r["kind"] == "checkpoint")
        await db.execute("DELETE FROM ledger_records WHERE chain = ? AND sequence >= ?", "gw-main", first["sequence"])
        await db.execute("DELETE FROM ledger_checkpoints WHERE chain = ?", "gw-main")
        prev = first["prev_hash"]
        for record in (r for r in records if r["sequence"] > first["sequence"]):
            record["sequence"] -= 1
            record["prev_hash"] = prev
            record.pop("hash")
            if record["kind"] == "checkpoint":
                record.pop("signature")
                record["signature"] = sign_record(record, key)
            record["hash"] = prev = record_hash(record)
            await db.insert(record)
        for record in records:
            if record["kind"] == "checkpoint" and record is not first:
                await db.execute("INSERT INTO ledger_checkpoints (chain, sequence, record) VALUES (?, ?, ?)",
                                 "gw-main", record["sequence"], orjson.dumps(record).decode())
    report = await _verify(deployed, gateway_keys)
    failure = next(f for f in report.failures if f.chain == "gw-main")
    second = next(r for r in records if r["kind"] == "checkpoint" and r is not first)
    assert failure.sequence == second["sequence"], failure
    assert "a checkpoint was removed, demoted to an unsigned record or renumbered" in failure.reason


async def test_deleted_chain_fails(deployed: str, gateway_keys: GatewayKeys) -> None:
    # drop_chain.py: the CLI chain (the consent withdrawal) and its checkpoint copies deleted.
    async with Tamperer(deployed) as db:
        await db.execute("DELETE FROM ledger_records WHERE chain = ?", "gw-subject-cli")
        await db.execute("DELETE FROM ledger_checkpoints WHERE chain = ?", "gw-subject-cli")
    report = await _verify(deployed, gateway_keys)
    assert not report.ok
    (failure,) = report.failures
    assert failure.chain == "gw-subject-cli"
    assert failure.sequence == 1
    assert "chain ends at 0 but checkpoint gw-main:" in failure.reason
    assert "the whole chain deleted" in failure.reason


async def test_fabricated_chain_fails(deployed: str, gateway_keys: GatewayKeys) -> None:
    # forge_chain.py: a new chain from the genesis hash with back-dated unsigned records.
    async with Tamperer(deployed) as db:
        prev = await _forge_chain(db, gateway_keys)
    report = await _verify(deployed, gateway_keys)
    (failure,) = report.failures
    assert failure.chain == "gw-old-replica"
    assert failure.sequence == 1
    assert "covered by no signed checkpoint" in failure.reason
    assert f"--accept-unsigned gw-old-replica:2:{prev}" in failure.reason


async def test_fabricated_recent_chain_fails_without_a_live_writer(deployed: str, gateway_keys: GatewayKeys) -> None:
    from gateway.ledger.records import format_time

    async with Tamperer(deployed) as db:
        sealed = seal(RecordDraft(kind="registry", caller="cli", subject_ref=gateway_keys.ledger.subject_ref("u"),
                                  action="consent_grant"),
                      record_id="1" * 32, chain="gw-other", sequence=1, time=format_time(datetime.now(UTC)),
                      prev_hash=GENESIS_HASH)
        await db.insert(sealed.record)
    report = await _verify(deployed, gateway_keys)
    (failure,) = report.failures
    assert failure.chain == "gw-other"
    assert "no writer holds the chain now" in failure.reason


_CRASHING_WRITER = """
import asyncio, os, sys
from pathlib import Path
from typing import Any
from gateway.keys import load_keys
from gateway.ledger import RecordDraft, open_ledger

async def main():
    keys = load_keys(Path(sys.argv[2]), dev_mode=False)
    ledger = open_ledger(sys.argv[1], keys.ledger, chain_id="gw-live", checkpoint_every_records=5)
    await ledger.start()
    for i in range(3):
        await ledger.append(RecordDraft(kind="outcome", partner="p", route="r", status=200))
    os._exit(0)  # no close(): no final checkpoint, the lease ends with the process

asyncio.run(main())
"""


async def test_live_writer_tail_verifies_and_crashed_tail_needs_acceptance(
        ledger_url: str, gateway_keys: GatewayKeys, keys_dir: Path) -> None:
    ledger = await _write(ledger_url, gateway_keys, "gw-live", 7, every=5, close=False)
    report = await _verify(ledger_url, gateway_keys)
    assert report.ok, report.summary()
    assert "unsigned tail: live writer" in report.summary()
    await ledger.close()  # type: ignore[attr-defined]
    # A writer that crashes (killed after its appends, before any checkpoint): its tail stays unsigned.
    crash = await asyncio.create_subprocess_exec(sys.executable, "-c", _CRASHING_WRITER, ledger_url, str(keys_dir))
    assert await crash.wait() == 0
    report = await _verify(ledger_url, gateway_keys)
    (failure,) = report.failures
    assert failure.chain == "gw-live"
    assert failure.sequence == 10
    assert "no writer holds the chain now" in failure.reason
    assert "--accept-unsigned gw-live:12:" in failure.reason
    accept = ExpectedHead.parse(failure.reason.rsplit("--accept-unsigned ", 1)[1])
    report = await _verify(ledger_url, gateway_keys, accept=(accept,))
    assert report.ok, report.summary()
    assert "unsigned tail: accepted" in report.summary()
    # The restarted writer signs the crashed tail with its next checkpoint.
    await _write(ledger_url, gateway_keys, "gw-live", 1)
    report = await _verify(ledger_url, gateway_keys)
    assert report.ok, report.summary()


async def test_old_unsigned_tail_of_a_live_writer_fails(ledger_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = await _write(ledger_url, gateway_keys, "gw-live", 2, every=5, close=False)
    try:
        report = await verify_url(ledger_url, gateway_keys.ledger.verify_key)
        assert report.ok, report.summary()
        from gateway.cli.ledger import open_store
        from gateway.ledger.verify import verify_snapshot

        store = open_store(ledger_url, create=False)
        await store.open()
        try:
            async with store.snapshot() as snap:
                report = await verify_snapshot(snap, gateway_keys.ledger.verify_key, live=store.chain_live,
                                               now=datetime.now(UTC) + timedelta(hours=1))
        finally:
            await store.close()
        (failure,) = report.failures
        assert "older than its writer leaves unsigned" in failure.reason
    finally:
        await ledger.close()  # type: ignore[attr-defined]


async def test_restart_and_pruned_ledger_verify(ledger_url: str, gateway_keys: GatewayKeys) -> None:
    await _write(ledger_url, gateway_keys, "gw-main", 12)
    await _cli_change(ledger_url, gateway_keys)
    await _write(ledger_url, gateway_keys, "gw-main", 3)  # restarted
    await asyncio.sleep(0.01)
    cut = datetime.now(UTC)
    await _write(ledger_url, gateway_keys, "gw-main", 4)
    report = await _verify(ledger_url, gateway_keys)
    assert report.ok, report.summary()
    admin = open_ledger(ledger_url, gateway_keys.ledger, chain_id="gw-admin")
    await admin.start()
    await admin.prune(cut)
    await admin.close()
    report = await _verify(ledger_url, gateway_keys)
    assert report.ok, report.summary()


async def test_idle_gateway_signs_a_cli_chain_and_idle_writers_do_not_sign_each_other_forever(
        ledger_url: str, gateway_keys: GatewayKeys) -> None:
    writers = [open_ledger(ledger_url, gateway_keys.ledger, chain_id=f"gw-w{n}", checkpoint_every_seconds=0.2)
               for n in range(2)]
    for writer in writers:
        await writer.start()
        await writer.append(disclosure_draft(1, gateway_keys))
    try:
        await _cli_change(ledger_url, gateway_keys)
        await asyncio.sleep(1.5)  # several periods: each idle writer signs the CLI chain (and once the other)
        from gateway.ledger import LedgerQuery

        counts = [len(await writers[0].query(LedgerQuery(kind="checkpoint", chain=f"gw-w{n}"))) for n in range(2)]
        await asyncio.sleep(1.0)
        again = [len(await writers[0].query(LedgerQuery(kind="checkpoint", chain=f"gw-w{n}"))) for n in range(2)]
        assert again == counts, "idle writers keep signing each other's checkpoints"
    finally:
        for writer in writers:
            await writer.close()
    async with Tamperer(ledger_url) as db:
        await db.execute("DELETE FROM ledger_records WHERE chain = ?", "gw-subject-cli")
        await db.execute("DELETE FROM ledger_checkpoints WHERE chain = ?", "gw-subject-cli")
    report = await _verify(ledger_url, gateway_keys)
    (failure,) = report.failures
    assert failure.chain == "gw-subject-cli"
    assert "the whole chain deleted" in failure.reason


# -- review rv-verify R1/R1b: a chain pruned whole continues from its prune anchor ------------------------

async def _prune_all(url: str, keys: GatewayKeys) -> None:
    await asyncio.sleep(0.01)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.01)
    admin = open_ledger(url, keys.ledger, chain_id="gw-admin")
    await admin.start()
    await admin.prune(cut)
    await admin.close()


async def test_chain_pruned_whole_continues_after_its_anchor(ledger_url: str, gateway_keys: GatewayKeys) -> None:
    # The subject CLI chain is pruned whole by a routine prune; the next command used to start it again at
    # 1, a running gateway signed that new head, and verify then failed for ever ("pruned anchor differs").
    gateway = await _write(ledger_url, gateway_keys, "gw-main", 3, close=False)
    await _cli_change(ledger_url, gateway_keys)
    before = next(c for c in (await _verify(ledger_url, gateway_keys)).chains if c.chain == "gw-subject-cli")
    recorded = ExpectedHead("gw-subject-cli", before.last_sequence, before.head_hash)
    await _prune_all(ledger_url, gateway_keys)
    await _cli_change(ledger_url, gateway_keys)
    await gateway.append(disclosure_draft(50, gateway_keys))  # type: ignore[attr-defined]
    await gateway.close()  # type: ignore[attr-defined]  # its final checkpoint signs the CLI chain's newest one
    report = await verify_url(ledger_url, gateway_keys.ledger.verify_key, (recorded,))
    assert report.ok, report.summary()
    cli = next(c for c in report.chains if c.chain == "gw-subject-cli")
    assert cli.first_sequence == before.last_sequence + 1  # sequences never repeat
    assert cli.verified_from == before.last_sequence
    # And a later prune still finds a ledger that verifies, and so on.
    await _prune_all(ledger_url, gateway_keys)
    await _cli_change(ledger_url, gateway_keys)
    await _write(ledger_url, gateway_keys, "gw-main", 1)
    report = await verify_url(ledger_url, gateway_keys.ledger.verify_key, (recorded,))
    assert report.ok, report.summary()


async def test_deleting_a_chain_that_came_back_after_a_prune_fails(ledger_url: str, gateway_keys: GatewayKeys) -> None:
    # R1b: a chain restarted at 1 after a prune sat below its old anchor, where signed heads were not checked.
    await _write(ledger_url, gateway_keys, "gw-a", 10)
    await _prune_all(ledger_url, gateway_keys)
    await _write(ledger_url, gateway_keys, "gw-a", 3)
    await _write(ledger_url, gateway_keys, "gw-b", 1)  # its checkpoints sign gw-a's newest checkpoint
    report = await _verify(ledger_url, gateway_keys)
    assert report.ok, report.summary()
    async with Tamperer(ledger_url) as db:
        await db.execute("DELETE FROM ledger_records WHERE chain = ?", "gw-a")
        await db.execute("DELETE FROM ledger_checkpoints WHERE chain = ?", "gw-a")
    report = await _verify(ledger_url, gateway_keys)
    (failure,) = report.failures
    assert failure.chain == "gw-a"
    assert "the whole chain deleted" in failure.reason


async def test_a_chain_that_restarted_at_one_after_a_prune_still_verifies(
        ledger_url: str, gateway_keys: GatewayKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ledgers written before the fix: the returning writer started the pruned chain at 1 again.
    from gateway.ledger import postgres_store, sqlite_store
    from gateway.ledger.store import ChainHead

    gateway = await _write(ledger_url, gateway_keys, "gw-main", 3, close=False)
    await _cli_change(ledger_url, gateway_keys)
    await _prune_all(ledger_url, gateway_keys)
    for module in (sqlite_store, postgres_store):
        monkeypatch.setattr(module, "head_after_prune", lambda chain, details: ChainHead())
    await _cli_change(ledger_url, gateway_keys)
    await gateway.close()  # type: ignore[attr-defined]
    report = await _verify(ledger_url, gateway_keys)
    assert report.ok, report.summary()
    assert next(c for c in report.chains if c.chain == "gw-subject-cli").first_sequence == 1


# -- review rv-verify R0: a writer signs other chains' checkpoints, never records nobody signed -----------

async def test_a_later_writer_does_not_sign_a_fabricated_chain(deployed: str, gateway_keys: GatewayKeys) -> None:
    async with Tamperer(deployed) as db:
        await _forge_chain(db, gateway_keys)
    # Any writer that runs afterwards (here one that writes and stops cleanly, and an idle one whose timer
    # sees the new chain) used to sign the forged head, and verify then passed for good.
    await _write(deployed, gateway_keys, "gw-other", 2)
    idle = open_ledger(deployed, gateway_keys.ledger, chain_id="gw-idle", checkpoint_every_seconds=0.1)
    await idle.start()
    await asyncio.sleep(0.5)
    await idle.close()
    report = await _verify(deployed, gateway_keys)
    (failure,) = report.failures
    assert failure.chain == "gw-old-replica"
    assert "covered by no signed checkpoint" in failure.reason


async def test_a_later_writer_does_not_sign_a_rewritten_chain(deployed: str, gateway_keys: GatewayKeys) -> None:
    # rewrite.py (every checkpoint demoted, a record changed, copies deleted) and drop_chain.py, then
    # another replica runs: it used to sign the rewritten head.
    async with Tamperer(deployed) as db:
        records = await db.records("gw-main")
        await db.execute("DELETE FROM ledger_records WHERE chain IN (?, ?)", "gw-main", "gw-subject-cli")
        await db.execute("DELETE FROM ledger_checkpoints WHERE chain IN (?, ?)", "gw-main", "gw-subject-cli")
        await _reinsert_demoted(db, records)
    await _write(deployed, gateway_keys, "gw-other", 1)
    report = await _verify(deployed, gateway_keys)
    failure = next(f for f in report.failures if f.chain == "gw-main")
    assert "covered by no signed checkpoint" in failure.reason, failure


async def test_a_restarted_writer_does_not_sign_the_tail_it_found_as_its_own(
        ledger_url: str, gateway_keys: GatewayKeys) -> None:
    # R0 (c): the chain rewritten (checkpoints demoted, a partner changed, back-dated), then its own gateway
    # restarts: its first checkpoint used to count the rewritten records as its own and verify passed.
    deployed = ledger_url
    await _write(deployed, gateway_keys, "gw-main", 12)
    async with Tamperer(deployed) as db:
        records = await db.records("gw-main")
        await db.execute("DELETE FROM ledger_records WHERE chain = ?", "gw-main")
        await db.execute("DELETE FROM ledger_checkpoints WHERE chain = ?", "gw-main")
        prev = GENESIS_HASH
        for record in records:
            if record["kind"] == "checkpoint":
                record["kind"] = "outcome"
                record.pop("signature")
                record.pop("detail")
            record["time"] = f"2026-01-01T00:00:{record['sequence']:02d}.000000Z"
            record["prev_hash"] = prev
            record.pop("hash")
            record["hash"] = prev = record_hash(record)
            await db.insert(record)
    await _write(deployed, gateway_keys, "gw-main", 1)
    report = await _verify(deployed, gateway_keys)
    failure = next(f for f in report.failures if f.chain == "gw-main")
    assert failure.sequence == 1, failure
    assert f"records 1-{len(records)} were past the chain's last checkpoint when its writer started" in failure.reason
    assert f"--accept-unsigned gw-main:{len(records)}:{prev}" in failure.reason
    # The auditor who checked them (a writer that crashed long ago) accepts exactly that tail.
    report = await _verify(deployed, gateway_keys, accept=(ExpectedHead("gw-main", len(records), prev),))
    assert report.ok, report.summary()
    # Marked in the checkpoint that covered them, and only there.
    async with Tamperer(deployed) as db:
        checkpoints = [r for r in await db.records("gw-main") if r["kind"] == "checkpoint"]
    assert checkpoints[0]["detail"]["inherited"]["records"] == len(records)
    assert all("inherited" not in c["detail"] for c in checkpoints[1:])


async def test_verify_during_a_clean_shutdown_judges_liveness_as_of_its_snapshot(
        ledger_url: str, gateway_keys: GatewayKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    # R4: the writer stops cleanly after verify's snapshot was taken and before its tail is judged (a deploy
    # during a long walk): its final checkpoint is not in the snapshot and its lease is already gone.
    from gateway.cli import ledger as cli_ledger

    ledger = await _write(ledger_url, gateway_keys, "gw-live", 7, every=5, close=False)
    real = cli_ledger.verify_snapshot

    async def stop_mid_walk(snap, *args, **kwargs):  # type: ignore[no-untyped-def]
        await snap.fetch_checkpoints()  # the snapshot's read transaction has its view from here on
        await ledger.close()  # type: ignore[attr-defined]
        return await real(snap, *args, **kwargs)

    monkeypatch.setattr(cli_ledger, "verify_snapshot", stop_mid_walk)
    report = await _verify(ledger_url, gateway_keys)
    assert report.ok, report.summary()
    assert "unsigned tail: live writer" in report.summary()  # the snapshot's view: the stop came after
