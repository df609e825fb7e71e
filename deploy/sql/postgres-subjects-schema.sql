-- Subject registry schema for PostgreSQL (consent, holds, minor status and their append-only history),
-- in the ledger's schema: tables, index, and the triggers that keep subject_events append-only and the
-- current-state rows from being removed. The gateway runs exactly this at start when `subject_meta` does
-- not hold the current version (gateway/subjects/registry.py PG_SUBJECT_SCHEMA; a test keeps the two
-- identical). Run it as the schema owner, after postgres-ledger-schema.sql, then postgres-roles.sql.
CREATE TABLE IF NOT EXISTS subject_meta (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS subject_consent (
    subject_ref text NOT NULL CHECK (subject_ref ~ '^[0-9a-f]{64}$'),
    consent_purpose text NOT NULL,
    granted boolean NOT NULL,
    changed_at timestamptz NOT NULL,
    source text NOT NULL,
    PRIMARY KEY (subject_ref, consent_purpose)
);
CREATE TABLE IF NOT EXISTS subject_state (
    subject_ref text PRIMARY KEY CHECK (subject_ref ~ '^[0-9a-f]{64}$'),
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
    subject_ref text NOT NULL CHECK (subject_ref ~ '^[0-9a-f]{64}$'),
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
INSERT INTO subject_meta (name, value) VALUES ('schema_version', '1')
    ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value;
