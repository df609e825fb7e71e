"""The ledger writer: one task, one queue, pipelined adaptive group commit, one hash chain per process.

`append()` stamps a record with the time of its append, queues it and waits. The writer task never
sleeps on a timer: each time records arrive it seals them on the loop (chain position, hash, row) and
submits the rows to the store at once, also while an earlier commit is still running. The store's
writer takes everything submitted during its previous commit as one transaction the moment that commit
ends, without a round trip through the event loop (gateway.ledger.store), so a lone request pays one
fsync and no added wait, and batches grow with load by themselves. Each waiter is released when its own
transaction is durable.

A failed or uncertain commit (an error, or the commit watchdog: no answer within
`commit_timeout_seconds`) fails its waiters with LedgerUnavailable, and every record sealed after it
fails too (StoreBroken: they were chained onto it, and the store refuses them); the writer then waits
until nothing is in flight and re-reads the chain head from the store before sealing anything more, so
the chain continues correctly whether the failed commit landed or not and never forks or skips.

Records nobody waits for that rode in a failed commit are sealed again (at most _REQUEUE_LIMIT times)
unless the re-read head shows that commit landed. They commit before anything queued after them, in
transactions of their own with nothing sealed behind them until they are reported, so a record the store
refuses every time fails only itself, never another request's disclosure; retries that fail together are
split in halves, each half in a transaction of its own (a bisection: one record the store refuses among n
costs some 2 log2(n) commits, not n). Records sealed again keep their append order however the failed
commits are reported (the PostgreSQL store reports the commits it never sent before the hung one it cut).
While the head cannot be re-read they wait (each failed re-read counting as one
of their retries, so only some tens of milliseconds with the re-read back-off) instead of being reported
lost: their commit may have landed.

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

A `CommitObserver` (optional) hears of every commit (records, seconds), every failed record, and every
record a commit the watchdog had failed wrote after all (logged too: see _landed_late), so the gateway's
metrics are fed without this module importing them.

Every `checkpoint_every_records` records, after `checkpoint_every_seconds` with unsigned records, and at
close, the writer adds an Ed25519-signed checkpoint record to the batch it is committing.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson

from gateway.errors import ConfigError, LedgerUnavailable, StoreBroken
from gateway.keys import LedgerKeys
from gateway.ledger.records import (
    COLUMNS,
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

# Where a sealed row holds its record id and sequence (the stored column order).
_ID = COLUMNS.index("id")
_SEQUENCE = COLUMNS.index("sequence")
_HASH = COLUMNS.index("hash")

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

    def landed_late(self, records: int) -> None:
        """`records` rows the commit watchdog had already failed (their requests refused) were committed
        after all: they are in the ledger although their appends were reported as failed."""


# A queued record, the future its appender holds (None for append_unawaited records), whether its batch
# must be fsynced before it counts as committed (False for nowait records), what to call if it fails
# (append_unawaited only), and the time of its append.
_Waiter = tuple[PreparedRecord, "asyncio.Future[AppendedRecord] | None", bool, "Callable[[], None] | None", str]


@dataclass(slots=True, eq=False)
class _Submission:
    """Sealed records handed to the store and not yet reported: what to release or fail when they are."""

    batch: Sequence[_Waiter]
    results: list[tuple[asyncio.Future[AppendedRecord], AppendedRecord]]
    rows: int
    checkpointed: bool
    sealed: Sequence[Row] = ()  # its rows, for the report of a commit that lands after the watchdog
    deadline: float = 0.0  # loop time by which the store must have reported it (the commit watchdog)
    number: int = 0  # submissions are numbered in sealing order: the append order of their records
    settled: bool = False
    retry: bool = False  # records sealed again after a failed commit, alone in their transaction (_take_retries)


def _unawaited(waiter: _Waiter) -> bool:
    """An append_unawaited record: no future, only a callback for its failure."""
    return waiter[1] is None and waiter[3] is not None


# How many times a record nobody waits for is sealed again after the commit it rode in failed, before it
# is reported lost: enough for a passing fault; a record the store refuses every time (a full disk, a
# value the store rejects) must not be retried for ever, nor hold close() and flush(). A head re-read
# that fails while it waits to be sealed again counts as one of them (see _head_unread); a retry that
# failed with others does not (it is split in halves, at most log2(max_batch_records) times: _settle).
_REQUEUE_LIMIT = 2


def _retries_left(waiter: _Waiter) -> bool:
    on_failure = waiter[3]
    return not isinstance(on_failure, _Requeued) or on_failure.times < _REQUEUE_LIMIT


def _group(waiter: _Waiter) -> int:
    on_failure = waiter[3]
    return on_failure.group if isinstance(on_failure, _Requeued) else 0


def _order(waiter: _Waiter) -> tuple[int, int]:
    on_failure = waiter[3]
    assert isinstance(on_failure, _Requeued)
    return on_failure.order


class _Requeued:
    """The failure callback of a record sealed again, with how often it has been, where it stands in append
    order (the number of the submission it first rode in, its place there), and the group it is tried with
    (0: any record not yet split off; else the half of a failed retry it is in); calls the original."""

    __slots__ = ("group", "on_failure", "order", "times")

    def __init__(self, on_failure: Callable[[], None], times: int, order: tuple[int, int], group: int) -> None:
        self.on_failure = on_failure
        self.times = times
        self.order = order
        self.group = group

    def __call__(self) -> None:
        self.on_failure()


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
        chain_wait_seconds: float = 10.0,
        observer: CommitObserver | None = None,
    ) -> None:
        if checkpoint_every_records < 1 or checkpoint_every_seconds <= 0 or max_batch_records < 1:
            raise ConfigError("ledger: checkpoint intervals and batch size must be positive")
        if linger_seconds < 0:
            raise ConfigError("ledger: linger_seconds must not be negative")
        if not commit_timeout_seconds > 0:
            raise ConfigError("ledger: commit_timeout_seconds must be positive")
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
        store.max_batch_rows = max_batch_records
        self._commit_timeout = commit_timeout_seconds
        self._linger = linger_seconds
        self._chain_wait = chain_wait_seconds
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
        # After a failed head re-read the next attempt waits (loop time), doubling up to the commit
        # timeout: a store that refuses at once (PostgreSQL down) must not be hammered by the writer.
        self._reload_backoff = 0.0
        self._reload_after = 0.0
        self._since_checkpoint = 0
        self._last_checkpoint_at = time.monotonic()
        self._checkpoint_due = False
        # The other chains' last signed points as last read (chain -> {"sequence", "hash"} of its newest
        # checkpoint): every checkpoint signs them, so deleting or cutting a chain another writer has seen
        # fails verification (docs/ledger.md). Never another chain's unsigned tail: a writer cannot vouch
        # for records nobody signed (a forged chain, a rewritten tail; review rv-verify R0).
        # Read at start, on every checkpoint timer tick and before the final checkpoint; a read that fails
        # keeps the previous view (what a checkpoint signs is then older, never wrong).
        self._other_heads: dict[str, dict[str, Any]] = {}
        self._signed_heads: dict[str, dict[str, Any]] = {}  # the view the last checkpoint signed
        # Another chain signed records since the last checkpoint here: the next timer tick writes one even
        # with nothing unsigned here, so an idle gateway soon signs, say, the chain of a `gateway subject`
        # command run while it serves (deleting that chain then fails verification).
        self._heads_moved = False
        # The records past the chain's last checkpoint when this writer started (a crashed predecessor's tail,
        # or records someone put there): the last of them, and when this writer found them. The checkpoint
        # that first covers them says so (`detail.inherited`), so the verifier holds them to the tail rule as
        # of this start rather than taking them as signed by this writer (review rv-verify R0).
        self._inherited_through = 0
        self._started_stamp = ""
        # Also read again after every checkpoint (in the background), so the next one signs a fresh view.
        self._heads_task: asyncio.Task[None] | None = None
        self._accepting = False
        self._writable = False
        self._observer = observer
        # Records queued, and records settled (committed or failed), ever: batches settle in order, so
        # flush() waits until the settled count reaches the queued count it saw.
        self._queued_total = 0
        self._settled_total = 0
        self._flushers: list[tuple[int, asyncio.Future[None]]] = []
        self._closing: asyncio.Future[None] | None = None
        # Set while start() runs: close() waits for it (see _close) rather than closing the store under a
        # claim of the chain's lease that may still succeed.
        self._starting: asyncio.Future[None] | None = None
        # Records somebody waited for in the previous commit: 1 means a lone request (nothing else in
        # flight), see _commit.
        self._last_batch_pressing = 0
        self._lone = False  # the batch being committed is one record after such a batch
        # Submitted to the store and not yet reported, in submission order (the store reports in order).
        self._in_flight: deque[_Submission] = deque()
        self._drain_waiters: list[asyncio.Future[None]] = []
        # One timer for the oldest submission's deadline (not one per submission): see _check_watchdog.
        self._watchdog: asyncio.TimerHandle | None = None
        # One bound method for every submission: the stores group a transaction's submissions by their
        # callback, and `self._written` read anew is a new object each time.
        self._on_written = self._written
        # Records nobody waits for that rode in a commit that failed (or were chained onto one), to be sealed
        # again: ahead of everything in the queue (appended before all of it), each batch of them alone in
        # flight and in its own transaction (_take_retries), so a record the store always refuses fails no
        # other request's disclosure. They wait here, not reported lost, while the head cannot be re-read.
        self._retries: list[_Waiter] = []
        # Numbers submissions (in sealing, hence append, order) and the halves of failed retries: records
        # queued again are kept sorted by where they first rode, whatever order their failures are reported in.
        self._submissions = 0
        self._groups = 0
        # Wakes the writer when the head re-read may be tried again for waiting retries (_head_unread).
        self._retry_timer: asyncio.TimerHandle | None = None
        # Records nobody waits for that rode in a commit that failed or was given up on, queued again:
        # id(prepared) -> (prepared, the sequence and hash of that commit's last row). That commit may
        # have landed; the re-read head tells (see _drop_landed). Holding `prepared` keeps its id from
        # being reused while it is here.
        self._uncertain: dict[int, tuple[PreparedRecord, int, str]] = {}

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, take the chain's lease and read its head. A start() that fails gives everything
        back (the store is closed, the lease let go) and may be called again, e.g. once another writer has
        let go of the chain; a ledger that was started (or closed) cannot be started again."""
        if self._closing is not None:
            raise RuntimeError("ledger: this ledger was closed; a new Ledger is needed to write again")
        if self._writer_task is not None or self._starting is not None:
            raise RuntimeError("ledger: already started")
        starting = self._starting = asyncio.get_running_loop().create_future()
        try:
            try:
                await self.store.open()
                await self.store.claim_chain(self.chain_id, self._chain_wait)
                await self._reload_head()
                self._inherited_through = self._head.sequence if self._since_checkpoint else 0
                self._started_stamp = now_text()
                await self._refresh_heads()
                if self._closing is not None:
                    # close() was called while this start waited (for the chain's lease, say) and waits for
                    # it: what was taken is given back here, and the caller told.
                    raise RuntimeError("ledger: closed while it was starting")
            except BaseException:
                await self.store.close()  # and with it the chain's lease; a later open() starts afresh
                raise
        finally:
            self._starting = None
            starting.set_result(None)
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
        if self._starting is not None:
            # A start() in progress ends within its chain wait and gives back what it took (it sees
            # _closing); closing the store under its claim could leave a lease taken after the close.
            await asyncio.shield(self._starting)
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
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if self._heads_task is not None:
            await asyncio.gather(self._heads_task, return_exceptions=True)
            self._heads_task = None
        try:
            async with self._commit_lock:
                await self._drained()
                if self._since_checkpoint or self._head_uncertain:
                    await self._refresh_heads()
                    await self._submit([], force_checkpoint=True)
                    await self._drained()
        finally:
            self._writable = False
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
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
        # The record's time is that of its append (not of the commit that takes it).
        self._queue.append((prepared, future, durable, on_failure, now_text()))
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
        pressing = sum(1 for _prepared, future, durable, _cb, _t in batch if durable or future is not None)
        self._pressing -= pressing
        self._last_batch_pressing, previous = pressing, self._last_batch_pressing
        self._lone = previous <= 1 and len(batch) == 1
        if self._linger_timer is not None and not self._queue:
            self._linger_timer.cancel()
            self._linger_timer = None
            self._linger_over = False
        return batch

    def _take_retries(self) -> list[_Waiter]:
        """The next records to seal again: the leading run of those in the same group as the first (the
        half of a failed retry it is in, or those not split off yet), at most a batch."""
        retries = self._retries
        group = _group(retries[0])
        limit = min(len(retries), self._max_batch)
        count = 1
        while count < limit and _group(retries[count]) == group:
            count += 1
        batch = retries[:count]
        del retries[:count]
        self._last_batch_pressing, previous = 0, self._last_batch_pressing
        self._lone = previous <= 1 and len(batch) == 1
        return batch

    def _reload_due(self) -> bool:
        """Whether a head re-read may be tried now (its back-off has run out, or the ledger is closing)."""
        return not self._accepting or asyncio.get_running_loop().time() >= self._reload_after

    def _wake_for_retries(self) -> None:
        self._retry_timer = None
        self._wake()

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
            # After a failure nothing is sealed until every submission has been reported and the head
            # re-read: what is in flight was chained onto the failed commit. Nothing is sealed behind
            # records sealed again either (a retry), until their commit is reported: were it to fail, what
            # was chained onto it would fail too.
            blocked = bool(self._in_flight) and (self._head_uncertain or self._in_flight[0].retry)
            retry_due = bool(self._retries) and not self._in_flight and (
                not self._head_uncertain or self._reload_due())
            idle = (not self._queue or self._lingers()) and not self._checkpoint_due and not retry_due
            if blocked or idle:
                if idle and not self._accepting and not self._in_flight and not self._retries:
                    return
                self._wakeup = asyncio.get_running_loop().create_future()
                await self._wakeup
                self._wakeup = None
                continue
            batch: list[_Waiter] = []
            retry = False
            try:
                async with self._commit_lock:
                    # Taken under the lock (free but for prune, which holds it and drains), and after the head
                    # is known: prune never sees a batch taken and not yet sealed, and the records queued again
                    # are checked against a re-read head (_drop_landed) before any of them is taken.
                    if self._head_uncertain and not await self._head_known():
                        if self._queue and not self._lingers():
                            # Nothing can be sealed: refused at once (503), not held until the head can be read.
                            batch = self._take_batch()
                            self._fail(batch, "the disclosure ledger is unavailable")
                            self._settled(len(batch))
                        continue
                    retry = bool(self._retries)
                    batch = self._take_retries() if retry else self._take_batch()
                    await self._submit(batch, force_checkpoint=False, retry=retry)
                if retry and not self._in_flight:
                    # Committed inline (SQLite, a lone unsynced record): let the loop run before the next
                    # retry, so retries one after another do not hold it for all of theirs.
                    batch = []
                    await asyncio.sleep(0)
            except Exception as exc:
                # A bug while sealing must not kill the writer and leave later appends waiting forever.
                log.error("ledger writer failed on a batch: %s", type(exc).__name__)
                self._head_uncertain = True
                self._writable = False
                self._fail(batch, "the disclosure ledger failed")
                self._settled(len(batch))
            except BaseException:
                # Cancelled: nobody may be left waiting for an answer that will not come. What was in flight
                # goes first (it may queue records again), then everything queued.
                self._abandon_in_flight("the ledger writer stopped")
                self._fail(batch, "the ledger writer stopped")
                self._fail(self._retries, "the ledger writer stopped")
                self._fail(self._queue, "the ledger writer stopped")
                self._settled(len(batch) + len(self._retries) + len(self._queue))
                self._retries.clear()
                self._queue.clear()
                self._pressing = 0
                raise

    async def _drained(self) -> None:
        """Wait until every submission has been reported (or failed by the watchdog)."""
        while self._in_flight:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(done)
            await done

    async def _run_checkpoint_timer(self) -> None:
        while True:
            await asyncio.sleep(self._checkpoint_every_seconds)
            await self._refresh_heads()
            if self._others_moved():
                self._heads_moved = True
            if not self._writable or self._heads_moved or (
                    self._since_checkpoint
                    and time.monotonic() - self._last_checkpoint_at >= self._checkpoint_every_seconds):
                self._checkpoint_due = True
                self._wake()

    async def _head_known(self) -> bool:
        """True once the chain head is known: after a failure it is re-read first, unless a recent attempt
        failed and its back-off has not run out (while the ledger takes records; closing, it tries once more
        for the final checkpoint), and the records queued again whose failed commit landed after all are
        then dropped as stored (_drop_landed). False if it is not known (see _head_unread)."""
        if not self._head_uncertain:
            return True
        attempted = self._reload_due()
        if attempted and await self._head_reloaded():
            if self._uncertain:
                self._drop_landed()
            return True
        # A due checkpoint waits for the timer to ask again, so the writer does not spin.
        self._checkpoint_due = False
        self._head_unread(attempted=attempted)
        return False

    def _head_unread(self, *, attempted: bool) -> None:
        """The head is not known: its re-read failed (`attempted`) or is backing off. The records queued
        again keep waiting rather than being reported lost: the commit they rode in may have landed, which
        only a head read can tell, and sealing them again needs that head anyway. Each failed attempt counts
        as one of their retries (_REQUEUE_LIMIT), so they do not wait for ever, nor hold flush(); one out of
        retries is reported lost, and so is everything queued once the ledger is closing."""
        if not self._accepting:
            gone = [*self._retries, *self._queue]
            self._retries.clear()
            self._queue.clear()
            self._pressing = 0
        elif not attempted or not self._retries:
            return
        else:
            gone = [waiter for waiter in self._retries if not _retries_left(waiter)]
            self._retries = [self._requeued(waiter, True) for waiter in self._retries if _retries_left(waiter)]
            if self._retries:
                if self._retry_timer is not None:
                    self._retry_timer.cancel()
                self._retry_timer = asyncio.get_running_loop().call_at(self._reload_after, self._wake_for_retries)
        unsure = sum(1 for waiter in gone if id(waiter[0]) in self._uncertain)
        if unsure:
            # Said as it is: not known to be lost. The outcome log line (outcome_not_recorded) follows.
            log.warning("ledger: %d record(s) of a failed commit given up on while the chain head could not be "
                        "re-read (chain %s): whether they were stored is unknown", unsure, self.chain_id)
        self._fail(gone, "the disclosure ledger is unavailable")
        self._settled(len(gone))

    async def _head_reloaded(self) -> bool:
        """Re-read the head now; False (and the next attempt backed off) if it could not be read."""
        loop = asyncio.get_running_loop()
        try:
            await self._reload_head()
        except Exception as exc:
            self._writable = False
            self._reload_backoff = min(self._commit_timeout, max(0.01, 2 * self._reload_backoff))
            self._reload_after = loop.time() + self._reload_backoff
            log.warning("ledger head could not be re-read: %s", type(exc).__name__)
            return False
        self._reload_backoff = 0.0
        return True

    async def _reload_head(self) -> None:
        self._head = await asyncio.wait_for(self.store.load_head(self.chain_id), self._commit_timeout)
        self._since_checkpoint = self._head.sequence - self._head.checkpoint_sequence
        self._head_uncertain = False

    @staticmethod
    def _requeued(waiter: _Waiter, tried: bool, order: tuple[int, int] = (0, 0), group: int | None = None) -> _Waiter:
        """`waiter` to be queued again; `tried` counts against its retries (False: the store refused the
        commit without trying it, as chained onto a failed one, or it failed with others and is split off
        to be tried without them); `order`: where it first rode (kept once set); `group`: the half of a
        failed retry it is tried with from now on (None: the one it had)."""
        prepared, future, durable, on_failure, stamp = waiter
        assert on_failure is not None
        if isinstance(on_failure, _Requeued):
            again = _Requeued(on_failure.on_failure, on_failure.times + tried, on_failure.order,
                              on_failure.group if group is None else group)
            return (prepared, future, durable, again, stamp)
        return (prepared, future, durable, _Requeued(on_failure, int(tried), order, group or 0), stamp)

    def _drop_landed(self) -> None:
        """Just after the head was re-read: the records queued again from failed commits that landed after
        all are stored already. They leave the retries as settled; the others are sealed again. A head
        re-read that failed in between changes nothing: the entries wait for one that succeeds.

        Nothing was sealed since those commits failed, and the store writes in order and refuses what was
        chained onto a failed commit, so the stored head is the last row of the last of them that landed,
        or none of them landed. The head's hash must match that row's (a sequence alone could be another
        writer's row on the same chain): then it and every failed commit before it in the chain landed."""
        uncertain, self._uncertain = self._uncertain, {}
        head = self._head
        frontier = head.sequence if any(
            sequence == head.sequence and digest == head.hash for _p, sequence, digest in uncertain.values()
        ) else 0

        def landed(waiter: _Waiter) -> bool:
            entry = uncertain.get(id(waiter[0]))  # the entry holds its record, so the id names only it
            return entry is not None and entry[1] <= frontier

        kept = [waiter for waiter in self._retries if not landed(waiter)]
        stored = len(self._retries) - len(kept)
        if stored:
            self._retries = kept
            log.info("ledger: %d record(s) of a failed commit were found stored (chain %s, head %d); "
                     "not written again", stored, self.chain_id, frontier)
            self._settled(stored)

    def _fail(self, batch: Sequence[_Waiter], why: str, cause: BaseException | None = None) -> None:
        if batch and self._observer is not None:
            self._observer.failed(len(batch))
        # The watchdog's own error names the timeout; any other cause is a failed commit.
        reason = cause.reason if isinstance(cause, LedgerUnavailable) else "ledger-commit-failed"
        for _prepared, future, _durable, on_failure, _stamp in batch:
            if future is not None:
                if not future.done():
                    future.set_exception(
                        StoreBroken(f"{why}; nothing may be sent", reason="ledger-store-broken")
                        if isinstance(cause, StoreBroken) else
                        LedgerUnavailable(f"{why}; nothing may be sent", reason=reason))
            elif on_failure is not None:
                try:
                    on_failure()
                except Exception as exc:  # a caller's report must not stop the others being told
                    log.error("ledger failure callback raised %s", type(exc).__name__)

    async def _submit(self, batch: list[_Waiter], *, force_checkpoint: bool, retry: bool = False) -> None:
        """Seal `batch` onto the chain (plus a checkpoint when due, unless it is a `retry`: records sealed
        again commit with nothing else) and hand it to the store as one unit, without waiting for the
        commit; `_written` settles it."""
        if self._head_uncertain and not await self._head_known():
            # Nothing can be sealed: refuse the batch. Once closing, everything queued was refused too.
            self._fail(batch, "the disclosure ledger is unavailable")
            self._settled(len(batch))
            return
        head = self._head
        stamp = head.time
        sequence, prev_hash = head.sequence, head.hash
        rows: list[Row] = []
        # (future, result) for the records someone holds a future for; append_unawaited ones have none.
        results: list[tuple[asyncio.Future[AppendedRecord], AppendedRecord]] = []
        chain = self.chain_id
        durable = False
        # One read of the random source for the whole batch (see _new_id for the id's layout).
        randomness = os.urandom(8 * len(batch)).hex()
        time_ns = time.time_ns
        for index, (prepared, future, must_sync, _on_failure, appended_at) in enumerate(batch):
            durable = durable or must_sync
            sequence += 1
            # Time never runs backwards inside a chain, so a time cut-off is always a prefix of it.
            if appended_at > stamp:
                stamp = appended_at
            record_id = f"{time_ns():016x}{randomness[16 * index:16 * index + 16]}"
            row, prev_hash = seal_row(prepared, record_id, chain, sequence, stamp, prev_hash)
            rows.append(row)
            if future is not None:
                results.append((future, AppendedRecord(record_id, chain, sequence, stamp, prev_hash)))
        since = self._since_checkpoint + len(batch)
        checkpoints: list[Row] = []
        # After a failure, a due checkpoint is written even with nothing unsigned: it is the probe that
        # tells, without traffic, that the store commits again (/readyz), once per timer period.
        probe = self._checkpoint_due and not self._writable
        # Records sealed again carry no checkpoint: their transaction holds nothing else (see _retries).
        checkpoint_now = not retry and (probe or (self._checkpoint_due and self._heads_moved) or (since > 0 and (
            force_checkpoint
            or self._checkpoint_due
            or since >= self._checkpoint_every_records
            or time.monotonic() - self._last_checkpoint_at >= self._checkpoint_every_seconds
        )))
        if checkpoint_now:
            sequence += 1
            stamp = max(stamp, now_text())
            sealed = self._seal_checkpoint(sequence, stamp, prev_hash, covered=since)
            rows.append(sealed.row)
            checkpoints.append(_checkpoint_row(sealed))
            prev_hash = sealed.hash
        if not rows:
            self._checkpoint_due = False  # nothing unsigned to sign: a due checkpoint must not spin the writer
            return
        # A signed checkpoint is always fsynced: it is what a truncated tail is checked against.
        durable = durable or checkpoint_now
        # The head once this lands; what is sealed next is chained onto it (pipelining). A failure
        # re-reads the head as stored before anything more is sealed.
        self._head = ChainHead(sequence, prev_hash, stamp, sequence if checkpoint_now else head.checkpoint_sequence)
        if checkpoint_now:
            self._since_checkpoint = 0
            self._last_checkpoint_at = time.monotonic()
            self._checkpoint_due = False
            self._heads_moved = False
            if self._accepting and (self._heads_task is None or self._heads_task.done()):
                self._heads_task = asyncio.create_task(self._refresh_heads(), name="ledger-heads")
        else:
            self._since_checkpoint = since
        self._submissions += 1
        submission = _Submission(batch, results, len(rows), checkpoint_now, rows, retry=retry,
                                 number=self._submissions)
        # An unsynced batch of one record after a batch that held at most one record somebody waited for
        # commits inline when the store can (nothing in flight): with one request in flight the thread
        # hop cost more CPU than the commit. Under load it stays on the store's writer, which overlaps it
        # with the loop's work on the other core and lets records queue behind it.
        lone, self._lone = self._lone, False
        if not durable and lone and not self._in_flight:
            commit_started = time.perf_counter()
            try:
                inline = self.store.write_unsynced_now(rows, checkpoints)
            except Exception as exc:
                self._settle(submission, exc, time.perf_counter() - commit_started)
                return
            if inline:
                self._settle(submission, None, time.perf_counter() - commit_started)
                return
        loop = asyncio.get_running_loop()
        submission.deadline = loop.time() + self._commit_timeout
        self._in_flight.append(submission)
        if self._watchdog is None:
            self._watchdog = loop.call_at(submission.deadline, self._check_watchdog)
        try:
            self.store.submit(submission, rows, checkpoints, durable, self._on_written)
        except Exception as exc:
            # Never reached the store, so no report will come: settle it here, once, rather than leave it
            # for the watchdog (which would fail its waiters a second time).
            self._in_flight.remove(submission)
            self._settle(submission, exc, 0.0)
            self._after_settling()

    def _written(self, tokens: Sequence[Any], error: BaseException | None, seconds: float) -> None:
        """The store's report of one transaction (on the loop): the submissions it held, in order."""
        fresh = sum(t.rows for t in tokens if not t.settled)
        if error is None and fresh and self._observer is not None:
            self._observer.committed(fresh, seconds)
        for submission in tokens:
            if submission.settled:
                if error is None:
                    self._landed_late(submission)
                continue  # the watchdog already failed it
            if self._in_flight and self._in_flight[0] is submission:
                self._in_flight.popleft()
            else:
                self._in_flight.remove(submission)
            self._settle(submission, error, seconds, observed=True)
        self._after_settling()

    def _landed_late(self, submission: _Submission) -> None:
        """A commit the watchdog failed landed after all: its requests were refused (503, nothing sent),
        yet its records are in the ledger. Said loudly, with only the chain, sequences and record ids;
        the proxy's refusal record for each such request follows in the chain (docs/ledger.md)."""
        rows = submission.sealed
        if not rows:
            return
        log.warning(
            "ledger commit failed by the watchdog landed after all: chain %s sequences %d-%d, records %s; "
            "their requests were refused",
            self.chain_id, rows[0][_SEQUENCE], rows[-1][_SEQUENCE], ",".join(str(row[_ID]) for row in rows),
        )
        if self._observer is not None:
            self._observer.landed_late(len(rows))

    def _settle(self, submission: _Submission, error: BaseException | None, seconds: float, *,
                observed: bool = False) -> None:
        if submission.settled:  # each submission's waiters are told, and counted, exactly once
            return
        submission.settled = True
        batch = submission.batch
        if error is not None:
            # Failed or uncertain (a lost connection may hide a commit that landed): this batch is
            # refused, and nothing more is sealed until the head has been re-read as stored.
            self._head_uncertain = True
            self._writable = False
            if submission.checkpointed:
                # The next batch with records carries the checkpoint again (not a retry of its own: a
                # store that keeps failing must not spin the writer).
                self._last_checkpoint_at = float("-inf")
            if not isinstance(error, LedgerUnavailable):  # the store's refusal, or the watchdog (logged)
                log.warning("ledger commit failed (%d records): %s", len(batch), type(error).__name__)
            # Nobody waits for the append_unawaited records in this batch (the outcomes of requests that
            # were forwarded): they are sealed again onto the re-read head instead of being lost. A store
            # that refused the batch as chained onto a failed one (StoreBroken) wrote none of it; any other
            # failure may hide a commit that landed, which the re-read head tells (_drop_landed).
            # A record already sealed again _REQUEUE_LIMIT times fails like any other.
            # Retries that failed together are split in halves, each tried without the other: only one of
            # them may be at fault. That failure does not count against their retries (a record is split
            # off at most log2(max_batch_records) times, so the number of its commits stays bounded).
            # A commit the watchdog cut cost a whole commit timeout: one that hangs every time is found by
            # trying each record alone (one hang more, as before the halving), not by halves (one per level),
            # and that cut counts.
            tried = not isinstance(error, StoreBroken)
            split = submission.retry and tried and len(batch) > 1
            cut = split and isinstance(error, LedgerUnavailable) and error.reason == "ledger-commit-timeout"
            number = submission.number
            kept: list[tuple[int, _Waiter]] = []  # (place in the failed commit, record) of those sealed again
            failed: list[_Waiter] = []
            for index, waiter in enumerate(batch):
                if _unawaited(waiter) and _retries_left(waiter):
                    kept.append((index, waiter))
                else:
                    failed.append(waiter)
            batch = failed  # what fails now; the records queued again settle with their next commit
            if kept:
                counts = tried and (cut or not split)
                if split:
                    size = 1 if cut else (len(kept) + 1) // 2  # records per group: alone, or halves
                    base = self._groups
                    self._groups += (len(kept) + size - 1) // size
                    again = [self._requeued(waiter, counts, (number, index), base + 1 + n // size)
                             for n, (index, waiter) in enumerate(kept)]
                else:
                    again = [self._requeued(waiter, counts, (number, index)) for index, waiter in kept]
                if tried and submission.sealed:
                    last = submission.sealed[-1]
                    for waiter in again:
                        self._uncertain[id(waiter[0])] = (waiter[0], last[_SEQUENCE], last[_HASH])
                # Sealed again as soon as the head is re-read (_run_writer), in append order: a later commit's
                # failure may be reported first (PostgresStore.abandon), and a retry's records go back first.
                if not self._retries or _order(self._retries[-1]) < _order(again[0]):
                    self._retries.extend(again)
                else:
                    self._retries = list(heapq.merge(self._retries, again, key=_order))
            self._fail(batch, "the disclosure ledger could not make the record durable", error)
        else:
            if not self._head_uncertain:
                self._writable = True
            if not observed and self._observer is not None:
                self._observer.committed(submission.rows, seconds)
            for future, result in submission.results:
                if not future.done():
                    future.set_result(result)
        self._settled(len(batch))

    def _after_settling(self) -> None:
        if not self._in_flight:
            for done in self._drain_waiters:
                if not done.done():
                    done.set_result(None)
            self._drain_waiters.clear()
            self._wake()
        elif self._head_uncertain:
            self._wake()

    def _check_watchdog(self) -> None:
        """The commit watchdog: the oldest submission not reported by its deadline (commit_timeout_seconds)
        has its waiters refused now, and so has everything submitted after it (chained onto it); the
        store writes nothing more until the head is re-read, which waits for the hung commit."""
        self._watchdog = None
        if not self._in_flight:
            return
        loop = asyncio.get_running_loop()
        oldest = self._in_flight[0]
        if oldest.deadline > loop.time():
            self._watchdog = loop.call_at(oldest.deadline, self._check_watchdog)
            return
        log.warning("ledger commit took longer than %.1f s; its requests are refused", self._commit_timeout)
        self.store.abandon()
        self._abandon_in_flight("the disclosure ledger did not commit in time")
        self._after_settling()

    def _abandon_in_flight(self, why: str) -> None:
        error = LedgerUnavailable(why, reason="ledger-commit-timeout")
        while self._in_flight:
            self._settle(self._in_flight.popleft(), error, 0.0)

    async def _refresh_heads(self) -> None:
        """Read the other chains' signed points for the next checkpoints to sign; a failure keeps the last view."""
        try:
            points = await asyncio.wait_for(self.store.list_signed_points(), self._commit_timeout)
        except Exception as exc:
            log.warning("ledger: other chains' signed points could not be read: %s", type(exc).__name__)
            return
        self._other_heads = {chain: {"sequence": sequence, "hash": digest}
                             for chain, (sequence, digest) in points.items() if chain != self.chain_id}

    def _others_moved(self) -> bool:
        """Whether another chain signed records the last checkpoint here did not sign: a newer checkpoint
        than the next one after what was signed here (a checkpoint that signs nothing of its own chain,
        written because this or another chain moved, must not make every idle replica sign again each
        period, nor two idle replicas answer each other's checkpoints for ever)."""
        for chain, head in self._other_heads.items():
            signed = self._signed_heads.get(chain)
            if signed is None or head["sequence"] > signed["sequence"] + 1:
                return True
        return False

    def _seal_checkpoint(self, sequence: int, stamp: str, prev_hash: str, *, covered: int) -> SealedRecord:
        if self._keys.signing_key is None:
            raise ConfigError("ledger: a signing key is needed to write checkpoints")
        # Signed with it: the cadence this writer keeps (the verifier bounds a chain's unsigned records
        # by it, and an attacker cannot claim a longer one) and the other chains' last signed points it has
        # seen (each one's newest checkpoint; never records nobody signed).
        detail: dict[str, Any] = {
            "records_since_previous": covered, "every_records": self._checkpoint_every_records,
            "every_seconds": self._checkpoint_every_seconds, "heads": self._other_heads}
        previous = sequence - covered - 1
        if self._inherited_through > previous:
            # Derived from the chain, not a flag: a checkpoint that fails is sealed again with the mark.
            detail["inherited"] = {"records": self._inherited_through - previous, "found": self._started_stamp}
        self._signed_heads = self._other_heads
        return seal(
            RecordDraft(kind="checkpoint", detail=detail),
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
            # The head prune chains onto must be the stored one: nothing may be in flight.
            await self._drained()
            if self._head_uncertain:
                await self._reload_head()
                if self._uncertain:
                    self._drop_landed()
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
