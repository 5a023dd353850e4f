-- pgplatform: superuser
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
--
-- Superuser-only: reading pg_authid needs a superuser, so one owns this function. Applied like
-- 040_rls_guard.sql (which creates the schema), before the access plan's roles exist: the
-- database owner receives EXECUTE with grant option and passes it on to pgbouncer_auth in
-- 060_pgbouncer_auth_grants.sql. The owner could already reset any ordinary role's password
-- (CREATEROLE), so seeing those verifiers gives it nothing new.

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
