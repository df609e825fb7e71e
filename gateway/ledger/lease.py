"""One live writer per chain: the lease a ledger takes on its chain before it reads the head.

A chain is a sequence that only one writer can extend: two processes appending to one chain (two
`gateway serve` on one host with the same chain suffix, or two `gateway subject` commands at once) both
seal the next sequence, and one of them fails every commit it tries. The lease turns that into a wait
and, when the other writer does not finish in time, into one clear error (`ChainInUse`) at start-up,
instead of refused requests.

- SQLite: a POSIX record lock (`lockf`) on one byte of `<ledger file>-chain-locks`, at an offset derived
  from the chain id. The kernel drops it when the process ends, however it ends. POSIX record locks
  belong to the process and are all dropped when the process closes any descriptor of the file, so the
  process keeps one descriptor per lock file and counts its leases itself (also to refuse a second
  lease on one chain inside the process, which the kernel would grant).
- PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) held by a connection of its own, so
  that the writer connection can be dropped and reopened after an error without letting go of it. If
  the lease connection itself is lost, the server has released the lock: `ensure()` (called before the
  head is re-read, and before a write once `lost()`) takes it again or refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

# How often a waiting claim tries again.
_RETRY_SECONDS = 0.05


class ChainInUse(ConfigError):
    """Another live writer holds the chain (another process, or another ledger in this one)."""


def chain_key(chain: str) -> int:
    """A stable 63-bit number for a chain id: the PostgreSQL advisory lock key and the SQLite byte offset."""
    return int.from_bytes(hashlib.sha256(chain.encode("utf-8")).digest()[:8], "big") >> 1


def _in_use(chain: str, where: str, waited: float) -> ChainInUse:
    return ChainInUse(
        f"ledger chain {chain!r} is being written by another writer ({where}): another process, or another "
        f"ledger in this one; waited {waited:g} s. Give each gateway process on this host its own chain "
        "(GATEWAY_LEDGER_CHAIN_SUFFIX), or stop the other one")


async def _claim(try_once: Callable[[], Awaitable[bool]], chain: str, where: str, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while not await try_once():
        if time.monotonic() >= deadline:
            raise _in_use(chain, where, wait_seconds)
        await asyncio.sleep(_RETRY_SECONDS)


# -- SQLite ----------------------------------------------------------------------------------------------


@dataclass
class _LockFile:
    fd: int
    offsets: set[int] = field(default_factory=set)


# This process's lock files (real path -> descriptor and the offsets it holds); guarded by _FILES_LOCK
# because stores in one process may claim from different threads.
_FILES: dict[str, _LockFile] = {}
_FILES_LOCK = threading.Lock()


def sqlite_lock_path(database: Path) -> str:
    """The lock file of a ledger file: beside the real file (resolved first, so a symlinked spelling of
    the database path finds the same lock file)."""
    return os.path.realpath(database) + "-chain-locks"


class SqliteChainLease:
    """A held chain of a SQLite ledger; `release()` once (the store's close)."""

    def __init__(self, path: str, offset: int) -> None:
        self._path = path
        self._offset = offset
        self._held = True

    @classmethod
    async def claim(cls, path: str, chain: str, wait_seconds: float) -> SqliteChainLease:
        """`path` is the database's `sqlite_lock_path`."""
        offset = chain_key(chain)

        async def try_once() -> bool:
            return _try_lock(path, offset)

        await _claim(try_once, chain, path.removesuffix("-chain-locks"), wait_seconds)
        return cls(path, offset)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        with _FILES_LOCK:
            entry = _FILES.get(self._path)
            if entry is None or self._offset not in entry.offsets:
                return
            entry.offsets.discard(self._offset)
            if entry.offsets:
                fcntl.lockf(entry.fd, fcntl.LOCK_UN, 1, self._offset)
            else:  # the last lease: closing the descriptor drops the lock
                del _FILES[self._path]
                os.close(entry.fd)


def _lock_file_mode(path: str) -> int:
    """The ledger file's read/write bits (so whoever may write the ledger, a service or an operator's CLI
    in its group, may take its locks), 0600 while the ledger file does not exist yet."""
    try:
        return os.stat(path.removesuffix("-chain-locks")).st_mode & 0o666 | 0o600  # the owner may always reopen it
    except OSError:
        return 0o600


def _open_lock_file(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.fchmod(fd, _lock_file_mode(path))  # exactly the ledger file's bits: the umask does not apply
    except OSError:
        os.close(fd)
        raise
    return fd


def _forget_after_fork() -> None:
    # A child holds none of its parent's record locks, and a lock another thread held at the fork would
    # never be released in it.
    global _FILES_LOCK
    _FILES_LOCK = threading.Lock()
    for entry in _FILES.values():
        with contextlib.suppress(OSError):
            os.close(entry.fd)
    _FILES.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _try_lock(path: str, offset: int) -> bool:
    with _FILES_LOCK:
        entry = _FILES.get(path)
        if entry is not None and offset in entry.offsets:
            return False  # another ledger of this process writes the chain
        opened = entry is None
        if entry is None:
            try:
                fd = _open_lock_file(path)
            except OSError as exc:
                raise ConfigError(f"ledger chain lock file {path}: {exc.strerror}") from None
            entry = _LockFile(fd)
        try:
            fcntl.lockf(entry.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError as exc:
            if opened:
                os.close(entry.fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise ConfigError(f"ledger chain lock file {path}: {exc.strerror}") from None
        entry.offsets.add(offset)
        _FILES[path] = entry
        return True


def sqlite_chain_live(path: str, chain: str) -> bool:
    """Whether some process (this one included) holds `chain`'s lease in the lock file `path` now: the
    verifier's test for a live writer, which alone may leave records unsigned (docs/ledger.md). Takes a
    shared lock on the chain's byte for an instant when nobody holds it (a writer claiming just then
    retries). No lock file, or one this process cannot open: no live writer (fail closed)."""
    offset = chain_key(chain)
    with _FILES_LOCK:
        entry = _FILES.get(path)
        if entry is not None and offset in entry.offsets:
            return True
        # POSIX locks belong to the process: closing any descriptor of the file drops all of this process's
        # locks on it, so the probe uses this process's own descriptor when it has one.
        fd = entry.fd if entry is not None else None
        opened = fd is None
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, offset)
            except OSError as exc:
                return exc.errno in (errno.EACCES, errno.EAGAIN)
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
            return False
        finally:
            if opened:
                os.close(fd)


# -- PostgreSQL ------------------------------------------------------------------------------------------


# A lock query that gets no answer (a server that accepts connections but is stuck) must not hold a claim
# beyond its wait.
_QUERY_TIMEOUT_SECONDS = 10.0


class PostgresChainLease:
    """A held chain of a PostgreSQL ledger: an advisory lock on a connection of its own. Advisory locks
    are per database, and the ledger's tables per schema (the URL's search_path): the key covers the
    ledger table the search_path resolves to, so ledgers in two schemas of one database never hold each
    other up."""

    def __init__(self, connect: Callable[[], Awaitable[Any]], chain: str) -> None:
        self._connect = connect
        self._chain = chain
        self._key: int | None = None
        self._conn: Any = None
        # The head re-read and a write (the store's writer task) may both find the session lost at once.
        self._ensuring = asyncio.Lock()

    @classmethod
    async def claim(cls, connect: Callable[[], Awaitable[Any]], chain: str, wait_seconds: float
                    ) -> PostgresChainLease:
        lease = cls(connect, chain)
        try:
            await _claim(lease._try_once, chain, "the PostgreSQL ledger", wait_seconds)
        except BaseException:
            await lease.release()
            raise
        return lease

    async def _try_once(self) -> bool:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        try:
            if self._key is None:
                # The ledger table's own identity (what the search_path resolves it to), not the first schema
                # of the path: two ledgers share a key only if they share the table.
                table = await self._conn.fetchval(
                    "SELECT coalesce(to_regclass('ledger_records')::oid::text, current_schema())",
                    timeout=_QUERY_TIMEOUT_SECONDS)
                self._key = chain_key(f"{table}\x00{self._chain}")
            return bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key,
                                                  timeout=_QUERY_TIMEOUT_SECONDS))
        except BaseException:
            await self.release()
            raise

    def lost(self) -> bool:
        """Whether the lease's session has ended (the server has released the lock): nothing may be
        written until `ensure()` has taken it again."""
        return self._conn is None or self._conn.is_closed()

    async def ensure(self) -> None:
        """Before the head is re-read: if the lease connection was lost, so was the lock; take it again at
        once or refuse (another writer may have taken the chain meanwhile)."""
        async with self._ensuring:
            if not self.lost():
                return
            self._conn = None
            if not await self._try_once():
                await self.release()
                raise _in_use(self._chain, "the PostgreSQL ledger", 0)

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            # Closing the session releases its advisory locks; a server that does not answer is cut off.
            try:
                await conn.close(timeout=_QUERY_TIMEOUT_SECONDS)
            except Exception:
                conn.terminate()


async def postgres_chain_live(conn: Any, chain: str) -> bool:
    """Whether a session holds `chain`'s advisory lock now (pg_locks; readable by any role)."""
    table = await conn.fetchval("SELECT coalesce(to_regclass('ledger_records')::oid::text, current_schema())",
                                timeout=_QUERY_TIMEOUT_SECONDS)
    key = chain_key(f"{table}\x00{chain}")
    # A bigint advisory key is shown as classid (high 32 bits) and objid (low 32 bits), objsubid 1.
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid::bigint = $1 AND objid::bigint = $2)",
        key >> 32, key & 0xFFFFFFFF, timeout=_QUERY_TIMEOUT_SECONDS))
