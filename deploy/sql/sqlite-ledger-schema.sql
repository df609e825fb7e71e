-- Disclosure ledger schema for SQLite (STRICT tables, WAL mode is set per connection). The gateway runs
-- exactly this at start (gateway/ledger/sqlite_store.py SQLITE_SCHEMA; a test keeps the two identical).
CREATE TABLE IF NOT EXISTS ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS ledger_records (
    id TEXT NOT NULL,
    chain TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT,
    caller TEXT,
    partner TEXT,
    route TEXT,
    purpose TEXT,
    legal_basis TEXT,
    jurisdiction TEXT,
    cross_border INTEGER,
    transfer_basis TEXT,
    subject_ref TEXT,
    fields_sent TEXT,
    fields_transformed TEXT,
    fields_dropped TEXT,
    body_digest TEXT,
    request_id TEXT,
    disclosure_id TEXT,
    status INTEGER,
    latency_ms REAL,
    reason TEXT,
    legal_reference TEXT,
    attempt INTEGER,
    action TEXT,
    detail TEXT,
    PRIMARY KEY (chain, sequence)
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS ledger_records_id ON ledger_records (id);
CREATE INDEX IF NOT EXISTS ledger_records_subject ON ledger_records (subject_ref) WHERE subject_ref IS NOT NULL;
CREATE INDEX IF NOT EXISTS ledger_records_time ON ledger_records (time);
CREATE TABLE IF NOT EXISTS ledger_checkpoints (
    chain TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (chain, sequence)
) STRICT;
CREATE TABLE IF NOT EXISTS ledger_prune_guard (armed INTEGER NOT NULL) STRICT;
CREATE TRIGGER IF NOT EXISTS ledger_records_refuse_update BEFORE UPDATE ON ledger_records
BEGIN SELECT RAISE(ABORT, 'ledger_records is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS ledger_records_refuse_delete BEFORE DELETE ON ledger_records
WHEN NOT EXISTS (SELECT 1 FROM ledger_prune_guard)
BEGIN SELECT RAISE(ABORT, 'ledger_records is append-only: DELETE refused outside prune'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_refuse_update BEFORE UPDATE ON ledger_checkpoints
BEGIN SELECT RAISE(ABORT, 'ledger_checkpoints is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_refuse_delete BEFORE DELETE ON ledger_checkpoints
WHEN NOT EXISTS (SELECT 1 FROM ledger_prune_guard)
BEGIN SELECT RAISE(ABORT, 'ledger_checkpoints is append-only: DELETE refused outside prune'); END;
INSERT OR IGNORE INTO ledger_meta (name, value) VALUES ('schema_version', '1');
