"""Opening the gateway's SQLite files (the ledger and the subject registry) the same way everywhere:
WAL journal, `synchronous=FULL`, a busy wait for other connections' locks, and the switch to WAL
retried while another process holds the file.

Importing this module also registers two parameter adapters with the `sqlite3` module (process-wide, for
every connection): None and bool are bound as they always were (NULL, and the integers 1 and 0), but
without the search the module otherwise runs for every parameter that is not exactly an int, float or
str, which looks up `__adapt__` on its protocol type and builds and clears an AttributeError each time
(about 2 k instructions). A ledger row has up to 21 NULL columns: a 30-column INSERT with 21 of them
took 8.4 µs and takes 4.6 with the adapters.

Why the retry: several processes (the workers of `gateway serve --workers N`) open a new file at the same
moment. Switching a database to WAL needs an exclusive lock, and SQLite answers a switch that meets
another connection's lock with SQLITE_BUSY at once, without calling the busy handler that the
connection's timeout installs. Without the retry, one worker of two failed to start about three times in
four when both opened a fresh ledger together.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from gateway.errors import ConfigError

# `{}.get` returns None for any argument: a C call, where a Python function returning None costs a frame.
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))
sqlite3.register_adapter(bool, int)

SQLITE_BUSY = 5  # primary result code; extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT, ...) share the low byte
_FIRST_PAUSE_SECONDS = 0.001
_LONGEST_PAUSE_SECONDS = 0.05


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused because another connection held a lock (nothing was done)."""
    return exc.sqlite_errorcode & 0xFF == SQLITE_BUSY


def connect(path: Path, *, busy_timeout_seconds: float, check_same_thread: bool = True,
            cached_statements: int = 128) -> sqlite3.Connection:
    """A connection in autocommit mode (`isolation_level=None`: transactions are spelled out, never
    implied) to a WAL database with synchronous FULL, waiting up to `busy_timeout_seconds` for locks."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_seconds,
                           check_same_thread=check_same_thread, cached_statements=cached_statements)
    try:
        use_wal(conn, path, busy_timeout_seconds)
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def use_wal(conn: sqlite3.Connection, path: Path, wait_seconds: float) -> None:
    """Puts the database in WAL mode, retrying with growing pauses while another connection's lock makes
    SQLite refuse, for at most `wait_seconds`; a file that cannot use WAL is refused."""
    deadline = time.monotonic() + wait_seconds
    pause = _FIRST_PAUSE_SECONDS
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE_SECONDS)
    if str(mode).lower() != "wal":
        # Readers beside the writer, and the durability the ledger reports, assume WAL.
        raise ConfigError(f"SQLite file {path}: journal mode stays {mode!r}, WAL is not available "
                          "(a file on a network or in-memory filesystem?)")
