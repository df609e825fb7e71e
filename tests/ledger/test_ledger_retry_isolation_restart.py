"""Fixes from the last ledger review (F9, F10, N6): records sealed again after a failed commit commit on
their own, wait for a readable head instead of being reported lost, and a failed start() can be retried.
Each test drives a real SQLite file or PostgreSQL schema into the case the review found."""

from __future__ import annotations

import asyncio
import threading

import pytest
from ledger_helpers import disclosure_draft

from gateway.cli.ledger import verify_url
from gateway.config import sqlite_path
from gateway.keys import GatewayKeys
from gateway.ledger import open_ledger
from gateway.ledger.lease import ChainInUse
from gateway.ledger.sqlite_store import SqliteStore

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
