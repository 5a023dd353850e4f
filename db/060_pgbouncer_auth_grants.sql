-- The PgBouncer lookup role may call the lookup (db/050_pgbouncer_auth.sql) and nothing else.
--
-- Applied by the database owner (the admin role), which holds EXECUTE on the lookup with grant
-- option. CONNECT on the database comes from the access plan (010_access.sql): auth_query runs
-- inside the pooled database, so the lookup role must be able to connect to it.

GRANT USAGE ON SCHEMA platform TO pgbouncer_auth;
GRANT EXECUTE ON FUNCTION platform.pgbouncer_get_auth(text) TO pgbouncer_auth;
