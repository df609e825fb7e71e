"""Fixes from the review of the pipelined group commit (/work/notes/review-ledger.md, F1-F5): each test
drives a real SQLite file into the case the review found and checks the ledger's answer."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ledger_helpers import RecordingObserver, disclosure_draft

from gateway.keys import GatewayKeys
from gateway.ledger import open_ledger
from gateway.ledger.sqlite_store import SqliteStore


async def test_one_transaction_of_several_submissions_is_reported_once(sqlite_url: str,
                                                                       gateway_keys: GatewayKeys) -> None:
    """F5: the store groups a transaction's submissions by their callback; each transaction is one
    observer report carrying all its rows."""
    observer = RecordingObserver()
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000,
                         observer=observer)
    await ledger.start()
    store = ledger.store
    assert isinstance(store, SqliteStore)
    real = store._write_batch
    gate = threading.Event()
    transactions: list[int] = []

    def write_batch(batch: list[Any]) -> None:
        transactions.append(len(batch))
        if len(transactions) == 1:
            gate.wait()  # hold the first commit so the next five submissions queue behind it
        real(batch)

    store._writer_thread._write_batch = write_batch
    try:
        first = asyncio.ensure_future(ledger.append(disclosure_draft(0, gateway_keys)))
        while len(ledger._in_flight) < 1:
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
