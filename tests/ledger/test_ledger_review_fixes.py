"""Fixes from the review of the pipelined group commit (/work/notes/review-ledger.md, F1-F5): each test
drives a real SQLite file into the case the review found and checks the ledger's answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from typing import Any

import pytest
from ledger_helpers import RecordingObserver, disclosure_draft

from gateway.cli.ledger import verify_url
from gateway.config import sqlite_path
from gateway.errors import LedgerUnavailable
from gateway.keys import GatewayKeys
from gateway.ledger import Ledger, LedgerQuery, open_ledger
from gateway.ledger.sqlite_store import SqliteStore


def stored_sequences(url: str, chain: str = "w0") -> list[int]:
    """What another connection sees as committed."""
    with sqlite3.connect(sqlite_path(url)) as conn:
        rows = conn.execute("SELECT sequence FROM ledger_records WHERE chain = ? ORDER BY sequence", (chain,))
        return [sequence for (sequence,) in rows]


async def sqlite_ledger(sqlite_url: str, gateway_keys: GatewayKeys, *, first_record: bool = True,
                        **options: Any) -> tuple[Ledger, SqliteStore]:
    """A started ledger on chain w0 (no checkpoint by count unless asked) and its SQLite store; with
    `first_record`, req-0 already committed."""
    options.setdefault("checkpoint_every_records", 10_000)
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", **options)
    await ledger.start()
    if first_record:
        await ledger.append(disclosure_draft(0, gateway_keys))
    store = ledger.store
    assert isinstance(store, SqliteStore)
    return ledger, store


async def test_one_transaction_of_several_submissions_is_reported_once(sqlite_url: str,
                                                                       gateway_keys: GatewayKeys) -> None:
    """F5: the store groups a transaction's submissions by their callback; each transaction is one
    observer report carrying all its rows."""
    observer = RecordingObserver()
    ledger, store = await sqlite_ledger(sqlite_url, gateway_keys, observer=observer, first_record=False)
    real = store._write_batch
    gate = threading.Event()
    entered = threading.Event()
    transactions: list[int] = []

    def write_batch(batch: list[Any]) -> None:
        transactions.append(len(batch))
        if len(transactions) == 1:
            entered.set()
            gate.wait()  # hold the first commit so the next five submissions queue behind it
        real(batch)

    store._writer_thread._write_batch = write_batch
    try:
        first = asyncio.ensure_future(ledger.append(disclosure_draft(0, gateway_keys)))
        # The writer thread holds the first commit (on a loaded machine it may not have taken it off its queue
        # when the loop has already submitted it: the next submission would then join its transaction).
        while not entered.is_set():
            await asyncio.sleep(0.001)
        later = []
        for i in range(1, 6):  # five submissions, one per loop turn
            later.append(asyncio.ensure_future(ledger.append(disclosure_draft(i, gateway_keys))))
            while len(ledger._in_flight) < i + 1:
                await asyncio.sleep(0.001)
    finally:
        gate.set()
    await asyncio.gather(first, *later)
    await ledger.close()
    assert transactions[:2] == [1, 5]
    # The final checkpoint at close is a transaction of its own (one row).
    assert observer.batches == [1, 5, 1]


async def test_a_submission_the_store_refused_to_take_is_settled_once(sqlite_url: str,
                                                                      gateway_keys: GatewayKeys) -> None:
    """F3: store.submit() raising fails the batch once; the watchdog does not fail it again, and the
    settled count does not run ahead of the queued count (flush() and query() rely on it)."""
    ledger, store = await sqlite_ledger(sqlite_url, gateway_keys, commit_timeout_seconds=0.3, first_record=False)
    real = store.submit
    calls = 0

    def submit(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the store could not take it")
        real(*args)

    store.submit = submit  # type: ignore[method-assign]
    failures: list[int] = []
    refusal = disclosure_draft(1, gateway_keys)._replace(
        kind="refusal", fields_sent=None, fields_transformed=None, fields_dropped=None, body_digest=None,
        latency_ms=None, status=503, reason="ledger-commit-failed")
    ledger.append_unawaited(refusal, on_failure=lambda: failures.append(1))
    with pytest.raises(LedgerUnavailable):
        await ledger.append(disclosure_draft(2, gateway_keys))
    assert not ledger._in_flight
    # close() drains: without the fix it waits for the watchdog, which fails the batch a second time.
    await ledger.close()
    # The refusal nobody waits for never reached the store: it is sealed again after the re-read, once.
    assert failures == []
    assert ledger._settled_total == ledger._queued_total
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_records WHERE kind = 'refusal'").fetchone() == (1,)


async def test_a_write_refuses_a_transaction_left_open_on_the_writer_connection(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """F4: an autocommit INSERT inside a leftover transaction would not commit, yet be reported durable.
    The write is refused (503), the leftover transaction rolled back, and the chain goes on at head + 1."""
    ledger, store = await sqlite_ledger(sqlite_url, gateway_keys)
    writer = store._writer
    assert writer is not None
    await store._on(store._writer_thread, writer.execute, "BEGIN IMMEDIATE")
    with pytest.raises(LedgerUnavailable):
        await ledger.append(disclosure_draft(1, gateway_keys))
    assert not writer.in_transaction
    assert stored_sequences(sqlite_url) == [1]
    after = await ledger.append(disclosure_draft(2, gateway_keys))
    assert after.sequence == 2
    assert stored_sequences(sqlite_url) == [1, 2]
    # The head read rolls a leftover transaction back too: its rows are not the durable head.
    await store._on(store._writer_thread, writer.execute, "BEGIN IMMEDIATE")
    head = await store.load_head("w0")
    assert head.sequence == 2
    assert not writer.in_transaction
    await ledger.close()


async def test_a_commit_the_watchdog_failed_that_lands_later_is_logged_and_counted(
        sqlite_url: str, gateway_keys: GatewayKeys, caplog: pytest.LogCaptureFixture) -> None:
    """F1: the watchdog refuses a hung commit's request; when the commit lands after all, the ledger says
    so (a warning naming chain, sequences and record ids, and the observer's late count) and reports no
    empty commit; the chain goes on after it."""
    caplog.set_level(logging.WARNING, logger="gateway.ledger")
    observer = RecordingObserver()
    ledger, store = await sqlite_ledger(sqlite_url, gateway_keys, commit_timeout_seconds=0.3, observer=observer)
    real = store._write_on_thread
    release = threading.Event()

    def held_write(rows: Any, checkpoints: Any, sync: bool) -> None:
        release.wait()  # a commit that hangs (an I/O stall) and then lands
        real(rows, checkpoints, sync)

    store._write_on_thread = held_write  # type: ignore[method-assign]
    try:
        with pytest.raises(LedgerUnavailable) as refused:
            await ledger.append(disclosure_draft(1, gateway_keys))
        assert refused.value.reason == "ledger-commit-timeout"
    finally:
        release.set()
    # Queued behind the hung write on the writer thread: answered once it has landed and been reported.
    await store._on(store._writer_thread, lambda: None)
    del store._write_on_thread
    assert stored_sequences(sqlite_url) == [1, 2]
    late = [r.getMessage() for r in caplog.records if "landed after all" in r.getMessage()]
    assert len(late) == 1
    assert "chain w0 sequences 2-2" in late[0]
    landed = await ledger.query(LedgerQuery(chain="w0"))
    assert landed[-1]["id"] in late[0]
    assert observer.late == [1]
    assert 0 not in observer.batches
    after = await ledger.append(disclosure_draft(2, gateway_keys))
    assert after.sequence == 3
    await ledger.close()


async def test_an_outcome_in_a_commit_the_watchdog_failed_that_lands_later_is_not_written_twice(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """An outcome riding in a hung commit is queued again when the watchdog gives up on it; the commit
    then lands, the re-read head is its last row (same sequence and hash), so the outcome is already
    stored: it is not sealed a second time, and not reported lost."""
    ledger, store = await sqlite_ledger(sqlite_url, gateway_keys, commit_timeout_seconds=0.3)
    real = store._write_on_thread
    release = threading.Event()

    def held_write(rows: Any, checkpoints: Any, sync: bool) -> None:
        release.wait()  # a commit that hangs (an I/O stall) and then lands
        real(rows, checkpoints, sync)

    lost: list[int] = []
    outcome = disclosure_draft(0, gateway_keys)._replace(
        kind="outcome", request_id="outcome-0", fields_sent=None, fields_transformed=None, fields_dropped=None,
        body_digest=None, status=200)
    store._write_on_thread = held_write  # type: ignore[method-assign]
    try:
        ledger.append_unawaited(outcome, on_failure=lambda: lost.append(1))
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(1, gateway_keys))
    finally:
        release.set()
    await store._on(store._writer_thread, lambda: None)
    del store._write_on_thread
    after = await ledger.append(disclosure_draft(2, gateway_keys))
    assert after.sequence == 4  # after req-0, the outcome and req-1 that landed late
    await ledger.close()
    assert lost == []
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        rows = conn.execute("SELECT kind, request_id FROM ledger_records WHERE chain = 'w0' AND kind != 'checkpoint' "
                            "ORDER BY sequence").fetchall()
    assert rows == [("disclosure", "req-0"), ("outcome", "outcome-0"), ("disclosure", "req-1"),
                    ("disclosure", "req-2")]
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_a_lock_held_past_the_watchdog_ends_in_a_rollback_not_a_late_commit(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """F1: another connection (a prune, the subject registry, another worker) holds the write lock past
    the commit timeout, then lets go. The writer's busy timeout is below the commit timeout, so its wait
    ends in a rollback: the refused request's record never lands later."""
    ledger, store = await sqlite_ledger(sqlite_url, gateway_keys, commit_timeout_seconds=0.5)
    other = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(1, gateway_keys))
        # The writer thread is free once its lock wait has ended; the bound only keeps a regression (a
        # 30 s busy timeout) from holding the test: the lock is let go either way, then the write may land.
        idle = asyncio.ensure_future(store._on(store._writer_thread, lambda: None))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(idle), 5)
    finally:
        other.execute("COMMIT")
        other.close()
    await idle
    assert stored_sequences(sqlite_url) == [1]
    after = await ledger.append(disclosure_draft(2, gateway_keys))
    assert after.sequence == 2
    await ledger.close()
    assert stored_sequences(sqlite_url) == [1, 2, 3]  # and the final checkpoint


async def test_a_head_that_cannot_be_re_read_is_retried_with_back_off_and_close_returns(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """F2: after a failed commit the head cannot be re-read (the store refuses at once, as PostgreSQL does
    when it is down) while checkpoints fall due and requests keep coming. The writer neither spins on the
    re-read nor keeps close() from returning; requests are refused (503) meanwhile."""
    ledger, store = await sqlite_ledger(sqlite_url, gateway_keys, checkpoint_every_seconds=0.2,
                                        commit_timeout_seconds=1)
    loads = 0

    def failing_write(rows: Any, checkpoints: Any, sync: bool) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    def failing_load(chain: str) -> Any:
        nonlocal loads
        loads += 1
        raise sqlite3.OperationalError("unable to open database file")

    store._write_on_thread = failing_write  # type: ignore[method-assign]
    store._load_head = failing_load  # type: ignore[method-assign]
    try:
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(1, gateway_keys))
        for i in range(2, 22):
            with pytest.raises(LedgerUnavailable):
                await ledger.append(disclosure_draft(i, gateway_keys))
        # Several checkpoint timer periods with a checkpoint due and the head unreadable.
        await asyncio.sleep(1.0)
        # Before the fix: thousands of re-reads a second, and close() never returned.
        assert loads < 50
        await asyncio.wait_for(asyncio.shield(ledger.close()), 10)
    finally:
        del store._write_on_thread
        del store._load_head
        await ledger.close()
    assert stored_sequences(sqlite_url) == [1]


async def test_close_returns_while_a_hung_commit_holds_the_writer_thread(sqlite_url: str,
                                                                          gateway_keys: GatewayKeys) -> None:
    """F7: a commit hangs (an I/O stall) past the watchdog; close() (SIGTERM) still returns, leaving the
    daemon writer thread to finish on its own."""
    ledger, store = await sqlite_ledger(sqlite_url, gateway_keys, commit_timeout_seconds=0.3, first_record=False)
    real = store._write_on_thread
    release = threading.Event()
    thread = None

    def held_write(rows: Any, checkpoints: Any, sync: bool) -> None:
        release.wait()
        real(rows, checkpoints, sync)

    store._write_on_thread = held_write  # type: ignore[method-assign]
    try:
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(0, gateway_keys))
        thread = store._writer_thread._thread
        # Before the fix close() waited for the thread behind the hung commit, i.e. until release.
        await asyncio.wait_for(asyncio.shield(ledger.close()), 10)
        assert thread is not None
        assert thread.is_alive()
    finally:
        release.set()
    assert thread is not None
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive()


async def test_readiness_comes_back_without_traffic_after_a_failure(sqlite_url: str,
                                                                     gateway_keys: GatewayKeys) -> None:
    """F8: the durable head is a checkpoint (nothing unsigned), a commit fails, the disk recovers and no
    request comes (a load balancer keeps traffic away from a not-ready gateway). The checkpoint timer
    probes with a checkpoint of its own, so /readyz comes back, and the chain still verifies."""
    # req-0 and its checkpoint committed
    ledger, store = await sqlite_ledger(sqlite_url, gateway_keys, checkpoint_every_records=1,
                                        checkpoint_every_seconds=0.2)

    def failing_write(rows: Any, checkpoints: Any, sync: bool) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    store._write_on_thread = failing_write  # type: ignore[method-assign]
    try:
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(1, gateway_keys))
        assert not ledger.writable()
    finally:
        del store._write_on_thread  # the disk is fine again; no more traffic

    async def ready() -> None:
        while not ledger.writable():
            await asyncio.sleep(0.05)

    # A bound only so that a regression fails instead of hanging (before the fix: never ready again).
    await asyncio.wait_for(ready(), 10)
    await ledger.close()
    assert stored_sequences(sqlite_url)[:2] == [1, 2]
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_records_queued_behind_a_commit_the_watchdog_gave_up_on_are_not_written_when_it_lands(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """The watchdog abandons the store: a hung commit that lands after all is the last write until the head
    is re-read, so the records queued behind it (whose requests were refused too) never land late."""
    ledger, store = await sqlite_ledger(sqlite_url, gateway_keys, commit_timeout_seconds=0.3)
    real = store._write_on_thread
    entered, release = threading.Event(), threading.Event()

    def held_write(rows: Any, checkpoints: Any, sync: bool) -> None:
        entered.set()
        release.wait()  # a commit that hangs (an I/O stall) and then lands
        real(rows, checkpoints, sync)

    store._write_on_thread = held_write  # type: ignore[method-assign]
    try:
        hung = asyncio.create_task(ledger.append(disclosure_draft(1, gateway_keys)))
        while not entered.is_set():
            await asyncio.sleep(0.005)
        queued = asyncio.create_task(ledger.append(disclosure_draft(2, gateway_keys)))
        for task in (hung, queued):
            with pytest.raises(LedgerUnavailable) as refused:
                await task
            assert refused.value.reason == "ledger-commit-timeout"
    finally:
        release.set()
    await store._on(store._writer_thread, lambda: None)
    del store._write_on_thread
    assert stored_sequences(sqlite_url) == [1, 2]  # the hung commit landed; the one queued behind it did not
    after = await ledger.append(disclosure_draft(3, gateway_keys))
    assert after.sequence == 3
    await ledger.close()
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()
