"""Fixes from the review of the re-queue of unawaited records and of the chain lease
(/work/notes/review-lease.md, R1-R8): each test drives a real SQLite file or PostgreSQL schema into the
case the review found."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from ledger_helpers import disclosure_draft

from gateway.cli.ledger import verify_url
from gateway.config import sqlite_path
from gateway.errors import LedgerUnavailable
from gateway.keys import GatewayKeys
from gateway.ledger import LedgerQuery, RecordDraft, open_ledger
from gateway.ledger.lease import ChainInUse
from gateway.ledger.ledger import _REQUEUE_LIMIT
from gateway.ledger.sqlite_store import SqliteStore


def outcome(request_id: str) -> RecordDraft:
    return RecordDraft(kind="outcome", partner="acme", route="r", request_id=request_id, status=200)


async def slow_first_commit_of(pg_url: str, request_id: str, seconds: float) -> asyncpg.Connection:
    """The first commit holding a record with `request_id` spends `seconds` inside COMMIT (a deferred
    trigger standing in for a slow WAL flush); later ones are fast. Returns the connection that made it."""
    conn = await asyncpg.connect(pg_url)
    await conn.execute(f"""
        CREATE SEQUENCE once;
        CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.request_id = '{request_id}' AND nextval('once') = 1 THEN PERFORM pg_sleep({seconds}); END IF;
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON ledger_records DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION slow();""")
    return conn


@asynccontextmanager
async def another_schema(postgres_url: str) -> AsyncIterator[tuple[str, str]]:
    """A second, empty schema beside the test's own: (its name, the server URL's search_path prefix)."""
    schema = f"gwtest_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema, f"{postgres_url}{'&' if '?' in postgres_url else '?'}search_path="
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def end_lease_session(lease: Any, pg_url: str) -> None:
    """Ends the lease's server session (as a restart or idle_session_timeout would) and waits until the
    client has seen it go."""
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.fetchval("SELECT pg_terminate_backend($1)", lease._conn.get_server_pid())
    finally:
        await admin.close()
    while not lease.lost():
        await asyncio.sleep(0.01)


async def test_a_record_the_store_always_refuses_is_given_up_after_its_retries(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """R1: an outcome the store refuses every time is sealed again at most _REQUEUE_LIMIT times, then
    reported lost once; the disclosures committed after that succeed, and flush() and close() return."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        conn.execute("CREATE TRIGGER refuse_poison BEFORE INSERT ON ledger_records WHEN NEW.request_id = 'poison' "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    lost: list[str] = []
    ledger.append_unawaited(outcome("poison"), on_failure=lambda: lost.append("poison"))
    results: list[str] = []
    for i in range(1, 9):
        try:
            await ledger.append(disclosure_draft(i, gateway_keys))
            results.append("ok")
        except LedgerUnavailable:
            results.append("refused")
    await asyncio.wait_for(ledger.flush(), 10)
    await asyncio.wait_for(ledger.close(), 10)
    assert lost == ["poison"]
    # The poison rode with at most the first 1 + _REQUEUE_LIMIT disclosures; every later one committed.
    assert results[1 + _REQUEUE_LIMIT:] == ["ok"] * (8 - 1 - _REQUEUE_LIMIT), results
    assert results.count("refused") <= 1 + _REQUEUE_LIMIT
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_outcomes_queued_again_from_two_failed_commits_keep_their_order_and_times(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """R4: another connection holds the write lock past the writer's busy wait while two submissions, each
    with an outcome, are in flight; both fail, and the outcomes are written later in their append order,
    each with its own append time."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=1.0,
                         checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    hold = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None, check_same_thread=False)
    hold.execute("BEGIN IMMEDIATE")
    try:
        ledger.append_unawaited(outcome("first"), on_failure=lambda: None)
        a = asyncio.ensure_future(ledger.append(disclosure_draft(1, gateway_keys)))
        await asyncio.sleep(0.2)  # the first submission is in the writer's lock wait (0.8 s)
        ledger.append_unawaited(outcome("second"), on_failure=lambda: None)
        b = asyncio.ensure_future(ledger.append(disclosure_draft(2, gateway_keys)))
        results = await asyncio.gather(a, b, return_exceptions=True)
        assert all(isinstance(r, LedgerUnavailable) for r in results), results
    finally:
        hold.execute("ROLLBACK")
        hold.close()
    await _append_when_writable(ledger, disclosure_draft(3, gateway_keys))  # once it has re-read the head
    await ledger.flush()
    outcomes = [r for r in await ledger.query(LedgerQuery(kind="outcome")) if r["chain"] == "w0"]
    await ledger.close()
    assert [r["request_id"] for r in outcomes] == ["first", "second"]
    assert outcomes[0]["sequence"] < outcomes[1]["sequence"]
    assert outcomes[0]["time"] < outcomes[1]["time"]  # appended 0.2 s apart


async def test_a_symlinked_path_to_the_ledger_finds_the_same_lease(tmp_path: Path, gateway_keys: GatewayKeys) -> None:
    """R6: the lock file sits beside the real ledger file, however its path is spelled."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    ledger_file = real / "ledger.sqlite3"
    first = open_ledger(f"sqlite:///{ledger_file}", gateway_keys.ledger, chain_id="c1")
    await first.start()
    linked = tmp_path / "linked.sqlite3"
    linked.symlink_to(ledger_file)
    for spelling in (tmp_path / "alias" / "ledger.sqlite3", linked):
        second = open_ledger(f"sqlite:///{spelling}", gateway_keys.ledger, chain_id="c1", chain_wait_seconds=0)
        with pytest.raises(ChainInUse):
            await second.start()
    await first.close()


async def test_ledgers_in_two_postgres_schemas_do_not_hold_each_other_up(
        pg_url: str, postgres_url: str, gateway_keys: GatewayKeys) -> None:
    """R5: advisory locks are per database; the lease key covers the schema the ledger's tables are in."""
    async with another_schema(postgres_url) as (schema, search_path):
        other_url = search_path + schema
        first = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0")
        await first.start()
        other = open_ledger(other_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
        await other.start()  # another schema: another ledger, not another writer of this chain
        await other.append(disclosure_draft(0, gateway_keys))
        same = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
        with pytest.raises(ChainInUse):
            await same.start()
        await other.close()
        await first.close()


async def test_a_sqlite_lease_is_kept_while_a_hung_commit_can_land_and_let_go_once_it_has(
        sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    """R7: close() gives up waiting for a hung commit; the chain stays leased until that commit has ended
    (it could still land), and is free the moment it has."""
    ledger = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=0.3)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    store = ledger.store
    assert isinstance(store, SqliteStore)
    real = store._write_on_thread
    release = threading.Event()
    finished = threading.Event()

    def held_write(rows: Any, checkpoints: Any, sync: bool) -> None:
        release.wait()
        try:
            real(rows, checkpoints, sync)
        finally:
            finished.set()

    store._write_on_thread = held_write  # type: ignore[method-assign]
    try:
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(1, gateway_keys))
        await ledger.close()  # returns although the commit still hangs
        meanwhile = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
        with pytest.raises(ChainInUse):
            await meanwhile.start()
    finally:
        release.set()
    await asyncio.to_thread(finished.wait, 10)
    after = open_ledger(sqlite_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=5)
    await after.start()
    await after.close()


async def test_a_start_that_cannot_read_the_head_lets_go_of_the_chain(
        ledger_url: str, gateway_keys: GatewayKeys) -> None:
    """R8: the lease and the store are given back when the head read fails after the lease was taken."""
    failing = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0")

    async def no_head(chain: str) -> Any:
        raise OSError("the head cannot be read")

    failing.store.load_head = no_head  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await failing.start()
    again = open_ledger(ledger_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
    await again.start()
    await again.close()


async def test_a_postgres_commit_cut_by_the_watchdog_is_waited_for_before_the_head_is_read(
        pg_url: str, gateway_keys: GatewayKeys) -> None:
    """R2: the watchdog cuts the client side of a commit the server is still running; the outcome in it is
    queued again, and the head is re-read only once that server session has ended, so the outcome is
    stored once (the commit landed), not sealed again beside it."""
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=1.0,
                         checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    slow = await slow_first_commit_of(pg_url, "late", 1.6)
    try:
        lost: list[str] = []
        ledger.append_unawaited(outcome("late"), on_failure=lambda: lost.append("late"))
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(1, gateway_keys))
        await _append_when_writable(ledger, disclosure_draft(2, gateway_keys))
        await ledger.flush()
        rows = [r for r in await ledger.query(LedgerQuery(limit=None)) if r["chain"] == "w0"]
        await ledger.close()
    finally:
        await slow.close()
    assert lost == []
    assert [r["request_id"] for r in rows if r["kind"] == "outcome"] == ["late"]


async def test_a_lost_postgres_lease_stops_writing_until_it_is_taken_again(
        pg_url: str, gateway_keys: GatewayKeys) -> None:
    """R3: when the lease's session ends, the server has let go of the chain: the ledger writes nothing more
    until it has the lease again, and refuses while another writer holds it."""
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    await end_lease_session(ledger.store._lease, pg_url)  # type: ignore[attr-defined]
    rival = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
    await rival.start()  # the chain is free on the server: another writer takes it
    for i in range(1, 4):
        with pytest.raises(LedgerUnavailable):
            await ledger.append(disclosure_draft(i, gateway_keys))
    assert not ledger.writable()
    await rival.append(disclosure_draft(9, gateway_keys))
    await rival.close()
    # The rival is gone: the ledger takes the lease again and goes on.
    await _append_when_writable(ledger, disclosure_draft(5, gateway_keys))
    await ledger.close()
    stored = [r["request_id"] for r in await _rows(pg_url, gateway_keys) if r["kind"] == "disclosure"]
    assert stored == ["req-0", "req-9", "req-5"]


async def _rows(url: str, keys: GatewayKeys) -> list[dict[str, Any]]:
    reader = open_ledger(url, keys.ledger, chain_id="reader")
    await reader.start()
    try:
        return [r for r in await reader.query(LedgerQuery(limit=None)) if r["chain"] == "w0"]
    finally:
        await reader.close()


# -- the second review (/work/notes/review2.md, F1-F8) ----------------------------------------------------


async def _append_when_writable(ledger: Any, draft: RecordDraft) -> Any:
    for _ in range(200):
        try:
            return await ledger.append(draft)
        except LedgerUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError("the ledger did not recover")


async def test_a_postgres_write_whose_connection_reset_mid_commit_is_not_written_twice(
        pg_url: str, gateway_keys: GatewayKeys) -> None:
    """F2: the client sees its connection reset while the server is still inside the COMMIT; the session is
    known from when it connected, so the head is re-read only after it has ended: the outcome that rode in
    that commit is stored once."""
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=10.0,
                         checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    slow = await slow_first_commit_of(pg_url, "late", 1.5)
    try:
        ledger.append_unawaited(outcome("late"), on_failure=lambda: None)
        d1 = asyncio.ensure_future(ledger.append(disclosure_draft(1, gateway_keys)))
        await asyncio.sleep(0.5)  # the COMMIT is running on the server (the deferred trigger)
        ledger.store._writer._transport.abort()  # type: ignore[attr-defined]  # a network reset, as the client sees it
        with pytest.raises(LedgerUnavailable):
            await d1
        await _append_when_writable(ledger, disclosure_draft(2, gateway_keys))
        rows = [r for r in await ledger.query(LedgerQuery(limit=None)) if r["chain"] == "w0"]
        await ledger.close()
    finally:
        await slow.close()
    assert [r["request_id"] for r in rows if r["kind"] == "outcome"] == ["late"]


async def test_a_cut_postgres_session_that_would_wait_for_ever_is_ended_before_the_head_is_read(
        pg_url: str, gateway_keys: GatewayKeys) -> None:
    """F1: after a network cut the server session of a dropped write can sit idle in its transaction (its
    client's reset never arrived). The head re-read ends it, instead of waiting until the commit timeout
    (and every later re-read) runs out."""
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=2.0)
    await ledger.start()
    store = ledger.store
    stranded = await asyncpg.connect(pg_url)  # stands in for the cut session: idle in a transaction, forever
    try:
        await stranded.execute("BEGIN")
        session = await stranded.fetchrow(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        store._orphans.add((session[0], session[1]))  # type: ignore[attr-defined]
        started = asyncio.get_running_loop().time()
        head = await store.load_head("w0")
        assert asyncio.get_running_loop().time() - started < 1.5
        assert head.sequence == 0
        admin = await asyncpg.connect(pg_url)
        try:
            assert await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", session[0]) == 0
        finally:
            await admin.close()
    finally:
        stranded.terminate()
        await ledger.close()


async def test_a_postgres_lease_whose_session_ended_is_taken_again_without_refusing_a_request(
        pg_url: str, gateway_keys: GatewayKeys) -> None:
    """F3: the lease's session ends (idle_session_timeout, a server restart) with nobody else wanting the
    chain: the next write takes the lease again and succeeds, instead of failing one request."""
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0")
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    lease = ledger.store._lease  # type: ignore[attr-defined]
    await end_lease_session(lease, pg_url)
    try:
        assert (await ledger.append(disclosure_draft(1, gateway_keys))).sequence == 2
        assert not lease.lost()
        rival = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
        with pytest.raises(ChainInUse):
            await rival.start()
    finally:
        await ledger.close()


async def test_a_search_path_that_finds_the_same_tables_finds_the_same_lease(
        pg_url: str, postgres_url: str, gateway_keys: GatewayKeys) -> None:
    """F7: the lease key follows the ledger table the search_path resolves to, not the path's first schema."""
    async with another_schema(postgres_url) as (first_schema, search_path):  # exists, holds no ledger
        tables_schema = pg_url.rsplit("search_path=", 1)[1]
        both = f"{search_path}{first_schema},{tables_schema}"
        first = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0")
        await first.start()  # creates the tables in the test's schema
        second = open_ledger(both, gateway_keys.ledger, chain_id="w0", chain_wait_seconds=0)
        second.store._create = False  # type: ignore[attr-defined]  # as a reader would: use the tables found
        with pytest.raises(ChainInUse):
            await second.start()
        await first.close()


async def test_the_lock_file_takes_the_ledger_files_permissions_whatever_the_umask(
        tmp_path: Path, gateway_keys: GatewayKeys) -> None:
    """F8: a group-writable ledger gets a group-writable lock file (an operator's CLI in the group can
    take turns with the service), not one the umask narrowed."""
    import os

    ledger_file = tmp_path / "ledger.sqlite3"
    sqlite3.connect(ledger_file).close()
    ledger_file.chmod(0o660)
    old = os.umask(0o022)
    try:
        ledger = open_ledger(f"sqlite:///{ledger_file}", gateway_keys.ledger, chain_id="w0")
        await ledger.start()
        await ledger.close()
    finally:
        os.umask(old)
    mode = (tmp_path / "ledger.sqlite3-chain-locks").stat().st_mode & 0o777
    assert mode == 0o660, oct(mode)


# -- the third review (/work/notes/review3.md) --------------------------------------------------------------


async def test_a_write_given_up_on_while_the_lease_is_taken_again_is_never_written(
        pg_url: str, gateway_keys: GatewayKeys) -> None:
    """G1: the lease's session ended; the next write takes it again, slowly (1.5 s), and the watchdog
    (1 s) gives up on that write meanwhile. The write must not start after that: the outcome riding in it
    is sealed again after the head re-read, and stored once."""
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0", commit_timeout_seconds=1.0,
                         checkpoint_every_records=10_000)
    await ledger.start()
    await ledger.append(disclosure_draft(0, gateway_keys))
    lease = ledger.store._lease  # type: ignore[attr-defined]
    real_connect = lease._connect
    connects = 0

    async def slow_first_connect() -> Any:
        nonlocal connects
        connects += 1
        if connects == 1:
            await asyncio.sleep(1.5)
        return await real_connect()

    lease._connect = slow_first_connect
    await end_lease_session(lease, pg_url)
    lost: list[str] = []
    ledger.append_unawaited(outcome("late"), on_failure=lambda: lost.append("late"))
    with pytest.raises(LedgerUnavailable):
        await ledger.append(disclosure_draft(1, gateway_keys))
    await _append_when_writable(ledger, disclosure_draft(2, gateway_keys))
    await asyncio.sleep(1.0)  # the slow re-take has long ended: anything it would still write is written
    await ledger.flush()
    rows = [r for r in await ledger.query(LedgerQuery(limit=None)) if r["chain"] == "w0"]
    await ledger.close()
    assert [r["request_id"] for r in rows if r["kind"] == "outcome"] == ["late"]
    assert "req-1" not in [r["request_id"] for r in rows]  # refused with 503: never written
    assert lost == []
