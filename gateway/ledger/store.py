"""What the ledger needs from a storage backend, and the SQL both backends share.

A store keeps two append-only tables: `ledger_records` (one row per record, columns as in
gateway.ledger.records.COLUMNS, primary key (chain, sequence)) and `ledger_checkpoints` (a copy of each
signed checkpoint record, kept apart so a truncated tail is caught against the last checkpoint).

Writes are pipelined: `submit()` hands the store sealed rows and returns at once; the store's writer
(a thread for SQLite, a task for PostgreSQL) commits everything submitted while its previous commit ran
as ONE transaction (records and checkpoint copies together or not at all) the moment that commit ends,
without asking the ledger, and reports each transaction once through the submissions' `done` callback
on the loop. A transaction is durable when reported unless every submission in it said `sync=False`:
then it is committed and written to the store's log but not flushed, and the next synced transaction
makes it durable with itself (both stores write their log in order, so a later flush covers every
earlier commit).

After a failed write the store is broken: every later submission is refused with StoreBroken (they were
chained onto rows that may not exist) until `load_head()` has re-read the durable head. `abandon()` (the
ledger's commit watchdog) breaks it from the loop's side the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Protocol

import orjson

from gateway.errors import StoreBroken
from gateway.ledger.records import COLUMNS, GENESIS_HASH

RECORDS_TABLE = "ledger_records"
CHECKPOINTS_TABLE = "ledger_checkpoints"
SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where a chain stands: last sequence and hash (0 and the genesis hash for a new chain), and the
    sequence of its latest checkpoint (0 if none)."""

    sequence: int = 0
    hash: str = GENESIS_HASH
    time: str = ""
    checkpoint_sequence: int = 0


@dataclass(frozen=True, slots=True)
class ChainBounds:
    """One chain as prune sees it: its first stored record and the last one older than the cut-off."""

    chain: str
    first_sequence: int
    first_prev_hash: str
    cut_sequence: int | None
    cut_hash: str | None
    cut_count: int


@dataclass(frozen=True, slots=True)
class LedgerQuery:
    """Filters for `Ledger.query` (all optional; combined with AND). Times are ISO 8601 text or dates."""

    kind: str | None = None
    partner: str | None = None
    route: str | None = None
    caller: str | None = None
    purpose: str | None = None
    subject_ref: str | None = None
    disclosure_id: str | None = None
    request_id: str | None = None
    chain: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int | None = 1000
    newest_first: bool = False


Row = tuple[Any, ...]
# Given every chain's bounds inside the prune transaction, return the rows (and checkpoint rows) to insert.
PruneBuilder = Callable[[Sequence[ChainBounds]], tuple[Sequence[Row], Sequence[Row]]]


class LedgerSnapshot(Protocol):
    """A consistent view of a whole ledger (one read transaction, or an exported bundle)."""

    async def fetch_checkpoints(self) -> list[dict[str, Any]]:
        """Every stored checkpoint copy as {"chain", "sequence", "record": the full record}."""
        ...

    async def fetch_kind(self, kind: str) -> list[dict[str, Any]]: ...

    def iter_records(self) -> AsyncIterator[dict[str, Any]]:
        """Every record, ordered by chain then sequence."""
        ...


# Told on the loop, once per transaction: the tokens of the submissions it held (in submission order),
# the error (None when committed) and the seconds the transaction took.
WriteDone = Callable[[Sequence[Any], "BaseException | None", float], None]


def report_transaction(submissions: Iterable[tuple[Any, WriteDone]], error: BaseException | None,
                       seconds: float) -> None:
    """Tell the submitters of one transaction, given as (token, done) in submission order: one call per
    run of the same callback (compared with ==: a bound method read anew is equal, not identical)."""
    for done, run in groupby(submissions, key=lambda submission: submission[1]):
        done([token for token, _ in run], error, seconds)


def store_broken() -> StoreBroken:
    """The refusal of a submission made while the store is broken (after a failed or abandoned write)."""
    return StoreBroken("an earlier ledger write failed; nothing is written until the head is re-read",
                       reason="ledger-store-broken")


class LedgerStore(Protocol):
    # Most rows one transaction takes (a submission larger than this is still written, alone); the
    # ledger sets it from its max_batch_records.
    max_batch_rows: int

    async def open(self) -> None: ...
    async def claim_chain(self, chain: str, wait_seconds: float) -> None:
        """Become the only live writer of `chain` (gateway.ledger.lease), waiting up to `wait_seconds`
        for another to finish; raises ChainInUse. `close()` lets go of it."""
        ...
    async def close(self) -> None: ...
    async def load_head(self, chain: str) -> ChainHead:
        """The chain's durable head; also ends a broken state (writes are accepted again)."""
        ...
    def submit(self, token: Any, rows: Sequence[Row], checkpoints: Sequence[Row], sync: bool,
               done: WriteDone) -> None:
        """Queue sealed rows for the store's writer; `done` is called on the loop with `token`."""
        ...
    def abandon(self) -> None:
        """Refuse every submission not yet written until the next `load_head()` (a commit hung)."""
        ...
    def write_unsynced_now(self, rows: Sequence[Row], checkpoints: Sequence[Row]) -> bool:
        """Commit without fsync on the calling thread, without waiting, if the store can (else False
        and nothing done): saves a hop to a writer thread for records a crash may lose."""
        ...
    async def prune(self, before: str, build: PruneBuilder) -> None: ...
    async def query(self, query: LedgerQuery) -> list[dict[str, Any]]: ...
    def snapshot(self) -> AbstractAsyncContextManager[LedgerSnapshot]: ...
    async def list_signed_points(self) -> dict[str, tuple[int, str]]:
        """Every chain's newest checkpoint: chain -> (sequence, hash). Checkpoints sign them (docs/ledger.md)."""
        ...
    async def list_chains(self) -> list[str]:
        """Every chain that holds records (the verifier probes their leases before its snapshot)."""
        ...
    async def chain_live(self, chain: str) -> bool:
        """Whether a writer holds `chain`'s lease now (gateway.ledger.lease); only the verifier asks."""
        ...


# Every chain's last signed point: its newest checkpoint (found through a loose index scan on the small
# checkpoint-copy table's primary key, one probe per chain), with the record the chain holds there. Other
# writers' checkpoints sign these, never a chain's unsigned tail (docs/ledger.md, "What is signed").
SIGNED_POINTS_SQL = (
    "WITH RECURSIVE c(chain) AS ("  # noqa: S608 - constant table names
    f" SELECT min(chain) FROM {CHECKPOINTS_TABLE}"
    f" UNION ALL SELECT (SELECT min(chain) FROM {CHECKPOINTS_TABLE} k WHERE k.chain > c.chain) FROM c"
    " WHERE c.chain IS NOT NULL)"
    f" SELECT c.chain, h.sequence, h.hash FROM c JOIN {RECORDS_TABLE} h ON h.chain = c.chain"
    f" AND h.sequence = (SELECT max(sequence) FROM {CHECKPOINTS_TABLE} m WHERE m.chain = c.chain)"
    " AND h.kind = 'checkpoint'"
)

# Every chain's name, through a loose index scan on the records' primary key (one probe per chain).
CHAINS_SQL = (
    "WITH RECURSIVE c(chain) AS ("  # noqa: S608 - a constant table name
    f" SELECT min(chain) FROM {RECORDS_TABLE}"
    f" UNION ALL SELECT (SELECT min(chain) FROM {RECORDS_TABLE} r WHERE r.chain > c.chain) FROM c"
    " WHERE c.chain IS NOT NULL)"
    " SELECT chain FROM c WHERE chain IS NOT NULL"
)

# The prune records (few: one per prune run, older ones pruned in turn), oldest first.
PRUNE_DETAILS_SQL = f"SELECT detail FROM {RECORDS_TABLE} WHERE kind = 'prune' ORDER BY time, sequence"  # noqa: S608


def head_after_prune(chain: str, details: Iterable[Any]) -> ChainHead:
    """The head of a chain that holds no records: where the newest prune record's anchor for it says the
    chain now starts (every prune record carries the anchors of the ones before it), else a new chain.
    A chain pruned whole continues its sequence and hash from there when its writer returns, so its
    sequences never repeat and what other chains signed of its earlier life stays checkable (review
    rv-verify R1)."""
    head = ChainHead()
    for detail in details:
        if isinstance(detail, str | bytes):
            try:
                detail = orjson.loads(detail)
            except orjson.JSONDecodeError:
                continue
        anchor = ((detail or {}).get("anchors") or {}).get(chain) if isinstance(detail, dict) else None
        if isinstance(anchor, dict) and type(anchor.get("sequence")) is int and isinstance(anchor.get("hash"), str):
            # Already signed (the prune record): nothing after it is unsigned yet.
            head = ChainHead(sequence=anchor["sequence"], hash=anchor["hash"], time="",
                             checkpoint_sequence=anchor["sequence"])
    return head


COLUMN_LIST = ", ".join(COLUMNS)
_EQUAL_FILTERS = (
    "kind", "partner", "route", "caller", "purpose", "subject_ref", "disclosure_id", "request_id", "chain",
)


def query_sql(query: LedgerQuery, placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    """SELECT for a LedgerQuery; `placeholder(n)` spells the n-th parameter (`?` or `$n`)."""
    where: list[str] = []
    params: list[Any] = []
    for name in _EQUAL_FILTERS:
        value = getattr(query, name)
        if value is not None:
            params.append(value)
            where.append(f"{name} = {placeholder(len(params))}")
    if query.since is not None:
        params.append(query.since)
        where.append(f"time >= {placeholder(len(params))}")
    if query.until is not None:
        params.append(query.until)
        where.append(f"time < {placeholder(len(params))}")
    sql = f"SELECT {COLUMN_LIST} FROM {RECORDS_TABLE}"  # noqa: S608 - names are constants, values are parameters
    if where:
        sql += " WHERE " + " AND ".join(where)
    order = "DESC" if query.newest_first else "ASC"
    sql += f" ORDER BY time {order}, chain {order}, sequence {order}"
    if query.limit is not None:
        params.append(int(query.limit))
        sql += f" LIMIT {placeholder(len(params))}"
    return sql, params


BOUNDS_SQL = (
    f"SELECT chain, MIN(sequence), MAX(CASE WHEN time < {{p1}} THEN sequence END), "  # noqa: S608
    f"SUM(CASE WHEN time < {{p1}} THEN 1 ELSE 0 END) FROM {RECORDS_TABLE} GROUP BY chain ORDER BY chain"
)
