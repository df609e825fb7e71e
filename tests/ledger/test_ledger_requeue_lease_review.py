"""Fixes from the review of the re-queue of unawaited records and of the chain lease
(/work/notes/review-lease.md, R1-R8): each test drives a real SQLite file or PostgreSQL schema into the
case the review found."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from ledger_helpers import disclosure_draft

from gateway.cli.ledger import verify_url
from gateway.config import sqlite_path
from gateway.errors import LedgerUnavailable
from gateway.keys import GatewayKeys
from gateway.ledger import LedgerQuery, RecordDraft, open_ledger
from gateway.ledger.lease import ChainInUse
from gateway.ledger.ledger import _REQUEUE_LIMIT
from gateway.ledger.sqlite_store import SqliteStore


def outcome(request_id: str) -> RecordDraft:
    return RecordDraft(kind="outcome", partner="acme", route="r", request_id=request_id, status=200)


async def test_a_record_the_store_always_refuses_is_given_up_after_its_retries(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """R1: an outcome the store refuses every time is sealed again at most _REQUEUE_LIMIT times, then
    reported lost once; the disclosures committed after that succeed, and flush() and close() return."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        conn.execute("CREATE TRIGGER refuse_poison BEFORE INSERT ON ledger_records WHEN NEW.request_id = 'poison' "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    lost: list[str] = []
    ledger.append_unawaited(outcome("poison"), on_failure=lambda: lost.append("poison"))
    results: list[str] = []
    for i in range(1, 9):
        try:
            await ledger.append(disclosure_draft(i, gateway_keys))
            results.append("ok")
        except LedgerUnavailable:
            results.append("refused")
    await asyncio.wait_for(ledger.flush(), 10)
    await asyncio.wait_for(ledger.close(), 10)
    assert lost == ["poison"]
    # The poison rode with at most the first 1 + _REQUEUE_LIMIT disclosures; every later one committed.
    assert results[1 + _REQUEUE_LIMIT:] == ["ok"] * (8 - 1 - _REQUEUE_LIMIT), results
    assert results.count("refused") <= 1 + _REQUEUE_LIMIT
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_outcomes_queued_again_from_two_failed_commits_keep_their_order_and_times(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """R4: another connection holds the write lock past the writer's busy wait while two submissions, each
    with an outcome, are in flight; both fail, and the outcomes are written later in their append order,
    each with its own append time."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=1.0,
                         checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    hold = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None, check_same_thread=False)
    hold.execute("BEGIN IMMEDIATE")
    try:
        ledger.append_unawaited(outcome("first"), on_failure=lambda: None)
        a = asyncio.ensure_future(ledger.append(disclosure_draft(1, gateway_keys)))
        await asyncio.sleep(0.2)  # the first submission is in the writer's lock wait (0.8 s)
        ledger.append_unawaited(outcome("second"), on_failure=lambda: None)
        b = asyncio.ensure_future(ledger.append(disclosure_draft(2, gateway_keys)))
        results = await asyncio.gather(a, b, return_exceptions=True)
        assert all(isinstance(r, LedgerUnavailable) for r in results), results
    finally:
        hold.execute("ROLLBACK")
        hold.close()
    while True:  # the ledger takes records again once it has re-read the head
        try:
            await ledger.append(disclosure_draft(3, gateway_keys))
            break
        except LedgerUnavailable:
            await asyncio.sleep(0.05)
    await ledger.flush()
    outcomes = [r for r in await ledger.query(LedgerQuery(kind="outcome")) if r["chain"] == "w0"]
    await ledger.close()
    assert [r["request_id"] for r in outcomes] == ["first", "second"]
    assert outcomes[0]["sequence"] < outcomes[1]["sequence"]
    assert outcomes[0]["time"] < outcomes[1]["time"]  # appended 0.2 s apart


async def test_a_symlinked_path_to_the_ledger_finds_the_same_lease(tmp_path: Path, gateway_keys: GatewayKeys) -> None:
    """R6: the lock file sits beside the real ledger file, however its path is spelled."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    ledger_file = real / "ledger.sqlite3"
    first = open_ledger(f"sqlite:///{ledger_file}", gateway_keys.ledger, chain_id="c1")
    await first.start()
    linked = tmp_path / "linked.sqlite3"
    linked.symlink_to(ledger_file)
    for spelling in (tmp_path / "alias" / "ledger.sqlite3", linked):
        second = open_ledger(f"sqlite:///{spelling}", gateway_keys.ledger, chain_id="c1", chain_wait_seconds=0)
        with pytest.raises(ChainInUse):
            await second.start()
    await first.close()


async def test_ledgers_in_two_postgres_schemas_do_not_hold_each_other_up(
        pg_url: str, postgres_url: str, gateway_keys: GatewayKeys) -> None:
    """R5: advisory locks are per database; the lease key covers the schema the ledger's tables are in."""
    schema = f"gwtest_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        sep = "&" if "?" in postgres_url else "?"
        other_url = f"{postgres_url}{sep}search_path={schema}"
        first = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0")
        await first.start()
        other = open_ledger(other_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
        await other.start()  # another schema: another ledger, not another writer of this chain
        await other.append(disclosure_draft(0, gateway_keys))
        same = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
        with pytest.raises(ChainInUse):
            await same.start()
        await other.close()
        await first.close()
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def test_a_sqlite_lease_is_kept_while_a_hung_commit_can_land_and_let_go_once_it_has(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """R7: close() gives up waiting for a hung commit; the chain stays leased until that commit has ended
    (it could still land), and is free the moment it has."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=0.3)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    store = ledger.store
    assert isinstance(store, SqliteStore)
    real = store._write_on_thread
    release = threading.Event()
    finished = threading.Event()

    def held_write(rows: Any, checkpoints: Any, sync: bool) -> None:
        release.wait()
        try:
            real(rows, checkpoints, sync)
        finally:
            finished.set()

    store._write_on_thread = held_write  # type: ignore[method-assign]
    try:
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(1, gateway_keys))
        await ledger.close()  # returns although the commit still hangs
        meanwhile = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
        with pytest.raises(ChainInUse):
            await meanwhile.start()
    finally:
        release.set()
    await asyncio.to_thread(finished.wait, 10)
    after = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=5)
    await after.start()
    await after.close()


async def test_a_start_that_cannot_read_the_head_lets_go_of_the_chain(
        ledger_url: str, gateway_keys: GatewayKeys) -> None:
    """R8: the lease and the store are given back when the head read fails after the lease was taken."""
    failing = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0")

    async def no_head(chain: str) -> Any:
        raise OSError("the head cannot be read")

    failing.store.load_head = no_head  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await failing.start()
    again = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
    await again.start()
    await again.close()


async def test_a_postgres_commit_cut_by_the_watchdog_is_waited_for_before_the_head_is_read(
        pg_url: str, gateway_keys: GatewayKeys) -> None:
    """R2: the watchdog cuts the client side of a commit the server is still running; the outcome in it is
    queued again, and the head is re-read only once that server session has ended, so the outcome is
    stored once (the commit landed), not sealed again beside it."""
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=1.0,
                         checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    slow = await asyncpg.connect(pg_url)
    try:
        # The first commit holding the outcome 'late' spends 1.6 s inside COMMIT (a deferred trigger standing in
        # for a slow WAL flush); later ones are fast.
        await slow.execute("""
            CREATE SEQUENCE once;
            CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.request_id = 'late' AND nextval('once') = 1 THEN PERFORM pg_sleep(1.6); END IF;
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON ledger_records DEFERRABLE INITIALLY DEFERRED
                FOR EACH ROW EXECUTE FUNCTION slow();""")
        lost: list[str] = []
        ledger.append_unawaited(outcome("late"), on_failure=lambda: lost.append("late"))
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(1, gateway_keys))
        while True:
            try:
                await ledger.append(disclosure_draft(2, gateway_keys))
                break
            except LedgerUnavailable:
                await asyncio.sleep(0.1)
        await ledger.flush()
        rows = [r for r in await ledger.query(LedgerQuery(limit=None)) if r["chain"] == "w0"]
        await ledger.close()
    finally:
        await slow.close()
    assert lost == []
    assert [r["request_id"] for r in rows if r["kind"] == "outcome"] == ["late"]


async def test_a_lost_postgres_lease_stops_writing_until_it_is_taken_again(
        pg_url: str, gateway_keys: GatewayKeys) -> None:
    """R3: when the lease's session ends, the server has let go of the chain: the ledger writes nothing more
    until it has the lease again, and refuses while another writer holds it."""
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    lease = ledger.store._lease  # type: ignore[attr-defined]
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.fetchval("SELECT pg_terminate_backend($1)", lease._conn.get_server_pid())
        while not lease.lost():
            await asyncio.sleep(0.01)
        rival = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
        await rival.start()  # the chain is free on the server: another writer takes it
        for i in range(1, 4):
            with pytest.raises(LedgerUnavailable):
                await ledger.append(disclosure_draft(i, gateway_keys))
        assert not ledger.writable()
        await rival.append(disclosure_draft(9, gateway_keys))
        await rival.close()
        recovered = None
        for _ in range(100):  # the rival is gone: the ledger takes the lease again and goes on
            try:
                recovered = await ledger.append(disclosure_draft(5, gateway_keys))
                break
            except LedgerUnavailable:
                await asyncio.sleep(0.05)
        assert recovered is not None
        await ledger.close()
    finally:
        await admin.close()
    stored = [r["request_id"] for r in await _rows(pg_url, gateway_keys) if r["kind"] == "disclosure"]
    assert stored == ["req-0", "req-9", "req-5"]


async def _rows(url: str, keys: GatewayKeys) -> list[dict[str, Any]]:
    reader = open_ledger(url, keys.ledger, chain_id="reader")
    await reader.start()
    try:
        return [r for r in await reader.query(LedgerQuery(limit=None)) if r["chain"] == "w0"]
    finally:
        await reader.close()
