"""Unsynced commits (outcomes, refusals) run on the event loop's thread when the SQLite writer thread is
idle, go through the thread when it is busy, never block the loop on a WAL checkpoint, and the thread
still checkpoints the WAL once commits pile up."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from ledger_helpers import disclosure_draft

from gateway.cli.ledger import verify_url
from gateway.config import sqlite_path
from gateway.keys import GatewayKeys
from gateway.ledger import Ledger, LedgerQuery, RecordDraft, open_ledger
from gateway.ledger.sqlite_store import _CHECKPOINT_AFTER_COMMITS, SqliteStore
from gateway.ledger.store import Row


def outcome_draft(i: int) -> RecordDraft:
    return RecordDraft(kind="outcome", partner="acme-insurance", request_id=f"inline-{i}", status=200)


async def started_ledger(url: str, keys: GatewayKeys) -> tuple[Ledger, SqliteStore]:
    ledger = open_ledger(url, keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    assert isinstance(ledger.store, SqliteStore)
    return ledger, ledger.store


async def closed_and_verified(ledger: Ledger, url: str, keys: GatewayKeys) -> None:
    await ledger.close()
    report = await verify_url(url, keys.ledger.verify_key)
    assert report.ok, report.summary()


def committing_threads(store: SqliteStore) -> list[tuple[str, bool]]:
    """Note (thread name, sync) of every commit the store's `_write` runs."""
    seen: list[tuple[str, bool]] = []
    real = store._write

    def noting(rows: Sequence[Row], checkpoints: Sequence[Row], sync: bool = True) -> None:
        seen.append((threading.current_thread().name, sync))
        real(rows, checkpoints, sync)

    store._write = noting  # type: ignore[method-assign]
    return seen


async def test_an_idle_writer_thread_lets_unsynced_commits_run_inline(
    sqlite_url: str, gateway_keys: GatewayKeys
) -> None:
    ledger, store = await started_ledger(sqlite_url, gateway_keys)
    seen = committing_threads(store)
    await ledger.append(disclosure_draft(0, gateway_keys))
    await ledger.append_nowait(outcome_draft(0))
    loop_thread = threading.current_thread().name
    assert seen == [("ledger-sqlite-writer", True), (loop_thread, False)]

    # While the thread still owes the loop an answer, the connection is its: no inline commit.
    blocker = threading.Event()
    held = store._writer_thread.call(blocker.wait)
    assert store.write_unsynced_now([], []) is False
    blocker.set()
    await held
    assert store.write_unsynced_now([], []) is True

    found = await ledger.query(LedgerQuery(kind="outcome"))
    assert [r["request_id"] for r in found] == ["inline-0"]
    await closed_and_verified(ledger, sqlite_url, gateway_keys)


async def test_the_writer_thread_checkpoints_the_wal_that_inline_commits_grow(
    sqlite_url: str, gateway_keys: GatewayKeys
) -> None:
    ledger, store = await started_ledger(sqlite_url, gateway_keys)
    seen = committing_threads(store)
    wal = Path(str(sqlite_path(sqlite_url)) + "-wal")
    for i in range(_CHECKPOINT_AFTER_COMMITS + 5):
        await ledger.append_nowait(outcome_draft(i))
    loop_thread = threading.current_thread().name
    # Never a checkpoint (an fsync of the database file) on the loop: past the limit, commits hop.
    assert {name for name, _sync in seen[:_CHECKPOINT_AFTER_COMMITS]} == {loop_thread}
    assert seen[_CHECKPOINT_AFTER_COMMITS][0] == "ledger-sqlite-writer"
    # The thread checkpointed, so inline commits resumed (the WAL is rewritten from its start).
    assert seen[-1][0] == loop_thread
    assert store._commits_since_checkpoint < _CHECKPOINT_AFTER_COMMITS
    assert wal.exists()
    await asyncio.sleep(0)
    await closed_and_verified(ledger, sqlite_url, gateway_keys)


async def test_under_load_unsynced_batches_stay_on_the_writer_thread(
    sqlite_url: str, gateway_keys: GatewayKeys
) -> None:
    ledger, store = await started_ledger(sqlite_url, gateway_keys)
    seen = committing_threads(store)
    # Several records in one batch (concurrent requests): the next unsynced batches hop to the thread,
    # which overlaps them with the loop's work, until a lone record follows a lone record again.
    await asyncio.gather(*(ledger.append(disclosure_draft(i, gateway_keys)) for i in range(4)))
    await ledger.append_nowait(outcome_draft(0))
    await ledger.append_nowait(outcome_draft(1))
    loop_thread = threading.current_thread().name
    assert seen == [("ledger-sqlite-writer", True), ("ledger-sqlite-writer", False), (loop_thread, False)]
    await closed_and_verified(ledger, sqlite_url, gateway_keys)


async def test_an_inline_commit_never_waits_for_another_connections_lock(
    sqlite_url: str, gateway_keys: GatewayKeys
) -> None:
    ledger, store = await started_ledger(sqlite_url, gateway_keys)
    await ledger.append(disclosure_draft(0, gateway_keys))
    seen = committing_threads(store)
    loop_thread = threading.current_thread().name
    # Another connection to the same file (the subject registry, another worker, a prune) is writing.
    holder = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        pending = ledger.append_nowait(outcome_draft(1))
        while store.inline_busy_declines < 1:
            await asyncio.sleep(0.001)  # the loop runs on: the inline commit declined instead of waiting
        await asyncio.sleep(0.05)
        assert not pending.done()  # the writer thread waits for the lock (up to its busy timeout)
        holder.execute("COMMIT")
        await pending
        assert seen == [(loop_thread, False), ("ledger-sqlite-writer", False)]  # declined, then the thread
    finally:
        holder.close()
    # With the lock free again the next outcome commits inline (the timeout is set back and forth).
    await ledger.append_nowait(outcome_draft(2))
    assert seen[2:] == [(loop_thread, False)]
    found = await ledger.query(LedgerQuery(kind="outcome"))
    assert [r["request_id"] for r in found] == ["inline-1", "inline-2"]
    await closed_and_verified(ledger, sqlite_url, gateway_keys)
