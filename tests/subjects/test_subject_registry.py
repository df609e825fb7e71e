"""The subject registry on a real SQLite file and the real PostgreSQL: consent lifecycle, a second replica
seeing a withdrawal at once, holds, minors, the append-only history, and input that is refused."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from gateway.config import sqlite_path
from gateway.errors import ConfigError, MalformedRequest
from gateway.keys import GatewayKeys
from gateway.subjects import EventKind, SubjectRegistry, SubjectStatus, open_registry

SOURCE = "test-admin"


@pytest.fixture
async def registry(registry_url: str, gateway_keys: GatewayKeys) -> AsyncIterator[SubjectRegistry]:
    reg = open_registry(registry_url, gateway_keys.ledger)
    await reg.start()
    yield reg
    await reg.close()


@pytest.fixture
def ref(gateway_keys: GatewayKeys) -> str:
    return gateway_keys.ledger.subject_ref("customer-0042")


async def test_unknown_subject_has_no_consent_no_hold_and_is_not_a_minor(registry: SubjectRegistry, ref: str) -> None:
    assert await registry.status(ref, "location") == SubjectStatus.unknown_subject()
    assert await registry.status(ref, None) == SubjectStatus.unknown_subject()


async def test_consent_lifecycle(registry: SubjectRegistry, ref: str) -> None:
    granted = await registry.grant_consent(ref, "location", source="app-settings")
    assert granted.kind is EventKind.CONSENT_GRANTED
    assert granted.changed
    assert (await registry.status(ref, "location")).consent_granted is True
    # Consent is per purpose.
    assert (await registry.status(ref, "marketing")).consent_granted is None
    assert (await registry.status(ref, None)).consent_granted is None

    again = await registry.grant_consent(ref, "location", source="app-settings")
    assert not again.changed

    withdrawn = await registry.withdraw_consent(ref, "location", source="support-call")
    assert withdrawn.changed
    assert withdrawn.at >= granted.at
    assert (await registry.status(ref, "location")).consent_granted is False

    regranted = await registry.grant_consent(ref, "location", source="app-settings")
    assert regranted.changed
    assert (await registry.status(ref, "location")).consent_granted is True


async def test_withdrawal_without_prior_grant_is_recorded_as_withdrawn(registry: SubjectRegistry, ref: str) -> None:
    event = await registry.withdraw_consent(ref, "marketing", source="web-form")
    assert event.changed
    assert (await registry.status(ref, "marketing")).consent_granted is False


async def test_withdrawal_is_seen_by_a_second_replica_on_its_next_read(
    registry_url: str, gateway_keys: GatewayKeys, ref: str
) -> None:
    async with open_registry(registry_url, gateway_keys.ledger) as first, \
            open_registry(registry_url, gateway_keys.ledger) as second:
        await first.grant_consent(ref, "location", source=SOURCE)
        assert (await second.status(ref, "location")).consent_granted is True
        await first.withdraw_consent(ref, "location", source=SOURCE)
        # No cache by default: the very next read on the other replica sees the withdrawal.
        assert (await second.status(ref, "location")).consent_granted is False
        await second.place_hold(ref, "correction_pending", source=SOURCE)
        assert (await first.status(ref, None)).on_hold


async def test_a_cache_is_bounded_and_dropped_by_local_changes(
    registry_url: str, gateway_keys: GatewayKeys, ref: str
) -> None:
    async with open_registry(registry_url, gateway_keys.ledger, cache_seconds=3600) as cached, \
            open_registry(registry_url, gateway_keys.ledger) as other:
        await cached.grant_consent(ref, "location", source=SOURCE)
        assert (await cached.status(ref, "location")).consent_granted is True
        await other.withdraw_consent(ref, "location", source=SOURCE)
        # Another replica's change is not seen until the entry expires: the documented staleness bound.
        assert (await cached.status(ref, "location")).consent_granted is True
        # This replica's own change drops its entry at once.
        await cached.withdraw_consent(ref, "location", source=SOURCE)
        assert (await cached.status(ref, "location")).consent_granted is False
    with pytest.raises(ConfigError):
        open_registry(registry_url, gateway_keys.ledger, cache_seconds=-1)


async def test_holds(registry: SubjectRegistry, ref: str) -> None:
    placed = await registry.place_hold(ref, "correction_pending", source="privacy-officer")
    assert placed.changed
    status = await registry.status(ref, "location")
    assert status.on_hold
    assert status.hold_reason == "correction_pending"
    assert not (await registry.place_hold(ref, "correction_pending", source="privacy-officer")).changed
    assert (await registry.place_hold(ref, "dispute", source="privacy-officer")).changed
    assert (await registry.status(ref, None)).hold_reason == "dispute"
    record = await registry.record(ref)
    assert record.hold_since == placed.at  # changing the reason keeps the original start
    lifted = await registry.lift_hold(ref, source="privacy-officer")
    assert lifted.changed
    status = await registry.status(ref, None)
    assert not status.on_hold
    assert status.hold_reason is None
    assert not (await registry.lift_hold(ref, source="privacy-officer")).changed


async def test_minors(registry: SubjectRegistry, ref: str) -> None:
    await registry.set_minor(ref, True, False, source="age-check")
    status = await registry.status(ref, None)
    assert status.minor
    assert not status.guardian_consent
    await registry.set_minor(ref, True, True, source="guardian-form")
    status = await registry.status(ref, None)
    assert status.minor
    assert status.guardian_consent
    await registry.set_minor(ref, False, False, source="age-check")
    assert not (await registry.status(ref, None)).minor
    with pytest.raises(MalformedRequest, match="only to a minor"):
        await registry.set_minor(ref, False, True, source="age-check")


async def test_status_combines_consent_hold_and_minor(registry: SubjectRegistry, ref: str) -> None:
    await registry.grant_consent(ref, "location", source=SOURCE)
    await registry.place_hold(ref, "correction_pending", source=SOURCE)
    await registry.set_minor(ref, True, True, source=SOURCE)
    assert await registry.status(ref, "location") == SubjectStatus(
        consent_granted=True, on_hold=True, hold_reason="correction_pending", minor=True, guardian_consent=True
    )


async def test_history_answers_when_a_subject_withdrew(
    registry_url: str, gateway_keys: GatewayKeys, ref: str
) -> None:
    start = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    ticks = iter(start + timedelta(minutes=i) for i in range(100))
    async with open_registry(registry_url, gateway_keys.ledger, clock=lambda: next(ticks)) as reg:
        await reg.grant_consent(ref, "location", source="app")
        await reg.grant_consent(ref, "marketing", source="app")
        await reg.withdraw_consent(ref, "location", source="support")
        await reg.place_hold(ref, "correction_pending", source="officer")
        record = await reg.record(ref)
    kinds = [(e.kind, e.consent_purpose) for e in record.events]
    assert kinds == [
        (EventKind.CONSENT_GRANTED, "location"), (EventKind.CONSENT_GRANTED, "marketing"),
        (EventKind.CONSENT_WITHDRAWN, "location"), (EventKind.HOLD_PLACED, None),
    ]
    withdrawal = next(e for e in record.events if e.kind is EventKind.CONSENT_WITHDRAWN)
    assert withdrawal.at == start + timedelta(minutes=2)
    assert withdrawal.source == "support"
    assert {(c.consent_purpose, c.granted) for c in record.consents} == {("location", False), ("marketing", True)}
    location = next(c for c in record.consents if c.consent_purpose == "location")
    assert location.changed_at == withdrawal.at


async def test_sqlite_history_is_append_only(tmp_path: object, gateway_keys: GatewayKeys, ref: str) -> None:
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    async with open_registry(url, gateway_keys.ledger) as reg:
        await reg.grant_consent(ref, "location", source=SOURCE)
    conn = sqlite3.connect(sqlite_path(url))
    try:
        for sql in ("UPDATE subject_events SET kind = 'consent_withdrawn'", "DELETE FROM subject_events"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        conn.close()


async def test_postgres_history_is_append_only(pg_url: str, gateway_keys: GatewayKeys, ref: str) -> None:
    import asyncpg

    async with open_registry(pg_url, gateway_keys.ledger) as reg:
        await reg.grant_consent(ref, "location", source=SOURCE)
    conn = await asyncpg.connect(pg_url)
    try:
        for sql in ("UPDATE subject_events SET kind = 'x'", "DELETE FROM subject_events"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(sql)
    finally:
        await conn.close()


async def test_tables_are_created_idempotently(registry_url: str, gateway_keys: GatewayKeys, ref: str) -> None:
    async with open_registry(registry_url, gateway_keys.ledger) as reg:
        await reg.grant_consent(ref, "location", source=SOURCE)
    async with open_registry(registry_url, gateway_keys.ledger) as reg:
        assert (await reg.status(ref, "location")).consent_granted is True


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r, ref: r.status("customer-0042", "location"), "not a raw subject id"),
        (lambda r, ref: r.grant_consent(ref, "Location Tracking", source=SOURCE), "consent_purpose"),
        (lambda r, ref: r.grant_consent(ref, "location", source="someone@example.com"), "source"),
        (lambda r, ref: r.place_hold(ref, "", source=SOURCE), "hold_reason"),
        (lambda r, ref: r.place_hold(ref, "x" * 65, source=SOURCE), "hold_reason"),
    ],
)
async def test_bad_input_is_refused(registry: SubjectRegistry, ref: str, call: object, match: str) -> None:
    with pytest.raises(MalformedRequest, match=match):
        await call(registry, ref)  # type: ignore[operator]


def test_unknown_url_scheme_is_a_config_error(gateway_keys: GatewayKeys) -> None:
    with pytest.raises(ConfigError):
        open_registry("mysql://db/x", gateway_keys.ledger)
