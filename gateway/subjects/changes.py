"""The subject change counter: one 64-bit number, shared through a memory-mapped file next to a SQLite
database (`<db>-subject-changes`), that every writer of subject state (consent, holds, minor status) moves
on around its change, so that every process caching subject statuses from that database knows at once,
without a query or a system call, whether what it cached may be stale.

Protocol (writers hold an exclusive flock on the file for the whole change, so changes do not overlap):
- a writer makes the counter odd, commits its SQLite transaction, then makes it even again (one more);
- a reader takes the counter before it reads the database and caches what it read under that value; a
  cached status is used only while the counter still has exactly that (even) value; while the counter is
  odd a change is under way and readers read the database every time;
- a writer that dies mid-change leaves the counter odd (readers then read every time: slower, still
  exact) and its flock released; the next process that opens the counter takes the lock and makes it even.

SQLite's own `PRAGMA data_version` cannot serve: the ledger's tables share the database, and a ledger commit
(one or more per request) moves it too, so every cached status would be dropped on every request.

Like SQLite's -wal and -shm files, the counter file belongs to the database while any process has it open:
do not delete it under a running gateway. It is created with the database file's permission bits.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.errors import ConfigError

_COUNTER = struct.Struct("<Q")
_SIZE = _COUNTER.size


def counter_path(database: Path) -> Path:
    return database.with_name(database.name + "-subject-changes")


class SubjectChangeCounter:
    """The counter of one SQLite database; `open()` before use (it recovers from a writer that died)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = counter_path(database)
        self._fd = -1
        self._map: mmap.mmap | None = None

    def open(self) -> None:
        """Create the file if missing (the database's permission bits), map it, and finish any change a dead
        writer left half done. Blocking (flock): run off the event loop."""
        if self._map is not None:
            return
        try:
            mode = os.stat(self.database).st_mode & 0o777
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        except OSError as exc:
            raise ConfigError(f"subject registry: cannot open its change counter: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < _SIZE:
                    # Just created (the lock makes one creator write its zero); the umask may have narrowed
                    # the mode os.open was given.
                    os.fchmod(fd, mode)
                    os.ftruncate(fd, _SIZE)
                mapped = mmap.mmap(fd, _SIZE)
                value = _COUNTER.unpack_from(mapped)[0]
                if value & 1:
                    _COUNTER.pack_into(mapped, 0, value + 1)  # a writer died mid-change: nobody holds the lock
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._map = fd, mapped

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            os.close(self._fd)
            self._map, self._fd = None, -1

    def value(self) -> int:
        """The current value: even when no change is under way. An aligned 8-byte load from the shared page
        (one instruction on the 64-bit platforms the gateway runs on, so never torn)."""
        if self._map is None:
            raise RuntimeError("subject change counter not open")
        value: int = _COUNTER.unpack_from(self._map)[0]
        return value

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Around one change of subject state: exclusive lock, counter odd, the change, counter even again
        (also when the change failed: a failed transaction may still have been committed). Blocking: run
        off the event loop."""
        mapped = self._map
        if mapped is None:
            raise RuntimeError("subject change counter not open")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            value = _COUNTER.unpack_from(mapped)[0]
            _COUNTER.pack_into(mapped, 0, value + 1 + (value & 1))  # odd (recovering a dead writer's odd too)
            try:
                yield
            finally:
                _COUNTER.pack_into(mapped, 0, _COUNTER.unpack_from(mapped)[0] + 1)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
