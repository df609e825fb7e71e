-- Database roles for the disclosure ledger and the subject registry (PostgreSQL). Run as a superuser or
-- the schema owner, with search_path set to the ledger's schema, after postgres-ledger-schema.sql and
-- postgres-subjects-schema.sql (or after the gateway created both once). Idempotent.
--
--   gateway_ledger_writer   the gateway itself, and `gateway subject consent|hold|minor`: on the ledger
--                           INSERT and SELECT only (it can neither change nor remove a record, even without
--                           the triggers); on the registry INSERT into the history (subject_events) and
--                           INSERT and UPDATE of the current consent and state rows, never DELETE.
--   gateway_ledger_pruner   `gateway ledger prune`: additionally DELETE on the ledger, which the triggers
--                           still refuse unless the transaction sets gateway.ledger_prune (only prune does,
--                           with SET LOCAL); the registry only read.
--   gateway_ledger_auditor  `gateway ledger verify|query|export`, `gateway subject show`: SELECT only.
--
-- These are NOLOGIN group roles; grant them to login roles, e.g. GRANT gateway_ledger_writer TO gateway_app;
DO $roles$
DECLARE
    ledger_schema text := current_schema();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gateway_ledger_writer') THEN
        CREATE ROLE gateway_ledger_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gateway_ledger_pruner') THEN
        CREATE ROLE gateway_ledger_pruner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gateway_ledger_auditor') THEN
        CREATE ROLE gateway_ledger_auditor NOLOGIN;
    END IF;

    EXECUTE format('REVOKE ALL ON %I.ledger_records, %I.ledger_checkpoints, %I.ledger_meta FROM PUBLIC',
                   ledger_schema, ledger_schema, ledger_schema);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO gateway_ledger_writer, gateway_ledger_pruner, '
                   'gateway_ledger_auditor', ledger_schema);

    EXECUTE format('REVOKE ALL ON %I.ledger_records, %I.ledger_checkpoints, %I.ledger_meta '
                   'FROM gateway_ledger_writer, gateway_ledger_pruner, gateway_ledger_auditor',
                   ledger_schema, ledger_schema, ledger_schema);
    EXECUTE format('GRANT SELECT, INSERT ON %I.ledger_records, %I.ledger_checkpoints TO gateway_ledger_writer',
                   ledger_schema, ledger_schema);
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON %I.ledger_records, %I.ledger_checkpoints '
                   'TO gateway_ledger_pruner', ledger_schema, ledger_schema);
    EXECUTE format('GRANT SELECT ON %I.ledger_records, %I.ledger_checkpoints TO gateway_ledger_auditor',
                   ledger_schema, ledger_schema);
    EXECUTE format('GRANT SELECT ON %I.ledger_meta TO gateway_ledger_writer, gateway_ledger_pruner, '
                   'gateway_ledger_auditor', ledger_schema);

    -- The subject registry. Without its tables the writer could not start the gateway: say so rather than
    -- leave them ungranted.
    IF to_regclass(format('%I.subject_meta', ledger_schema)) IS NULL THEN
        RAISE EXCEPTION 'the subject registry tables are missing in schema %: run postgres-subjects-schema.sql '
                        '(or start the gateway once as the owner) first', ledger_schema;
    END IF;
    EXECUTE format('REVOKE ALL ON %1$I.subject_meta, %1$I.subject_consent, %1$I.subject_state, '
                   '%1$I.subject_events FROM PUBLIC, gateway_ledger_writer, gateway_ledger_pruner, '
                   'gateway_ledger_auditor', ledger_schema);
    EXECUTE format('REVOKE ALL ON SEQUENCE %1$I.subject_events_id_seq FROM PUBLIC, gateway_ledger_writer, '
                   'gateway_ledger_pruner, gateway_ledger_auditor', ledger_schema);
    EXECUTE format('GRANT SELECT ON %1$I.subject_meta, %1$I.subject_consent, %1$I.subject_state, '
                   '%1$I.subject_events TO gateway_ledger_writer, gateway_ledger_pruner, gateway_ledger_auditor',
                   ledger_schema);
    -- UPDATE also covers the change's SELECT ... FOR UPDATE of the state row and its INSERT ... ON CONFLICT.
    EXECUTE format('GRANT INSERT, UPDATE ON %1$I.subject_consent, %1$I.subject_state TO gateway_ledger_writer',
                   ledger_schema);
    EXECUTE format('GRANT INSERT ON %1$I.subject_events TO gateway_ledger_writer', ledger_schema);
    EXECUTE format('GRANT USAGE ON SEQUENCE %1$I.subject_events_id_seq TO gateway_ledger_writer', ledger_schema);
END
$roles$;
