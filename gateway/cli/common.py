"""Helpers the CLI command groups share: reading a data subject id (`-` for standard input), and refusing to
change a ledger that does not exist yet.

A command that records something (a consent withdrawal, a hold) must land in the database the gateway
reads. Opening the ledger the ordinary way creates a missing SQLite file and its tables, so a mistyped
`--ledger` (or the default `./data/...` URL from another directory) would record the change in a new,
empty database nobody reads and still report success. `require_existing_ledger` refuses that first.
"""

from __future__ import annotations

import sqlite3
import sys

from gateway.config import redacted_url, sqlite_path
from gateway.errors import ConfigError
from gateway.keys import normal_subject_id

# The table a gateway's first start creates with the ledger schema (and its schema-version row).
_LEDGER_META_TABLE = "ledger_meta"


class MissingLedger(ConfigError):
    """The ledger URL names no database a gateway has run on."""


def read_subject_id(argument: str) -> str:
    """The subject id given on the command line, or read from the first line of stdin for `-` (keeps it
    out of shell history and the process list); a blank id is refused (it names nobody), by the same test
    the egress path and the subject reference apply (`normal_subject_id`: white space and invisible format
    characters only)."""
    value = sys.stdin.readline().rstrip("\r\n") if argument == "-" else argument
    if normal_subject_id(value) is None:
        raise ConfigError("the subject id is empty")
    return value


def ledger_location(url: str) -> str:
    """Where a ledger URL points, for messages: the absolute SQLite path, or the PostgreSQL URL without its
    user, password and query (a password must not reach a terminal or a log)."""
    if url.startswith("sqlite://"):
        return str(sqlite_path(url).resolve())
    return redacted_url(url)


async def require_existing_ledger(url: str) -> None:
    """Raise MissingLedger unless `url` names a database that already holds the ledger's tables; never
    creates anything (no file, no table)."""
    if url.startswith("sqlite://"):
        _require_sqlite(url)
    elif url.startswith(("postgresql://", "postgres://")):
        await _require_postgres(url)
    else:
        raise ConfigError("ledger URL: expected sqlite:///PATH or postgresql://...")


def _require_sqlite(url: str) -> None:
    path = sqlite_path(url)
    if not path.is_file():
        raise MissingLedger(f"ledger file {path.resolve()} does not exist; nothing was changed (check --ledger "
                            "or GATEWAY_LEDGER_URL: it must name the gateway's ledger)")
    try:
        # mode=ro: a read-only open never creates the file or anything in it.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                 (_LEDGER_META_TABLE,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise MissingLedger(f"ledger file {path.resolve()}: cannot read it as a ledger ({exc})") from exc
    if found is None:
        raise MissingLedger(f"{path.resolve()} holds no ledger tables (no gateway has run on it); nothing was "
                            "changed")


async def _require_postgres(url: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise MissingLedger(f"ledger {ledger_location(url)}: cannot connect ({type(exc).__name__}); nothing was "
                            "changed") from exc
    try:
        found = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _LEDGER_META_TABLE)
    finally:
        await conn.close()
    if not found:
        raise MissingLedger(f"ledger {ledger_location(url)} holds no ledger tables (no gateway has run on it, or "
                            "the search_path names another schema); nothing was changed")
