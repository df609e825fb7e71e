"""Where a ledger URL points, as the CLI prints it: never its password or query, and a PostgreSQL host
written as an IPv6 literal keeps its brackets (the hand-made version printed `postgresql://::1:5432/test`)."""

from __future__ import annotations

from pathlib import Path

from gateway.cli.common import ledger_location


def test_a_postgres_url_loses_its_credentials_and_query() -> None:
    assert ledger_location("postgresql://svc:s3cret@127.0.0.1:5432/test?sslmode=require") == \
        "postgresql://127.0.0.1:5432/test"


def test_an_ipv6_host_keeps_its_brackets() -> None:
    assert ledger_location("postgresql://svc:s3cret@[::1]:5432/test") == "postgresql://[::1]:5432/test"


def test_a_sqlite_url_is_its_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    assert ledger_location(f"sqlite:///{path}") == str(path.resolve())
