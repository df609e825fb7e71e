"""The shipped SQL: schema files equal what the gateway runs, the writer role has INSERT and SELECT only,
and the triggers refuse UPDATE, DELETE and TRUNCATE outside pruning (even for the owner). The subject
registry runs as the same roles: the writer starts it (no DDL once the schema is current), reads a status
and records changes; the auditor starts it and reads; nobody removes history or current-state rows."""

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
from gateway.subjects import open_registry
from gateway.subjects.registry import PG_SUBJECT_SCHEMA

SQL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "sql"


def _without_comment_header(text: str) -> str:
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("--"):
        lines.pop(0)
    return "".join(lines)


def test_shipped_schema_files_are_what_the_gateway_runs() -> None:
    assert _without_comment_header((SQL_DIR / "postgres-ledger-schema.sql").read_text()) == POSTGRES_SCHEMA
    assert _without_comment_header((SQL_DIR / "sqlite-ledger-schema.sql").read_text()) == SQLITE_SCHEMA
    assert _without_comment_header((SQL_DIR / "postgres-subjects-schema.sql").read_text()) == PG_SUBJECT_SCHEMA


async def test_roles_and_triggers(pg_url: str, gateway_keys: GatewayKeys) -> None:
    ledger = open_ledger(pg_url, gateway_keys.ledger, chain_id="w0")
    await ledger.start()
    await ledger.append(disclosure_draft(1, gateway_keys))
    await ledger.close()
    async with open_registry(pg_url, gateway_keys.ledger):
        pass  # the gateway's first start as the owner creates the registry tables too

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


async def test_the_subject_registry_runs_as_the_least_privilege_roles(pg_url: str, gateway_keys: GatewayKeys) -> None:
    ref = gateway_keys.ledger.subject_ref("customer-0042")
    # The schema as an operator deploys it: the shipped files run by the owner, then the roles.
    conn = await asyncpg.connect(pg_url)
    try:
        for name in ("postgres-ledger-schema.sql", "postgres-subjects-schema.sql", "postgres-roles.sql"):
            await conn.execute((SQL_DIR / name).read_text())
    finally:
        await conn.close()

    # The gateway as the writer: start (no DDL: the schema is current), read, record changes.
    async with open_registry(f"{pg_url}&role=gateway_ledger_writer", gateway_keys.ledger) as writer:
        assert (await writer.status(ref, "location")).consent_granted is None
        await writer.grant_consent(ref, "location", source="web-form")
        assert (await writer.withdraw_consent(ref, "location", source="web-form")).changed
        await writer.place_hold(ref, "correction_pending", source="privacy-office")
        await writer.set_minor(ref, True, False, source="privacy-office")
        status = await writer.status(ref, "location")
        assert (status.consent_granted, status.on_hold, status.minor) == (False, True, True)

    # `gateway subject show` as the auditor: start and read everything, change nothing.
    async with open_registry(f"{pg_url}&role=gateway_ledger_auditor", gateway_keys.ledger) as auditor:
        assert (await auditor.status(ref, "location")).on_hold
        assert len((await auditor.record(ref)).events) == 4
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await auditor.lift_hold(ref, source="privacy-office")
    async with open_registry(f"{pg_url}&role=gateway_ledger_pruner", gateway_keys.ledger) as pruner:
        assert (await pruner.status(ref, None)).on_hold

    conn = await asyncpg.connect(pg_url)
    try:
        for role in ("gateway_ledger_writer", "gateway_ledger_pruner", "gateway_ledger_auditor"):
            for statement in ("UPDATE subject_events SET changed = false", "DELETE FROM subject_events",
                              "DELETE FROM subject_state", "DELETE FROM subject_consent",
                              "TRUNCATE subject_state", "DROP TABLE subject_meta"):
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL ROLE {role}")
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(statement)
        # The owner is stopped by the triggers: the history is append-only, current rows are never removed
        # (a removed state row would silently lift the hold).
        for statement in ("UPDATE subject_events SET changed = false", "DELETE FROM subject_events",
                          "TRUNCATE subject_events", "DELETE FROM subject_state", "TRUNCATE subject_consent"):
            with pytest.raises(asyncpg.RaiseError):
                await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM subject_state WHERE on_hold") == 1
    finally:
        await conn.close()


async def test_a_registry_schema_without_a_version_is_brought_current_by_the_owner(
    pg_url: str, gateway_keys: GatewayKeys
) -> None:
    # A database whose registry tables an earlier gateway created (no subject_meta, no removal triggers):
    # the next start as the owner runs the DDL again and records the version; a writer can start after that.
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(PG_SUBJECT_SCHEMA)
        await conn.execute("DROP TABLE subject_meta; DROP TRIGGER subject_state_no_delete ON subject_state")
        async with open_registry(pg_url, gateway_keys.ledger):
            pass
        assert await conn.fetchval("SELECT value FROM subject_meta WHERE name = 'schema_version'") == "1"
        assert await conn.fetchval(
            # This schema's table only: other schemas of the shared database have the same trigger.
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'subject_state_no_delete'"
            " AND tgrelid = 'subject_state'::regclass") == 1
    finally:
        await conn.close()
