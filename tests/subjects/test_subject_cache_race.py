"""With `cache_seconds` > 0, a status read that was in flight while this replica made a change must not be
cached: it may hold the status from before the change, and caching it would serve the withdrawn consent
(or the lifted hold's absence) for the whole TTL although "this replica drops its own entries on every
change it makes" (review-subjects F9). Both backends; the in-flight read is stretched deterministically by
a subclass of the real registry that reads the database, then waits (as network latency would)."""

from __future__ import annotations

import asyncio

from gateway.config import sqlite_path
from gateway.keys import GatewayKeys
from gateway.subjects import SubjectRegistry, SubjectStatus
from gateway.subjects.registry import PostgresSubjectRegistry, SqliteSubjectRegistry

SOURCE = "test-admin"


class _Gate:
    """Set `held` to make the next read wait after it has read the database, until `release` is set."""

    def __init__(self) -> None:
        self.held = False
        self.read_done = asyncio.Event()
        self.release = asyncio.Event()

    async def after_read(self) -> None:
        if self.held:
            self.held = False
            self.read_done.set()
            await self.release.wait()


class HeldSqliteRegistry(SqliteSubjectRegistry):
    gate = _Gate()

    async def _read_status(self, subject_ref: str, consent_purpose: str | None) -> SubjectStatus:
        status = await super()._read_status(subject_ref, consent_purpose)
        await self.gate.after_read()
        return status


class HeldPostgresRegistry(PostgresSubjectRegistry):
    gate = _Gate()

    async def _read_status(self, subject_ref: str, consent_purpose: str | None) -> SubjectStatus:
        status = await super()._read_status(subject_ref, consent_purpose)
        await self.gate.after_read()
        return status


def _held_registry(url: str, gateway_keys: GatewayKeys) -> tuple[SubjectRegistry, _Gate]:
    gate = _Gate()
    registry: HeldSqliteRegistry | HeldPostgresRegistry
    if url.startswith("sqlite://"):
        registry = HeldSqliteRegistry(sqlite_path(url), gateway_keys.ledger, cache_seconds=3600)
    else:
        registry = HeldPostgresRegistry(url, gateway_keys.ledger, cache_seconds=3600)
    registry.gate = gate
    return registry, gate


async def test_a_read_overlapping_a_local_change_is_not_cached(registry_url: str, gateway_keys: GatewayKeys) -> None:
    ref = gateway_keys.ledger.subject_ref("customer-0042")
    registry, gate = _held_registry(registry_url, gateway_keys)
    async with registry:
        await registry.grant_consent(ref, "location", source=SOURCE)
        gate.held = True
        reading = asyncio.create_task(registry.status(ref, "location"))
        await asyncio.wait_for(gate.read_done.wait(), 5)  # it has read "granted" and is still in flight
        await registry.withdraw_consent(ref, "location", source=SOURCE)
        gate.release.set()
        assert (await reading).consent_granted is True  # began before the withdrawal: may say so once
        # ...but is not cached: the next read (same replica, within the TTL) sees the withdrawal.
        assert (await registry.status(ref, "location")).consent_granted is False


async def test_a_read_during_a_local_change_that_ends_before_it_is_dropped_by_the_change(
    registry_url: str, gateway_keys: GatewayKeys
) -> None:
    # The read starts and ends while the change is being applied; whatever it cached goes with the
    # change's own drop after its commit.
    ref = gateway_keys.ledger.subject_ref("customer-0043")
    registry, _ = _held_registry(registry_url, gateway_keys)
    async with registry:
        await registry.grant_consent(ref, "location", source=SOURCE)
        change = asyncio.create_task(registry.withdraw_consent(ref, "location", source=SOURCE))
        await asyncio.sleep(0)
        await registry.status(ref, "location")
        await change
        assert (await registry.status(ref, "location")).consent_granted is False
