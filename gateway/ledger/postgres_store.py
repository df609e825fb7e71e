"""PostgreSQL ledger store (asyncpg): several gateway replicas share the tables, each writing its own chain.

A batch is one transaction (one pipelined INSERT for all its rows) on a dedicated writer connection with
`synchronous_commit=on`, so COMMIT returning means the WAL is flushed (a `sync=False` batch turns it off
for its own transaction only). Submissions queue in the store; its writer task takes everything that
arrived while the previous transaction ran as the next one, without waiting for the ledger. After a
failed write every queued and later submission is refused (StoreBroken) until `load_head()`. Replicas
never wait for each other: rows of different chains touch different primary keys and no table lock is taken. A failed
write drops the connection (its state is unknown after an error or a cancel) and the next write opens
a new one.

UPDATE, DELETE and TRUNCATE are refused by triggers; DELETE is let through only while the transaction
has set `gateway.ledger_prune = on` with SET LOCAL, which only prune does. The gateway's database role
needs INSERT and SELECT only (deploy/sql/postgres-roles.sql); the schema is created at start when absent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from gateway.errors import StoreBroken
from gateway.ledger.lease import PostgresChainLease, postgres_chain_live
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

_COLUMN_TYPES = {"sequence": "bigint", "cross_border": "boolean", "status": "integer", "attempt": "integer",
                 "latency_ms": "double precision"}
_NOT_NULL = frozenset({"id", "chain", "sequence", "time", "kind", "prev_hash", "hash"})
_COLUMN_DEFS = ",\n".join(
    f"    {c} {_COLUMN_TYPES.get(c, 'text')}{' NOT NULL' if c in _NOT_NULL else ''}" for c in COLUMNS
)
PRUNE_SETTING = "gateway.ledger_prune"

POSTGRES_SCHEMA = f"""\
CREATE TABLE IF NOT EXISTS ledger_meta (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS {RECORDS_TABLE} (
{_COLUMN_DEFS},
    PRIMARY KEY (chain, sequence)
);
CREATE UNIQUE INDEX IF NOT EXISTS ledger_records_id ON {RECORDS_TABLE} (id);
CREATE INDEX IF NOT EXISTS ledger_records_subject ON {RECORDS_TABLE} (subject_ref) WHERE subject_ref IS NOT NULL;
CREATE INDEX IF NOT EXISTS ledger_records_time ON {RECORDS_TABLE} (time);
CREATE TABLE IF NOT EXISTS {CHECKPOINTS_TABLE} (
    chain text NOT NULL,
    sequence bigint NOT NULL,
    record text NOT NULL,
    PRIMARY KEY (chain, sequence)
);
CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('{PRUNE_SETTING}', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE OR REPLACE TRIGGER ledger_records_refuse_change BEFORE UPDATE OR DELETE ON {RECORDS_TABLE}
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE OR REPLACE TRIGGER ledger_records_refuse_truncate BEFORE TRUNCATE ON {RECORDS_TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE OR REPLACE TRIGGER ledger_checkpoints_refuse_change BEFORE UPDATE OR DELETE ON {CHECKPOINTS_TABLE}
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE OR REPLACE TRIGGER ledger_checkpoints_refuse_truncate BEFORE TRUNCATE ON {CHECKPOINTS_TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
INSERT INTO ledger_meta (name, value) VALUES ('schema_version', '{SCHEMA_VERSION}')
    ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value;
"""  # noqa: S608 - only constant table names are formatted in

_INSERT_RECORD = (
    f"INSERT INTO {RECORDS_TABLE} ({COLUMN_LIST}) "  # noqa: S608
    f"VALUES ({', '.join(f'${n}' for n in range(1, len(COLUMNS) + 1))})"
)
_INSERT_CHECKPOINT = f"INSERT INTO {CHECKPOINTS_TABLE} (chain, sequence, record) VALUES ($1, $2, $3)"  # noqa: S608
# Session settings for every connection: durable commits, and a name that shows in pg_stat_activity.
# TCP keepalives from the server's side: a session whose client vanished in a network cut ends in about
# two minutes instead of the server default of two hours (the ledger also ends its own cut sessions).
_SERVER_SETTINGS = {"synchronous_commit": "on", "application_name": "partner-data-gateway-ledger",
                    "tcp_keepalives_idle": "60", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "6"}
# A writer connection's server process: (process id, session start).
_Session = tuple[int, Any]
# How long close() waits for dropped writer sessions to end before it lets go of the chain's lease, and
# how often it and the head re-read look.
_ORPHAN_WAIT_SECONDS = 10.0
_ORPHAN_POLL_SECONDS = 0.05
# How long a short exchange waits for the server before the connection is cut: a new writer connection's
# session query, a connection's goodbye at close().
_ANSWER_TIMEOUT_SECONDS = 5.0
log = logging.getLogger("gateway.ledger")


class PostgresStore:
    """A ledger in PostgreSQL at `url` (query parameters such as search_path become session settings)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self._create = create
        self._writer: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        # Submitted and not yet taken by the writer task, in order: (token, rows, checkpoints, sync, done).
        self._pending: list[tuple[Any, Sequence[Row], Sequence[Row], bool, WriteDone]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._broken = False
        # Moved by abandon(): a write taken before it must not start after it (its waiters were told it failed).
        self._epoch = 0
        # One writer connection at a time: load_head and the writer task may both find none and connect.
        self._connecting = asyncio.Lock()
        self.max_batch_rows = 4096
        self._lease: PostgresChainLease | None = None
        # Server processes of writer connections dropped mid-write: cutting the client side does not stop a
        # COMMIT the server is running (or, after a network cut, wait idle for a client that has gone), so
        # they are ended and the head is re-read (and the lease let go) only once they have exited and their
        # transaction is settled one way or the other. Each is (process id, session start): a process id
        # the server has given to another session since is never waited for, nor ended.
        self._orphans: set[_Session] = set()
        # The session of each writer connection, taken when it connects (a connection the client has seen
        # close can no longer say which server process it had).
        self._sessions: dict[int, _Session] = {}

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, server_settings=_SERVER_SETTINGS, timeout=10)

    async def _connect_writer(self) -> asyncpg.Connection:
        conn = await self._connect()
        try:
            session = await conn.fetchrow(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                timeout=_ANSWER_TIMEOUT_SECONDS)
        except BaseException:
            conn.terminate()
            raise
        self._sessions[id(conn)] = (session[0], session[1])
        return conn

    async def open(self) -> None:
        """Connect the writer (and create the schema if need be); again after close(), e.g. when a ledger's
        start() failed and is tried again."""
        conn = await self._connect_writer()
        if self._create:
            try:
                await _migrate(conn)
            except BaseException:
                self._sessions.pop(id(conn), None)  # nothing was written on it: no session to wait for
                conn.terminate()
                raise
        self._writer = conn

    async def claim_chain(self, chain: str, wait_seconds: float) -> None:
        self._lease = await PostgresChainLease.claim(self._connect, chain, wait_seconds)

    async def close(self) -> None:
        try:
            if self._drainer is not None:
                await asyncio.gather(self._drainer, return_exceptions=True)
                self._drainer = None
            if self._lease is not None and self._orphans:
                try:
                    # Not before a cut write is settled on the server: the lease is let go below.
                    await asyncio.wait_for(self._orphans_settled(), _ORPHAN_WAIT_SECONDS)
                except Exception as exc:
                    log.warning("ledger: a dropped writer session had not ended at close (%s); letting go of "
                                "the chain's lease anyway", type(exc).__name__)
            if self._writer is not None:
                writer, self._writer = self._writer, None
                self._sessions.pop(id(writer), None)
                try:
                    await writer.close(timeout=_ANSWER_TIMEOUT_SECONDS)
                except Exception:  # a server that does not answer: cut the connection
                    writer.terminate()
            if self._pool is not None:
                pool, self._pool = self._pool, None
                try:
                    await asyncio.wait_for(pool.close(), _ANSWER_TIMEOUT_SECONDS)
                except Exception:
                    pool.terminate()
        finally:
            if self._lease is not None:
                lease, self._lease = self._lease, None
                await lease.release()

    async def _orphans_settled(self) -> None:
        """End the server processes of writer connections dropped mid-write and wait until they have
        exited: a COMMIT one is running finishes first (the server holds the signal until then), an idle
        one rolls back, and either way the outcome is final once it is gone."""
        if not self._orphans:
            return
        conn = await self._writer_conn()
        ended = False
        while self._orphans:
            rows = await conn.fetch("SELECT pid, backend_start FROM pg_stat_activity WHERE pid = ANY($1::int[])",
                                    [pid for pid, _start in self._orphans])
            self._orphans &= {(row[0], row[1]) for row in rows}
            if not self._orphans:
                return
            if not ended:
                for pid, start in self._orphans:
                    await conn.fetchval("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        "WHERE pid = $1 AND backend_start = $2", pid, start)
                ended = True
            await asyncio.sleep(_ORPHAN_POLL_SECONDS)

    async def _writer_conn(self) -> asyncpg.Connection:
        async with self._connecting:
            if self._writer is None or self._writer.is_closed():
                if self._writer is not None:
                    self._orphan(self._writer)
                self._writer = await self._connect_writer()
            return self._writer

    def _drop_writer(self) -> None:
        # After an error or a cancel the session's state is unknown; never reuse it.
        if self._writer is not None:
            self._orphan(self._writer)
            self._writer = None

    def _orphan(self, conn: asyncpg.Connection) -> None:
        """Cut `conn`; its server process may still be finishing a COMMIT (see _orphans)."""
        session = self._sessions.pop(id(conn), None)
        if session is not None:
            self._orphans.add(session)
        conn.terminate()

    async def _readers(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=0, max_size=2, server_settings=_SERVER_SETTINGS, timeout=10
            )
        return self._pool

    async def load_head(self, chain: str) -> ChainHead:
        try:
            if self._lease is not None:
                await self._lease.ensure()
            await self._orphans_settled()  # the ledger bounds the whole re-read by its commit timeout
            conn = await self._writer_conn()
            last = await conn.fetchrow(
                f"SELECT sequence, hash, time FROM {RECORDS_TABLE} WHERE chain = $1 "  # noqa: S608
                "ORDER BY sequence DESC LIMIT 1",
                chain,
            )
            if last is None:
                head = head_after_prune(chain, (row[0] for row in await conn.fetch(PRUNE_DETAILS_SQL)))
                self._broken = False
                return head
            checkpoint = await conn.fetchval(
                f"SELECT MAX(sequence) FROM {CHECKPOINTS_TABLE} WHERE chain = $1", chain  # noqa: S608
            )
            # Nothing is in flight (the ledger re-reads only then): what follows chains onto this head.
            self._broken = False
        except BaseException:
            self._drop_writer()
            raise
        return ChainHead(sequence=last[0], hash=last[1], time=last[2], checkpoint_sequence=checkpoint or 0)

    def write_unsynced_now(self, rows: Sequence[Row], checkpoints: Sequence[Row]) -> bool:
        return False  # every statement is a network round trip: nothing can commit without awaiting

    def submit(self, token: Any, rows: Sequence[Row], checkpoints: Sequence[Row], sync: bool,
               done: WriteDone) -> None:
        self._pending.append((token, rows, checkpoints, sync, done))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain(), name="ledger-postgres-writer")

    def abandon(self) -> None:
        # The hung write's connection is cut (its outcome stays uncertain) and nothing queued is written.
        self._broken = True
        self._epoch += 1
        self._drop_writer()
        self._refuse(self._pending)
        self._pending = []

    def _refuse(self, items: Sequence[tuple[Any, Sequence[Row], Sequence[Row], bool, WriteDone]],
                error: BaseException | None = None, seconds: float = 0.0) -> None:
        report_transaction(((item[0], item[4]) for item in items), error or store_broken(), seconds)

    async def _drain(self) -> None:
        """The writer task: while submissions are queued, take them all as the next transaction."""
        while self._pending:
            items = [self._pending[0]]
            taken = len(items[0][1])
            for item in self._pending[1:]:
                if taken + len(item[1]) > self.max_batch_rows:
                    break
                items.append(item)
                taken += len(item[1])
            del self._pending[:len(items)]
            # The epoch these items were taken in: abandon() (the watchdog) moves it, and a write taken before
            # it must never start after it, however long what comes before the write waits.
            epoch = self._epoch
            if self._broken:
                self._refuse(items)
                continue
            if self._lease is not None and self._lease.lost():
                # The lease's session ended (a restart, idle_session_timeout), and the server let go of the
                # chain's lock with it: take it again before writing, or refuse if another writer has it (a
                # row it wrote meanwhile would make this write fail on the primary key, never fork the chain).
                try:
                    await self._lease.ensure()
                except Exception as exc:
                    self._broken = True
                    log.warning("ledger: the chain's lease was lost and could not be taken again: %s",
                                type(exc).__name__)
                    self._refuse(items, StoreBroken("the ledger lost its chain's lease",
                                                    reason="ledger-store-broken"))
                    continue
                if self._broken or epoch != self._epoch:  # given up on while the lease was taken again
                    self._refuse(items)
                    continue
            started = time.perf_counter()
            rows = [row for item in items for row in item[1]]
            checkpoints = [row for item in items for row in item[2]]
            try:
                await self._write(rows, checkpoints, sync=any(item[3] for item in items), epoch=epoch)
            except BaseException as exc:
                self._broken = True
                self._refuse(items, exc, time.perf_counter() - started)
                if not isinstance(exc, Exception):
                    self._refuse(self._pending)
                    self._pending = []
                    raise
                continue
            report_transaction(((item[0], item[4]) for item in items), None, time.perf_counter() - started)

    async def _write(self, rows: Sequence[Row], checkpoints: Sequence[Row], *, sync: bool = True,
                     epoch: int | None = None) -> None:
        conn = await self._writer_conn()
        if epoch is not None and epoch != self._epoch:
            # abandon() came while this write was still connecting, so it had no connection to cut.
            raise StoreBroken("the ledger gave up on this commit before it started", reason="ledger-store-broken")
        try:
            async with conn.transaction():
                if not sync:
                    # Committed without waiting for the WAL flush; the server flushes its WAL in order, so
                    # the next synchronous commit makes this one durable too.
                    await conn.execute("SET LOCAL synchronous_commit TO off")
                await conn.executemany(_INSERT_RECORD, rows)
                if checkpoints:
                    await conn.executemany(_INSERT_CHECKPOINT, checkpoints)
        except BaseException:
            # Only this write's connection: abandon() may already have cut it, and load_head opened the next.
            if self._writer is conn:
                self._drop_writer()
            else:
                self._orphan(conn)
            raise

    async def prune(self, before: str, build: PruneBuilder) -> None:
        try:
            conn = await self._writer_conn()
            async with conn.transaction():
                # Two prunes at once would anchor chains inconsistently; replicas' appends are not blocked.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('partner-data-gateway/ledger-prune'))")
                bounds: list[ChainBounds] = []
                for chain, first, cut, count in await conn.fetch(BOUNDS_SQL.format(p1="$1"), before):
                    first_prev = await conn.fetchval(
                        f"SELECT prev_hash FROM {RECORDS_TABLE} WHERE chain = $1 AND sequence = $2",  # noqa: S608
                        chain, first,
                    )
                    cut_hash = None
                    if cut is not None:
                        cut_hash = await conn.fetchval(
                            f"SELECT hash FROM {RECORDS_TABLE} WHERE chain = $1 AND sequence = $2",  # noqa: S608
                            chain, cut,
                        )
                    bounds.append(ChainBounds(chain, first, first_prev, cut, cut_hash, int(count or 0)))
                rows, checkpoints = build(bounds)
                await conn.execute(f"SET LOCAL {PRUNE_SETTING} = 'on'")
                for b in bounds:
                    if b.cut_sequence is not None:
                        await conn.execute(
                            f"DELETE FROM {RECORDS_TABLE} WHERE chain = $1 AND sequence <= $2",  # noqa: S608
                            b.chain, b.cut_sequence,
                        )
                        await conn.execute(
                            f"DELETE FROM {CHECKPOINTS_TABLE} WHERE chain = $1 AND sequence <= $2",  # noqa: S608
                            b.chain, b.cut_sequence,
                        )
                await conn.execute(f"SET LOCAL {PRUNE_SETTING} = 'off'")
                await conn.executemany(_INSERT_RECORD, rows)
                if checkpoints:
                    await conn.executemany(_INSERT_CHECKPOINT, checkpoints)
        except BaseException:
            self._drop_writer()
            raise

    async def query(self, query: LedgerQuery) -> list[dict[str, Any]]:
        sql, params = query_sql(query, lambda n: f"${n}")
        pool = await self._readers()
        return [row_to_record(row) for row in await pool.fetch(sql, *params)]

    async def list_signed_points(self) -> dict[str, tuple[int, str]]:
        pool = await self._readers()
        return {row[0]: (row[1], row[2]) for row in await pool.fetch(SIGNED_POINTS_SQL)}

    async def list_chains(self) -> list[str]:
        pool = await self._readers()
        return [row[0] for row in await pool.fetch(CHAINS_SQL)]

    async def chain_live(self, chain: str) -> bool:
        pool = await self._readers()
        async with pool.acquire() as conn:
            return await postgres_chain_live(conn, chain)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[LedgerSnapshot]:
        pool = await self._readers()
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            yield _PostgresSnapshot(conn)


async def _migrate(conn: asyncpg.Connection) -> None:
    """Create the schema when absent or older (idempotent; safe when replicas start together). A role with
    INSERT and SELECT only passes when the schema is already current, as no DDL is then run."""
    async with conn.transaction():
        if await conn.fetchval("SELECT to_regclass('ledger_meta') IS NOT NULL"):
            version = await conn.fetchval("SELECT value FROM ledger_meta WHERE name = 'schema_version'")
            if version == str(SCHEMA_VERSION):
                return
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('partner-data-gateway/ledger-schema'))")
        await conn.execute(POSTGRES_SCHEMA)


class _PostgresSnapshot:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch_checkpoints(self) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(
            f"SELECT chain, sequence, record FROM {CHECKPOINTS_TABLE} ORDER BY chain, sequence"  # noqa: S608
        )
        return [{"chain": c, "sequence": s, "record": orjson.loads(r)} for c, s, r in rows]

    async def fetch_kind(self, kind: str) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(
            f"SELECT {COLUMN_LIST} FROM {RECORDS_TABLE} WHERE kind = $1 ORDER BY time", kind  # noqa: S608
        )
        return [row_to_record(row) for row in rows]

    async def iter_records(self) -> AsyncIterator[dict[str, Any]]:
        # COLLATE "C": the same byte order as SQLite, whatever the database's locale.
        sql = f'SELECT {COLUMN_LIST} FROM {RECORDS_TABLE} ORDER BY chain COLLATE "C", sequence'  # noqa: S608
        async for row in self._conn.cursor(sql, prefetch=5000):
            yield row_to_record(row)
