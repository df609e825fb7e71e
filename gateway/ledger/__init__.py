"""The disclosure ledger: durable, hash-chained, signed, queryable records of every disclosure.

`open_ledger(url, keys)` picks the store from the URL (`sqlite:///PATH` or `postgresql://...`) and
returns a Ledger that is not started yet. See docs/ledger.md for what auditors can check.
"""

from __future__ import annotations

from gateway.config import sqlite_path
from gateway.errors import ConfigError
from gateway.keys import LedgerKeys
from gateway.ledger.ledger import CommitObserver, Ledger, PruneResult, default_chain_id
from gateway.ledger.records import KINDS, AppendedRecord, RecordDraft
from gateway.ledger.store import LedgerQuery, LedgerStore

__all__ = [
    "KINDS",
    "AppendedRecord",
    "CommitObserver",
    "Ledger",
    "LedgerQuery",
    "PruneResult",
    "RecordDraft",
    "default_chain_id",
    "open_ledger",
    "open_store",
]


def open_store(url: str, *, create: bool = True, commit_timeout_seconds: float | None = None) -> LedgerStore:
    """The store a ledger URL names; `create=False` refuses to create a missing SQLite file. A SQLite
    writer waits for another connection's lock for less than `commit_timeout_seconds`."""
    if url.startswith("sqlite://"):
        from gateway.ledger.sqlite_store import SqliteStore

        return SqliteStore(sqlite_path(url), create=create, commit_timeout_seconds=commit_timeout_seconds)
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.ledger.postgres_store import PostgresStore

        return PostgresStore(url, create=create)
    raise ConfigError("ledger URL: expected sqlite:///PATH or postgresql://...")


def open_ledger(
    url: str,
    keys: LedgerKeys,
    *,
    chain_id: str | None = None,
    checkpoint_every_records: int = 1000,
    checkpoint_every_seconds: float = 60.0,
    max_batch_records: int = 4096,
    commit_timeout_seconds: float = 15.0,
    linger_seconds: float = 0.01,
    chain_wait_seconds: float = 10.0,
    observer: CommitObserver | None = None,
) -> Ledger:
    """A ledger on `url` writing chain `chain_id` (default: host name + GATEWAY_LEDGER_CHAIN_SUFFIX).
    Call `await start()` before appending and `await close()` at shutdown. `observer` hears of every
    commit (size, duration) and every failed append. `linger_seconds` bounds how long a record nobody
    waits for (`append_unawaited`) waits to share the next commit."""
    return Ledger(
        open_store(url, commit_timeout_seconds=commit_timeout_seconds),
        keys,
        chain_id=chain_id or default_chain_id(),
        checkpoint_every_records=checkpoint_every_records,
        checkpoint_every_seconds=checkpoint_every_seconds,
        max_batch_records=max_batch_records,
        commit_timeout_seconds=commit_timeout_seconds,
        linger_seconds=linger_seconds,
        chain_wait_seconds=chain_wait_seconds,
        observer=observer,
    )
