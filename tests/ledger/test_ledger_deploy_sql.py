"""The shipped SQL: schema files equal what the gateway runs, the writer role has INSERT and SELECT only,
and the triggers refuse UPDATE, DELETE and TRUNCATE outside pruning (even for the owner)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from ledger_helpers import disclosure_draft

from gateway.cli.ledger import verify_url
from gateway.keys import GatewayKeys
from gateway.ledger import open_ledger
from gateway.ledger.postgres_store import POSTGRES_SCHEMA
from gateway.ledger.sqlite_store import SQLITE_SCHEMA

SQL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "sql"


def _without_comment_header(text: str) -> str:
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("--"):
        lines.pop(0)
    return "".join(lines)


def test_shipped_schema_files_are_what_the_gateway_runs() -> None:
    assert _without_comment_header((SQL_DIR / "postgres-ledger-schema.sql").read_text()) == POSTGRES_SCHEMA
    assert _without_comment_header((SQL_DIR / "sqlite-ledger-schema.sql").read_text()) == SQLITE_SCHEMA


async def test_roles_and_triggers(pg_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0")
    await ledger.start()
    await ledger.append(disclosure_draft(1, gateway_keys))
    await ledger.close()

    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute((SQL_DIR / "postgres-roles.sql").read_text())
        await conn.execute((SQL_DIR / "postgres-roles.sql").read_text())  # idempotent

        # The owner is stopped by the triggers.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("UPDATE ledger_records SET partner = 'x'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("DELETE FROM ledger_records")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("TRUNCATE ledger_checkpoints")

        # The writer role cannot even try.
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE gateway_ledger_writer")
            assert await conn.fetchval("SELECT count(*) FROM ledger_records") == 2
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute("SET LOCAL gateway.ledger_prune = 'on'; DELETE FROM ledger_records")
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE gateway_ledger_writer")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute("UPDATE ledger_records SET partner = 'x'")

        # The pruner may delete, but only inside a transaction that opted in.
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE gateway_ledger_pruner")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute("DELETE FROM ledger_checkpoints")
        tr = conn.transaction()
        await tr.start()
        await conn.execute("SET LOCAL ROLE gateway_ledger_pruner")
        await conn.execute("SET LOCAL gateway.ledger_prune = 'on'")
        assert await conn.execute("DELETE FROM ledger_checkpoints") == "DELETE 1"
        await tr.rollback()
    finally:
        await conn.close()

    # The gateway itself runs as the writer role: start (no DDL, the schema is current), append, close.
    as_writer = f"{pg_url}&role=gateway_ledger_writer"
    ledger = open_ledger(as_writer, gateway_keys.ledger, chain_id="w0")
    await ledger.start()
    assert (await ledger.append(disclosure_draft(2, gateway_keys))).sequence == 3
    await ledger.close()
    report = await verify_url(pg_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()
    assert report.records == 4
