"""Pipelined group commit against real failing stores (SQLite and PostgreSQL): the waiters of a failed
batch get the error, records sealed after it are refused even though the store would take them again,
the chain continues from the stored head and verifies, a batch (records and checkpoint) lands whole or
not at all, a hung commit is failed by the watchdog, and concurrent appends are never lost or reordered.

A batch is held in flight (so that more records are sealed onto it) on the SQLite writer thread by a
threading.Event, and in PostgreSQL by a trigger that waits for an advisory lock the test holds."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from ledger_helpers import disclosure_draft

from gateway.cli.ledger import verify_url
from gateway.config import sqlite_path
from gateway.errors import LedgerUnavailable, StoreBroken
from gateway.keys import GatewayKeys
from gateway.ledger import AppendedRecord, Ledger, LedgerQuery, RecordDraft, open_ledger
from gateway.ledger.records import COLUMNS, now_text, seal
from gateway.ledger.sqlite_store import SqliteStore
from gateway.ledger.store import Row

POISON = "poison"  # request_id of the record whose batch fails
_PG_LOCK = 4242
_REQUEST_ID = COLUMNS.index("request_id")


def poison_draft() -> RecordDraft:
    # Large enough that SQLite needs new pages for it (the disk is "full" for its batch only).
    return RecordDraft(kind="disclosure", partner="acme", route="r", request_id=POISON, detail={"pad": "x" * 40_000})


async def stored(url: str, keys: GatewayKeys) -> list[dict[str, Any]]:
    reader = open_ledger(url, keys.ledger, chain_id="reader")
    await reader.start()
    try:
        return [r for r in await reader.query(LedgerQuery(limit=None)) if r["chain"] != "reader"]
    finally:
        await reader.close()


async def verified(url: str, keys: GatewayKeys) -> None:
    report = await verify_url(url, keys.ledger.verify_key)
    assert report.ok, report.summary()


@dataclass(frozen=True)
class PoisonHold:
    """`release()` lets the held poison write go on (and fail); `taken()` returns once the store's writer
    is inside it, so that what is submitted next cannot join its transaction."""

    release: Callable[[], Awaitable[None]]
    taken: Callable[[], Awaitable[None]]


@asynccontextmanager
async def sqlite_poison_held(ledger: Ledger) -> AsyncIterator[PoisonHold]:
    """The batch holding the poison record waits on the writer thread until released, then fails for
    real: the file may not grow (max_page_count at its current size) for that one write."""
    store = ledger.store
    assert isinstance(store, SqliteStore)
    real_write = store._write_on_thread
    release = threading.Event()
    entered = threading.Event()

    def write(rows: Sequence[Row], checkpoints: Sequence[Row], sync: bool) -> None:
        if not any(row[_REQUEST_ID] == POISON for row in rows):
            real_write(rows, checkpoints, sync)
            return
        entered.set()
        release.wait()
        conn = store._writer_conn()
        (limit,) = conn.execute("PRAGMA max_page_count").fetchone()
        conn.execute("PRAGMA max_page_count=1")  # clamped to the file's current size: it cannot grow
        try:
            real_write(rows, checkpoints, sync)
        finally:
            conn.execute(f"PRAGMA max_page_count={limit}")

    async def release_now() -> None:
        release.set()

    async def taken() -> None:
        while not entered.is_set():
            await asyncio.sleep(0.001)

    store._write_on_thread = write  # type: ignore[method-assign]
    try:
        yield PoisonHold(release_now, taken)
    finally:
        release.set()


@asynccontextmanager
async def postgres_poison_held(url: str) -> AsyncIterator[PoisonHold]:
    """A trigger makes the poison record's insert wait for an advisory lock the test holds, then raise."""
    conn = await asyncpg.connect(url)
    await conn.execute(f"""
        CREATE FUNCTION poison_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.request_id = '{POISON}' THEN
                PERFORM pg_advisory_xact_lock({_PG_LOCK});
                RAISE EXCEPTION 'injected failure';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER poison_insert BEFORE INSERT ON ledger_records
            FOR EACH ROW EXECUTE FUNCTION poison_insert();
    """)
    await conn.execute("SELECT pg_advisory_lock($1)", _PG_LOCK)
    released = False

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            await conn.execute("SELECT pg_advisory_unlock($1)", _PG_LOCK)

    async def taken() -> None:
        # The poison insert's trigger is waiting for the test's advisory lock.
        while not await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND NOT granted",
                _PG_LOCK):
            await asyncio.sleep(0.005)

    try:
        yield PoisonHold(release, taken)
    finally:
        await release()
        await conn.close()


@asynccontextmanager
async def poison_held(url: str, ledger: Ledger) -> AsyncIterator[PoisonHold]:
    if url.startswith("sqlite"):
        async with sqlite_poison_held(ledger) as hold:
            yield hold
    else:
        async with postgres_poison_held(url) as hold:
            yield hold


async def in_flight(ledger: Ledger, submissions: int) -> None:
    # The writer seals and submits on the loop; the held batch keeps the earlier ones in flight.
    while len(ledger._in_flight) < submissions:
        await asyncio.sleep(0.001)


async def append_once_recovered(ledger: Ledger, draft: RecordDraft) -> AppendedRecord:
    """Append, retrying while the ledger is still refusing: it re-reads the head once the store is idle."""
    while True:
        try:
            return await ledger.append(draft)
        except LedgerUnavailable:
            await asyncio.sleep(0.05)


async def test_a_failed_batch_fails_its_waiters_and_everything_sealed_after_it_until_the_head_is_reread(
    ledger_url: str, gateway_keys: GatewayKeys
) -> None:
    ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    first = await ledger.append(disclosure_draft(0, gateway_keys))
    async with poison_held(ledger_url, ledger) as hold:
        poisoned = asyncio.ensure_future(ledger.append(poison_draft()))
        await in_flight(ledger, 1)
        await hold.taken()
        # Sealed onto the held batch: healthy rows the store could take, chained onto one that will fail.
        behind = [asyncio.ensure_future(ledger.append(disclosure_draft(i, gateway_keys))) for i in range(1, 6)]
        await in_flight(ledger, 2)
        await hold.release()
        with pytest.raises(LedgerUnavailable) as failed:
            await poisoned
        assert failed.value.status == 503
        results = await asyncio.gather(*behind, return_exceptions=True)
    # Refused without being written (the store is broken until the head is re-read), not written with a gap.
    assert all(isinstance(r, StoreBroken) for r in results), results
    assert all(r.status == 503 and r.type_uri.endswith("ledger-store-broken") for r in results)  # type: ignore[union-attr]
    assert not ledger.writable()
    recovered = await ledger.append(disclosure_draft(9, gateway_keys))
    assert recovered.sequence == first.sequence + 1  # continues from the head as stored
    assert ledger.writable()
    await ledger.close()
    await verified(ledger_url, gateway_keys)
    kept = [r["request_id"] for r in await stored(ledger_url, gateway_keys) if r["kind"] == "disclosure"]
    assert kept == ["req-0", "req-9"]


async def test_the_store_refuses_writes_after_a_failure_until_load_head(
    ledger_url: str, gateway_keys: GatewayKeys
) -> None:
    ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    head = await ledger.append(disclosure_draft(0, gateway_keys))
    async with poison_held(ledger_url, ledger) as hold:
        await hold.release()
        with pytest.raises(LedgerUnavailable):
            await ledger.append(poison_draft())
    store = ledger.store
    # The head's true successor, sealed as the ledger would: a row the store would take if it were not
    # broken (nothing is wrong with it), refused until the head is re-read.
    successor = seal(disclosure_draft(1, gateway_keys), record_id="0" * 16 + "1" * 16, chain="w0",
                     sequence=head.sequence + 1, time=now_text(), prev_hash=head.hash).row
    reports: list[tuple[list[Any], BaseException | None]] = []
    done = asyncio.Event()

    def told(tokens: Sequence[Any], error: BaseException | None, _seconds: float) -> None:
        reports.append((list(tokens), error))
        done.set()

    store.submit("after-failure", [successor], [], True, told)
    await done.wait()
    assert reports[0][0] == ["after-failure"]
    assert isinstance(reports[0][1], StoreBroken)
    head = await store.load_head("w0")
    assert head.sequence == 1
    done.clear()
    store.submit("after-reload", [successor], [], True, told)
    await done.wait()
    assert reports[1] == (["after-reload"], None)
    await ledger.close()
    await verified(ledger_url, gateway_keys)


async def checkpoint_copies_refused(url: str, refused: bool) -> None:
    """A trigger that makes every insert into ledger_checkpoints fail (or drops it again)."""
    if url.startswith("sqlite"):
        with sqlite3.connect(sqlite_path(url), isolation_level=None) as conn:
            conn.execute("CREATE TRIGGER refuse_copies BEFORE INSERT ON ledger_checkpoints "
                         "BEGIN SELECT RAISE(ABORT, 'injected failure'); END" if refused
                         else "DROP TRIGGER refuse_copies")
        return
    conn_pg = await asyncpg.connect(url)
    try:
        await conn_pg.execute("""
            CREATE FUNCTION refuse_copies() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'injected failure'; END $$;
            CREATE TRIGGER refuse_copies BEFORE INSERT ON ledger_checkpoints
                FOR EACH ROW EXECUTE FUNCTION refuse_copies();
        """ if refused else "DROP TRIGGER refuse_copies ON ledger_checkpoints")
    finally:
        await conn_pg.close()


async def test_a_batch_and_its_checkpoint_land_together_or_not_at_all(
    ledger_url: str, gateway_keys: GatewayKeys
) -> None:
    ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=4)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    # The batch reaching the 4th record carries the checkpoint; its copy cannot be inserted, so the
    # whole transaction fails: none of its records may be kept without the checkpoint, or vice versa.
    await checkpoint_copies_refused(ledger_url, True)
    results = await asyncio.gather(*(ledger.append(disclosure_draft(i, gateway_keys)) for i in range(1, 4)),
                                   return_exceptions=True)
    assert all(isinstance(r, LedgerUnavailable) for r in results), results
    records = await stored(ledger_url, gateway_keys)
    assert [(r["sequence"], r["kind"]) for r in records] == [(1, "disclosure")]
    await checkpoint_copies_refused(ledger_url, False)
    again = await asyncio.gather(*(ledger.append(disclosure_draft(i, gateway_keys)) for i in range(4, 7)))
    assert [a.sequence for a in again] == [2, 3, 4]
    await ledger.close()
    records = await stored(ledger_url, gateway_keys)
    assert [(r["sequence"], r["kind"]) for r in records] == [
        (1, "disclosure"), (2, "disclosure"), (3, "disclosure"), (4, "disclosure"), (5, "checkpoint")]
    await verified(ledger_url, gateway_keys)


async def test_the_watchdog_fails_a_hung_commit_and_the_chain_recovers(
    ledger_url: str, gateway_keys: GatewayKeys
) -> None:
    ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000,
                         commit_timeout_seconds=0.2)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    async with poison_held(ledger_url, ledger) as hold:
        with pytest.raises(LedgerUnavailable) as hung:
            await ledger.append(poison_draft())  # held: only the watchdog can answer it
        assert hung.value.reason == "ledger-commit-timeout"
        assert not ledger.writable()
        await hold.release()
    recovered = await append_once_recovered(ledger, disclosure_draft(1, gateway_keys))
    assert recovered.sequence == 2
    await ledger.close()
    await verified(ledger_url, gateway_keys)


async def test_concurrent_appends_are_never_lost_or_reordered(ledger_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=37)
    await ledger.start()
    answers: dict[str, int] = {}
    failures: list[str] = []

    async def writer(n: int) -> None:
        for i in range(25):
            draft = disclosure_draft(n * 1000 + i, gateway_keys)
            if i % 3 == 0:
                ledger.append_unawaited(draft._replace(kind="refusal", fields_sent=None, fields_transformed=None,
                                                       fields_dropped=None, body_digest=None, latency_ms=None),
                                        on_failure=lambda: failures.append("unawaited"))
            else:
                answers[draft.request_id or ""] = (await ledger.append(draft)).sequence

    await asyncio.gather(*(writer(n) for n in range(48)))
    await ledger.close()
    assert failures == []
    await verified(ledger_url, gateway_keys)
    records = [r for r in await stored(ledger_url, gateway_keys) if r["chain"] == "w0"]
    assert [r["sequence"] for r in records] == list(range(1, len(records) + 1))
    by_request = {r["request_id"]: r["sequence"] for r in records if "request_id" in r}
    assert len(by_request) == 48 * 25  # every record, awaited or not, is stored once
    for request_id, sequence in answers.items():
        assert by_request[request_id] == sequence  # where its appender was told it is
    for n in range(48):  # each appender's records in the order it appended them
        mine = [by_request[f"req-{n * 1000 + i}"] for i in range(25)]
        assert mine == sorted(mine)


async def test_a_postgres_write_still_connecting_when_the_watchdog_fires_is_never_written(
        pg_url: str, gateway_keys: GatewayKeys) -> None:
    """The watchdog cuts the writer's connection, but a write that is still connecting has none to cut:
    once connected it must not write what its waiters were told had failed."""
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000,
                         commit_timeout_seconds=0.2)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    store = ledger.store
    real_connect = store._connect  # type: ignore[attr-defined]
    slow = asyncio.Event()
    slow.set()

    async def slow_connect() -> asyncpg.Connection:
        if slow.is_set():
            slow.clear()
            await asyncio.sleep(0.5)  # a connect slower than the commit timeout
        return await real_connect()

    store._drop_writer()  # type: ignore[attr-defined]
    store._connect = slow_connect  # type: ignore[attr-defined]
    with pytest.raises(LedgerUnavailable) as hung:
        await ledger.append(disclosure_draft(1, gateway_keys))
    assert hung.value.reason == "ledger-commit-timeout"
    await asyncio.sleep(0.6)  # the slow connect has ended
    recovered = await append_once_recovered(ledger, disclosure_draft(2, gateway_keys))
    await ledger.close()
    rows = await stored(pg_url, gateway_keys)
    assert [(r["sequence"], r["request_id"]) for r in rows if r["kind"] == "disclosure"] == [
        (1, disclosure_draft(0, gateway_keys).request_id), (2, disclosure_draft(2, gateway_keys).request_id)]
    assert recovered.sequence == 2
    await verified(pg_url, gateway_keys)


async def test_an_outcome_sealed_behind_a_failed_batch_is_sealed_again_not_lost(
    ledger_url: str, gateway_keys: GatewayKeys
) -> None:
    """An append_unawaited record (the outcome of a request that was forwarded) refused only because it
    was chained onto a failed batch is sealed again onto the re-read head; disclosures still fail."""
    ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    lost: list[str] = []
    async with poison_held(ledger_url, ledger) as hold:
        poisoned = asyncio.ensure_future(ledger.append(poison_draft()))
        await in_flight(ledger, 1)
        await hold.taken()
        outcome = disclosure_draft(1, gateway_keys)._replace(
            kind="outcome", request_id="outcome-1", fields_sent=None, fields_transformed=None,
            fields_dropped=None, body_digest=None, status=200)
        ledger.append_unawaited(outcome, on_failure=lambda: lost.append("outcome-1"))
        behind = asyncio.ensure_future(ledger.append(disclosure_draft(2, gateway_keys)))
        await in_flight(ledger, 2)
        await hold.release()
        with pytest.raises(LedgerUnavailable):
            await poisoned
        with pytest.raises(StoreBroken):
            await behind
    await ledger.flush()
    await ledger.close()
    assert lost == []
    records = [(r["kind"], r["request_id"]) for r in await stored(ledger_url, gateway_keys)
               if r["kind"] in ("disclosure", "outcome")]
    assert records == [("disclosure", "req-0"), ("outcome", "outcome-1")]
    await verified(ledger_url, gateway_keys)


async def test_an_outcome_in_the_failed_batch_itself_is_sealed_again_not_lost(
    ledger_url: str, gateway_keys: GatewayKeys
) -> None:
    """An outcome that rode in the very commit that failed (with the next request's disclosure) is sealed
    again onto the re-read head: that commit did not land (the head is not its last row), so the outcome
    is written once, after it; the disclosure in it still fails."""
    ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    lost: list[str] = []
    async with poison_held(ledger_url, ledger) as hold:
        outcome = disclosure_draft(0, gateway_keys)._replace(
            kind="outcome", request_id="outcome-0", fields_sent=None, fields_transformed=None,
            fields_dropped=None, body_digest=None, status=200)
        ledger.append_unawaited(outcome, on_failure=lambda: lost.append("outcome-0"))
        poisoned = asyncio.ensure_future(ledger.append(poison_draft()))  # the same batch: the outcome lingered
        await in_flight(ledger, 1)
        assert [len(s.batch) for s in ledger._in_flight] == [2]
        await hold.release()
        with pytest.raises(LedgerUnavailable):
            await poisoned
    await ledger.flush()
    await ledger.close()
    assert lost == []
    records = [(r["kind"], r["request_id"], r["sequence"]) for r in await stored(ledger_url, gateway_keys)
               if r["kind"] in ("disclosure", "outcome")]
    assert records == [("disclosure", "req-0", 1), ("outcome", "outcome-0", 2)]
    await verified(ledger_url, gateway_keys)
