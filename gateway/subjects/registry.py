"""The subject registry: consent per subject and consent purpose, holds (restriction of processing) and
minor status, with an append-only history of every change, in the same database as the ledger.

Tables (created idempotently by `start()`, next to the ledger's own tables):
- `subject_consent(subject_ref, consent_purpose, granted, changed_at, source)`: current consent;
- `subject_state(subject_ref, on_hold, hold_reason, hold_since, minor, guardian_consent, minor_since,
  updated_at)`: current hold and minor status;
- `subject_events(id, subject_ref, at, kind, consent_purpose, hold_reason, minor, guardian_consent,
  source, changed)`: every change ever asked for; UPDATE and DELETE (PostgreSQL: and TRUNCATE) are
  refused by triggers. On PostgreSQL, triggers also refuse DELETE and TRUNCATE of the current-state rows
  (a removed state row would silently lift a hold), and `subject_meta` holds the schema version, so a
  start as a least-privilege role (deploy/sql/postgres-roles.sql) runs no DDL once the schema is current.

Rows are keyed by the keyed subject reference (`LedgerKeys.subject_ref`): the raw subject id never
reaches the database, and the API refuses anything that is not a 64-hex reference.

Freshness: `status()` reads the database on every call (one query) unless `cache_seconds` > 0, so a
withdrawal that has returned is seen by every request that starts afterwards, on every replica that reads
the same database. With a cache, another replica may serve a stale status for at most `cache_seconds`
(this replica drops its own entries on every change it makes, and never caches a read that overlapped
one of its changes).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway import sqlitefile
from gateway.config import sqlite_path
from gateway.errors import ConfigError, MalformedRequest, Violation
from gateway.keys import LedgerKeys
from gateway.subjects.model import (
    ConsentState,
    EventKind,
    RegistryEvent,
    SubjectRecord,
    SubjectStatus,
    require_slug,
    require_source,
    require_subject_ref,
)

Clock = Callable[[], datetime]
_CACHE_MAX_SUBJECTS = 65_536


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _State:
    """The current `subject_state` row (or its absence, as all defaults)."""

    on_hold: bool = False
    hold_reason: str | None = None
    hold_since: datetime | None = None
    minor: bool = False
    guardian_consent: bool = False
    minor_since: datetime | None = None


def _plan(event: RegistryEvent, consent: bool | None, state: _State) -> tuple[bool, bool | None, _State]:
    """Given the current consent (for the event's purpose) and state, what the event changes:
    (changed, new consent or None when untouched, new state). Shared by both backends."""
    at = event.at
    if event.kind is EventKind.CONSENT_GRANTED:
        return consent is not True, True, state
    if event.kind is EventKind.CONSENT_WITHDRAWN:
        return consent is not False, False, state
    if event.kind is EventKind.HOLD_PLACED:
        if state.on_hold and state.hold_reason == event.hold_reason:
            return False, None, state
        since = state.hold_since if state.on_hold else at
        return True, None, replace(state, on_hold=True, hold_reason=event.hold_reason, hold_since=since)
    if event.kind is EventKind.HOLD_LIFTED:
        return state.on_hold, None, replace(state, on_hold=False, hold_reason=None, hold_since=None)
    minor = bool(event.minor)
    guardian = bool(event.guardian_consent) and minor
    if (state.minor, state.guardian_consent) == (minor, guardian):
        return False, None, state
    since = (state.minor_since if state.minor else at) if minor else None
    return True, None, replace(state, minor=minor, guardian_consent=guardian, minor_since=since)


class SubjectRegistry(ABC):
    """Consent, holds and minor status by subject reference. Open with `open_registry`, then `start()`."""

    def __init__(self, keys: LedgerKeys, *, cache_seconds: float = 0.0, clock: Clock = utc_now) -> None:
        if cache_seconds < 0:
            raise ConfigError("subject_cache_seconds: must be 0 (no cache) or more")
        self._keys = keys
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cache: dict[str, dict[str | None, tuple[float, SubjectStatus]]] = {}
        # Bumped when a local change starts and again when it has committed: a read that saw the counter
        # move may hold the status from before the change and is returned but never cached (otherwise it
        # would re-insert the old status after apply() dropped the entry, for the whole TTL). One counter
        # for all subjects: an overlapping change elsewhere only costs a read its caching.
        self._generation = 0

    def subject_ref(self, subject_id: str) -> str:
        """The keyed reference the registry is keyed by (the raw id is never stored)."""
        return self._keys.subject_ref(subject_id)

    # -- lifecycle ------------------------------------------------------------------------------------

    @abstractmethod
    async def start(self) -> None:
        """Connect and create the tables if they are missing (idempotent, safe from several replicas)."""

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> SubjectRegistry:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- the per-request read -------------------------------------------------------------------------

    async def status(self, subject_ref: str, consent_purpose: str | None) -> SubjectStatus:
        """Consent for `consent_purpose` (None: not asked), hold and minor status, in one query."""
        require_subject_ref(subject_ref)
        if self._cache_seconds <= 0:
            return await self._read_status(subject_ref, consent_purpose)
        now = time.monotonic()
        hit = self._cache.get(subject_ref, {}).get(consent_purpose)
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._generation
        status = await self._read_status(subject_ref, consent_purpose)
        if generation != self._generation:
            return status  # a local change overlapped this read: do not cache what it saw
        if len(self._cache) >= _CACHE_MAX_SUBJECTS:
            self._cache.clear()  # crude bound; a full cache only costs extra reads
        self._cache.setdefault(subject_ref, {})[consent_purpose] = (now + self._cache_seconds, status)
        return status

    @abstractmethod
    async def _read_status(self, subject_ref: str, consent_purpose: str | None) -> SubjectStatus: ...

    # -- mutations ------------------------------------------------------------------------------------

    async def grant_consent(
        self, subject_ref: str, consent_purpose: str, *, source: str, at: datetime | None = None
    ) -> RegistryEvent:
        return await self.apply(self.plan_event(
            subject_ref, EventKind.CONSENT_GRANTED, source=source, at=at, consent_purpose=consent_purpose))

    async def withdraw_consent(
        self, subject_ref: str, consent_purpose: str, *, source: str, at: datetime | None = None
    ) -> RegistryEvent:
        return await self.apply(self.plan_event(
            subject_ref, EventKind.CONSENT_WITHDRAWN, source=source, at=at, consent_purpose=consent_purpose))

    async def place_hold(
        self, subject_ref: str, reason: str, *, source: str, at: datetime | None = None
    ) -> RegistryEvent:
        return await self.apply(self.plan_event(
            subject_ref, EventKind.HOLD_PLACED, source=source, at=at, hold_reason=reason))

    async def lift_hold(self, subject_ref: str, *, source: str, at: datetime | None = None) -> RegistryEvent:
        return await self.apply(self.plan_event(subject_ref, EventKind.HOLD_LIFTED, source=source, at=at))

    async def set_minor(
        self, subject_ref: str, minor: bool, guardian_consent: bool, *, source: str, at: datetime | None = None
    ) -> RegistryEvent:
        return await self.apply(self.plan_event(
            subject_ref, EventKind.MINOR_SET, source=source, at=at, minor=minor, guardian_consent=guardian_consent))

    def plan_event(
        self,
        subject_ref: str,
        kind: EventKind,
        *,
        source: str,
        at: datetime | None = None,
        consent_purpose: str | None = None,
        hold_reason: str | None = None,
        minor: bool | None = None,
        guardian_consent: bool | None = None,
    ) -> RegistryEvent:
        """Validate a change and stamp its time, without applying it (SubjectRights records it first)."""
        require_subject_ref(subject_ref)
        require_source(source)
        if kind in (EventKind.CONSENT_GRANTED, EventKind.CONSENT_WITHDRAWN):
            require_slug("consent_purpose", consent_purpose or "")
        if kind is EventKind.HOLD_PLACED:
            require_slug("hold_reason", hold_reason or "")
        if kind is EventKind.MINOR_SET:
            if not isinstance(minor, bool) or not isinstance(guardian_consent, bool):
                raise MalformedRequest("minor and guardian_consent must be true or false",
                                       [Violation("minor", "not a boolean")])
            if guardian_consent and not minor:
                raise MalformedRequest("guardian consent applies only to a minor",
                                       [Violation("guardian_consent", "subject is not a minor")])
        stamp = at or self._clock()
        if stamp.tzinfo is None:
            raise MalformedRequest("event time must carry a time zone", [Violation("at", "naive time")])
        return RegistryEvent(
            subject_ref=subject_ref, kind=kind, at=stamp.astimezone(UTC), source=source,
            consent_purpose=consent_purpose, hold_reason=hold_reason, minor=minor,
            guardian_consent=guardian_consent,
        )

    async def apply(self, event: RegistryEvent) -> RegistryEvent:
        """Apply a planned event in one transaction; the returned copy says whether it changed anything.
        Returns only once committed (durable), so the change holds for every later status()."""
        self._generation += 1
        try:
            changed = await self._apply(event)
        finally:
            # Also after a failure: the commit may have landed all the same.
            self._generation += 1
            self._cache.pop(event.subject_ref, None)
        return replace(event, changed=changed)

    @abstractmethod
    async def _apply(self, event: RegistryEvent) -> bool: ...

    # -- reads for the access report ------------------------------------------------------------------

    @abstractmethod
    async def record(self, subject_ref: str) -> SubjectRecord:
        """Everything held about one subject, with the full event history oldest first."""


# --------------------------------------------------------------------------------------------------------
# SQLite


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_consent (
    subject_ref TEXT NOT NULL CHECK (length(subject_ref) = 64),
    consent_purpose TEXT NOT NULL,
    granted INTEGER NOT NULL CHECK (granted IN (0, 1)),
    changed_at TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (subject_ref, consent_purpose)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subject_state (
    subject_ref TEXT PRIMARY KEY CHECK (length(subject_ref) = 64),
    on_hold INTEGER NOT NULL DEFAULT 0 CHECK (on_hold IN (0, 1)),
    hold_reason TEXT,
    hold_since TEXT,
    minor INTEGER NOT NULL DEFAULT 0 CHECK (minor IN (0, 1)),
    guardian_consent INTEGER NOT NULL DEFAULT 0 CHECK (guardian_consent IN (0, 1)),
    minor_since TEXT,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subject_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_ref TEXT NOT NULL CHECK (length(subject_ref) = 64),
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    consent_purpose TEXT,
    hold_reason TEXT,
    minor INTEGER,
    guardian_consent INTEGER,
    source TEXT NOT NULL,
    changed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS subject_events_by_subject ON subject_events (subject_ref, id);
CREATE TRIGGER IF NOT EXISTS subject_events_no_update BEFORE UPDATE ON subject_events
BEGIN SELECT RAISE(ABORT, 'subject_events is append-only'); END;
CREATE TRIGGER IF NOT EXISTS subject_events_no_delete BEFORE DELETE ON subject_events
BEGIN SELECT RAISE(ABORT, 'subject_events is append-only'); END;
"""

# One query for the per-request status: the subject's state row and the consent row for the purpose.
_SQLITE_STATUS = """
SELECT s.on_hold, s.hold_reason, s.minor, s.guardian_consent, c.granted
FROM (SELECT ? AS ref, ? AS purpose) AS q
LEFT JOIN subject_state AS s ON s.subject_ref = q.ref
LEFT JOIN subject_consent AS c ON c.subject_ref = q.ref AND c.consent_purpose = q.purpose
"""


# The subject's state alone when no consent purpose is asked for (consent is then None, as the join
# above gives for a NULL purpose): subject_consent's page is not loaded (the reader's page cache is emptied
# by every ledger commit, so each page costs a read) and there is no join; with a busy writer a read costs
# ~30 -> ~20 µs (median, thread CPU). No row: the subject has no state, as the join's NULLs say.
_SQLITE_STATE = "SELECT on_hold, hold_reason, minor, guardian_consent FROM subject_state WHERE subject_ref = ?"
_NO_STATE_ROW = (None, None, None, None, None)


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


def _from_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _opt_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


# Decoded statuses by their row. Not a cache of the registry: every request still reads its row; this
# only reuses the immutable value decoded from an identical row (most subjects share a handful of rows).
# Bounded because hold reasons are operator-chosen labels.
_STATUS_BY_ROW: dict[tuple[Any, ...], SubjectStatus] = {}
_STATUS_BY_ROW_MAX = 256


def _status_of_row(row: tuple[Any, ...]) -> SubjectStatus:
    status = _STATUS_BY_ROW.get(row)
    if status is None:
        on_hold, hold_reason, minor, guardian, granted = row
        status = SubjectStatus(
            consent_granted=_opt_bool(granted), on_hold=bool(on_hold), hold_reason=hold_reason,
            minor=bool(minor), guardian_consent=bool(guardian),
        )
        if len(_STATUS_BY_ROW) >= _STATUS_BY_ROW_MAX:
            _STATUS_BY_ROW.clear()
        _STATUS_BY_ROW[row] = status
    return status


class SqliteSubjectRegistry(SubjectRegistry):
    """SQLite backend. Reads run on the event loop (an indexed point read in WAL mode does not wait for
    writers and takes tens of microseconds); writes run in a worker thread on their own connection,
    `BEGIN IMMEDIATE`, so writers in other processes are serialised by SQLite itself."""

    def __init__(self, path: Path, keys: LedgerKeys, *, cache_seconds: float = 0.0, clock: Clock = utc_now) -> None:
        super().__init__(keys, cache_seconds=cache_seconds, clock=clock)
        self.path = path
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()

    def _connect(self) -> sqlite3.Connection:
        return sqlitefile.connect(self.path, busy_timeout_seconds=10.0, check_same_thread=False)

    async def start(self) -> None:
        if self._writer is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            writer = await asyncio.to_thread(self._connect)
            await asyncio.to_thread(writer.executescript, _SQLITE_SCHEMA)
            self._writer = writer
            self._reader = await asyncio.to_thread(self._connect)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"subject registry at {self.path}: cannot open: {exc}") from exc

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None

    def _need(self, conn: sqlite3.Connection | None) -> sqlite3.Connection:
        if conn is None:
            raise RuntimeError("subject registry not started")
        return conn

    async def _read_status(self, subject_ref: str, consent_purpose: str | None) -> SubjectStatus:
        reader = self._need(self._reader)
        if consent_purpose is None:
            state = reader.execute(_SQLITE_STATE, (subject_ref,)).fetchone()
            return _status_of_row(_NO_STATE_ROW if state is None else (*state, None))
        return _status_of_row(reader.execute(_SQLITE_STATUS, (subject_ref, consent_purpose)).fetchone())

    async def _apply(self, event: RegistryEvent) -> bool:
        writer = self._need(self._writer)
        async with self._write_lock:
            return await asyncio.to_thread(self._apply_sync, writer, event)

    @staticmethod
    def _apply_sync(conn: sqlite3.Connection, event: RegistryEvent) -> bool:
        ref = event.subject_ref
        conn.execute("BEGIN IMMEDIATE")
        try:
            state_row = conn.execute(
                "SELECT on_hold, hold_reason, hold_since, minor, guardian_consent, minor_since "
                "FROM subject_state WHERE subject_ref = ?", (ref,)).fetchone()
            state = _State() if state_row is None else _State(
                bool(state_row[0]), state_row[1], _from_ts(state_row[2]), bool(state_row[3]), bool(state_row[4]),
                _from_ts(state_row[5]))
            consent: bool | None = None
            if event.consent_purpose is not None:
                consent_row = conn.execute(
                    "SELECT granted FROM subject_consent WHERE subject_ref = ? AND consent_purpose = ?",
                    (ref, event.consent_purpose)).fetchone()
                consent = None if consent_row is None else bool(consent_row[0])
            changed, new_consent, new_state = _plan(event, consent, state)
            at = _ts(event.at)
            if changed and new_consent is not None:
                conn.execute(
                    "INSERT INTO subject_consent (subject_ref, consent_purpose, granted, changed_at, source) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (subject_ref, consent_purpose) DO UPDATE SET "
                    "granted = excluded.granted, changed_at = excluded.changed_at, source = excluded.source",
                    (ref, event.consent_purpose, int(new_consent), at, event.source))
            if changed and new_state != state:
                conn.execute(
                    "INSERT INTO subject_state (subject_ref, on_hold, hold_reason, hold_since, minor, guardian_consent,"
                    " minor_since, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (subject_ref) DO UPDATE SET"
                    " on_hold = excluded.on_hold, hold_reason = excluded.hold_reason, hold_since = excluded.hold_since,"
                    " minor = excluded.minor, guardian_consent = excluded.guardian_consent,"
                    " minor_since = excluded.minor_since, updated_at = excluded.updated_at",
                    (ref, int(new_state.on_hold), new_state.hold_reason, _ts(new_state.hold_since),
                     int(new_state.minor), int(new_state.guardian_consent), _ts(new_state.minor_since), at))
            conn.execute(
                "INSERT INTO subject_events (subject_ref, at, kind, consent_purpose, hold_reason, minor,"
                " guardian_consent, source, changed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ref, at, event.kind.value, event.consent_purpose, event.hold_reason,
                 None if event.minor is None else int(event.minor),
                 None if event.guardian_consent is None else int(event.guardian_consent),
                 event.source, int(changed)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return changed

    async def record(self, subject_ref: str) -> SubjectRecord:
        require_subject_ref(subject_ref)
        conn = self._need(self._reader)
        # One read transaction so the three reads see the same snapshot.
        conn.execute("BEGIN")
        try:
            state_row = conn.execute(
                "SELECT on_hold, hold_reason, hold_since, minor, guardian_consent, minor_since "
                "FROM subject_state WHERE subject_ref = ?", (subject_ref,)).fetchone()
            consent_rows = conn.execute(
                "SELECT consent_purpose, granted, changed_at, source FROM subject_consent "
                "WHERE subject_ref = ? ORDER BY consent_purpose", (subject_ref,)).fetchall()
            event_rows = conn.execute(
                "SELECT subject_ref, at, kind, consent_purpose, hold_reason, minor, guardian_consent, source, changed "
                "FROM subject_events WHERE subject_ref = ? ORDER BY id", (subject_ref,)).fetchall()
        finally:
            conn.execute("COMMIT")
        state = _State() if state_row is None else _State(
            bool(state_row[0]), state_row[1], _from_ts(state_row[2]), bool(state_row[3]), bool(state_row[4]),
            _from_ts(state_row[5]))
        return _make_record(
            subject_ref, state,
            [ConsentState(r[0], bool(r[1]), _parse_required(r[2]), r[3]) for r in consent_rows],
            [RegistryEvent(subject_ref=r[0], at=_parse_required(r[1]), kind=EventKind(r[2]), consent_purpose=r[3],
                           hold_reason=r[4], minor=_opt_bool(r[5]), guardian_consent=_opt_bool(r[6]), source=r[7],
                           changed=bool(r[8])) for r in event_rows],
        )


def _parse_required(value: str) -> datetime:
    parsed = _from_ts(value)
    assert parsed is not None
    return parsed


def _make_record(
    subject_ref: str, state: _State, consents: Sequence[ConsentState], events: Sequence[RegistryEvent]
) -> SubjectRecord:
    return SubjectRecord(
        subject_ref=subject_ref, consents=tuple(consents), on_hold=state.on_hold, hold_reason=state.hold_reason,
        hold_since=state.hold_since, minor=state.minor, guardian_consent=state.guardian_consent,
        minor_since=state.minor_since, events=tuple(events),
    )


# --------------------------------------------------------------------------------------------------------
# PostgreSQL


# Bumped whenever PG_SUBJECT_SCHEMA changes: start() runs the DDL only when `subject_meta` does not say this
# version, so the least-privilege roles of deploy/sql/postgres-roles.sql (no CREATE, not the owner) can start.
PG_SUBJECT_SCHEMA_VERSION = 1

PG_SUBJECT_SCHEMA = f"""CREATE TABLE IF NOT EXISTS subject_meta (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS subject_consent (
    subject_ref text NOT NULL CHECK (subject_ref ~ '^[0-9a-f]{{64}}$'),
    consent_purpose text NOT NULL,
    granted boolean NOT NULL,
    changed_at timestamptz NOT NULL,
    source text NOT NULL,
    PRIMARY KEY (subject_ref, consent_purpose)
);
CREATE TABLE IF NOT EXISTS subject_state (
    subject_ref text PRIMARY KEY CHECK (subject_ref ~ '^[0-9a-f]{{64}}$'),
    on_hold boolean NOT NULL DEFAULT false,
    hold_reason text,
    hold_since timestamptz,
    minor boolean NOT NULL DEFAULT false,
    guardian_consent boolean NOT NULL DEFAULT false,
    minor_since timestamptz,
    updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS subject_events (
    id bigserial PRIMARY KEY,
    subject_ref text NOT NULL CHECK (subject_ref ~ '^[0-9a-f]{{64}}$'),
    at timestamptz NOT NULL,
    kind text NOT NULL,
    consent_purpose text,
    hold_reason text,
    minor boolean,
    guardian_consent boolean,
    source text NOT NULL,
    changed boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS subject_events_by_subject ON subject_events (subject_ref, id);
CREATE OR REPLACE FUNCTION subject_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'subject_events is append-only'; END $$;
DROP TRIGGER IF EXISTS subject_events_no_change ON subject_events;
CREATE TRIGGER subject_events_no_change BEFORE UPDATE OR DELETE ON subject_events
FOR EACH ROW EXECUTE FUNCTION subject_events_append_only();
CREATE OR REPLACE TRIGGER subject_events_no_truncate BEFORE TRUNCATE ON subject_events
FOR EACH STATEMENT EXECUTE FUNCTION subject_events_append_only();
CREATE OR REPLACE FUNCTION subject_current_no_removal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '% rows are updated, never removed', TG_TABLE_NAME; END $$;
CREATE OR REPLACE TRIGGER subject_consent_no_delete BEFORE DELETE ON subject_consent
FOR EACH ROW EXECUTE FUNCTION subject_current_no_removal();
CREATE OR REPLACE TRIGGER subject_consent_no_truncate BEFORE TRUNCATE ON subject_consent
FOR EACH STATEMENT EXECUTE FUNCTION subject_current_no_removal();
CREATE OR REPLACE TRIGGER subject_state_no_delete BEFORE DELETE ON subject_state
FOR EACH ROW EXECUTE FUNCTION subject_current_no_removal();
CREATE OR REPLACE TRIGGER subject_state_no_truncate BEFORE TRUNCATE ON subject_state
FOR EACH STATEMENT EXECUTE FUNCTION subject_current_no_removal();
INSERT INTO subject_meta (name, value) VALUES ('schema_version', '{PG_SUBJECT_SCHEMA_VERSION}')
    ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value;
"""  # noqa: S608 - only the constant schema version is formatted in

_PG_STATUS = """
SELECT s.on_hold, s.hold_reason, s.minor, s.guardian_consent, c.granted
FROM (SELECT $1::text AS ref, $2::text AS purpose) AS q
LEFT JOIN subject_state AS s ON s.subject_ref = q.ref
LEFT JOIN subject_consent AS c ON c.subject_ref = q.ref AND c.consent_purpose = q.purpose
"""

# Replicas starting together must not race on the DDL.
_PG_SCHEMA_LOCK = 0x5355424A  # "SUBJ"


class PostgresSubjectRegistry(SubjectRegistry):
    """PostgreSQL backend for several replicas: every status() is one statement on a pooled connection,
    read committed, so it sees every mutation committed before it began."""

    def __init__(self, url: str, keys: LedgerKeys, *, cache_seconds: float = 0.0, clock: Clock = utc_now,
                 pool_min: int = 1, pool_max: int = 10) -> None:
        super().__init__(keys, cache_seconds=cache_seconds, clock=clock)
        self.url = url
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._pool: Any = None

    async def start(self) -> None:
        if self._pool is not None:
            return
        import asyncpg

        try:
            pool = await asyncpg.create_pool(self.url, min_size=self._pool_min, max_size=self._pool_max,
                                             timeout=10.0)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ConfigError(f"subject registry: cannot connect to PostgreSQL: {type(exc).__name__}") from exc
        try:
            async with pool.acquire() as conn:
                await _migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _need(self) -> Any:
        if self._pool is None:
            raise RuntimeError("subject registry not started")
        return self._pool

    async def _read_status(self, subject_ref: str, consent_purpose: str | None) -> SubjectStatus:
        row = await self._need().fetchrow(_PG_STATUS, subject_ref, consent_purpose)
        return SubjectStatus(
            consent_granted=row["granted"], on_hold=bool(row["on_hold"]), hold_reason=row["hold_reason"],
            minor=bool(row["minor"]), guardian_consent=bool(row["guardian_consent"]),
        )

    async def _apply(self, event: RegistryEvent) -> bool:
        ref = event.subject_ref
        async with self._need().acquire() as conn, conn.transaction():
            # The state row is the per-subject lock: concurrent changes to one subject are serialised.
            await conn.execute(
                "INSERT INTO subject_state (subject_ref, updated_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                ref, event.at)
            row = await conn.fetchrow(
                "SELECT on_hold, hold_reason, hold_since, minor, guardian_consent, minor_since "
                "FROM subject_state WHERE subject_ref = $1 FOR UPDATE", ref)
            state = _State(row["on_hold"], row["hold_reason"], row["hold_since"], row["minor"],
                           row["guardian_consent"], row["minor_since"])
            consent: bool | None = None
            if event.consent_purpose is not None:
                consent = await conn.fetchval(
                    "SELECT granted FROM subject_consent WHERE subject_ref = $1 AND consent_purpose = $2",
                    ref, event.consent_purpose)
            changed, new_consent, new_state = _plan(event, consent, state)
            if changed and new_consent is not None:
                await conn.execute(
                    "INSERT INTO subject_consent (subject_ref, consent_purpose, granted, changed_at, source) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (subject_ref, consent_purpose) DO UPDATE SET "
                    "granted = excluded.granted, changed_at = excluded.changed_at, source = excluded.source",
                    ref, event.consent_purpose, new_consent, event.at, event.source)
            if changed and new_state != state:
                await conn.execute(
                    "UPDATE subject_state SET on_hold = $2, hold_reason = $3, hold_since = $4, minor = $5,"
                    " guardian_consent = $6, minor_since = $7, updated_at = $8 WHERE subject_ref = $1",
                    ref, new_state.on_hold, new_state.hold_reason, new_state.hold_since, new_state.minor,
                    new_state.guardian_consent, new_state.minor_since, event.at)
            await conn.execute(
                "INSERT INTO subject_events (subject_ref, at, kind, consent_purpose, hold_reason, minor,"
                " guardian_consent, source, changed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                ref, event.at, event.kind.value, event.consent_purpose, event.hold_reason, event.minor,
                event.guardian_consent, event.source, changed)
        return changed

    async def record(self, subject_ref: str) -> SubjectRecord:
        require_subject_ref(subject_ref)
        async with self._need().acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            state_row = await conn.fetchrow(
                "SELECT on_hold, hold_reason, hold_since, minor, guardian_consent, minor_since "
                "FROM subject_state WHERE subject_ref = $1", subject_ref)
            consent_rows = await conn.fetch(
                "SELECT consent_purpose, granted, changed_at, source FROM subject_consent "
                "WHERE subject_ref = $1 ORDER BY consent_purpose", subject_ref)
            event_rows = await conn.fetch(
                "SELECT at, kind, consent_purpose, hold_reason, minor, guardian_consent, source, changed "
                "FROM subject_events WHERE subject_ref = $1 ORDER BY id", subject_ref)
        state = _State() if state_row is None else _State(
            state_row["on_hold"], state_row["hold_reason"], state_row["hold_since"], state_row["minor"],
            state_row["guardian_consent"], state_row["minor_since"])
        return _make_record(
            subject_ref, state,
            [ConsentState(r["consent_purpose"], r["granted"], r["changed_at"], r["source"]) for r in consent_rows],
            [RegistryEvent(subject_ref=subject_ref, at=r["at"], kind=EventKind(r["kind"]),
                           consent_purpose=r["consent_purpose"], hold_reason=r["hold_reason"], minor=r["minor"],
                           guardian_consent=r["guardian_consent"], source=r["source"], changed=r["changed"])
             for r in event_rows],
        )


async def _migrate(conn: Any) -> None:
    """Create or update the tables unless `subject_meta` already says the current version (checked first,
    like the ledger store): a role with only the grants of deploy/sql/postgres-roles.sql then starts
    without running any DDL. Replicas starting together serialise on an advisory lock."""
    async with conn.transaction():
        if await conn.fetchval("SELECT to_regclass('subject_meta') IS NOT NULL"):
            version = await conn.fetchval("SELECT value FROM subject_meta WHERE name = 'schema_version'")
            if version == str(PG_SUBJECT_SCHEMA_VERSION):
                return
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _PG_SCHEMA_LOCK)
        await conn.execute(PG_SUBJECT_SCHEMA)


def open_registry(
    url: str, keys: LedgerKeys, *, cache_seconds: float = 0.0, clock: Clock = utc_now
) -> SubjectRegistry:
    """A registry on the ledger's database (`sqlite:///PATH` or `postgresql://...`); call `start()`."""
    if url.startswith("sqlite://"):
        return SqliteSubjectRegistry(sqlite_path(url), keys, cache_seconds=cache_seconds, clock=clock)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresSubjectRegistry(url, keys, cache_seconds=cache_seconds, clock=clock)
    raise ConfigError("subject registry URL: expected sqlite:///PATH or postgresql://...")
