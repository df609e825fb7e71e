"""Fixes from the last ledger review (F9, F10, N6): records sealed again after a failed commit commit on
their own, wait for a readable head instead of being reported lost, and a failed start() can be retried.
Each test drives a real SQLite file or PostgreSQL schema into the case the review found."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

import asyncpg
import pytest
from ledger_helpers import disclosure_draft

from gateway.cli.ledger import verify_url
from gateway.config import sqlite_path
from gateway.errors import LedgerUnavailable
from gateway.keys import GatewayKeys
from gateway.ledger import Ledger, LedgerQuery, RecordDraft, open_ledger
from gateway.ledger.lease import ChainInUse
from gateway.ledger.ledger import _REQUEUE_LIMIT
from gateway.ledger.sqlite_store import SqliteStore


def outcome(request_id: str) -> RecordDraft:
    return RecordDraft(kind="outcome", partner="acme", route="r", request_id=request_id, status=200)


async def refuse_in_store(url: str, request_id: str) -> None:
    """From now on the store refuses every row with `request_id` (a value it cannot store), whoever writes it."""
    if url.startswith("sqlite://"):
        with sqlite3.connect(sqlite_path(url)) as conn:
            conn.execute(f"CREATE TRIGGER refuse_poison BEFORE INSERT ON ledger_records "
                         f"WHEN NEW.request_id = '{request_id}' BEGIN SELECT RAISE(ABORT, 'refused'); END")
        return
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"""
            CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.request_id = '{request_id}' THEN RAISE EXCEPTION 'refused'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_poison BEFORE INSERT ON ledger_records
                FOR EACH ROW EXECUTE FUNCTION refuse_poison();""")
    finally:
        await conn.close()


async def chain_rows(ledger: Ledger) -> list[dict[str, Any]]:
    return [r for r in await ledger.query(LedgerQuery(limit=None)) if r["chain"] == "w0"]


# -- F10: a record the store always refuses fails only itself ------------------------------------------------


async def test_a_record_the_store_always_refuses_fails_no_other_requests_disclosure(
        ledger_url: str, gateway_keys: GatewayKeys) -> None:
    """F10: an outcome the store refuses every time fails the one commit it first rode in (with the
    disclosure it shared it with: nothing could tell it apart then); its retries commit on their own, so
    no later request's disclosure fails with it, whether appended one by one or many at once. It is
    reported lost once, and flush() and close() return."""
    ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    await refuse_in_store(ledger_url, "poison")
    lost: list[str] = []
    ledger.append_unawaited(outcome("poison"), on_failure=lambda: lost.append("poison"))
    ledger.append_unawaited(outcome("innocent"), on_failure=lambda: lost.append("innocent"))
    with pytest.raises(LedgerUnavailable):
        await ledger.append(disclosure_draft(1, gateway_keys))  # shares the poison's first commit
    # Many requests at once, while the poison's retries are due: before the fix they rode with it.
    together = await asyncio.gather(*(ledger.append(disclosure_draft(i, gateway_keys)) for i in range(2, 22)),
                                    return_exceptions=True)
    assert [r for r in together if isinstance(r, BaseException)] == []
    one_by_one = []
    for i in range(22, 26):
        ledger.append_unawaited(outcome(f"o-{i}"), on_failure=lambda: lost.append("later"))
        one_by_one.append(await ledger.append(disclosure_draft(i, gateway_keys)))
    await asyncio.wait_for(ledger.flush(), 10)
    rows = await chain_rows(ledger)
    await asyncio.wait_for(ledger.close(), 10)
    assert lost == ["poison"]
    stored = [r["request_id"] for r in rows if r["kind"] != "checkpoint"]
    assert stored == ["req-0", "innocent", *(f"req-{i}" for i in range(2, 22)),
                      *(x for i in range(22, 26) for x in (f"o-{i}", f"req-{i}"))], stored
    report = await verify_url(ledger_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_retries_that_fail_together_each_get_a_try_of_their_own(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """F10: the records of a failed commit are tried again together first; when that try fails too, they
    are split in halves until the record the store refuses is alone, so it is the only one reported lost,
    and the order of the others in the chain is their append order."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    await refuse_in_store(sqlite_url, "poison")
    lost: list[str] = []
    names = ["a", "b", "poison", "c", "d"]
    for name in names:
        ledger.append_unawaited(outcome(name), on_failure=lambda name=name: lost.append(name))
    with pytest.raises(LedgerUnavailable):
        await ledger.append(disclosure_draft(1, gateway_keys))
    await asyncio.wait_for(ledger.flush(), 10)
    assert (await ledger.append(disclosure_draft(2, gateway_keys))).sequence == 6
    rows = await chain_rows(ledger)
    await ledger.close()
    assert lost == ["poison"]
    assert [r["request_id"] for r in rows if r["kind"] != "checkpoint"] == ["req-0", "a", "b", "c", "d", "req-2"]
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


# -- F9: a head that cannot be re-read does not lose (or double) the records queued again --------------------


def failing_write(rows: Any, checkpoints: Any, sync: bool) -> None:
    """A SQLite store's write that fails every commit, as a broken disk would."""
    raise sqlite3.OperationalError("disk I/O error")


async def started_with_failing_writes(ledger: Ledger, gateway_keys: GatewayKeys) -> SqliteStore:
    """Starts `ledger` (SQLite), commits one disclosure, then makes every later commit fail
    (`failing_write`; `del store._write_on_thread` puts the real one back). Returns its store."""
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    store = ledger.store
    assert isinstance(store, SqliteStore)
    store._write_on_thread = failing_write  # type: ignore[method-assign]
    return store


def fail_first_head_reads(ledger: Ledger, failures: int, after_seconds: float = 0.0) -> list[int]:
    """The next `failures` head re-reads fail, each after `after_seconds` (at once: the store refuses, as
    PostgreSQL does while it restarts; later: a server that does not answer); later ones read the head.
    Returns a list that counts every re-read."""
    real = ledger.store.load_head
    reads: list[int] = []

    async def load_head(chain: str) -> Any:
        reads.append(1)
        if len(reads) <= failures:
            await asyncio.sleep(after_seconds)
            raise OSError("the head cannot be read")
        return await real(chain)

    ledger.store.load_head = load_head  # type: ignore[method-assign]
    return reads


async def test_an_outcome_of_a_commit_that_landed_is_not_lost_when_the_first_head_re_read_fails(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """F9: a commit lands but is reported failed; the outcome in it is queued again, and the head re-read
    that would tell fails once. The outcome is not reported lost (it is stored), and once the head can be
    read it is found stored and not written a second time; no request is needed for that."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    store = ledger.store
    assert isinstance(store, SqliteStore)
    real = store._write_on_thread

    def landed_yet_failed(rows: Any, checkpoints: Any, sync: bool) -> None:
        real(rows, checkpoints, sync)
        raise sqlite3.OperationalError("disk I/O error")  # the commit is on disk; the answer says otherwise

    store._write_on_thread = landed_yet_failed  # type: ignore[method-assign]
    reads = fail_first_head_reads(ledger, 1)
    lost: list[str] = []
    ledger.append_unawaited(outcome("late"), on_failure=lambda: lost.append("late"))
    try:
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(1, gateway_keys))
    finally:
        del store._write_on_thread
    await asyncio.wait_for(ledger.flush(), 10)
    assert len(reads) == 2  # one failed, one read the head that holds the outcome
    rows = await chain_rows(ledger)
    await ledger.close()
    assert lost == []
    assert [r["request_id"] for r in rows] == ["req-0", "late", "req-1"]
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_an_outcome_of_a_failed_commit_is_written_once_the_head_can_be_read_again(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """F9: the commit really failed and the first head re-read fails too: the outcome waits for a head that
    can be read and is then written (once), instead of being reported lost."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    store = await started_with_failing_writes(ledger, gateway_keys)
    reads = fail_first_head_reads(ledger, 1)
    lost: list[str] = []
    ledger.append_unawaited(outcome("kept"), on_failure=lambda: lost.append("kept"))
    try:
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(1, gateway_keys))
    finally:
        del store._write_on_thread
    await asyncio.wait_for(ledger.flush(), 10)
    rows = await chain_rows(ledger)
    await ledger.close()
    assert len(reads) == 2
    assert lost == []
    assert [r["request_id"] for r in rows] == ["req-0", "kept"]


async def test_records_kept_for_a_head_that_never_comes_back_are_reported_lost_once_and_close_returns(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """F9: the head stays unreadable. The records queued again wait through at most their retries of
    re-reads, then are reported lost once each; flush() and close() return, and nothing spins."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000,
                         commit_timeout_seconds=1.0)
    store = await started_with_failing_writes(ledger, gateway_keys)
    reads = fail_first_head_reads(ledger, 1_000_000)
    lost: list[str] = []
    ledger.append_unawaited(outcome("gone"), on_failure=lambda: lost.append("gone"))
    try:
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(1, gateway_keys))
        await asyncio.wait_for(ledger.flush(), 10)
        assert lost == ["gone"]
        assert len(reads) <= _REQUEUE_LIMIT
        await asyncio.sleep(0.3)
        assert len(reads) <= _REQUEUE_LIMIT  # nothing left to re-read for: no traffic, no spinning
        await asyncio.wait_for(asyncio.shield(ledger.close()), 10)
    finally:
        del store._write_on_thread
        await ledger.close()
    assert lost == ["gone"]


async def test_a_postgres_commit_cut_by_the_watchdog_is_not_reported_lost_when_the_head_re_read_fails(
        pg_url: str, gateway_keys: GatewayKeys) -> None:
    """F9 on PostgreSQL: the watchdog (1 s) cuts a commit the server still finishes (at 1.4 s); the first
    head re-read fails after 0.95 s (a server that does not answer, say), long after that commit ended. The
    outcome in that commit is stored: it is neither reported lost nor, once the head is read, written a
    second time."""
    from test_ledger_requeue_lease_review import slow_first_commit_of

    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=1.0,
                         checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    slow = await slow_first_commit_of(pg_url, "late", 1.4)
    reads = fail_first_head_reads(ledger, 1, after_seconds=0.95)
    try:
        lost: list[str] = []
        ledger.append_unawaited(outcome("late"), on_failure=lambda: lost.append("late"))
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(1, gateway_keys))
        await asyncio.wait_for(ledger.flush(), 10)
        rows = await chain_rows(ledger)
        await ledger.close()
    finally:
        await slow.close()
    assert len(reads) >= 2
    assert lost == []
    assert [r["request_id"] for r in rows] == ["req-0", "late", "req-1"]


# -- N6: a failed start() can be retried on the same ledger --------------------------------------------------


async def test_a_start_refused_for_a_leased_chain_can_be_retried_once_the_chain_is_free(
        ledger_url: str, gateway_keys: GatewayKeys) -> None:
    """N6: start() fails while another writer holds the chain; once it has let go, the same Ledger starts
    (before the fix the SQLite store was closed for good by the failed start)."""
    holder = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0")
    await holder.start()
    await holder.append(disclosure_draft(0, gateway_keys))
    waiting = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
    with pytest.raises(ChainInUse):
        await waiting.start()
    with pytest.raises(ChainInUse):
        await waiting.start()  # and again, still held
    await holder.close()
    await waiting.start()
    try:
        assert (await waiting.append(disclosure_draft(1, gateway_keys))).sequence == 3  # after req-0's checkpoint
    finally:
        await waiting.close()
    report = await verify_url(ledger_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_a_closed_ledger_refuses_to_start_again_clearly(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """N6: only a failed start() may be retried; a ledger that was closed (or is running) says so."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
    await ledger.start()
    with pytest.raises(RuntimeError, match="already started"):
        await ledger.start()
    await ledger.close()
    with pytest.raises(RuntimeError, match="new Ledger"):
        await ledger.start()


async def test_a_sqlite_store_closed_behind_a_hung_commit_never_lets_go_of_a_lease_it_took_since(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """N6: a store whose close() gave up on a hung writer thread is opened again; when the old thread
    finally closes its connection it lets go of its own lease only, never the one taken since."""
    store = SqliteStore(sqlite_path(sqlite_url), commit_timeout_seconds=0.2)
    await store.open()
    await store.claim_chain("w0", 0)
    release = threading.Event()
    hung = asyncio.ensure_future(store._on(store._writer_thread, release.wait))
    await store.close()  # gives up after 0.2 s; the thread still holds the chain
    await store.open()
    with pytest.raises(ChainInUse):
        await store.claim_chain("w0", 0)
    await store.claim_chain("w1", 0)
    release.set()
    await hung
    other = SqliteStore(sqlite_path(sqlite_url))
    await other.open()
    await other.claim_chain("w0", 5)  # free once the old thread has closed its connection
    with pytest.raises(ChainInUse):
        await other.claim_chain("w1", 0)  # still held by the reopened store
    await other.close()
    await store.close()


async def test_a_start_whose_store_could_not_open_can_be_retried(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """N6: another connection holds the SQLite write lock past the writer's lock wait while start() creates
    the schema; start() fails, gives back its connection, and starts once the lock is let go."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=0.3)
    await ledger.start()
    await ledger.close()
    hold = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None, check_same_thread=False)
    hold.execute("BEGIN IMMEDIATE")
    again = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=0.3)
    try:
        with pytest.raises(sqlite3.OperationalError):
            await again.start()
    finally:
        hold.execute("ROLLBACK")
        hold.close()
    await again.start()
    assert (await again.append(disclosure_draft(0, gateway_keys))).sequence == 1
    await again.close()


async def test_a_close_during_starts_wait_for_the_chain_ends_that_start_and_leaks_no_lease(
        ledger_url: str, gateway_keys: GatewayKeys) -> None:
    """close() while start() waits for the chain's lease (a shutdown during start-up): close() waits for
    that start to end, the start gives back what it took and says so, and the chain is free afterwards.
    Before, close() closed the store under the waiting claim: on SQLite the lease taken afterwards was
    never let go, on PostgreSQL start() succeeded after close() had returned."""
    holder = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0")
    await holder.start()
    waiting = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=5)
    start = asyncio.ensure_future(waiting.start())
    await asyncio.sleep(0.3)
    closing = asyncio.ensure_future(waiting.close())
    await asyncio.sleep(0.1)
    assert not closing.done()  # it waits for the start
    await holder.close()  # the chain is free: the waiting claim now succeeds
    with pytest.raises(RuntimeError, match="closed while it was starting"):
        await asyncio.wait_for(start, 10)
    await asyncio.wait_for(closing, 10)
    assert waiting._writer_task is None
    third = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0.5)
    await third.start()  # no lease left behind
    await third.close()
