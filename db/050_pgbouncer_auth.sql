-- PgBouncer auth_query lookup.
--
-- PgBouncer authenticates clients with SCRAM against the verifier PostgreSQL stores, fetched
-- per login through this function as the low-privilege role pgbouncer_auth. PostgreSQL stays
-- the only place passwords live: a password rotated from Vault works at the next login, and
-- SCRAM pass-through needs exactly the server's verifier (same salt and iterations), which a
-- separately rendered userlist could not reproduce.
--
-- Only ordinary login roles with a SCRAM verifier are returned: superusers, replication and
-- BYPASSRLS roles, expired and non-SCRAM passwords are never served, so those roles cannot log
-- in (or be guessed at) through the pooler.

CREATE OR REPLACE FUNCTION platform.pgbouncer_get_auth(p_usename text)
RETURNS TABLE (usename name, passwd text)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.rolname, a.rolpassword
    FROM pg_catalog.pg_authid a
    WHERE a.rolname = p_usename
      AND a.rolcanlogin
      AND NOT a.rolsuper
      AND NOT a.rolreplication
      AND NOT a.rolbypassrls
      AND a.rolpassword LIKE 'SCRAM-SHA-256$%'
      AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > pg_catalog.now())
$$;

COMMENT ON FUNCTION platform.pgbouncer_get_auth(text) IS
    'PgBouncer auth_query: SCRAM verifier of an ordinary login role; nothing for privileged roles.';

REVOKE ALL ON FUNCTION platform.pgbouncer_get_auth(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA platform TO pgbouncer_auth;
GRANT EXECUTE ON FUNCTION platform.pgbouncer_get_auth(text) TO pgbouncer_auth;

-- auth_query runs inside the pooled database, so the lookup role must be able to connect to it.
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO pgbouncer_auth', current_database());
END
$$;
