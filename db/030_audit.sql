-- Audit trail: every write to an audited table, with the subject and API role that made it.
--
-- audit.log is written only by the trigger function audit.record() (SECURITY DEFINER), so the
-- API roles never need, and never get, any privilege on it: a compromised token can neither
-- read the trail nor forge or erase entries.
--
-- audit.record() is owned by pgplatform_audit_writer (NOLOGIN, from the access plan), which
-- holds exactly what the function needs: INSERT on audit.log, USAGE on audit and platform and
-- EXECUTE on the claim helpers. Serialising a row (to_jsonb) runs code the table's owner
-- controls (a cast to jsonb of a type it created), with the rights of the function's owner: a
-- superuser or the admin owning it would hand the schema owner their rights.

-- squawk-ignore-file require-lock-timeout, require-statement-timeout
-- (apply.psql sets both for the baseline's one transaction; docs/sql-lint.md)

CREATE TABLE IF NOT EXISTS audit.log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    schema_name name NOT NULL,
    table_name  name NOT NULL,
    op          text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'DDL')),
    old_row     jsonb,
    new_row     jsonb,
    sub         text,
    role        name NOT NULL,
    txid        bigint NOT NULL DEFAULT pg_catalog.txid_current()
);

-- Tenanted domains (db/025_tenancy.sql): the tenant the request named, and whether a machine
-- client declared cross-tenant made the change. Only when missing: ALTER TABLE takes an ACCESS
-- EXCLUSIVE lock on the log (every audited write waits) even when IF NOT EXISTS finds nothing to
-- do. A constant default adds the columns without rewriting the table.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid = 'audit.log'::regclass AND a.attname = 'cross_tenant'
                     AND NOT a.attisdropped) THEN
        ALTER TABLE audit.log
            ADD COLUMN IF NOT EXISTS tenant text,
            ADD COLUMN IF NOT EXISTS cross_tenant boolean NOT NULL DEFAULT false;
    END IF;
END
$$;

COMMENT ON TABLE audit.log IS
    'One row per audited row change (TRUNCATE: per statement) and per DDL command (op DDL). sub: JWT subject; role: the role of the request; tenant, cross_tenant: see platform.tenancy.';

-- Logs created before DDL was recorded allow only the row operations: widen the check. NOT VALID
-- skips the scan (every existing row passes the narrower old check) and still binds new rows.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_catalog.pg_constraint c
        WHERE c.conrelid = 'audit.log'::regclass AND c.conname = 'log_op_check'
            AND pg_catalog.pg_get_constraintdef(c.oid) LIKE '%''DDL''%'
    ) THEN
        ALTER TABLE audit.log DROP CONSTRAINT IF EXISTS log_op_check;
        ALTER TABLE audit.log ADD CONSTRAINT log_op_check
            CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'DDL')) NOT VALID;
    END IF;
END
$$;

-- Built with the (then empty) table inside the baseline's one transaction, where CONCURRENTLY
-- cannot run. Later runs find them, but still hold a SHARE lock on audit.log (blocking audited
-- writes) until the baseline commits: seconds, and never waited for beyond lock_timeout.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS log_table_at_idx ON audit.log (schema_name, table_name, at);
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS log_sub_at_idx ON audit.log (sub, at);
-- The export's order (docs/audit.md, "Export"). A log that predates it: build it with
-- CREATE INDEX CONCURRENTLY first (docs/audit.md, "Runbook"), or the build runs
-- here, under statement_timeout.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS log_txid_id_idx ON audit.log (txid, id);

-- Only the owner holds privileges on the log and its identity sequence, whatever default
-- privileges 010_access.sql set up for the schema; the audit writer gets INSERT below.
DO $$
DECLARE
    target regclass;
    grantee text;
BEGIN
    FOREACH target IN ARRAY ARRAY['audit.log'::regclass, 'audit.log_id_seq'::regclass]
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', target);
        FOR grantee IN
            SELECT DISTINCT r.rolname
            FROM pg_catalog.pg_class c
            CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
            JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
            WHERE c.oid = target AND a.grantee <> c.relowner
        LOOP
            IF target = 'audit.log'::regclass AND grantee = 'pgplatform_audit_writer' THEN
                -- The writer keeps INSERT: each REVOKE here is DDL that it records (041).
                EXECUTE format(
                    'REVOKE SELECT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON %s FROM %I',
                    target, grantee);
            ELSE
                EXECUTE format('REVOKE ALL ON %s FROM %I', target, grantee);
            END IF;
        END LOOP;
    END LOOP;
END
$$;

-- The role of a request is the one PostgREST switched to with SET LOCAL ROLE. Inside a SECURITY
-- DEFINER function current_user is the owner, but the "role" setting still names the role the
-- session switched to ('none' without SET ROLE: then the login role is the requester).
CREATE OR REPLACE FUNCTION audit.record()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    requester name := coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user);
BEGIN
    INSERT INTO audit.log (schema_name, table_name, op, old_row, new_row, sub, role, tenant,
                           cross_tenant)
    VALUES (
        TG_TABLE_SCHEMA,
        TG_TABLE_NAME,
        TG_OP,
        CASE WHEN TG_LEVEL = 'ROW' AND TG_OP IN ('UPDATE', 'DELETE') THEN pg_catalog.to_jsonb(OLD) END,
        CASE WHEN TG_LEVEL = 'ROW' AND TG_OP IN ('INSERT', 'UPDATE') THEN pg_catalog.to_jsonb(NEW) END,
        platform.jwt_sub(),
        requester,
        platform.jwt_tenant(),
        EXISTS (SELECT FROM platform.tenant_client c
                WHERE c.role OPERATOR(pg_catalog.=) requester AND c.cross_tenant)
    );
    RETURN NULL;
END
$$;

-- DDL rows, written for the event triggers of db/041_audit_ddl.sql (via platform.audit_ddl()).
-- pg_event_trigger_ddl_commands() and pg_event_trigger_dropped_objects() fail outside an event
-- trigger, so a direct call cannot forge a row. No statement text: it can carry secrets
-- (CREATE USER MAPPING ... OPTIONS (password ...)); only pgaudit logs it, to the server log.
CREATE OR REPLACE FUNCTION audit.record_ddl(event text, tag text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    requester name := coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user);
BEGIN
    IF event = 'sql_drop' THEN
        INSERT INTO audit.log (schema_name, table_name, op, old_row, sub, role)
        SELECT
            coalesce(d.schema_name, ''),
            CASE WHEN d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                THEN coalesce(d.object_name, '') ELSE '' END,
            'DDL',
            pg_catalog.jsonb_build_object(
                'command_tag', tag, 'object_type', d.object_type,
                'object_identity', d.object_identity, 'original', d.original),
            platform.jwt_sub(),
            requester
        FROM pg_catalog.pg_event_trigger_dropped_objects() d
        -- What the command named and what CASCADE took with it; not a table's row type or index.
        WHERE NOT d.is_temporary AND (d.original OR d.normal);
    ELSE
        INSERT INTO audit.log (schema_name, table_name, op, new_row, sub, role)
        SELECT
            coalesce(c.schema_name, ''),
            coalesce((SELECT r.relname FROM pg_catalog.pg_class r
                      WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                          AND r.oid = c.objid), ''),
            'DDL',
            pg_catalog.jsonb_build_object(
                'command_tag', c.command_tag, 'object_type', c.object_type,
                'object_identity', c.object_identity, 'in_extension', c.in_extension),
            platform.jwt_sub(),
            requester
        FROM pg_catalog.pg_event_trigger_ddl_commands() c
        WHERE c.schema_name IS NULL OR c.schema_name NOT LIKE 'pg\_temp%';
    END IF;
END
$$;

COMMENT ON FUNCTION audit.record_ddl(text, text) IS
    'Writes the DDL commands (or dropped objects) of the running event trigger into audit.log.';

COMMENT ON FUNCTION audit.record() IS
    'AFTER trigger writing audit.log; attach with platform.enable_audit(regclass).';

-- Attaching a trigger needs EXECUTE on its function: only the schema owner (and superusers)
-- may attach audit.record(); firing it needs no privilege of the writer.
REVOKE ALL ON FUNCTION audit.record() FROM PUBLIC;
-- Whoever runs DDL calls it (through the superuser's dispatcher); outside an event trigger it fails.
REVOKE ALL ON FUNCTION audit.record_ddl(text, text) FROM PUBLIC;

-- Hand the function to the audit writer. Changing an owner needs membership in the new owner
-- (the admin grants it to itself with CREATEROLE; the writer holds nothing the admin lacks) and
-- the new owner's CREATE on the schema, held only for the duration of the change.
GRANT USAGE ON SCHEMA audit, platform TO pgplatform_audit_writer;
GRANT INSERT ON TABLE audit.log TO pgplatform_audit_writer;
DO $$
BEGIN
    IF NOT pg_catalog.pg_has_role(current_user, 'pgplatform_audit_writer', 'MEMBER') THEN
        EXECUTE pg_catalog.format('GRANT pgplatform_audit_writer TO %I', current_user);
    END IF;
END
$$;
GRANT CREATE ON SCHEMA audit TO pgplatform_audit_writer;
ALTER FUNCTION audit.record() OWNER TO pgplatform_audit_writer;
ALTER FUNCTION audit.record_ddl(text, text) OWNER TO pgplatform_audit_writer;
REVOKE CREATE ON SCHEMA audit FROM pgplatform_audit_writer;

-- Runs as the caller, so it can only add auditing to tables the caller may put triggers on.
CREATE OR REPLACE FUNCTION platform.enable_audit(target regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    kind "char";
BEGIN
    SELECT c.relkind INTO kind FROM pg_catalog.pg_class c WHERE c.oid = target;
    IF kind IS DISTINCT FROM 'r' AND kind IS DISTINCT FROM 'p' THEN
        RAISE EXCEPTION 'platform.enable_audit: % is not a table', target
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF target = 'audit.log'::regclass THEN
        RAISE EXCEPTION 'platform.enable_audit: audit.log cannot audit itself'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER audit_record AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION audit.record()', target);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER audit_record_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION audit.record()', target);
END
$$;

COMMENT ON FUNCTION platform.enable_audit(regclass) IS
    'Attach audit.record() to a table (idempotent); run by the table owner.';

REVOKE ALL ON FUNCTION platform.enable_audit(regclass) FROM PUBLIC;

GRANT USAGE ON SCHEMA audit, platform TO pgplatform_owner;
GRANT EXECUTE ON FUNCTION audit.record(), platform.enable_audit(regclass) TO pgplatform_owner;
