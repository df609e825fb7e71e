"""Records appended without waiting (outcomes, refusals): in order, committed without an fsync of their
own, made durable by the next durable commit, visible to the next query, failures counted and never
raised. The commit observer (size, duration, failures). close() twice, and concurrently, is safe."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
from collections.abc import Sequence

import pytest
from ledger_helpers import RecordingObserver, disclosure_draft, rogue_writer

from gateway.cli.ledger import verify_url
from gateway.config import sqlite_path
from gateway.errors import LedgerUnavailable
from gateway.keys import GatewayKeys
from gateway.ledger import Ledger, LedgerQuery, RecordDraft, open_ledger
from gateway.ledger.sqlite_store import SqliteStore
from gateway.ledger.store import Row


def outcome_draft(i: int) -> RecordDraft:
    return RecordDraft(kind="outcome", partner="acme-insurance", request_id=f"out-{i}", status=200)


def record_sync_flags(ledger: Ledger, gate: threading.Event | None = None) -> list[tuple[int, bool]]:
    """Wrap the store's commits (on its writer thread and inline) to note (rows, sync) of every one; the
    real commit still runs, after `gate` is set when one is given (to hold a commit in flight on the
    writer thread while records queue)."""
    seen: list[tuple[int, bool]] = []
    store = ledger.store
    assert isinstance(store, SqliteStore)
    real_write = store._write_on_thread

    def noting_write(rows: Sequence[Row], checkpoints: Sequence[Row], sync: bool) -> None:
        seen.append((len(rows), sync))
        if gate is not None:
            gate.wait()
        real_write(rows, checkpoints, sync)

    real_write_now = store.write_unsynced_now

    def noting_write_now(rows: Sequence[Row], checkpoints: Sequence[Row]) -> bool:
        # The inline (no thread hop) unsynced commit: held commits must go through the thread instead.
        if gate is not None and not gate.is_set():
            return False
        if real_write_now(rows, checkpoints):
            seen.append((len(rows), False))
            return True
        return False

    store._write_on_thread = noting_write  # type: ignore[method-assign]
    store.write_unsynced_now = noting_write_now  # type: ignore[method-assign]
    return seen


async def test_nowait_records_follow_in_order_without_their_own_fsync(
    sqlite_url: str, gateway_keys: GatewayKeys
) -> None:
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    gate = threading.Event()
    gate.set()
    writes = record_sync_flags(ledger, gate)
    disclosure = await ledger.append(disclosure_draft(0, gateway_keys))
    pending = ledger.append_nowait(outcome_draft(0))
    assert not pending.done()  # the caller did not wait for it
    outcome = await pending
    assert outcome.sequence == disclosure.sequence + 1
    assert writes == [(1, True), (1, False)]  # a batch of nowait records only is not fsynced

    # Submitted while a commit runs, they share the next (fsynced) transaction, in the order appended.
    writes.clear()
    gate.clear()
    in_flight = ledger.append_nowait(outcome_draft(1))
    while not writes:  # the writer has taken it and is committing (held at the gate)
        await asyncio.sleep(0)
    futures = [ledger.append_nowait(outcome_draft(2))]
    durable = asyncio.ensure_future(ledger.append(disclosure_draft(1, gateway_keys)))
    await asyncio.sleep(0)
    futures.append(ledger.append_nowait(outcome_draft(3)))
    for _ in range(5):  # the writer task seals and submits them while the first commit is still held
        await asyncio.sleep(0)
    gate.set()
    await durable
    results = [await f for f in futures]
    assert (await in_flight).sequence == outcome.sequence + 1
    assert writes == [(1, False), (3, True)]
    assert [r.sequence for r in results] == [durable.result().sequence - 1, durable.result().sequence + 1]

    # A query sees what was appended before it, even records nobody waited for.
    ledger.append_nowait(outcome_draft(4))
    found = await ledger.query(LedgerQuery(kind="outcome"))
    assert [r["request_id"] for r in found] == ["out-0", "out-1", "out-2", "out-3", "out-4"]
    await ledger.close()
    assert writes[-1][1] is True  # the closing checkpoint is fsynced, covering every earlier commit
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_the_writer_connection_returns_to_full_sync_for_durable_records(
    sqlite_url: str, gateway_keys: GatewayKeys
) -> None:
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append_nowait(outcome_draft(0))
    await ledger.append(disclosure_draft(0, gateway_keys))
    store = ledger.store
    mode = await store._on(store._writer_thread, lambda: store._writer_conn().execute(  # type: ignore[attr-defined]
        "PRAGMA synchronous").fetchone()[0])
    assert mode == 2  # FULL
    await ledger.close()


async def test_failed_nowait_records_are_counted_not_raised(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    observer = RecordingObserver()
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="shared", observer=observer)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    # Another writer wrongly takes the next sequence of this chain: the next commit fails.
    intruder = await rogue_writer(sqlite_url, gateway_keys, "shared")
    await intruder.append(disclosure_draft(1, gateway_keys))
    await intruder.close()
    unhandled: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unhandled.append(context))
    futures = [ledger.append_nowait(outcome_draft(i)) for i in range(3)]
    await asyncio.wait(futures)
    assert all(isinstance(f.exception(), LedgerUnavailable) for f in futures)
    del futures
    gc.collect()
    assert unhandled == []  # no "exception was never retrieved" for records nobody awaited
    assert sum(observer.failures) == 3
    # The ledger recovers from the stored head; the failed nowait records were not kept.
    recovered = await ledger.append(disclosure_draft(2, gateway_keys))
    assert recovered.sequence == 4  # 1 (ours), 2 and 3 (intruder's record and closing checkpoint)
    await ledger.close()
    assert await_count(sqlite_url, "outcome") == 0


def await_count(url: str, kind: str) -> int:
    with sqlite3.connect(sqlite_path(url)) as conn:
        return int(conn.execute("SELECT count(*) FROM ledger_records WHERE kind = ?", (kind,)).fetchone()[0])


async def test_observer_sees_each_commit_and_each_refused_append(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    observer = RecordingObserver()
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000,
                         observer=observer)
    await ledger.start()
    await asyncio.gather(*(ledger.append(disclosure_draft(i, gateway_keys)) for i in range(40)))
    assert sum(observer.batches) == 40
    assert all(seconds > 0 for _records, seconds in observer.commits)
    with pytest.raises(ValueError):
        await ledger.append(RecordDraft(kind="disclosure", subject_ref="raw-subject-id"))
    assert observer.failures == [1]
    await ledger.close()
    assert observer.batches[-1] == 1  # the closing checkpoint is a commit too
    with pytest.raises(LedgerUnavailable):
        await ledger.append(disclosure_draft(99, gateway_keys))
    with pytest.raises(LedgerUnavailable):
        ledger.append_nowait(outcome_draft(99))
    assert observer.failures == [1, 1, 1]


async def test_close_twice_and_concurrently_is_safe(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0")
    await ledger.start()
    ledger.append_nowait(outcome_draft(0))
    await asyncio.gather(ledger.close(), ledger.close())
    await ledger.close()
    assert not ledger.writable()
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM ledger_records ORDER BY sequence")]
    assert kinds == ["outcome", "checkpoint"]  # flushed at close, exactly one closing checkpoint

    never_started = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w1")
    await never_started.close()
    await never_started.close()


async def test_unawaited_records_commit_in_order_and_outlive_a_failed_commit(
    sqlite_url: str, gateway_keys: GatewayKeys
) -> None:
    observer = RecordingObserver()
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="shared", observer=observer)
    await ledger.start()
    failed: list[int] = []
    await ledger.append(disclosure_draft(0, gateway_keys))
    for i in range(3):
        ledger.append_unawaited(outcome_draft(i), on_failure=lambda i=i: failed.append(i))  # type: ignore[misc]
    assert len(ledger._queue) == 3  # type: ignore[attr-defined]
    await ledger.flush()  # waits for records that have no future as well
    assert ledger._queue == []  # type: ignore[attr-defined]
    outcomes = await ledger.query(LedgerQuery(kind="outcome"))
    assert [r["request_id"] for r in outcomes] == ["out-0", "out-1", "out-2"]
    assert [r["sequence"] for r in outcomes] == [2, 3, 4]
    assert failed == []
    # Another writer takes this chain's next sequences (a disclosure and its closing checkpoint, 5 and 6):
    # the next commit (out-3, out-4 at 5 and 6) fails. The re-read head is at 6 but is not that commit's
    # last row (another hash), so the two were not stored: they are sealed again after the intruder's rows.
    intruder = await rogue_writer(sqlite_url, gateway_keys, "shared")
    await intruder.append(disclosure_draft(1, gateway_keys))
    await intruder.close()
    for i in range(3, 5):
        ledger.append_unawaited(outcome_draft(i), on_failure=lambda i=i: failed.append(i))  # type: ignore[misc]
    await ledger.flush()
    assert failed == []
    assert observer.failures == []
    again = await ledger.query(LedgerQuery(kind="outcome"))
    assert [(r["request_id"], r["sequence"]) for r in again][3:] == [("out-3", 7), ("out-4", 8)]
    with pytest.raises(ValueError):
        ledger.append_unawaited(RecordDraft(kind="outcome", subject_ref="raw-subject-id"), on_failure=lambda: None)
    await ledger.close()
    with pytest.raises(LedgerUnavailable):
        ledger.append_unawaited(outcome_draft(99), on_failure=lambda: None)
    assert await_count(sqlite_url, "outcome") == 5
