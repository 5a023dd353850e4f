-- pgplatform: superuser
-- PgBouncer auth_query lookup.
--
-- PgBouncer authenticates clients with SCRAM against the verifier PostgreSQL stores, fetched
-- per login through this function as the low-privilege role pgbouncer_auth. PostgreSQL stays
-- the only place passwords live: a password rotated from Vault works at the next login, and
-- SCRAM pass-through needs exactly the server's verifier (same salt and iterations), which a
-- separately rendered userlist could not reproduce.
--
-- Only the logins that connect through the pooler are served: the platform's authenticators
-- (PostgREST's postgrest, the GraphQL pilot's postgraphile; components/render/access.py and
-- components/inputs.py name them), an explicit allowlist. Even those are refused while they
-- hold more than an authenticator needs: SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or
-- BYPASSRLS of their own, membership (direct or through other roles) in a role that has any of
-- these or in a predefined pg_* role (pg_execute_server_program, pg_read_server_files, ...,
-- pg_database_owner), an expired or a non-SCRAM password. Every other login (the admin, the
-- lookup role itself, exporters, people) cannot log in, or be guessed at, through the pooler.
--
-- Superuser-only: reading pg_authid needs a superuser, so one owns this function. Applied like
-- 040_rls_guard.sql (which creates the schema), before the access plan's roles exist: the
-- database owner receives EXECUTE with grant option and passes it on to pgbouncer_auth in
-- 060_pgbouncer_auth_grants.sql. The owner could already reset an authenticator's password
-- (CREATEROLE), so seeing those verifiers gives it nothing new.

-- squawk-ignore-file require-lock-timeout, require-statement-timeout
-- (apply.psql sets both for the baseline's one transaction; the bootstrap runs before any
-- client connects; docs/sql-lint.md)

CREATE OR REPLACE FUNCTION platform.pgbouncer_get_auth(p_usename text)
RETURNS TABLE (usename name, passwd text)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT a.rolname, a.rolpassword
    FROM pg_catalog.pg_authid a
    WHERE a.rolname = p_usename
      AND a.rolname = ANY (ARRAY['postgraphile', 'postgrest']::pg_catalog.name[])
      AND a.rolcanlogin
      AND NOT (a.rolsuper OR a.rolcreaterole OR a.rolcreatedb OR a.rolreplication OR a.rolbypassrls)
      AND a.rolpassword LIKE 'SCRAM-SHA-256$%'
      AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > pg_catalog.now())
      AND NOT EXISTS (
          SELECT FROM pg_catalog.pg_authid r
          WHERE r.oid <> a.oid
            AND (r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication
                 OR r.rolbypassrls OR r.rolname LIKE 'pg\_%')
            AND pg_catalog.pg_has_role(a.oid, r.oid, 'MEMBER')
      )
$$;

COMMENT ON FUNCTION platform.pgbouncer_get_auth(text) IS
    'PgBouncer auth_query: SCRAM verifier of an allowlisted authenticator holding no privilege beyond its API roles.';

REVOKE ALL ON FUNCTION platform.pgbouncer_get_auth(text) FROM PUBLIC;

DO $$
DECLARE
    owner name := (SELECT pg_catalog.pg_get_userbyid(d.datdba)
                   FROM pg_catalog.pg_database d
                   WHERE d.datname = pg_catalog.current_database());
BEGIN
    IF owner <> current_user THEN
        EXECUTE pg_catalog.format(
            'GRANT EXECUTE ON FUNCTION platform.pgbouncer_get_auth(text) TO %I '
            'WITH GRANT OPTION', owner);
    END IF;
END
$$;
