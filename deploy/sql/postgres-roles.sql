-- Database roles for the disclosure ledger (PostgreSQL). Run as a superuser or the schema owner, with
-- search_path set to the ledger's schema, after postgres-ledger-schema.sql (or after the gateway created
-- the schema once). Idempotent.
--
--   gateway_ledger_writer   the gateway itself: INSERT and SELECT only. It can neither change nor remove
--                           a record, even without the triggers.
--   gateway_ledger_pruner   `gateway ledger prune`: additionally DELETE, which the triggers still refuse
--                           unless the transaction sets gateway.ledger_prune (only prune does, with SET LOCAL).
--   gateway_ledger_auditor  `gateway ledger verify|query|export`: SELECT only.
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
END
$roles$;
