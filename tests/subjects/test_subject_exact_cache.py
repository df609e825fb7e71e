"""The SQLite registry's exact status cache: a cached status is served without a query, and any change of
subject state, from this process, another registry or another process (the `gateway subject` CLI), is seen
by the very next status(); a writer that died mid-change leaves readers reading (exact) until the next
start repairs the counter; the counter file gets the database's permission bits."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import sqlite_path
from gateway.keys import GatewayKeys
from gateway.subjects import SubjectRegistry, open_registry
from gateway.subjects.changes import counter_path

SUBJECT = "customer-0042"
SOURCE = "test-admin"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"


@pytest.fixture
async def registry(url: str, gateway_keys: GatewayKeys) -> AsyncIterator[SubjectRegistry]:
    async with open_registry(url, gateway_keys.ledger) as reg:
        yield reg


def _selects(registry: SubjectRegistry) -> list[str]:
    """The statements the registry's reader connection runs from now on (SQLite's own trace hook)."""
    statements: list[str] = []
    registry._reader.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    return statements


def _cli(url: str, keys_dir: Path, *args: str) -> None:
    env = {**os.environ, "GATEWAY_LEDGER_URL": url, "GATEWAY_KEYS_DIR": str(keys_dir)}
    env.pop("GATEWAY_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "gateway", "subject", *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def test_a_cached_status_costs_no_query_until_something_changes(
    registry: SubjectRegistry, url: str, gateway_keys: GatewayKeys
) -> None:
    ref = registry.subject_ref(SUBJECT)
    await registry.grant_consent(ref, "location", source=SOURCE)
    statements = _selects(registry)
    for _ in range(3):
        assert (await registry.status(ref, "location")).consent_granted is True
        assert not (await registry.status(ref, None)).on_hold
    assert len(statements) == 2  # one read per (subject, purpose), then cached
    async with open_registry(url, gateway_keys.ledger) as other:  # another replica's change
        await other.withdraw_consent(ref, "location", source=SOURCE)
    assert (await registry.status(ref, "location")).consent_granted is False
    assert len(statements) == 3
    await registry.place_hold(ref, "correction_pending", source=SOURCE)  # this registry's own change
    assert (await registry.status(ref, None)).on_hold


async def test_changes_by_the_cli_process_are_seen_by_the_very_next_status(
    registry: SubjectRegistry, url: str, keys_dir: Path
) -> None:
    ref = registry.subject_ref(SUBJECT)
    _cli(url, keys_dir, "consent", "grant", SUBJECT, "location")
    assert (await registry.status(ref, "location")).consent_granted is True
    assert (await registry.status(ref, "location")).consent_granted is True  # now cached
    _cli(url, keys_dir, "consent", "withdraw", SUBJECT, "location")
    assert (await registry.status(ref, "location")).consent_granted is False
    assert not (await registry.status(ref, None)).on_hold
    _cli(url, keys_dir, "hold", "place", SUBJECT, "--reason", "correction_pending")
    status = await registry.status(ref, None)
    assert (status.on_hold, status.hold_reason) == (True, "correction_pending")
    _cli(url, keys_dir, "hold", "lift", SUBJECT)
    assert not (await registry.status(ref, None)).on_hold


# A writer that dies between making the counter odd and making it even again.
_DIE_MID_CHANGE = """
import os, sys
from pathlib import Path
from gateway.subjects.changes import SubjectChangeCounter
counter = SubjectChangeCounter(Path(sys.argv[1]))
counter.open()
with counter.changing():
    os._exit(0)
"""


async def test_a_writer_that_died_mid_change_leaves_readers_exact_until_repaired(
    registry: SubjectRegistry, url: str, gateway_keys: GatewayKeys
) -> None:
    ref = registry.subject_ref(SUBJECT)
    await registry.grant_consent(ref, "location", source=SOURCE)
    assert (await registry.status(ref, "location")).consent_granted is True
    database = sqlite_path(url)
    subprocess.run([sys.executable, "-c", _DIE_MID_CHANGE, str(database)], check=True, timeout=60)
    value = int.from_bytes(counter_path(database).read_bytes(), "little")
    assert value & 1  # left odd
    statements = _selects(registry)
    for _ in range(3):
        assert (await registry.status(ref, "location")).consent_granted is True
    assert len(statements) == 3  # a change may be under way: every status() reads
    async with open_registry(url, gateway_keys.ledger):  # the next start repairs it
        pass
    assert int.from_bytes(counter_path(database).read_bytes(), "little") == value + 1
    for _ in range(3):
        assert (await registry.status(ref, "location")).consent_granted is True
    assert len(statements) == 4  # cached again


async def test_the_counter_file_has_the_database_permissions(tmp_path: Path, gateway_keys: GatewayKeys) -> None:
    database = tmp_path / "ledger.sqlite3"
    database.touch()
    database.chmod(0o640)
    async with open_registry(f"sqlite:///{database}", gateway_keys.ledger):
        pass
    assert stat.S_IMODE(counter_path(database).stat().st_mode) == 0o640
