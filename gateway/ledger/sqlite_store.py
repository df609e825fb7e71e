"""SQLite ledger store: one file in WAL mode with `synchronous=FULL`, written by one connection that lives
in one dedicated thread (a transaction is durable when COMMIT returns), read through a second connection
in a second thread so queries never wait behind a commit.

The writer thread takes every submission queued while its previous transaction ran as the next
transaction, at once (no round trip through the event loop), writes its rows as multi-row INSERTs (one
bind pass and one GIL release per statement instead of one per row), and tells the loop once per
transaction. A batch that fits one INSERT is that statement's own transaction; a larger one, or one with
checkpoint copies, is one BEGIN IMMEDIATE ... COMMIT: either way it lands whole or not at all. A failed
write leaves the store broken (StoreBroken for every later submission) until `load_head()`.

A transaction of `sync=False` submissions only commits with `synchronous=NORMAL`: its WAL frames are
written but not fsynced. WAL frames are appended in order and each carries a checksum chained to the
previous ones, so the fsync of the next FULL commit makes every earlier frame durable as well; a crash
before it may lose the unsynced commits, never a later durable one.

Such an unsynced commit runs on the caller's thread (the event loop) when the writer thread is idle
(`write_unsynced_now`): it only writes WAL frames to the page cache (tens of microseconds), while a hop
to the thread and back costs two thread wake-ups, GIL hand-offs and an event-loop wake-up; at low
concurrency that hop was a large share of a request's CPU. Because an inline commit must never block the
loop on an fsync, automatic WAL checkpoints are off on the writer connection and the thread runs a
PASSIVE checkpoint after its own commit once enough commits have piled up in the WAL.

UPDATE is refused by triggers; DELETE is refused unless the row in `ledger_prune_guard` exists, which
only the prune transaction inserts and removes again before it commits, so no other connection ever
sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from itertools import chain as chain_rows
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson

from gateway import sqlitefile
from gateway.errors import ConfigError
from gateway.ledger.lease import SqliteChainLease, sqlite_chain_live, sqlite_lock_path
from gateway.ledger.records import COLUMNS, row_to_record
from gateway.ledger.store import (
    BOUNDS_SQL,
    CHAINS_SQL,
    CHECKPOINTS_TABLE,
    COLUMN_LIST,
    PRUNE_DETAILS_SQL,
    RECORDS_TABLE,
    SCHEMA_VERSION,
    SIGNED_POINTS_SQL,
    ChainBounds,
    ChainHead,
    LedgerQuery,
    LedgerSnapshot,
    PruneBuilder,
    Row,
    WriteDone,
    head_after_prune,
    query_sql,
    report_transaction,
    store_broken,
)

_T = TypeVar("_T")
log = logging.getLogger("gateway.ledger")
_COLUMN_TYPES = {"sequence": "INTEGER", "cross_border": "INTEGER", "status": "INTEGER", "attempt": "INTEGER",
                 "latency_ms": "REAL"}
_NOT_NULL = frozenset({"id", "chain", "sequence", "time", "kind", "prev_hash", "hash"})
_COLUMN_DEFS = ",\n".join(
    f"    {c} {_COLUMN_TYPES.get(c, 'TEXT')}{' NOT NULL' if c in _NOT_NULL else ''}" for c in COLUMNS
)

SQLITE_SCHEMA = f"""\
CREATE TABLE IF NOT EXISTS ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS {RECORDS_TABLE} (
{_COLUMN_DEFS},
    PRIMARY KEY (chain, sequence)
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS ledger_records_id ON {RECORDS_TABLE} (id);
CREATE INDEX IF NOT EXISTS ledger_records_subject ON {RECORDS_TABLE} (subject_ref) WHERE subject_ref IS NOT NULL;
CREATE INDEX IF NOT EXISTS ledger_records_time ON {RECORDS_TABLE} (time);
CREATE TABLE IF NOT EXISTS {CHECKPOINTS_TABLE} (
    chain TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (chain, sequence)
) STRICT;
CREATE TABLE IF NOT EXISTS ledger_prune_guard (armed INTEGER NOT NULL) STRICT;
CREATE TRIGGER IF NOT EXISTS ledger_records_refuse_update BEFORE UPDATE ON {RECORDS_TABLE}
BEGIN SELECT RAISE(ABORT, 'ledger_records is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS ledger_records_refuse_delete BEFORE DELETE ON {RECORDS_TABLE}
WHEN NOT EXISTS (SELECT 1 FROM ledger_prune_guard)
BEGIN SELECT RAISE(ABORT, 'ledger_records is append-only: DELETE refused outside prune'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_refuse_update BEFORE UPDATE ON {CHECKPOINTS_TABLE}
BEGIN SELECT RAISE(ABORT, 'ledger_checkpoints is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_refuse_delete BEFORE DELETE ON {CHECKPOINTS_TABLE}
WHEN NOT EXISTS (SELECT 1 FROM ledger_prune_guard)
BEGIN SELECT RAISE(ABORT, 'ledger_checkpoints is append-only: DELETE refused outside prune'); END;
INSERT OR IGNORE INTO ledger_meta (name, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
"""  # noqa: S608 - only constant table names are formatted in

_INSERT_RECORD = (
    f"INSERT INTO {RECORDS_TABLE} ({COLUMN_LIST}) VALUES ({', '.join('?' for _ in COLUMNS)})"  # noqa: S608
)
# Commits between the writer thread's WAL checkpoints; ~SQLite's default autocheckpoint of 1000 pages
# at the few pages a small commit writes.
_CHECKPOINT_AFTER_COMMITS = 256
# The writer thread waits at most this long for another connection's write lock (the connection's own
# timeout); an inline commit on the loop does not wait at all. With a commit timeout it waits less (see
# SqliteStore): a lock wait must end in a rollback before the ledger's watchdog gives up on the commit,
# or the commit could land after its requests were refused.
_BUSY_TIMEOUT_MS = 30_000
_BUSY_SHARE_OF_COMMIT_TIMEOUT = 0.8
# Rows per multi-row INSERT: one statement (one bind pass, one step with the GIL released) instead of
# executemany's step per row, which took the GIL back for every row while the loop wanted it. 128 rows
# of the record's columns stay far below SQLite's variable limit (32766 since 3.32; checked at open).
_ROWS_PER_INSERT = 128
_INSERT_CHECKPOINT = f"INSERT INTO {CHECKPOINTS_TABLE} (chain, sequence, record) VALUES (?, ?, ?)"  # noqa: S608


class LeftoverTransactionError(RuntimeError):
    """The writer connection was inside a transaction the write did not start (a ROLLBACK that raised,
    say). An autocommit INSERT would silently join it and not commit, yet be reported durable, so the
    write is refused instead."""


def _settle_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _settle_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


_Call = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class _Write(NamedTuple):
    """Sealed rows submitted for the writer thread, and whom to tell when they are committed."""

    token: Any
    rows: Sequence[Row]
    checkpoints: Sequence[Row]
    sync: bool
    done: WriteDone
    loop: asyncio.AbstractEventLoop


# Written by the thread as one transaction: the submissions it holds, in order.
WriteBatch = Callable[[list[_Write]], None]


class _SerialThread:
    """One thread running calls in order; the SQLite connection it owns is only ever used there.

    Lighter than ThreadPoolExecutor + run_in_executor: no concurrent.futures.Future to create, chain and
    copy, just a queue put and one call_soon_threadsafe back to the loop. A cancelled caller does not stop
    a call that has started (as with an executor).

    Submitted writes (`post`) that are queued back to back are taken together the moment the thread is
    free, and handed to `write_batch` as one transaction: a commit that filled up while the previous one
    ran starts at once, with no round trip through the event loop."""

    def __init__(self, name: str, write_batch: WriteBatch | None = None, max_batch_rows: int = 4096) -> None:
        self._name = name
        self._write_batch = write_batch
        self.max_rows = max_batch_rows
        self._calls: queue.SimpleQueue[_Call | _Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False
        # Calls and writes submitted whose answer the loop has not yet received: while 0 the thread runs
        # nothing.
        self.unsettled = 0

    def _settled(self, settle: Callable[[asyncio.Future[Any], Any], None], future: asyncio.Future[Any],
                 outcome: Any) -> None:
        self.unsettled -= 1
        settle(future, outcome)

    def _start(self) -> None:
        if self._stopped:
            raise RuntimeError("the ledger store is closed")
        if self._thread is None:
            # daemon: an interpreter exiting without close() must not hang on it (a commit cut short is a
            # rolled-back transaction, as after a crash).
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def call(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self.unsettled += 1
        self._calls.put((fn, args, future, loop))
        return future

    def post(self, write: _Write) -> None:
        self._start()
        self.unsettled += 1
        self._calls.put(write)

    def writes_settled(self, count: int) -> None:
        self.unsettled -= count

    def _run(self) -> None:
        ahead: _Call | _Write | None = None
        have_ahead = False
        while True:
            if have_ahead:
                call, have_ahead = ahead, False
            else:
                call = self._calls.get()
            if call is None:
                return
            if isinstance(call, _Write):
                batch = [call]
                rows = len(call.rows)
                # Everything submitted while the previous transaction ran rides in this one.
                while rows < self.max_rows:
                    try:
                        following = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(following, _Write) or rows + len(following.rows) > self.max_rows:
                        ahead, have_ahead = following, True
                        break
                    batch.append(following)
                    rows += len(following.rows)
                if self._write_batch is not None:
                    self._write_batch(batch)
                continue
            fn, args, future, loop = call
            try:
                result = fn(*args)
            except BaseException as exc:  # every caller gets an answer, whatever the call raised
                settle: Callable[[asyncio.Future[Any], Any], None] = _settle_exception
                outcome: Any = exc
            else:
                settle, outcome = _settle_result, result
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
                loop.call_soon_threadsafe(self._settled, settle, future, outcome)

    def shutdown(self, *, wait: bool = True) -> None:
        """Run what is queued, then stop the thread; wait for it unless `wait` is False (a hung call)."""
        self._stopped = True
        if self._thread is not None:
            self._calls.put(None)
            if wait:
                self._thread.join()
            self._thread = None


def _deliver(thread: _SerialThread, batch: list[_Write], error: BaseException | None, seconds: float) -> None:
    """On the loop: tell each submitter of one transaction."""
    thread.writes_settled(len(batch))
    report_transaction(((write.token, write.done) for write in batch), error, seconds)


@lru_cache(maxsize=_ROWS_PER_INSERT)
def _insert_sql(rows: int) -> str:
    one = f"({', '.join('?' for _ in COLUMNS)})"
    return f"INSERT INTO {RECORDS_TABLE} ({COLUMN_LIST}) VALUES {', '.join(one for _ in range(rows))}"  # noqa: S608


class SqliteStore:
    """A ledger in one SQLite file. `create=False` refuses a missing file (verify, query, export)."""

    def __init__(self, path: Path, *, create: bool = True, commit_timeout_seconds: float | None = None) -> None:
        self.path = path
        self._busy_timeout_ms = _BUSY_TIMEOUT_MS if commit_timeout_seconds is None else max(
            1, min(_BUSY_TIMEOUT_MS, int(commit_timeout_seconds * _BUSY_SHARE_OF_COMMIT_TIMEOUT * 1000)))
        # How long close() waits for the writer thread to close its connection (behind a hung commit).
        self._close_timeout = _BUSY_TIMEOUT_MS / 1000 if commit_timeout_seconds is None else commit_timeout_seconds
        self._create = create
        self._writer_thread = _SerialThread("ledger-sqlite-writer", self._write_batch)
        self._reader_thread = _SerialThread("ledger-sqlite-reader")
        self._writer: sqlite3.Connection | None = None
        self._writer_waits = True  # the writer's busy timeout: _busy_timeout_ms (True) or 0 (inline commits)
        self.inline_busy_declines = 0  # inline commits declined because another connection held the lock
        self._reader: sqlite3.Connection | None = None
        self._writer_sync = True  # the writer connection's current synchronous mode (FULL)
        self._commits_since_checkpoint = 0
        self._closed = False
        # Set by the thread when a write fails and by abandon() on the loop; cleared by _load_head. A
        # plain bool: one writer of each value at a time, read by the thread before every transaction.
        self._broken = False
        self._rows_per_insert = _ROWS_PER_INSERT
        self._lease: SqliteChainLease | None = None
        self._lease_path = sqlite_lock_path(path)

    @property
    def max_batch_rows(self) -> int:
        """Most rows one transaction takes (the ledger sets it): the writer thread's own bound."""
        return self._writer_thread.max_rows

    @max_batch_rows.setter
    def max_batch_rows(self, rows: int) -> None:
        self._writer_thread.max_rows = rows

    async def _on(self, thread: _SerialThread, fn: Callable[..., _T], *args: Any) -> _T:
        return await thread.call(fn, *args)

    def _connect(self, *, check_same_thread: bool = True) -> sqlite3.Connection:
        if not self._create and not self.path.exists():
            raise ConfigError(f"ledger file {self.path} does not exist")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # cached_statements: one prepared multi-row INSERT per batch size up to _ROWS_PER_INSERT.
        return sqlitefile.connect(self.path, busy_timeout_seconds=self._busy_timeout_ms / 1000,
                                  check_same_thread=check_same_thread, cached_statements=_ROWS_PER_INSERT + 32)

    async def open(self) -> None:
        """Open the writer connection; after close() (a ledger start that failed, say) the store starts
        afresh with threads of its own: a writer thread close() gave up on keeps only what it had."""
        if self._closed:
            self._writer_thread = _SerialThread("ledger-sqlite-writer", self._write_batch, self._writer_thread.max_rows)
            self._reader_thread = _SerialThread("ledger-sqlite-reader")
            self._writer = self._reader = self._lease = None
            self._writer_waits = self._writer_sync = True
            self._commits_since_checkpoint = 0
            self._broken = False
            self._closed = False
        # Assigned here, not on the thread: an open() cancelled (a start() given up on) while its thread
        # still connects must not set a connection into the store after close() or a later open().
        self._writer = await self._on(self._writer_thread, self._open_writer)

    async def claim_chain(self, chain: str, wait_seconds: float) -> None:
        self._lease = await SqliteChainLease.claim(self._lease_path, chain, wait_seconds)

    def _open_writer(self) -> sqlite3.Connection:
        # Used from the loop thread too (write_unsynced_now), never at the same time as from its own.
        conn = self._connect(check_same_thread=False)
        try:
            conn.execute("PRAGMA wal_autocheckpoint=0")
            variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._rows_per_insert = max(1, min(_ROWS_PER_INSERT, variables // len(COLUMNS)))
            if self._create:
                conn.executescript("BEGIN IMMEDIATE;\n" + SQLITE_SCHEMA + "COMMIT;")
        except BaseException:
            conn.close()  # a start() tried again opens its own
            raise
        return conn

    def _reader_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            self._reader = conn
        return self._reader

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # This store's connection, lease and threads as they are now: a thread close() gives up on below
        # closes and lets go of these later, never of what a later open() of this store takes.
        writer, lease = self._writer, self._lease
        writer_thread, reader_thread = self._writer_thread, self._reader_thread

        def close_writer() -> None:
            try:
                if writer is not None:
                    writer.close()
            finally:
                # Here, on the writer thread, the lease ends only after any commit before it (one that hung
                # past close()'s wait included) has ended: no other writer takes the chain while it could land.
                if lease is not None:
                    lease.release()

        def close_reader() -> None:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

        try:
            await asyncio.wait_for(self._on(writer_thread, close_writer), self._close_timeout)
        except TimeoutError:
            # A commit that hangs (an I/O stall) holds the thread: shutdown must not hang with it. The
            # thread is a daemon; it closes the connection once the commit ends, or dies with the process.
            log.warning("ledger writer thread still busy after %.1f s; left to finish on its own",
                        self._close_timeout)
            writer_thread.shutdown(wait=False)
        else:
            writer_thread.shutdown()
            self._writer = None
        await self._on(reader_thread, close_reader)
        reader_thread.shutdown()

    def _writer_conn(self) -> sqlite3.Connection:
        """The writer connection, for the writer thread: it waits for other connections' locks."""
        if self._writer is None:
            raise RuntimeError("ledger store is not open")
        if not self._writer_waits:
            self._writer.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            self._writer_waits = True
        return self._writer

    async def load_head(self, chain: str) -> ChainHead:
        return await self._on(self._writer_thread, self._load_head, chain)

    def _load_head(self, chain: str) -> ChainHead:
        conn = self._writer_conn()
        if conn.in_transaction:
            # Uncommitted rows of a leftover transaction must not become the head: drop them (a ROLLBACK
            # that raises leaves the store broken and the head unread).
            conn.execute("ROLLBACK")
        last = conn.execute(
            f"SELECT sequence, hash, time FROM {RECORDS_TABLE} WHERE chain = ? "  # noqa: S608
            "ORDER BY sequence DESC LIMIT 1",
            (chain,),
        ).fetchone()
        if last is None:
            head = head_after_prune(chain, (row[0] for row in conn.execute(PRUNE_DETAILS_SQL)))
        else:
            checkpoint = conn.execute(
                f"SELECT MAX(sequence) FROM {CHECKPOINTS_TABLE} WHERE chain = ?", (chain,)  # noqa: S608
            ).fetchone()
            head = ChainHead(sequence=last[0], hash=last[1], time=last[2], checkpoint_sequence=checkpoint[0] or 0)
        # Every write queued before this read has been written or refused: what follows is chained
        # onto the head just read, so writes are accepted again.
        self._broken = False
        return head

    def submit(self, token: Any, rows: Sequence[Row], checkpoints: Sequence[Row], sync: bool,
               done: WriteDone) -> None:
        self._writer_thread.post(_Write(token, rows, checkpoints, sync, done, asyncio.get_running_loop()))

    def abandon(self) -> None:
        self._broken = True

    def _write_batch(self, batch: list[_Write]) -> None:
        """On the writer thread: the submissions in `batch` as one transaction, then one hop to the loop."""
        started = time.perf_counter()
        error: BaseException | None = None
        if self._broken:
            error = store_broken()
        else:
            rows: list[Row] = []
            checkpoints: list[Row] = []
            sync = False
            for write in batch:
                rows.extend(write.rows)
                checkpoints.extend(write.checkpoints)
                sync = sync or write.sync
            try:
                self._write_on_thread(rows, checkpoints, sync)
            except BaseException as exc:  # every waiter gets an answer, whatever the write raised
                self._broken = True
                error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            batch[0].loop.call_soon_threadsafe(_deliver, self._writer_thread, batch, error,
                                               time.perf_counter() - started)

    def _write_on_thread(self, rows: Sequence[Row], checkpoints: Sequence[Row], sync: bool) -> None:
        conn = self._writer_conn()  # sets back the busy timeout an inline commit set to 0
        self._write(rows, checkpoints, sync)
        if self._commits_since_checkpoint >= _CHECKPOINT_AFTER_COMMITS:
            self._checkpoint_wal(conn)

    def write_unsynced_now(self, rows: Sequence[Row], checkpoints: Sequence[Row]) -> bool:
        """Commit without fsync on the calling thread if the writer thread is idle; False (nothing done)
        otherwise, and then the caller uses `write(..., sync=False)`. Raises as `write` does."""
        conn = self._writer
        if (conn is None or self._writer_thread.unsettled
                or self._commits_since_checkpoint >= _CHECKPOINT_AFTER_COMMITS):
            return False
        if self._broken:
            raise store_broken()
        # The loop must never wait for another connection's write lock (the subject registry, another
        # worker on the same file, a prune): with the timeout at 0 a held lock declines at once, nothing
        # is committed, and the caller hands the same rows to the thread, which waits.
        if self._writer_waits:
            conn.execute("PRAGMA busy_timeout=0")
            self._writer_waits = False
        try:
            self._write(rows, checkpoints, False)
        except sqlite3.OperationalError as exc:  # rolled back: nothing of it was written
            if not sqlitefile.is_busy(exc):
                self._broken = True
                raise
            self.inline_busy_declines += 1
            return False
        except BaseException:
            self._broken = True
            raise
        return True

    def _write(self, rows: Sequence[Row], checkpoints: Sequence[Row], sync: bool = True) -> None:
        # On the writer thread (through _write_on_thread) or inline (write_unsynced_now), never both at
        # once; each has set the busy timeout it wants.
        conn = self._writer
        if conn is None:
            raise RuntimeError("ledger store is not open")
        if sync != self._writer_sync:
            conn.execute("PRAGMA synchronous=FULL" if sync else "PRAGMA synchronous=NORMAL")
            self._writer_sync = sync
        if not rows and not checkpoints:
            return
        if conn.in_transaction:
            # Nothing this store left open may be committed by, or hide, this write: roll it back, refuse
            # the write (the store is then broken until load_head) and let the waiters hear of it.
            self._broken = True
            conn.execute("ROLLBACK")
            raise LeftoverTransactionError("the ledger writer connection was inside a transaction")
        step = self._rows_per_insert
        if not checkpoints and len(rows) <= step:
            # One statement is its own transaction (autocommit), as atomic as BEGIN ... COMMIT, and takes
            # the write lock at its start the same way (the busy handler retries it whole). It releases
            # the GIL once where BEGIN, INSERT and COMMIT took it back three times: each time the
            # thread waited for the busy loop to let go of it (up to the 5 ms switch interval).
            conn.execute(_insert_sql(len(rows)), tuple(chain_rows.from_iterable(rows)))
            self._commits_since_checkpoint += 1
            return
        # One explicit transaction: the records and the checkpoint copies land together or not at all.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(rows), step):
                chunk = rows[start:start + step]
                conn.execute(_insert_sql(len(chunk)), tuple(chain_rows.from_iterable(chunk)))
            if checkpoints:
                conn.executemany(_INSERT_CHECKPOINT, checkpoints)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._commits_since_checkpoint += 1

    def _checkpoint_wal(self, conn: sqlite3.Connection) -> None:
        # Only ever on the writer thread (it fsyncs the database file). PASSIVE never waits for readers;
        # a checkpoint that could not finish is retried after the thread's next commit.
        with contextlib.suppress(sqlite3.Error):
            busy, _wal_pages, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy:
                self._commits_since_checkpoint = 0

    async def prune(self, before: str, build: PruneBuilder) -> None:
        await self._on(self._writer_thread, self._prune, before, build)

    def _prune(self, before: str, build: PruneBuilder) -> None:
        conn = self._writer_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            bounds: list[ChainBounds] = []
            for chain, first, cut, count in conn.execute(BOUNDS_SQL.format(p1="?"), (before, before)).fetchall():
                (first_prev,) = conn.execute(
                    f"SELECT prev_hash FROM {RECORDS_TABLE} WHERE chain = ? AND sequence = ?",  # noqa: S608
                    (chain, first),
                ).fetchone()
                cut_hash = None
                if cut is not None:
                    (cut_hash,) = conn.execute(
                        f"SELECT hash FROM {RECORDS_TABLE} WHERE chain = ? AND sequence = ?",  # noqa: S608
                        (chain, cut),
                    ).fetchone()
                bounds.append(ChainBounds(chain, first, first_prev, cut, cut_hash, count or 0))
            rows, checkpoints = build(bounds)
            conn.execute("INSERT INTO ledger_prune_guard (armed) VALUES (1)")
            for b in bounds:
                if b.cut_sequence is not None:
                    conn.execute(
                        f"DELETE FROM {RECORDS_TABLE} WHERE chain = ? AND sequence <= ?",  # noqa: S608
                        (b.chain, b.cut_sequence),
                    )
                    conn.execute(
                        f"DELETE FROM {CHECKPOINTS_TABLE} WHERE chain = ? AND sequence <= ?",  # noqa: S608
                        (b.chain, b.cut_sequence),
                    )
            conn.execute("DELETE FROM ledger_prune_guard")
            conn.executemany(_INSERT_RECORD, rows)
            if checkpoints:
                conn.executemany(_INSERT_CHECKPOINT, checkpoints)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def query(self, query: LedgerQuery) -> list[dict[str, Any]]:
        sql, params = query_sql(query, lambda _n: "?")

        def run() -> list[dict[str, Any]]:
            return [row_to_record(row) for row in self._reader_conn().execute(sql, params)]

        return await self._on(self._reader_thread, run)

    async def list_signed_points(self) -> dict[str, tuple[int, str]]:
        def run() -> dict[str, tuple[int, str]]:
            return {row[0]: (row[1], row[2]) for row in self._reader_conn().execute(SIGNED_POINTS_SQL)}

        return await self._on(self._reader_thread, run)

    async def list_chains(self) -> list[str]:
        def run() -> list[str]:
            return [row[0] for row in self._reader_conn().execute(CHAINS_SQL)]

        return await self._on(self._reader_thread, run)

    async def chain_live(self, chain: str) -> bool:
        return await asyncio.to_thread(sqlite_chain_live, self._lease_path, chain)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[LedgerSnapshot]:
        def begin() -> None:
            # A read transaction in WAL mode: every SELECT until COMMIT sees the same state.
            self._reader_conn().execute("BEGIN")

        def end() -> None:
            self._reader_conn().execute("COMMIT")

        await self._on(self._reader_thread, begin)
        try:
            yield _SqliteSnapshot(self)
        finally:
            await self._on(self._reader_thread, end)


class _SqliteSnapshot:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def fetch_checkpoints(self) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            rows = self._store._reader_conn().execute(
                f"SELECT chain, sequence, record FROM {CHECKPOINTS_TABLE} ORDER BY chain, sequence"  # noqa: S608
            )
            return [{"chain": c, "sequence": s, "record": orjson.loads(r)} for c, s, r in rows]

        return await self._store._on(self._store._reader_thread, run)

    async def fetch_kind(self, kind: str) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            rows = self._store._reader_conn().execute(
                f"SELECT {COLUMN_LIST} FROM {RECORDS_TABLE} WHERE kind = ? ORDER BY time", (kind,)  # noqa: S608
            )
            return [row_to_record(row) for row in rows]

        return await self._store._on(self._store._reader_thread, run)

    async def iter_records(self) -> AsyncIterator[dict[str, Any]]:
        cursor = await self._store._on(
            self._store._reader_thread,
            lambda: self._store._reader_conn().execute(
                f"SELECT {COLUMN_LIST} FROM {RECORDS_TABLE} ORDER BY chain, sequence"  # noqa: S608
            ),
        )
        while True:
            chunk = await self._store._on(self._store._reader_thread, cursor.fetchmany, 5000)
            if not chunk:
                return
            for row in chunk:
                yield row_to_record(row)
