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

-- squawk-ignore-file require-lock-timeout, require-statement-timeout
-- (apply.psql sets both for the baseline's one transaction; docs/sql-lint.md)

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

-- Roles from groups: when the identity provider sends a `groups` claim instead of a role, the
-- token lands on the stack's base role (PostgREST's db-anon-role, the GraphQL pilot's default
-- role) and pre_request elevates it to the highest-priority API role its groups map to. Both
-- tables are written by the database owner only (the baseline Job renders them from the stack
-- config, auth.groupRoles and auth.baseRole); the API roles read them in pre_request.
CREATE TABLE IF NOT EXISTS platform.group_role (
    group_name text PRIMARY KEY CHECK (group_name <> ''),
    role       name NOT NULL,
    -- squawk-ignore prefer-bigint-over-int
    priority   integer NOT NULL -- a ranking among a handful of groups
);

COMMENT ON TABLE platform.group_role IS
    'groups claim -> API role; the highest priority among a token''s groups wins (pre_request).';

CREATE TABLE IF NOT EXISTS platform.group_base_role (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    role      name NOT NULL
);

COMMENT ON TABLE platform.group_base_role IS
    'The role a token without a role claim runs as: only requests at this role are elevated by groups.';

REVOKE ALL ON TABLE platform.group_role, platform.group_base_role FROM PUBLIC;

-- Cache-Control of GET/HEAD responses per domain schema and API role, also written by the
-- owner only (rendered from domains.<name>.cacheControl). PostgREST names the request's schema
-- in app.settings.pgplatform_schema (postgrest.conf); pre_request looks the header up for the
-- role the request finally runs as, after any elevation by groups.
CREATE TABLE IF NOT EXISTS platform.cache_control (
    schema_name name NOT NULL,
    role        name NOT NULL,
    value       text NOT NULL CHECK (value <> ''),
    PRIMARY KEY (schema_name, role)
);

COMMENT ON TABLE platform.cache_control IS
    'Cache-Control header of GET/HEAD responses per exposed schema and API role (pre_request).';

REVOKE ALL ON TABLE platform.cache_control FROM PUBLIC;

-- An API role by name: what the access plan creates and the authenticator may switch to.
CREATE OR REPLACE FUNCTION platform.is_api_role(candidate name)
RETURNS boolean
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = ''
AS $$
    SELECT candidate OPERATOR(pg_catalog.=) ANY (ARRAY['api_anonymous', 'api_user', 'api_editor', 'api_admin']::name[])
        OR candidate::text OPERATOR(pg_catalog.~) '^api_service_[a-z0-9_]+$'
$$;

COMMENT ON FUNCTION platform.is_api_role(name) IS
    'True for the API role names of the access plan (api_anonymous, api_user, api_editor, api_admin, api_service_*).';

-- db-pre-request: runs after SET LOCAL ROLE and the claims, before the query.
-- PostgREST already refuses expired or badly signed tokens, switches to the role claim and
-- applies each API role's own settings (statement_timeout). The rules of our model that remain:
--   * a request runs as an API role. EXECUTE on this function is granted to the API roles
--     only, so a token whose role claim names anything else (the authenticator itself, say)
--     fails right here with permission denied;
--   * every non-anonymous request names its subject. Own-record policies compare with
--     jwt_sub() and audit rows record it: a token without sub would act unattributed;
--   * the gateway's forward-auth header x-auth-user, when present, names the token's subject:
--     a header a client set itself cannot contradict the token;
--   * a request at the base role whose token carries groups runs as the highest-priority API
--     role those groups map to (platform.group_role); a mapped role that is not an API role is
--     refused, never switched to;
--   * in a tenanted domain, the tenant rules of platform.tenant_check() hold;
--   * a GET or HEAD gets the Cache-Control its domain sets for the final role
--     (platform.cache_control), through PostgREST's response.headers;
--   * every response names the final role in X-Api-Role, so the gateway's JSON access log has
--     route, role and row count (Content-Range) on one line (docs/observability.md, Logs).
-- Every refusal is insufficient_privilege (42501): PostgREST answers 403 (401 for anonymous).
-- SET LOCAL ROLE needs a volatile function (SET is refused in STABLE ones) that is SECURITY
-- INVOKER (refused in SECURITY DEFINER ones); PostgreSQL checks it against the session user,
-- the authenticator, which is granted exactly the API roles. The pinned search_path is restored
-- when the function returns; the role stays for the rest of the transaction.
CREATE OR REPLACE FUNCTION platform.pre_request()
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = ''
AS $$
DECLARE
    sub text := platform.jwt_sub();
    groups jsonb := pg_catalog.jsonb_extract_path(platform.jwt_claims(), 'groups');
    headers jsonb := coalesce(
        nullif(pg_catalog.current_setting('request.headers', true), '')::pg_catalog.jsonb,
        '{}'::pg_catalog.jsonb);
    forwarded_user text := pg_catalog.jsonb_extract_path_text(headers, 'x-auth-user');
    target name;
    cache text;
BEGIN
    IF current_user OPERATOR(pg_catalog.<>) 'api_anonymous' AND sub IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'the token has no sub claim',
            HINT = 'Every authenticated token must name its subject: policies and the audit log use it.';
    END IF;
    IF forwarded_user IS NOT NULL AND forwarded_user IS DISTINCT FROM sub THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'the x-auth-user header does not name the token''s subject',
            HINT = 'The gateway''s forward-auth sets x-auth-user to the sub of the token it verified.';
    END IF;
    IF sub IS NOT NULL AND pg_catalog.jsonb_typeof(groups) OPERATOR(pg_catalog.=) 'array'
       AND EXISTS (SELECT FROM platform.group_base_role b
                   WHERE b.role OPERATOR(pg_catalog.=) current_user) THEN
        SELECT g.role INTO target
        FROM platform.group_role g
        WHERE g.group_name OPERATOR(pg_catalog.=) ANY (
            SELECT pg_catalog.jsonb_array_elements_text(groups))
        ORDER BY g.priority DESC, g.role
        LIMIT 1;
        IF target IS NOT NULL AND NOT platform.is_api_role(target) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = pg_catalog.format('group mapping names %I, which is not an API role', target),
                HINT = 'platform.group_role may only map groups to api_user, api_editor, api_admin or api_service_<name>.';
        END IF;
        IF target IS NOT NULL AND target OPERATOR(pg_catalog.<>) current_user THEN
            EXECUTE pg_catalog.format('SET LOCAL ROLE %I', target);
        END IF;
    END IF;
    -- Tenanted domains (db/025_tenancy.sql), for the final role.
    PERFORM platform.tenant_check();
    IF pg_catalog.current_setting('request.method', true) OPERATOR(pg_catalog.=) ANY (ARRAY['GET', 'HEAD']) THEN
        SELECT c.value INTO cache
        FROM platform.cache_control c
        WHERE c.schema_name OPERATOR(pg_catalog.=)
              pg_catalog.current_setting('app.settings.pgplatform_schema', true)
          AND c.role OPERATOR(pg_catalog.=) current_user;
    END IF;
    PERFORM pg_catalog.set_config('response.headers',
        (pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('X-Api-Role', current_user))
         OPERATOR(pg_catalog.||) CASE WHEN cache IS NULL THEN '[]'::pg_catalog.jsonb
             ELSE pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('Cache-Control', cache))
         END)::text,
        true);
END
$$;

COMMENT ON FUNCTION platform.pre_request() IS
    'PostgREST db-pre-request: API roles only; sub required; x-auth-user must match sub; groups elevate the base role; tenant rules; Cache-Control per role; X-Api-Role names the final role.';

-- Least privilege: nothing for PUBLIC; the API roles (which evaluate policies calling the claim
-- helpers), the domain schema owner (whose views and functions may call them) and the audit
-- writer (audit.record() records the subject, db/030_audit.sql) get EXECUTE.
-- USAGE on the schema comes from 010_access.sql. Roles are looked up because the set differs
-- per stack (api_anonymous only in staging, one api_service_<name> per machine client).
REVOKE ALL ON FUNCTION
    platform.jwt_claims(), platform.jwt_sub(), platform.jwt_role(), platform.pre_request(),
    platform.is_api_role(name)
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
            EXECUTE format('GRANT EXECUTE ON FUNCTION platform.pre_request(), '
                           'platform.is_api_role(name) TO %I', grantee);
            EXECUTE format('GRANT SELECT ON platform.group_role, platform.group_base_role, '
                           'platform.cache_control TO %I', grantee);
        END IF;
    END LOOP;
END
$$;
