-- pgplatform: superuser
-- What a login may reach outside the API schemas.
--
-- Superuser-only: the maintenance databases and the large object functions belong to the
-- bootstrap superuser. Applied with the other superuser files; names no role of the access plan.
--
-- * The maintenance databases (postgres, template1) accept every role by default, so an API
--   login (or SQL running as an API role that opens a new connection) could reach a database
--   where none of the platform's schemas, policies or audit exist. Only superusers and members
--   of pg_monitor (the metrics exporters: CloudNativePG's reads its default metrics in postgres)
--   get in; the platform's logins use the application database.
-- * Large objects are storage outside every table: no row level security, no audit trigger, and
--   any role may create them by default. Creating one is revoked from PUBLIC (writing into an
--   existing one needs its owner's grant, and reading it is the owner's unless granted).
--   lo_import/lo_export (server files) are superuser-only already.

DO $$
DECLARE
    maintenance name;
BEGIN
    FOR maintenance IN
        SELECT d.datname FROM pg_catalog.pg_database d
        WHERE d.datname IN ('postgres', 'template1')
          AND d.datname <> pg_catalog.current_database()
        ORDER BY d.datname
    LOOP
        EXECUTE pg_catalog.format(
            'REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', maintenance);
        EXECUTE pg_catalog.format('GRANT CONNECT ON DATABASE %I TO pg_monitor', maintenance);
    END LOOP;
END
$$;

REVOKE EXECUTE ON FUNCTION
    pg_catalog.lo_creat(integer),
    pg_catalog.lo_create(oid),
    pg_catalog.lo_from_bytea(oid, bytea)
    FROM PUBLIC;
