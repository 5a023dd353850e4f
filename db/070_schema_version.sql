-- Schema version: a fingerprint of what PostgREST's schema cache holds about some schemas.
--
-- PostgREST reloads its schema cache on SIGUSR1 or on NOTIFY pgrst. Through PgBouncer in
-- transaction pooling it holds no LISTEN connection (db-channel-enabled = false), so a
-- migration's NOTIFY never reaches it. Instead a sidecar in every PostgREST pod polls this
-- function through the same pool, as the authenticator, and sends SIGUSR1 when the value changes
-- (components/render/postgrest.py, schema_reload_script; docs/domain-api.md).
--
-- Every DDL statement writes a new version of the catalog rows it changes, and a new row version
-- carries the id of the transaction that wrote it (xmin). So the set of (row, xmin) of the
-- catalog rows describing the schemas changes exactly when their objects, columns, functions,
-- types, constraints, views, triggers, comments or privileges do, and not on writes to table
-- data, ANALYZE or VACUUM (which update pg_class in place). No event trigger, no superuser, no
-- table to keep in step: streaming replicas return the same value (same catalog rows), so a pod
-- on the read-only pool sees the change once the replica has replayed it.
--
-- Applied by the database owner (the admin role). It reads only catalogs, which every role may
-- read, so it runs as the caller (no SECURITY DEFINER).

-- squawk-ignore-file require-lock-timeout, require-statement-timeout
-- (apply.psql sets both for the baseline's one transaction; docs/sql-lint.md)

CREATE OR REPLACE FUNCTION platform.schema_version(VARIADIC schemas name[])
RETURNS text
LANGUAGE sql
STABLE
PARALLEL SAFE
SET search_path = ''
AS $$
    WITH ns AS (
        SELECT n.oid, n.xmin FROM pg_catalog.pg_namespace n WHERE n.nspname = ANY (schemas)
    ), rel AS (
        SELECT c.oid, c.xmin FROM pg_catalog.pg_class c JOIN ns ON c.relnamespace = ns.oid
    ), fn AS (
        SELECT p.oid, p.xmin FROM pg_catalog.pg_proc p JOIN ns ON p.pronamespace = ns.oid
    ), typ AS (
        SELECT t.oid, t.xmin FROM pg_catalog.pg_type t JOIN ns ON t.typnamespace = ns.oid
    ), stamps (kind, id, stamp) AS (
        SELECT 'n', oid, xmin::text FROM ns
        UNION ALL SELECT 'c', oid, xmin::text FROM rel
        UNION ALL SELECT 'f', oid, xmin::text FROM fn
        UNION ALL SELECT 't', oid, xmin::text FROM typ
        UNION ALL
        SELECT 'a', a.attrelid, a.attnum::text || '.' || a.xmin::text
        FROM pg_catalog.pg_attribute a JOIN rel ON a.attrelid = rel.oid
        WHERE a.attnum > 0
        UNION ALL
        SELECT 'k', k.oid, k.xmin::text
        FROM pg_catalog.pg_constraint k JOIN ns ON k.connamespace = ns.oid
        UNION ALL
        SELECT 'r', r.oid, r.xmin::text
        FROM pg_catalog.pg_rewrite r JOIN rel ON r.ev_class = rel.oid
        UNION ALL
        SELECT 'g', g.oid, g.xmin::text
        FROM pg_catalog.pg_trigger g JOIN rel ON g.tgrelid = rel.oid
        UNION ALL
        SELECT 'd', d.objoid, d.objsubid::text || '.' || d.xmin::text
        FROM pg_catalog.pg_description d
        WHERE d.objoid IN (
            SELECT oid FROM ns UNION ALL SELECT oid FROM rel
            UNION ALL SELECT oid FROM fn UNION ALL SELECT oid FROM typ
        )
    )
    SELECT pg_catalog.md5(
        COALESCE(
            pg_catalog.string_agg(kind || id::text || ':' || stamp, ',' ORDER BY kind, id, stamp),
            ''
        ) || '|' || pg_catalog.array_to_string(schemas, ',')
    )
    FROM stamps
$$;

COMMENT ON FUNCTION platform.schema_version(name[]) IS
    'Fingerprint of the catalog rows describing the given schemas: changes with every DDL on them (polled to reload PostgREST''s schema cache).';

REVOKE ALL ON FUNCTION platform.schema_version(name[]) FROM PUBLIC;

-- The authenticator polls it (before any SET ROLE); it gains no access to any data by this.
GRANT USAGE ON SCHEMA platform TO postgrest;
GRANT EXECUTE ON FUNCTION platform.schema_version(name[]) TO postgrest;
