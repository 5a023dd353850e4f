-- RLS guard: no table in an exposed schema ever exists without row level security.
--
-- A table an API can reach with RLS off returns every row to every role that has a grant, and
-- default privileges hand out grants automatically. So RLS is switched on (and forced, so the
-- owner is bound too) at the moment a table appears in an exposed schema: created, created from
-- a query, or moved in with SET SCHEMA. Disabling it there is undone at the end of the same
-- command. With RLS on and no policy, a table returns no rows: missing policies fail closed.

-- The exposed schemas of this database, written from the stack config (render_exposed_schemas_sql).
CREATE TABLE IF NOT EXISTS platform.exposed_schema (
    name name PRIMARY KEY
);

COMMENT ON TABLE platform.exposed_schema IS
    'Schemas served by an API: every table in them gets RLS enabled and forced.';

REVOKE ALL ON TABLE platform.exposed_schema FROM PUBLIC;

-- Enable and force RLS on one table; true when something changed. Tables already secured are
-- left alone, so the ALTER issued here (which fires the guard again) ends the recursion.
CREATE OR REPLACE FUNCTION platform.enforce_rls(target regclass)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (
        SELECT FROM pg_catalog.pg_class c
        WHERE c.oid = target AND c.relrowsecurity AND c.relforcerowsecurity
    ) THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', target);
    RETURN true;
END
$$;

REVOKE ALL ON FUNCTION platform.enforce_rls(regclass) FROM PUBLIC;

-- SECURITY DEFINER so that whoever runs the DDL (also a role that cannot read the registry)
-- gets the guard; it only ever touches the tables the command just created or altered.
CREATE OR REPLACE FUNCTION platform.rls_guard()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target regclass;
BEGIN
    FOR target IN
        SELECT DISTINCT c.oid::regclass
        FROM pg_catalog.pg_event_trigger_ddl_commands() d
        JOIN pg_catalog.pg_class c ON c.oid = d.objid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        JOIN platform.exposed_schema e ON e.name = n.nspname
        WHERE d.classid = 'pg_catalog.pg_class'::regclass
          AND c.relkind IN ('r', 'p')
    LOOP
        PERFORM platform.enforce_rls(target);
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION platform.rls_guard() FROM PUBLIC;

-- Recreated on every run so a changed tag list always takes effect.
DROP EVENT TRIGGER IF EXISTS platform_rls_guard;
CREATE EVENT TRIGGER platform_rls_guard
    ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
    EXECUTE FUNCTION platform.rls_guard();

COMMENT ON EVENT TRIGGER platform_rls_guard IS
    'Enables and forces RLS on tables created in, moved to or altered in an exposed schema.';
