-- pgplatform: superuser
-- RLS guard: no table in an exposed schema ever exists without row level security.
--
-- A table an API can reach with RLS off returns every row to every role that has a grant, and
-- default privileges hand out grants automatically. So RLS is switched on (and forced, so the
-- owner is bound too) at the moment a table appears in an exposed schema: created, created from
-- a query, created inside CREATE SCHEMA, or moved in with SET SCHEMA. Disabling it there is
-- undone at the end of the same command. With RLS on and no policy, a table returns no rows:
-- missing policies fail closed. A materialized view cannot have row level security, yet the
-- default privileges would hand the API roles SELECT on it: creating one in (or moving one to)
-- an exposed schema is refused.
--
-- Superuser-only (the "pgplatform: superuser" header): CREATE EVENT TRIGGER needs a superuser,
-- and the guard must own every table it secures, so its functions are owned by one. The file
-- is therefore applied by a superuser, either at cluster bootstrap, before the access plan
-- exists (CloudNativePG postInitApplicationSQLRefs), or later by hand; the baseline Job only
-- checks its version (docs/database.md). It creates what it needs itself and names no role of
-- the access plan. Objects here live in schema platform, which the admin role owns: a schema
-- owner may drop and recreate anything in it, so the superuser-owned functions resolve no
-- object of that schema by name without checking that it is still the one created here.

-- squawk-ignore-file require-lock-timeout, require-statement-timeout
-- (apply.psql sets both for the baseline's one transaction; the bootstrap runs before any
-- client connects; docs/sql-lint.md)

-- The schema belongs to the database owner (the platform's admin role), as in the access plan.
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE SCHEMA IF NOT EXISTS platform AUTHORIZATION %I',
        (SELECT pg_catalog.pg_get_userbyid(d.datdba)
         FROM pg_catalog.pg_database d
         WHERE d.datname = pg_catalog.current_database()));
END
$$;

-- The exposed schemas of this database, written from the stack config (render_exposed_schemas_sql)
-- by the database owner, who gets exactly the privileges that file needs.
CREATE TABLE IF NOT EXISTS platform.exposed_schema (
    name name PRIMARY KEY
);

COMMENT ON TABLE platform.exposed_schema IS
    'Schemas served by an API: every table in them gets RLS enabled and forced.';

REVOKE ALL ON TABLE platform.exposed_schema FROM PUBLIC;

-- Enable and force RLS on one table; true when something changed. Tables already secured are
-- left alone, so the ALTER issued here (which fires the guard again) ends the recursion.
-- SECURITY DEFINER so the database owner can secure tables that other roles own (tables
-- created before their schema was registered); it can only ever switch RLS on.
CREATE OR REPLACE FUNCTION platform.enforce_rls(target regclass)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    IF EXISTS (
        SELECT FROM pg_catalog.pg_class c
        WHERE c.oid = target AND c.relrowsecurity AND c.relforcerowsecurity
    ) THEN
        RETURN false;
    END IF;
    EXECUTE pg_catalog.format(
        'ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', target);
    RETURN true;
END
$$;

REVOKE ALL ON FUNCTION platform.enforce_rls(regclass) FROM PUBLIC;

-- SECURITY DEFINER so that whoever runs the DDL (also a role that cannot read the registry)
-- gets the guard; it only ever touches the tables the command just created or altered. It runs
-- as a superuser, so it reads the registry only while that is still the plain table created
-- above (owned by this function's owner: a look-alike view could run its creator's code with
-- superuser rights) and inlines the ALTER instead of calling platform.enforce_rls by name.
CREATE OR REPLACE FUNCTION platform.rls_guard()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    registry regclass := pg_catalog.to_regclass('platform.exposed_schema');
    target regclass;
BEGIN
    IF registry IS NULL OR NOT EXISTS (
        SELECT FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_roles r ON r.oid = c.relowner
        WHERE c.oid = registry AND c.relkind = 'r' AND r.rolname = current_user
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'platform.exposed_schema is missing or was replaced',
            HINT = 'Re-apply db/040_rls_guard.sql as a superuser (docs/database.md).';
    END IF;
    FOR target IN
        SELECT DISTINCT c.oid::pg_catalog.regclass
        FROM pg_catalog.pg_event_trigger_ddl_commands() d
        JOIN pg_catalog.pg_class c ON c.oid = d.objid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        JOIN platform.exposed_schema e ON e.name = n.nspname
        WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
          AND c.relkind = 'm'
    LOOP
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format(
                'materialized view %s: an exposed schema holds no materialized view', target),
            DETAIL = 'A materialized view has no row level security: every API role granted '
                'SELECT would read all of its rows.',
            HINT = 'Create it in a schema no API serves and expose its rows through a '
                'security_barrier view or a function that applies the policies.';
    END LOOP;
    FOR target IN
        SELECT DISTINCT c.oid::pg_catalog.regclass
        FROM pg_catalog.pg_event_trigger_ddl_commands() d
        JOIN pg_catalog.pg_class c ON c.oid = d.objid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        JOIN platform.exposed_schema e ON e.name = n.nspname
        WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
          AND c.relkind IN ('r', 'p')
    LOOP
        IF NOT EXISTS (
            SELECT FROM pg_catalog.pg_class c
            WHERE c.oid = target AND c.relrowsecurity AND c.relforcerowsecurity
        ) THEN
            EXECUTE pg_catalog.format(
                'ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', target);
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION platform.rls_guard() FROM PUBLIC;

-- The database owner maintains the registry and secures pre-existing tables (090).
DO $$
DECLARE
    owner name := (SELECT pg_catalog.pg_get_userbyid(d.datdba)
                   FROM pg_catalog.pg_database d
                   WHERE d.datname = pg_catalog.current_database());
BEGIN
    IF owner <> current_user THEN
        EXECUTE pg_catalog.format(
            'GRANT SELECT, INSERT, DELETE ON TABLE platform.exposed_schema TO %I', owner);
        EXECUTE pg_catalog.format(
            'GRANT EXECUTE ON FUNCTION platform.enforce_rls(regclass) TO %I', owner);
    END IF;
END
$$;

-- The formatter check (sqlfluff) has no grammar for EVENT TRIGGER statements and stops
-- here, so they stay last in the file.
-- noqa: disable=PRS
-- Recreated on every run so a changed tag list always takes effect.
DROP EVENT TRIGGER IF EXISTS platform_rls_guard;
CREATE EVENT TRIGGER platform_rls_guard
    ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE',
                 'CREATE SCHEMA', 'CREATE MATERIALIZED VIEW', 'ALTER MATERIALIZED VIEW')
    EXECUTE FUNCTION platform.rls_guard();

COMMENT ON EVENT TRIGGER platform_rls_guard IS
    'Enables and forces RLS on tables created in, moved to or altered in an exposed schema; refuses materialized views there.';
