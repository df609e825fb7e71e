"""Records nobody waits for (`append_unawaited`: the proxy's outcomes and refusals) linger in the queue:
they share the commit of the next record somebody waits for (one fsynced commit, in order), and a
flush, a query, close() or the linger timer commits them when no such record comes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence

from ledger_helpers import disclosure_draft

from gateway.cli.ledger import verify_url
from gateway.config import sqlite_path
from gateway.keys import GatewayKeys
from gateway.ledger import Ledger, LedgerQuery, RecordDraft, open_ledger
from gateway.ledger.sqlite_store import SqliteStore
from gateway.ledger.store import Row


def outcome_draft(i: int) -> RecordDraft:
    return RecordDraft(kind="outcome", partner="acme-insurance", request_id=f"linger-{i}", status=200)


def never_fails() -> None:
    raise AssertionError("no unawaited record may fail here")


def noted_commits(ledger: Ledger) -> list[tuple[tuple[str, ...], bool]]:
    """(kinds of the rows, sync) of every commit, on the store's writer thread or inline."""
    seen: list[tuple[tuple[str, ...], bool]] = []
    store = ledger.store
    assert isinstance(store, SqliteStore)
    real_write, real_now = store._write_on_thread, store.write_unsynced_now
    kind_at = 4  # the records table's column order: id, chain, sequence, time, kind, ...

    def write(rows: Sequence[Row], checkpoints: Sequence[Row], sync: bool) -> None:
        seen.append((tuple(str(r[kind_at]) for r in rows), sync))
        real_write(rows, checkpoints, sync)

    def write_now(rows: Sequence[Row], checkpoints: Sequence[Row]) -> bool:
        done = real_now(rows, checkpoints)
        if done:
            seen.append((tuple(str(r[kind_at]) for r in rows), False))
        return done

    store._write_on_thread = write  # type: ignore[method-assign]
    store.write_unsynced_now = write_now  # type: ignore[method-assign]
    return seen


def stored_kinds(url: str) -> list[str]:
    with sqlite3.connect(sqlite_path(url)) as conn:
        return [k for (k,) in conn.execute("SELECT kind FROM ledger_records ORDER BY sequence")]


async def started(url: str, keys: GatewayKeys, linger_seconds: float) -> Ledger:
    ledger = open_ledger(url, keys.ledger, chain_id="w0", checkpoint_every_records=10_000,
                         linger_seconds=linger_seconds)
    await ledger.start()
    return ledger


async def test_unawaited_records_ride_with_the_next_durable_commit(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = await started(sqlite_url, gateway_keys, linger_seconds=3600)
    seen = noted_commits(ledger)
    await ledger.append(disclosure_draft(0, gateway_keys))
    ledger.append_unawaited(outcome_draft(0), on_failure=never_fails)
    ledger.append_unawaited(outcome_draft(1), on_failure=never_fails)
    for _ in range(20):
        await asyncio.sleep(0)
    assert stored_kinds(sqlite_url) == ["disclosure"]  # nothing asked for a commit: they wait
    second = await ledger.append(disclosure_draft(1, gateway_keys))
    # One fsynced commit, in the order appended: the outcomes are durable with the disclosure.
    assert seen == [(("disclosure",), True), (("outcome", "outcome", "disclosure"), True)]
    assert second.sequence == 4
    assert stored_kinds(sqlite_url) == ["disclosure", "outcome", "outcome", "disclosure"]
    await ledger.close()
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_a_query_flush_or_close_commits_lingering_records(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = await started(sqlite_url, gateway_keys, linger_seconds=3600)
    seen = noted_commits(ledger)
    ledger.append_unawaited(outcome_draft(0), on_failure=never_fails)
    found = await ledger.query(LedgerQuery(kind="outcome"))
    assert [r["request_id"] for r in found] == ["linger-0"]
    ledger.append_unawaited(outcome_draft(1), on_failure=never_fails)
    await ledger.flush()
    assert stored_kinds(sqlite_url) == ["outcome", "outcome"]
    assert [sync for _kinds, sync in seen] == [False, False]  # neither needed an fsync of its own
    ledger.append_unawaited(outcome_draft(2), on_failure=never_fails)
    await ledger.close()
    assert stored_kinds(sqlite_url) == ["outcome", "outcome", "outcome", "checkpoint"]
    report = await verify_url(sqlite_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_the_linger_timer_commits_when_nothing_else_comes(sqlite_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = await started(sqlite_url, gateway_keys, linger_seconds=0.001)
    seen = noted_commits(ledger)
    await ledger.append(disclosure_draft(0, gateway_keys))
    ledger.append_unawaited(outcome_draft(0), on_failure=never_fails)
    while len(seen) < 2:  # nobody flushes: only the timer can start this commit
        await asyncio.sleep(0.001)
    assert seen == [(("disclosure",), True), (("outcome",), False)]
    # Lingering again after that: the timer is armed anew by the next unawaited record.
    ledger.append_unawaited(outcome_draft(1), on_failure=never_fails)
    while len(seen) < 3:
        await asyncio.sleep(0.001)
    assert seen[2] == (("outcome",), False)
    assert stored_kinds(sqlite_url) == ["disclosure", "outcome", "outcome"]
    await ledger.close()
