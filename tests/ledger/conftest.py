"""Fixtures for the ledger tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """Each ledger test that takes it runs on SQLite and on PostgreSQL (skipped, or failing under CI=true,
    when PostgreSQL cannot be reached)."""
    if request.param == "sqlite":
        return sqlite_url
    url: str = request.getfixturevalue("pg_url")
    return url
