"""The ledger writer: one task, one queue, adaptive group commit, one hash chain per process.

`append()` queues a record and waits. The writer task never sleeps on a timer: when a record arrives and
no commit is running it commits at once (a lone request pays one fsync and no added wait); while a
commit is in flight new records queue, and the next commit takes everything queued, so batches grow with
load by themselves. Each waiter is released when its own batch is durable, and a failed or uncertain
commit fails exactly that batch with LedgerUnavailable; the next batch first re-reads the chain head from
the store, so the chain continues correctly whether the failed commit landed or not.

`append_nowait()` is for records whose loss in a crash the design accepts (an outcome or a refusal: a
crash may leave a disclosure without its outcome, never a forward without a disclosure). They queue
behind everything appended before them, in order, and nobody waits for them; a batch holding only such
records commits without its own fsync (SQLite synchronous=NORMAL, PostgreSQL synchronous_commit=off).
Both stores write their log in order, so the next durable commit, or the final checkpoint at `close()`,
makes them durable too. Their failures are logged and reported like any other. `append_unawaited()` is
the same for a caller that never reads the result (the proxy): no future, a failure callback instead.

Nobody waits for an `append_unawaited` record, so it does not start a commit of its own: it lingers in
the queue (at most `linger_seconds`, on one timer) until a record somebody waits for arrives and they
share that record's commit, or a `flush()`, `close()` or due checkpoint takes it. At low concurrency the
proxy's outcome record then rides with the next request's disclosure (one fsynced commit per request
instead of a second, unsynced one, which ran on the loop just before the next request was read).

A `CommitObserver` (optional) hears of every commit (records, seconds) and every failed record, so the
gateway's metrics are fed without this module importing them.

Every `checkpoint_every_records` records, after `checkpoint_every_seconds` with unsigned records, and at
close, the writer adds an Ed25519-signed checkpoint record to the batch it is committing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson

from gateway.errors import ConfigError, LedgerUnavailable
from gateway.keys import LedgerKeys
from gateway.ledger.records import (
    AppendedRecord,
    PreparedRecord,
    RecordDraft,
    SealedRecord,
    format_time,
    now_text,
    prepare,
    seal,
    seal_row,
)
from gateway.ledger.store import ChainBounds, ChainHead, LedgerQuery, LedgerStore, Row

log = logging.getLogger("gateway.ledger")

CHAIN_SUFFIX_ENV = "GATEWAY_LEDGER_CHAIN_SUFFIX"


def default_chain_id(suffix: str | None = None) -> str:
    """`<host name>-<suffix>`: one chain per process. The suffix defaults to GATEWAY_LEDGER_CHAIN_SUFFIX
    or `main`; the server passes one per worker so workers never share a chain."""
    chosen = suffix if suffix is not None else os.environ.get(CHAIN_SUFFIX_ENV, "main")
    return f"{socket.gethostname()}-{chosen}"


@dataclass(frozen=True, slots=True)
class PruneResult:
    removed: int
    anchors: dict[str, dict[str, Any]]
    record: AppendedRecord


class CommitObserver(Protocol):
    """Told about every commit and every record that could not be made durable (metrics, tests)."""

    def committed(self, records: int, seconds: float) -> None:
        """One transaction of `records` rows (checkpoint included) became durable in `seconds`."""

    def failed(self, records: int) -> None:
        """`records` appends failed (their batch's commit failed, or the ledger refused them)."""


# A queued record, the future its appender holds (None for append_unawaited records), whether its batch
# must be fsynced before it counts as committed (False for nowait records), and what to call if it
# fails (append_unawaited only).
_Waiter = tuple[PreparedRecord, "asyncio.Future[AppendedRecord] | None", bool, "Callable[[], None] | None"]


def _retrieve(future: asyncio.Future[AppendedRecord]) -> None:
    # Nobody awaits an append_nowait future; reading its exception keeps asyncio from reporting it as
    # never retrieved (the failure itself is logged and observed by the writer).
    if not future.cancelled():
        future.exception()


class Ledger:
    """Appends records durably to one chain; see the module docstring for how commits are batched."""

    def __init__(
        self,
        store: LedgerStore,
        keys: LedgerKeys,
        *,
        chain_id: str,
        checkpoint_every_records: int = 1000,
        checkpoint_every_seconds: float = 60.0,
        max_batch_records: int = 4096,
        commit_timeout_seconds: float = 15.0,
        linger_seconds: float = 0.01,
        observer: CommitObserver | None = None,
    ) -> None:
        if checkpoint_every_records < 1 or checkpoint_every_seconds <= 0 or max_batch_records < 1:
            raise ConfigError("ledger: checkpoint intervals and batch size must be positive")
        if linger_seconds < 0:
            raise ConfigError("ledger: linger_seconds must not be negative")
        if not chain_id or len(chain_id) > 200:
            raise ConfigError("ledger: chain id must be 1 to 200 characters")
        if keys.signing_key is None:
            raise ConfigError("ledger: writing needs the signing key (checkpoints are signed)")
        self.store = store
        self.chain_id = chain_id
        self._keys = keys
        self._checkpoint_every_records = checkpoint_every_records
        self._checkpoint_every_seconds = checkpoint_every_seconds
        self._max_batch = max_batch_records
        self._commit_timeout = commit_timeout_seconds
        self._linger = linger_seconds
        self._queue: list[_Waiter] = []
        # Queued records somebody waits for (a durable record or a future): while 0, the queue may linger.
        self._pressing = 0
        # The timer that ends a linger; armed by the first unawaited record after a batch was taken.
        self._linger_timer: asyncio.TimerHandle | None = None
        self._linger_over = False
        self._wakeup: asyncio.Future[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        self._head = ChainHead()
        self._head_uncertain = False
        self._since_checkpoint = 0
        self._last_checkpoint_at = time.monotonic()
        self._checkpoint_due = False
        self._accepting = False
        self._writable = False
        self._observer = observer
        # Records queued, and records settled (committed or failed), ever: batches settle in order, so
        # flush() waits until the settled count reaches the queued count it saw.
        self._queued_total = 0
        self._settled_total = 0
        self._flushers: list[tuple[int, asyncio.Future[None]]] = []
        self._closing: asyncio.Future[None] | None = None
        # Records somebody waited for in the previous commit: 1 means a lone request (nothing else in
        # flight), see _commit.
        self._last_batch_pressing = 0
        self._lone = False  # the batch being committed is one record after such a batch

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.open()
        await self._reload_head()
        self._accepting = True
        self._writable = True
        self._last_checkpoint_at = time.monotonic()
        self._writer_task = asyncio.create_task(self._run_writer(), name=f"ledger-writer:{self.chain_id}")
        self._timer_task = asyncio.create_task(self._run_checkpoint_timer(), name="ledger-checkpoint-timer")

    async def close(self) -> None:
        """Stop taking records, commit what is queued, sign a final checkpoint, close the store.
        Idempotent: a second (or concurrent) call waits for the first one's work and does nothing more."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        # shield: a caller cancelled while waiting must not abort the final commit for everyone else.
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if not self._accepting and self._writer_task is None:
            await self.store.close()
            return
        self._accepting = False
        if self._timer_task is not None:
            self._timer_task.cancel()
            await asyncio.gather(self._timer_task, return_exceptions=True)
        self._wake()
        if self._writer_task is not None:
            await self._writer_task
            self._writer_task = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        try:
            async with self._commit_lock:
                if self._since_checkpoint or self._head_uncertain:
                    await self._commit([], force_checkpoint=True)
        finally:
            self._writable = False
            await self.store.close()

    def writable(self) -> bool:
        """True while the ledger takes records and its last commit succeeded (for /readyz)."""
        return self._accepting and self._writable

    # -- appending -------------------------------------------------------------------------------------
    async def append(self, draft: RecordDraft) -> AppendedRecord:
        """Record `draft`; returns once it is durable. Raises LedgerUnavailable if it may not be."""
        return await self._enqueue(draft, durable=True)

    def append_nowait(self, draft: RecordDraft) -> asyncio.Future[AppendedRecord]:
        """Queue `draft` behind every record appended before it and return at once. It is committed with
        the next batch but not fsynced on its own account (see the module docstring): only for records
        a crash may lose. The future (which nobody needs to await) resolves once it is committed.
        Raises LedgerUnavailable at once when the ledger is not taking records."""
        future = self._enqueue(draft, durable=False)
        future.add_done_callback(_retrieve)
        return future

    def append_unawaited(self, draft: RecordDraft, *, on_failure: Callable[[], None]) -> None:
        """`append_nowait` for a caller that never reads the result (the proxy's outcome and refusal
        records): no future, no AppendedRecord, no callbacks through the loop; `on_failure` is called
        once if the record cannot be committed. Raises LedgerUnavailable at once when the ledger is not
        taking records, and what `prepare` raises for a bad draft."""
        self._queue_prepared(self._prepare(draft), None, False, on_failure)

    def _enqueue(self, draft: RecordDraft, *, durable: bool) -> asyncio.Future[AppendedRecord]:
        prepared = self._prepare(draft)
        future: asyncio.Future[AppendedRecord] = asyncio.get_running_loop().create_future()
        self._queue_prepared(prepared, future, durable, None)
        return future

    def _prepare(self, draft: RecordDraft) -> PreparedRecord:
        try:
            prepared = prepare(draft)
            if not self._accepting:
                raise LedgerUnavailable("the disclosure ledger is not accepting records", reason="ledger-closed")
        except Exception:
            if self._observer is not None:
                self._observer.failed(1)
            raise
        return prepared

    def _queue_prepared(self, prepared: PreparedRecord, future: asyncio.Future[AppendedRecord] | None,
                        durable: bool, on_failure: Callable[[], None] | None) -> None:
        self._queue.append((prepared, future, durable, on_failure))
        self._queued_total += 1
        if future is None and not durable:
            # Nobody waits for it: no wake-up, only a bound on how long it may linger (see _lingers).
            if self._linger_timer is None:
                self._linger_timer = asyncio.get_running_loop().call_later(self._linger, self._end_linger)
            return
        self._pressing += 1
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _end_linger(self) -> None:
        self._linger_over = True
        self._wake()

    def _lingers(self) -> bool:
        """True while the queue holds only records nobody waits for and nothing asks for a commit."""
        return (
            self._pressing == 0
            and not self._linger_over
            and self._accepting
            and not self._flushers
            and len(self._queue) < self._max_batch
        )

    def _take_batch(self) -> list[_Waiter]:
        batch = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        pressing = sum(1 for _prepared, future, durable, _cb in batch if durable or future is not None)
        self._pressing -= pressing
        self._last_batch_pressing, previous = pressing, self._last_batch_pressing
        self._lone = previous <= 1 and len(batch) == 1
        if self._linger_timer is not None and not self._queue:
            self._linger_timer.cancel()
            self._linger_timer = None
            self._linger_over = False
        return batch

    async def flush(self) -> None:
        """Wait until every record queued so far is committed (or has failed); raises nothing."""
        if self._settled_total < self._queued_total:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._flushers.append((self._queued_total, done))
            self._wake()  # lingering records are committed now
            await done

    def _settled(self, records: int) -> None:
        """`records` more queued records are committed or failed (called once per dequeued batch)."""
        self._settled_total += records
        if self._flushers:
            waiting = []
            for target, done in self._flushers:
                if target <= self._settled_total:
                    if not done.done():
                        done.set_result(None)
                else:
                    waiting.append((target, done))
            self._flushers = waiting

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _run_writer(self) -> None:
        while True:
            if (not self._queue or self._lingers()) and not self._checkpoint_due:
                if not self._accepting:
                    return
                self._wakeup = asyncio.get_running_loop().create_future()
                await self._wakeup
                self._wakeup = None
                continue
            batch = self._take_batch()
            try:
                async with self._commit_lock:
                    await self._commit(batch, force_checkpoint=False)
            except Exception as exc:
                # A bug while sealing must not kill the writer and leave later appends waiting forever.
                log.error("ledger writer failed on a batch: %s", type(exc).__name__)
                self._head_uncertain = True
                self._writable = False
                self._fail(batch, "the disclosure ledger failed")
            except BaseException:
                # Cancelled mid-commit: nobody may be left waiting for an answer that will not come.
                self._fail(batch, "the ledger writer stopped")
                self._fail(self._queue, "the ledger writer stopped")
                self._settled(len(batch) + len(self._queue))
                self._queue.clear()
                self._pressing = 0
                raise
            self._settled(len(batch))

    async def _run_checkpoint_timer(self) -> None:
        while True:
            await asyncio.sleep(self._checkpoint_every_seconds)
            if self._since_checkpoint and time.monotonic() - self._last_checkpoint_at >= self._checkpoint_every_seconds:
                self._checkpoint_due = True
                self._wake()

    async def _reload_head(self) -> None:
        self._head = await asyncio.wait_for(self.store.load_head(self.chain_id), self._commit_timeout)
        self._since_checkpoint = self._head.sequence - self._head.checkpoint_sequence
        self._head_uncertain = False

    def _fail(self, batch: Sequence[_Waiter], why: str) -> None:
        if batch and self._observer is not None:
            self._observer.failed(len(batch))
        for _prepared, future, _durable, on_failure in batch:
            if future is not None:
                if not future.done():
                    future.set_exception(
                        LedgerUnavailable(f"{why}; nothing may be sent", reason="ledger-commit-failed"))
            elif on_failure is not None:
                try:
                    on_failure()
                except Exception as exc:  # a caller's report must not stop the others being told
                    log.error("ledger failure callback raised %s", type(exc).__name__)

    async def _commit(self, batch: Sequence[_Waiter], *, force_checkpoint: bool) -> None:
        """Seal `batch` onto the chain (plus a checkpoint when due) and store it in one transaction."""
        try:
            if self._head_uncertain:
                await self._reload_head()
        except Exception as exc:
            self._writable = False
            log.warning("ledger head could not be re-read: %s", type(exc).__name__)
            self._fail(batch, "the disclosure ledger is unavailable")
            return
        head = self._head
        stamp = now_text()
        # Time never runs backwards inside a chain, so a time cut-off is always a prefix of it.
        stamp = max(stamp, head.time)
        sequence, prev_hash = head.sequence, head.hash
        rows: list[Row] = []
        # (future, result) for the records someone holds a future for; append_unawaited ones have none.
        results: list[tuple[asyncio.Future[AppendedRecord], AppendedRecord]] = []
        chain = self.chain_id
        durable = False
        # One read of the random source for the whole batch (see _new_id for the id's layout).
        randomness = os.urandom(8 * len(batch)).hex()
        time_ns = time.time_ns
        for index, (prepared, future, must_sync, _on_failure) in enumerate(batch):
            durable = durable or must_sync
            sequence += 1
            record_id = f"{time_ns():016x}{randomness[16 * index:16 * index + 16]}"
            row, prev_hash = seal_row(prepared, record_id, chain, sequence, stamp, prev_hash)
            rows.append(row)
            if future is not None:
                results.append((future, AppendedRecord(record_id, chain, sequence, stamp, prev_hash)))
        since = self._since_checkpoint + len(batch)
        checkpoints: list[Row] = []
        checkpoint_now = since > 0 and (
            force_checkpoint
            or self._checkpoint_due
            or since >= self._checkpoint_every_records
            or time.monotonic() - self._last_checkpoint_at >= self._checkpoint_every_seconds
        )
        if checkpoint_now:
            sequence += 1
            sealed = self._seal_checkpoint(sequence, stamp, prev_hash, covered=since)
            rows.append(sealed.row)
            checkpoints.append(_checkpoint_row(sealed))
            prev_hash = sealed.hash
        if not rows:
            return
        # A signed checkpoint is always fsynced: it is what a truncated tail is checked against.
        durable = durable or checkpoint_now
        commit_started = time.perf_counter()
        try:
            # An unsynced batch of one record after a batch that held at most one record somebody waited
            # for commits inline when the store can: with one request in flight the thread hop cost more
            # CPU than the commit. Under load (batches of several records) it stays on the store's thread,
            # which overlaps it with the loop's work on the other core and lets records queue behind it
            # (inline, throughput at 32 connections fell ~10 %). asyncio.timeout rather than wait_for: no
            # extra task per commit.
            lone, self._lone = self._lone, False
            if durable or not lone or not self.store.write_unsynced_now(rows, checkpoints):
                async with asyncio.timeout(self._commit_timeout):
                    await self.store.write(rows, checkpoints, sync=durable)
        except Exception as exc:
            # Failed or uncertain (a timeout or a lost connection may hide a commit that landed): this
            # batch is refused, and the next one starts from the head as stored.
            self._head_uncertain = True
            self._writable = False
            log.warning("ledger commit failed (%d records): %s", len(batch), type(exc).__name__)
            self._fail(batch, "the disclosure ledger could not make the record durable")
            return
        self._head = ChainHead(sequence, prev_hash, stamp, sequence if checkpoint_now else head.checkpoint_sequence)
        if checkpoint_now:
            self._since_checkpoint = 0
            self._last_checkpoint_at = time.monotonic()
            self._checkpoint_due = False
        else:
            self._since_checkpoint = since
        self._writable = True
        if self._observer is not None:
            self._observer.committed(len(rows), time.perf_counter() - commit_started)
        for future, result in results:
            if not future.done():
                future.set_result(result)

    def _seal_checkpoint(self, sequence: int, stamp: str, prev_hash: str, *, covered: int) -> SealedRecord:
        if self._keys.signing_key is None:
            raise ConfigError("ledger: a signing key is needed to write checkpoints")
        return seal(
            RecordDraft(kind="checkpoint", detail={"records_since_previous": covered}),
            record_id=_new_id(), chain=self.chain_id, sequence=sequence, time=stamp, prev_hash=prev_hash,
            signing_key=self._keys.signing_key,
        )

    # -- reading and pruning ---------------------------------------------------------------------------
    async def query(self, query: LedgerQuery) -> list[dict[str, Any]]:
        """Stored records matching `query`, including every record appended (even with append_nowait)
        before the call: it waits for the queue so a reader sees its own writes."""
        await self.flush()
        return await self.store.query(query)

    async def prune(self, before: datetime) -> PruneResult:
        """Delete every chain's records older than `before` and record a signed prune record (in this
        chain) that anchors where each chain now starts, in the same transaction."""
        if not self._accepting:
            raise LedgerUnavailable("the disclosure ledger is not accepting records", reason="ledger-closed")
        cutoff = format_time(before)
        prior = {}
        async with self.store.snapshot() as snap:
            for record in await snap.fetch_kind("prune"):
                prior.update((record.get("detail") or {}).get("anchors", {}))
        async with self._commit_lock:
            if self._head_uncertain:
                await self._reload_head()
            outcome: dict[str, Any] = {}

            def build(bounds: Sequence[ChainBounds]) -> tuple[Sequence[Row], Sequence[Row]]:
                anchors: dict[str, dict[str, Any]] = dict(prior)
                removed = 0
                for b in bounds:
                    if b.cut_sequence is not None and b.cut_hash is not None:
                        anchors[b.chain] = {"sequence": b.cut_sequence, "hash": b.cut_hash}
                        removed += b.cut_count
                    elif b.first_sequence > 1:
                        anchors[b.chain] = {"sequence": b.first_sequence - 1, "hash": b.first_prev_hash}
                    else:
                        anchors.pop(b.chain, None)
                head = self._head
                stamp = max(now_text(), head.time)
                draft = RecordDraft(kind="prune", detail={"before": cutoff, "anchors": anchors, "removed": removed})
                sealed = seal(draft, record_id=_new_id(), chain=self.chain_id, sequence=head.sequence + 1,
                              time=stamp, prev_hash=head.hash, signing_key=self._keys.signing_key)
                outcome.update(sealed=sealed, anchors=anchors, removed=removed, stamp=stamp)
                return [sealed.row], []

            if self._keys.signing_key is None:
                raise ConfigError("ledger: a signing key is needed to prune")
            try:
                await self.store.prune(cutoff, build)
            except Exception:
                self._head_uncertain = True
                raise
            sealed = outcome["sealed"]
            self._head = ChainHead(sealed.record["sequence"], sealed.hash, outcome["stamp"],
                                   self._head.checkpoint_sequence)
            self._since_checkpoint += 1
            self._checkpoint_due = True
            self._wake()
            return PruneResult(
                removed=outcome["removed"],
                anchors=outcome["anchors"],
                record=AppendedRecord(sealed.record["id"], self.chain_id, sealed.record["sequence"],
                                      outcome["stamp"], sealed.hash),
            )


def _new_id() -> str:
    """32 hex: nanosecond time then 64 random bits. Unique across processes, and time-ordered so the
    id index grows at its right edge instead of splitting random pages (a third cheaper per insert)."""
    return f"{time.time_ns():016x}{os.urandom(8).hex()}"


def _checkpoint_row(sealed: SealedRecord) -> Row:
    return (sealed.record["chain"], sealed.record["sequence"], orjson.dumps(sealed.record).decode())
