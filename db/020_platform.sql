-- Platform helpers: JWT claim accessors and PostgREST's db-pre-request hook.
--
-- Applied by the database owner (the admin role; no superuser needed) after 010_access.sql
-- (roles and schemas exist). Idempotent: every statement converges, so applying the file twice
-- is a no-op.
--
-- The claim helpers run as the caller (no SECURITY DEFINER: reading your own request GUC needs
-- no privilege). Like every platform function they pin an empty search_path and qualify every
-- name, so nothing a caller puts on its search_path, now or later, changes what they resolve.
-- The pin stops the planner from inlining them; policies call them as an init plan,
-- (SELECT platform.jwt_sub()), evaluated once per statement, so that costs nothing measurable
-- (docs/database.md, bench/rls_overhead.py).

CREATE OR REPLACE FUNCTION platform.jwt_claims()
RETURNS jsonb
LANGUAGE sql
STABLE
PARALLEL SAFE
SET search_path = ''
AS $$
    SELECT coalesce(
        nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::pg_catalog.jsonb,
        '{}'::pg_catalog.jsonb
    )
$$;

COMMENT ON FUNCTION platform.jwt_claims() IS
    'Claims of the verified JWT of the current request (set by PostgREST per transaction); {} outside a request.';

CREATE OR REPLACE FUNCTION platform.jwt_sub()
RETURNS text
LANGUAGE sql
STABLE
PARALLEL SAFE
SET search_path = ''
AS $$
    SELECT nullif(pg_catalog.jsonb_extract_path_text(platform.jwt_claims(), 'sub'), '')
$$;

COMMENT ON FUNCTION platform.jwt_sub() IS
    'The sub claim (subject) or NULL. Use as (SELECT platform.jwt_sub()) in policies: evaluated once per statement.';

CREATE OR REPLACE FUNCTION platform.jwt_role()
RETURNS text
LANGUAGE sql
STABLE
PARALLEL SAFE
SET search_path = ''
AS $$
    SELECT nullif(pg_catalog.jsonb_extract_path_text(platform.jwt_claims(), 'role'), '')
$$;

COMMENT ON FUNCTION platform.jwt_role() IS
    'The role claim or NULL; PostgREST has already switched to it with SET LOCAL ROLE.';

-- db-pre-request: runs after SET LOCAL ROLE and the claims, before the query.
-- PostgREST already refuses expired or badly signed tokens, switches to the role claim and
-- applies each API role's own settings (statement_timeout). Two rules of our model remain:
--   * a request runs as an API role. EXECUTE on this function is granted to the API roles
--     only, so a token whose role claim names anything else (the authenticator itself, say)
--     fails right here with permission denied;
--   * every non-anonymous request names its subject. Own-record policies compare with
--     jwt_sub() and audit rows record it: a token without sub would act unattributed.
-- Both fail as insufficient_privilege (42501): PostgREST answers 403 (401 for anonymous).
CREATE OR REPLACE FUNCTION platform.pre_request()
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = ''
AS $$
BEGIN
    IF current_user <> 'api_anonymous' AND platform.jwt_sub() IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'the token has no sub claim',
            HINT = 'Every authenticated token must name its subject: policies and the audit log use it.';
    END IF;
END
$$;

COMMENT ON FUNCTION platform.pre_request() IS
    'PostgREST db-pre-request: only API roles may call it; authenticated requests need a sub claim.';

-- Least privilege: nothing for PUBLIC; the API roles (which evaluate policies calling the claim
-- helpers), the domain schema owner (whose views and functions may call them) and the audit
-- writer (audit.record() records the subject, db/030_audit.sql) get EXECUTE.
-- USAGE on the schema comes from 010_access.sql. Roles are looked up because the set differs
-- per stack (api_anonymous only in staging, one api_service_<name> per machine client).
REVOKE ALL ON FUNCTION
    platform.jwt_claims(), platform.jwt_sub(), platform.jwt_role(), platform.pre_request()
    FROM PUBLIC;

DO $$
DECLARE
    grantee name;
BEGIN
    FOR grantee IN
        SELECT rolname FROM pg_catalog.pg_roles
        WHERE rolname IN ('api_anonymous', 'api_user', 'api_editor', 'api_admin', 'pgplatform_owner',
                          'pgplatform_audit_writer')
           OR rolname LIKE 'api\_service\_%'
        ORDER BY rolname
    LOOP
        EXECUTE format(
            'GRANT EXECUTE ON FUNCTION platform.jwt_claims(), platform.jwt_sub(), '
            'platform.jwt_role() TO %I', grantee);
        IF grantee NOT IN ('pgplatform_owner', 'pgplatform_audit_writer') THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION platform.pre_request() TO %I', grantee);
        END IF;
    END LOOP;
END
$$;
