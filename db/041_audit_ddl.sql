-- pgplatform: superuser
-- DDL in the audit trail: every schema change of this database becomes a row of audit.log
-- (op 'DDL'), in the transaction that made it, so the audit export ships it with the row
-- changes and a rolled-back change leaves no row.
--
-- Superuser-only: CREATE EVENT TRIGGER needs a superuser. The rows themselves are written by
-- audit.record_ddl(text, text) (db/030_audit.sql), which the database owner creates and hands
-- to the audit writer (INSERT on audit.log, nothing else). The dispatcher below runs with a
-- superuser's rights, in schema audit that the owner controls, so it calls that function only
-- while it is SECURITY DEFINER and owned by a role that is not a superuser: whatever the function
-- does then runs with its owner's rights, never with ours. Until the owner's part of the
-- baseline created it (right after bootstrap), DDL is not recorded here.
--
-- Changes to roles (CREATE/ALTER/DROP ROLE, and changes to databases) fire no event trigger:
-- pgaudit's ROLE class records them in the server log (docs/audit.md).

-- squawk-ignore-file require-lock-timeout, require-statement-timeout
-- (apply.psql sets both for the baseline's one transaction; the bootstrap runs before any
-- client connects; docs/sql-lint.md)

CREATE OR REPLACE FUNCTION platform.audit_ddl()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    writer regprocedure := pg_catalog.to_regprocedure('audit.record_ddl(text, text)');
BEGIN
    IF writer IS NULL OR NOT EXISTS (
        SELECT FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) p.proowner
        WHERE p.oid OPERATOR(pg_catalog.=) writer AND p.prosecdef AND NOT r.rolsuper
    ) THEN
        RETURN;
    END IF;
    PERFORM audit.record_ddl(TG_EVENT, TG_TAG);
END
$$;

REVOKE ALL ON FUNCTION platform.audit_ddl() FROM PUBLIC;

-- The formatter check (sqlfluff) has no grammar for EVENT TRIGGER statements and stops
-- here, so they stay last in the file.
-- noqa: disable=PRS
-- Recreated on every run so a changed definition always takes effect.
DROP EVENT TRIGGER IF EXISTS platform_audit_ddl;
CREATE EVENT TRIGGER platform_audit_ddl
    ON ddl_command_end
    EXECUTE FUNCTION platform.audit_ddl();

DROP EVENT TRIGGER IF EXISTS platform_audit_drop;
CREATE EVENT TRIGGER platform_audit_drop
    ON sql_drop
    EXECUTE FUNCTION platform.audit_ddl();

COMMENT ON EVENT TRIGGER platform_audit_ddl IS
    'Writes each DDL command into audit.log (op DDL) through audit.record_ddl(text, text).';
COMMENT ON EVENT TRIGGER platform_audit_drop IS
    'Writes each dropped object into audit.log (op DDL) through audit.record_ddl(text, text).';
