"""Fixtures shared by every test: development keys in a temporary folder, and PostgreSQL.

PostgreSQL tests run whenever the server at GATEWAY_TEST_POSTGRES_URL is reachable. Under CI=true an
unreachable server fails the run; on a developer's machine those tests skip and say why.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from gateway.keys import GatewayKeys, load_keys

POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _postgres_problem() -> str | None:
    try:
        import asyncpg
    except ImportError as exc:  # pragma: no cover - asyncpg is a dependency
        return f"asyncpg not importable: {exc}"

    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL at {POSTGRES_URL} unreachable: {type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL server URL; skips (or fails under CI=true) when it cannot be reached."""
    problem = _postgres_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"{problem} (CI=true: PostgreSQL tests must run)")
        pytest.skip(problem)
    return POSTGRES_URL


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A fresh schema for one test, as a URL whose search_path points at it; dropped afterwards."""
    import asyncpg

    schema = f"gwtest_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{sep}search_path={schema}"
    asyncio.run(run(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_keys(path, dev_mode=True)
    return path


@pytest.fixture
def gateway_keys(keys_dir: Path) -> GatewayKeys:
    return load_keys(keys_dir, dev_mode=False)


@pytest.fixture(autouse=True)
def _structlog_configuration_restored() -> Iterator[None]:
    """A test that runs the CLI (`main(["serve"])` refusing a key, say) configures structlog to write to
    the stream pytest captured for that test, which is closed afterwards: every later gateway in the same
    process would then fail to log ("I/O operation on closed file"). Each test gets back the configuration
    it started with, so test files can run in any combination and order."""
    saved = structlog.get_config()
    yield
    if structlog.get_config() != saved:
        structlog.configure(**saved)
