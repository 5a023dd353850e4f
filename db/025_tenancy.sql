-- Multi-tenancy: the tenant claim of a request and the rules pre_request enforces with it.
--
-- Applied by the database owner after 020_platform.sql. Idempotent.
--
-- The claim that names the tenant is chosen per domain (domains.<name>.tenancy in the stack
-- config), so the helper must know which domain a request is for: PostgREST names it in
-- app.settings.pgplatform_schema (postgrest.conf), and the rendered 093_tenancy.sql writes one
-- row per tenanted schema into platform.tenancy. A table, like platform.cache_control, rather
-- than one more app.settings value: the rule lives where only the database owner can change it,
-- next to the other per-domain rules, and an operator reads it with one SELECT.
--
-- The tenant id is text, as the token carries it (a uuid, "org_2f...", "acme"): identity
-- providers issue all of these, and text compares and indexes as well as uuid does for this
-- purpose. A claim that is present but not a non-empty JSON string is refused by pre_request and
-- is never a tenant: jwt_tenant() returns only a non-empty string or NULL.
--
-- The convention for a tenant-scoped table (docs/database.md, "Multi-tenancy"):
--   tenant_id text NOT NULL DEFAULT platform.jwt_tenant(), an index leading with tenant_id,
--   unique keys that include tenant_id, and
--   USING (tenant_id = (SELECT platform.jwt_tenant())) WITH CHECK (the same).

-- squawk-ignore-file require-lock-timeout, require-statement-timeout
-- (apply.psql sets both for the baseline's one transaction; docs/sql-lint.md)

CREATE TABLE IF NOT EXISTS platform.tenancy (
    schema_name name PRIMARY KEY,
    claim       text NOT NULL CHECK (claim <> ''),
    required    boolean NOT NULL
);

COMMENT ON TABLE platform.tenancy IS
    'Tenanted domains: the JWT claim naming the tenant per exposed schema; required: pre_request refuses tokens without it.';

-- Machine clients bound to one tenant, or declared cross-tenant (tenant NULL). Rendered from
-- services[].tenant and services[].crossTenant.
CREATE TABLE IF NOT EXISTS platform.tenant_client (
    role         name PRIMARY KEY,
    tenant       text CHECK (tenant <> ''),
    cross_tenant boolean NOT NULL,
    CHECK ((tenant IS null) = cross_tenant)
);

COMMENT ON TABLE platform.tenant_client IS
    'Machine clients scoped to one tenant (their token must name it) or cross-tenant (audited as such).';

REVOKE ALL ON TABLE platform.tenancy, platform.tenant_client FROM PUBLIC;

-- plpgsql, not sql: the pinned search_path stops a sql function from being inlined, and a
-- sql function that is not inlined plans its body again in every statement (0.1-0.2 ms, as much
-- as a whole indexed tenant query). plpgsql keeps the plan of its lookup for the session, so the
-- init plan costs microseconds (bench/tenancy.py). For the same reason it reads the claims GUC
-- itself instead of calling platform.jwt_claims().
CREATE OR REPLACE FUNCTION platform.jwt_tenant()
RETURNS text
LANGUAGE plpgsql
STABLE
PARALLEL SAFE
SET search_path = ''
AS $$
DECLARE
    claim text;
    tenant jsonb;
BEGIN
    SELECT t.claim INTO claim
    FROM platform.tenancy t
    WHERE t.schema_name OPERATOR(pg_catalog.=)
          pg_catalog.current_setting('app.settings.pgplatform_schema', true);
    IF claim IS NULL THEN
        RETURN NULL;
    END IF;
    tenant := pg_catalog.jsonb_extract_path(
        nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::pg_catalog.jsonb,
        claim);
    IF pg_catalog.jsonb_typeof(tenant) OPERATOR(pg_catalog.<>) 'string' THEN
        RETURN NULL;
    END IF;
    RETURN nullif(tenant OPERATOR(pg_catalog.#>>) '{}'::text[], '');
END
$$;

COMMENT ON FUNCTION platform.jwt_tenant() IS
    'The tenant of the request (the claim its domain names in platform.tenancy) or NULL. Use as (SELECT platform.jwt_tenant()) in policies.';

-- True when the request runs as a machine client declared cross-tenant. For the policies that
-- let such a client past the tenant filter: (SELECT platform.cross_tenant_client()). Removing
-- the declaration from the config closes those policies too.
CREATE OR REPLACE FUNCTION platform.cross_tenant_client()
RETURNS boolean
LANGUAGE sql
STABLE
PARALLEL SAFE
SET search_path = ''
AS $$
    SELECT EXISTS (
        SELECT FROM platform.tenant_client c
        WHERE c.role OPERATOR(pg_catalog.=) current_user AND c.cross_tenant)
$$;

COMMENT ON FUNCTION platform.cross_tenant_client() IS
    'True for a machine client declared cross-tenant (services[].crossTenant).';

-- Called by platform.pre_request() once the request's final role is known. In a tenanted
-- domain:
--   * a tenant claim that is present must be a non-empty string;
--   * a cross-tenant client passes without one, and each of its requests is written to the
--     server log (reads run in read-only transactions, on replicas too, where no row can be
--     written); its writes are marked cross_tenant in audit.log (audit.record());
--   * a client scoped to one tenant must name exactly that tenant;
--   * with required, every other non-anonymous request must name a tenant.
-- Refusals are insufficient_privilege (42501), like every pre_request refusal.
CREATE OR REPLACE FUNCTION platform.tenant_check()
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = ''
AS $$
DECLARE
    request_schema text := pg_catalog.current_setting('app.settings.pgplatform_schema', true);
    claim text;
    required boolean;
    raw jsonb;
    tenant text := platform.jwt_tenant();
    scoped text;
    is_cross boolean;
BEGIN
    SELECT t.claim, t.required INTO claim, required
    FROM platform.tenancy t WHERE t.schema_name OPERATOR(pg_catalog.=) request_schema;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    raw := pg_catalog.jsonb_extract_path(platform.jwt_claims(), claim);
    IF raw IS NOT NULL AND tenant IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('the %s claim is not a tenant id', claim),
            HINT = 'A tenant claim is a non-empty JSON string.';
    END IF;
    SELECT c.tenant, c.cross_tenant INTO scoped, is_cross
    FROM platform.tenant_client c WHERE c.role OPERATOR(pg_catalog.=) current_user;
    IF is_cross THEN
        RAISE LOG 'pgplatform cross-tenant request: role=% sub=% schema=% tenant=% method=% path=%',
            current_user, platform.jwt_sub(), request_schema, coalesce(tenant, '(all)'),
            pg_catalog.current_setting('request.method', true),
            pg_catalog.current_setting('request.path', true);
        RETURN;
    END IF;
    IF scoped IS NOT NULL AND tenant IS DISTINCT FROM scoped THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('%s is scoped to one tenant; the token names another',
                                        current_user),
            HINT = 'services[].tenant binds a machine client to the tenant its token must name.';
    END IF;
    IF required AND tenant IS NULL AND current_user OPERATOR(pg_catalog.<>) 'api_anonymous' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('the token has no %s claim', claim),
            HINT = pg_catalog.format('Domain schema %s is tenanted: every authenticated token names its tenant.', request_schema);
    END IF;
END
$$;

COMMENT ON FUNCTION platform.tenant_check() IS
    'pre_request''s tenant rules: claim shape, scoped and cross-tenant machine clients, required claim.';

REVOKE ALL ON FUNCTION
    platform.jwt_tenant(), platform.cross_tenant_client(), platform.tenant_check()
    FROM PUBLIC;

-- Same grantees as the claim helpers of 020_platform.sql: the API roles evaluate policies and
-- run pre_request, the schema owner's views and functions may call the helper, the audit
-- writer records the tenant of each audited write.
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
        EXECUTE format('GRANT EXECUTE ON FUNCTION platform.jwt_tenant(), '
                       'platform.cross_tenant_client() TO %I', grantee);
        EXECUTE format('GRANT SELECT ON platform.tenancy, platform.tenant_client TO %I', grantee);
        IF grantee NOT IN ('pgplatform_owner', 'pgplatform_audit_writer') THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION platform.tenant_check() TO %I', grantee);
        END IF;
    END LOOP;
END
$$;
