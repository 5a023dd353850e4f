-- Data masking: per column and per API role, without an extension.
--
-- A masked table is served under its own name by a view, and the table itself moves to the
-- private schema "<schema>_private", which no API serves:
--
--   <schema>.<table>               security_barrier view owned by pgplatform_masking; every column
--                                  as it is, masked columns as CASE <requesting role> WHEN
--                                  <masked role> THEN platform.mask_*(...) ELSE <raw> END
--   <schema>_private.<table>       the table, its policies, triggers and data, unchanged
--   <schema>_private.<table>_rows  security_invoker view of the primary key
--
-- Why this shape. One name must give raw values to some roles and masked values to others, and
-- the raw column must stay unreadable to the masked roles: a security_invoker view would need
-- the caller's SELECT on the raw column, so the outer view reads the table with its owner's
-- rights. Row access, however, must stay the caller's: the outer view keeps only the keys of
-- "<table>_rows", a security_invoker view, which PostgreSQL checks with the privileges and the
-- row level security policies of the user running the query even inside an owner's view. The
-- view owner, pgplatform_masking (NOLOGIN, nobody's role but the admin's, owns nothing else),
-- reads the table through one SELECT policy (platform_masking_view) that only these views use:
-- not the table owner, whose SECURITY DEFINER functions keep seeing no rows under FORCE RLS; security_barrier keeps the caller's predicates (leaky functions, casts that fail)
-- above that key filter, so they never see a row the caller may not see. Functions called by a
-- view run as the caller, so the mask functions below are plain immutable SQL.
--
-- Privileges: the view carries the access plan's grants (like any table of the schema); the
-- table's grants are derived from them on every run, with SELECT narrowed to the unmasked
-- columns for each masked role. Writes go through an INSTEAD OF trigger that runs as the caller
-- (platform.masked_write), so the caller's privileges and policies (USING and WITH CHECK) on
-- the table decide, exactly as before the move.
--
-- The rules (platform.masking_rule) are rendered from the stack config (094_masking.sql), which
-- then calls platform.apply_masking(). Tables that do not exist yet are skipped with a notice;
-- apply_masking() (081_masking_apply.sql) runs again after the domain migrations
-- (docs/masking.md).
--
-- Applied by the database owner.
-- squawk-ignore-file require-lock-timeout, require-statement-timeout
-- (apply.psql sets both for the baseline's one transaction; docs/sql-lint.md)

-- One row per (column, role); written by the rendered 094_masking.sql.
CREATE TABLE IF NOT EXISTS platform.masking_rule (
    schema_name name NOT NULL,
    table_name  name NOT NULL,
    column_name name NOT NULL,
    role        name NOT NULL,
    method      text NOT NULL CHECK (method IN ('partial', 'hash')),
    prefix      bigint CHECK (prefix >= 0),
    padding     text,
    suffix      bigint CHECK (suffix >= 0),
    PRIMARY KEY (schema_name, table_name, column_name, role),
    CHECK ((method = 'partial') = (prefix IS NOT null AND padding IS NOT null AND suffix IS NOT null))
);

COMMENT ON TABLE platform.masking_rule IS
    'Masked columns per API role (rendered from the stack config key masking).';

REVOKE ALL ON TABLE platform.masking_rule FROM PUBLIC;

-- The key of the hash mask: an HMAC key generated inside the database (gen_random_uuid draws
-- from the server's strong random source; two of them give 244 random bits). It never leaves
-- the database: not in the stack config, a ConfigMap or the Pulumi state. Only the owners of
-- masking views read it (granted by apply_masking), through the view definition. Stored as
-- the two HMAC pads (key XOR 0x36.., key XOR 0x5c..), so the mask is two sha256 calls.
CREATE TABLE IF NOT EXISTS platform.masking_key (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    inner_pad  bytea NOT NULL CHECK (pg_catalog.length(inner_pad) = 64),
    outer_pad  bytea NOT NULL CHECK (pg_catalog.length(outer_pad) = 64),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE platform.masking_key IS
    'HMAC-SHA256 key of platform.mask_hash, as its two pads; generated here, never exported.';

REVOKE ALL ON TABLE platform.masking_key FROM PUBLIC;

DO $$
DECLARE
    secret bytea;
    inner_pad bytea;
    outer_pad bytea;
BEGIN
    IF EXISTS (SELECT FROM platform.masking_key) THEN
        RETURN;
    END IF;
    secret := pg_catalog.decode(pg_catalog.replace(
        pg_catalog.gen_random_uuid()::text || pg_catalog.gen_random_uuid()::text, '-', ''), 'hex');
    secret := pg_catalog.byteacat(secret, pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex'));
    inner_pad := secret;
    outer_pad := secret;
    FOR i IN 0..63 LOOP
        inner_pad := pg_catalog.set_byte(inner_pad, i, pg_catalog.get_byte(secret, i) # 54);
        outer_pad := pg_catalog.set_byte(outer_pad, i, pg_catalog.get_byte(secret, i) # 92);
    END LOOP;
    INSERT INTO platform.masking_key (inner_pad, outer_pad) VALUES (inner_pad, outer_pad);
END
$$;

-- partial(prefix, padding, suffix): the first prefix and last suffix characters around padding.
-- A value no longer than prefix + suffix becomes the padding alone (it would be shown whole).
CREATE OR REPLACE FUNCTION platform.mask_partial(value text, prefix integer, padding text, suffix integer)
RETURNS text
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = ''
AS $$
    SELECT CASE
        WHEN value IS NULL THEN NULL
        WHEN pg_catalog.length(value) <= prefix + suffix THEN padding
        ELSE pg_catalog.left(value, prefix) || padding || pg_catalog.right(value, suffix)
    END
$$;

-- hash: HMAC-SHA256 of the value's UTF-8 bytes, hex. Equal values give equal pseudonyms (joins
-- and counts still work), and without the key a dictionary of likely values (e-mail addresses)
-- cannot be hashed to find them.
CREATE OR REPLACE FUNCTION platform.mask_hash(value text, inner_pad bytea, outer_pad bytea)
RETURNS text
LANGUAGE sql
IMMUTABLE
STRICT
PARALLEL SAFE
SET search_path = ''
AS $$
    SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.byteacat(outer_pad,
        pg_catalog.sha256(pg_catalog.byteacat(inner_pad, pg_catalog.convert_to(value, 'UTF8'))))),
        'hex')
$$;

-- Callers of a masking view run these (apply_masking grants them to the view's grantees).
REVOKE ALL ON FUNCTION platform.mask_partial(text, integer, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION platform.mask_hash(text, bytea, bytea) FROM PUBLIC;

-- The role a masking view masks for: the role the request switched to (PostgREST's SET LOCAL
-- ROLE; also inside a SECURITY DEFINER function, where current_user is the function's owner),
-- else the login.
CREATE OR REPLACE FUNCTION platform.masking_requester()
RETURNS name
LANGUAGE sql
STABLE
PARALLEL SAFE
SET search_path = ''
AS $$
    SELECT COALESCE(NULLIF(pg_catalog.current_setting('role'), 'none'), SESSION_USER)::name
$$;

REVOKE ALL ON FUNCTION platform.masking_requester() FROM PUBLIC;

-- INSTEAD OF trigger of a masking view: the write goes to the table as the caller, so the
-- caller's grants and policies decide. Only columns the caller changed are written (a masked
-- value read back is never stored); the row returned carries what the table returned for the
-- columns the caller may read and what the caller wrote for the others.
CREATE OR REPLACE FUNCTION platform.masked_write()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    base regclass := pg_catalog.format('%I.%I', TG_TABLE_SCHEMA || '_private', TG_TABLE_NAME)::regclass;
    writable text[];
    readable text[];
    keys text[];
    targets text[];
    key_match text;
    returned jsonb;
    affected bigint;
BEGIN
    SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
            FILTER (WHERE a.attgenerated = '' AND a.attidentity = ''),
        pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
            FILTER (WHERE pg_catalog.has_column_privilege(base, a.attnum, 'SELECT'))
    INTO writable, readable
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = base AND a.attnum > 0 AND NOT a.attisdropped;
    SELECT pg_catalog.array_agg(a.attname::text ORDER BY k.n)
    INTO keys
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = base AND i.indisprimary;
    key_match := (SELECT pg_catalog.string_agg(pg_catalog.format('%I = ($2).%I', k, k), ' AND ')
                  FROM pg_catalog.unnest(keys) k);

    IF TG_OP = 'DELETE' THEN
        EXECUTE pg_catalog.format('DELETE FROM %s WHERE %s', base, key_match) USING OLD, OLD;
        GET DIAGNOSTICS affected = ROW_COUNT;
        RETURN CASE WHEN affected > 0 THEN OLD END;
    END IF;

    IF TG_OP = 'INSERT' THEN
        -- Identity and sequence (serial) columns are numbered by the table: the view carries no
        -- default for them (API roles hold no sequence privilege), so they are passed on only
        -- when the caller filled them (GENERATED ALWAYS ones then refuse).
        SELECT pg_catalog.array_agg(j.c ORDER BY j.o)
        INTO targets
        FROM pg_catalog.jsonb_each(pg_catalog.to_jsonb(NEW)) WITH ORDINALITY AS j(c, v, o)
        JOIN pg_catalog.pg_attribute a ON a.attrelid = base AND a.attname = j.c
        LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attgenerated = ''
          AND (j.v <> 'null'::jsonb OR (a.attidentity = '' AND pg_catalog.strpos(
                COALESCE(pg_catalog.pg_get_expr(d.adbin, d.adrelid), ''), 'nextval(') = 0));
        EXECUTE pg_catalog.format(
            'WITH w AS (INSERT INTO %s (%s) VALUES (%s) RETURNING %s) '
            'SELECT pg_catalog.to_jsonb(w) FROM w',
            base,
            (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ') FROM pg_catalog.unnest(targets) c),
            (SELECT pg_catalog.string_agg(pg_catalog.format('($1).%I', c), ', ') FROM pg_catalog.unnest(targets) c),
            (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ') FROM pg_catalog.unnest(readable) c))
        INTO returned
        USING NEW;
        RETURN pg_catalog.jsonb_populate_record(NEW, returned);
    END IF;

    -- UPDATE: the columns whose new value differs from the one the caller read.
    SELECT pg_catalog.array_agg(n.key)
    INTO targets
    FROM pg_catalog.jsonb_each(pg_catalog.to_jsonb(NEW)) n
    JOIN pg_catalog.jsonb_each(pg_catalog.to_jsonb(OLD)) o ON o.key = n.key
    WHERE n.value IS DISTINCT FROM o.value AND n.key = ANY (writable);
    IF targets IS NULL THEN
        -- Nothing changed: still an UPDATE (of a plain column: an identity column GENERATED
        -- ALWAYS refuses SET id = id), so the caller's UPDATE privilege and policy decide.
        targets := ARRAY[COALESCE(writable[1], keys[1])];
    END IF;
    EXECUTE pg_catalog.format(
        'WITH w AS (UPDATE %s SET %s WHERE %s RETURNING %s) SELECT pg_catalog.to_jsonb(w) FROM w',
        base,
        (SELECT pg_catalog.string_agg(pg_catalog.format('%I = ($1).%I', c, c), ', ')
         FROM pg_catalog.unnest(targets) c),
        key_match,
        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ') FROM pg_catalog.unnest(readable) c))
    INTO returned
    USING NEW, OLD;
    RETURN CASE WHEN returned IS NOT NULL THEN pg_catalog.jsonb_populate_record(NEW, returned) END;
END
$$;

REVOKE ALL ON FUNCTION platform.masked_write() FROM PUBLIC;

-- Switch to a role for the rest of the transaction, or back ('none': the login itself).
CREATE OR REPLACE FUNCTION platform.masking_set_role(target text)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF target = 'none' THEN
        SET LOCAL ROLE NONE;
    ELSE
        EXECUTE pg_catalog.format('SET LOCAL ROLE %I', target);
    END IF;
END
$$;

REVOKE ALL ON FUNCTION platform.masking_set_role(text) FROM PUBLIC;

-- Re-grant an ACL (aclexplode rows) on a relation, except to its owner.
CREATE OR REPLACE FUNCTION platform.masking_grant_acl(target regclass, acl aclitem[])
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    item record;
    owner oid := (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = target);
BEGIN
    FOR item IN SELECT a.grantee, a.privilege_type FROM pg_catalog.aclexplode(acl) a
                WHERE a.grantee <> owner LOOP
        EXECUTE pg_catalog.format('GRANT %s ON %s TO %s', item.privilege_type, target,
            CASE WHEN item.grantee = 0 THEN 'PUBLIC'
                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(item.grantee)) END);
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION platform.masking_grant_acl(regclass, aclitem[]) FROM PUBLIC;

-- Revoke the grants of PUBLIC and the API roles on a relation (column privileges go with
-- them); other roles' grants (the change data capture role's, say) are not masking's business.
CREATE OR REPLACE FUNCTION platform.masking_revoke_acl(target regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    grantee oid;
BEGIN
    FOR grantee IN
        SELECT DISTINCT a.grantee FROM pg_catalog.aclexplode(
            (SELECT c.relacl FROM pg_catalog.pg_class c WHERE c.oid = target)) a
        WHERE a.grantee = 0
           OR pg_catalog.pg_get_userbyid(a.grantee) = ANY (ARRAY['api_anonymous', 'api_user',
                  'api_editor', 'api_admin'])
           OR pg_catalog.pg_get_userbyid(a.grantee) ~ '^api_service_[a-z0-9_]+$'
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM %s', target,
            CASE WHEN grantee = 0 THEN 'PUBLIC'
                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(grantee)) END);
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION platform.masking_revoke_acl(regclass) FROM PUBLIC;
