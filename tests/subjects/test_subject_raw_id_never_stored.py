"""Property: whatever the subject id, the registry's database never holds it (only its keyed reference).

The SQLite test scans every byte of the database and its WAL; the PostgreSQL test scans every value of
every row of the registry's tables."""

from __future__ import annotations

import asyncio
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.keys import GatewayKeys
from gateway.subjects import open_registry

# A prefix that no stored label, time or hex reference can contain, so a hit can only be the raw id.
subject_ids = st.text(min_size=1, max_size=40).map(lambda s: "Subj#" + s)


def stored_forms(subject_id: str) -> list[bytes]:
    normal = unicodedata.normalize("NFC", subject_id.strip())
    return [subject_id.encode("utf-8"), normal.encode("utf-8"), normal.encode("utf-16-le")]


async def exercise(url: str, keys: GatewayKeys, subject_id: str) -> None:
    async with open_registry(url, keys.ledger) as registry:
        ref = registry.subject_ref(subject_id)
        await registry.grant_consent(ref, "location", source="app")
        await registry.withdraw_consent(ref, "location", source="app")
        await registry.place_hold(ref, "correction_pending", source="officer")
        await registry.set_minor(ref, True, False, source="officer")
        await registry.status(ref, "location")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject_id=subject_ids)
def test_sqlite_file_never_holds_the_raw_id(gateway_keys: GatewayKeys, subject_id: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "ledger.sqlite3"
        asyncio.run(exercise(f"sqlite:///{db}", gateway_keys, subject_id))
        content = b"".join(p.read_bytes() for p in Path(folder).iterdir())
        assert gateway_keys.ledger.subject_ref(subject_id).encode() in content  # the reference is there
        for form in stored_forms(subject_id):
            assert form not in content


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject_id=subject_ids)
@pytest.mark.usefixtures("postgres_url")
def test_postgres_tables_never_hold_the_raw_id(pg_url: str, gateway_keys: GatewayKeys, subject_id: str) -> None:
    import asyncpg

    async def run() -> str:
        await exercise(pg_url, gateway_keys, subject_id)
        conn = await asyncpg.connect(pg_url)
        try:
            rows = []
            for table in ("subject_consent", "subject_state", "subject_events"):
                rows += await conn.fetch(f"SELECT * FROM {table}")
            # Python values, not PostgreSQL's text rendering, so no quoting can hide an occurrence.
            return "\n".join(str(value) for row in rows for value in row.values())
        finally:
            await conn.close()

    content = asyncio.run(run())
    assert gateway_keys.ledger.subject_ref(subject_id) in content
    assert unicodedata.normalize("NFC", subject_id.strip()) not in content
    assert subject_id not in content
