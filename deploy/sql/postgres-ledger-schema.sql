-- Disclosure ledger schema for PostgreSQL: tables, indexes, and the triggers that refuse UPDATE, DELETE
-- and TRUNCATE outside pruning. The gateway runs exactly this at start when the schema is absent
-- (gateway/ledger/postgres_store.py POSTGRES_SCHEMA; a test keeps the two identical). Run it as the schema
-- owner, then deploy/sql/postgres-roles.sql.
CREATE TABLE IF NOT EXISTS ledger_meta (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_records (
    id text NOT NULL,
    chain text NOT NULL,
    sequence bigint NOT NULL,
    time text NOT NULL,
    kind text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL,
    signature text,
    caller text,
    partner text,
    route text,
    purpose text,
    legal_basis text,
    jurisdiction text,
    cross_border boolean,
    transfer_basis text,
    subject_ref text,
    fields_sent text,
    fields_transformed text,
    fields_dropped text,
    body_digest text,
    request_id text,
    disclosure_id text,
    status integer,
    latency_ms double precision,
    reason text,
    legal_reference text,
    attempt integer,
    action text,
    detail text,
    PRIMARY KEY (chain, sequence)
);
CREATE UNIQUE INDEX IF NOT EXISTS ledger_records_id ON ledger_records (id);
CREATE INDEX IF NOT EXISTS ledger_records_subject ON ledger_records (subject_ref) WHERE subject_ref IS NOT NULL;
CREATE INDEX IF NOT EXISTS ledger_records_time ON ledger_records (time);
CREATE TABLE IF NOT EXISTS ledger_checkpoints (
    chain text NOT NULL,
    sequence bigint NOT NULL,
    record text NOT NULL,
    PRIMARY KEY (chain, sequence)
);
CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('gateway.ledger_prune', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE OR REPLACE TRIGGER ledger_records_refuse_change BEFORE UPDATE OR DELETE ON ledger_records
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE OR REPLACE TRIGGER ledger_records_refuse_truncate BEFORE TRUNCATE ON ledger_records
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE OR REPLACE TRIGGER ledger_checkpoints_refuse_change BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE OR REPLACE TRIGGER ledger_checkpoints_refuse_truncate BEFORE TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
INSERT INTO ledger_meta (name, value) VALUES ('schema_version', '1')
    ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value;
