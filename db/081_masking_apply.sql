-- Building the masking views (db/080_masking.sql explains their shape): apply_masking() makes
-- them exactly what platform.masking_rule says. Applied by the database owner; the functions run
-- as the admin and switch to the table owner and the view owner for their DDL.
-- squawk-ignore-file require-lock-timeout, require-statement-timeout
-- (apply.psql sets both for the baseline's one transaction; docs/sql-lint.md)

-- Serve one table through its masking view (idempotent). Runs as the database owner; the DDL
-- runs as the table's owner, like the domain migrations, so the objects have one owner.
CREATE OR REPLACE FUNCTION platform.mask_table(schema_name name, table_name name)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    private name := (schema_name || '_private')::name;
    -- Catalog look-ups, not to_regclass: the admin need not have USAGE on the schemas yet.
    api regclass := (SELECT c.oid FROM pg_catalog.pg_class c
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = schema_name AND c.relname = table_name);
    base regclass := (SELECT c.oid FROM pg_catalog.pg_class c
                      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = private AND c.relname = table_name);
    rows_view name := (table_name || '_rows')::name;
    prior text := pg_catalog.current_setting('role');
    owner name;
    acl aclitem[];
    keys text[];
    columns text;
    defaults text;
    definition text;
    signature text;
    masked jsonb;
    readers name[];
    viewer constant name := 'pgplatform_masking';
    grantee_role name;
    rule record;
    grantee record;
BEGIN
    IF api IS NOT NULL AND (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = api) IN ('r', 'p') THEN
        IF base IS NOT NULL THEN
            RAISE EXCEPTION 'masking %.%: both %.% and %.% are tables', schema_name, table_name,
                schema_name, table_name, private, table_name
                USING ERRCODE = 'duplicate_table',
                      HINT = 'Keep the data in one of them and drop the other (docs/masking.md).';
        END IF;
        base := api;
        api := NULL;
    ELSIF base IS NULL THEN
        RAISE NOTICE 'masking %.%: no such table yet; applied after the migration that creates it',
            schema_name, table_name;
        RETURN;
    ELSIF api IS NOT NULL AND NOT EXISTS (
        SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = api AND t.tgname = 'platform_masked_write'
    ) THEN
        RAISE EXCEPTION 'masking %.%: % is not a masking view', schema_name, table_name, api
            USING ERRCODE = 'wrong_object_type';
    END IF;

    SELECT pg_catalog.pg_get_userbyid(c.relowner), c.relacl INTO owner, acl
    FROM pg_catalog.pg_class c WHERE c.oid = base;

    FOR rule IN SELECT r.column_name, r.role FROM platform.masking_rule r
                WHERE r.schema_name = mask_table.schema_name AND r.table_name = mask_table.table_name
                  AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = base
                                  AND a.attname = r.column_name AND a.attnum > 0 AND NOT a.attisdropped) LOOP
        RAISE EXCEPTION 'masking %.%.% (role %): the table has no such column', schema_name,
            table_name, rule.column_name, rule.role USING ERRCODE = 'undefined_column';
    END LOOP;
    SELECT pg_catalog.array_agg(a.attname::text ORDER BY k.n) INTO keys
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = base AND i.indisprimary;
    IF keys IS NULL THEN
        RAISE EXCEPTION 'masking %.%: the table needs a primary key', schema_name, table_name
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'The masking view keeps the rows the caller may see by their key.';
    END IF;
    IF EXISTS (SELECT FROM platform.masking_rule r WHERE r.schema_name = mask_table.schema_name
               AND r.table_name = mask_table.table_name AND r.column_name::text = ANY (keys)) THEN
        RAISE EXCEPTION 'masking %.%: a primary key column cannot be masked', schema_name, table_name
            USING ERRCODE = 'invalid_table_definition';
    END IF;
    IF EXISTS (SELECT FROM platform.masking_rule r
               JOIN pg_catalog.pg_attribute a ON a.attrelid = base AND a.attname = r.column_name
               WHERE r.schema_name = mask_table.schema_name AND r.table_name = mask_table.table_name
                 AND a.atttypid NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype)) THEN
        RAISE EXCEPTION 'masking %.%: masked columns must be text, varchar or char', schema_name,
            table_name USING ERRCODE = 'datatype_mismatch';
    END IF;

    -- The view's select list: masked columns as a CASE over the requesting role.
    SELECT pg_catalog.string_agg(
        CASE WHEN NOT EXISTS (SELECT FROM platform.masking_rule r
                              WHERE r.schema_name = mask_table.schema_name
                                AND r.table_name = mask_table.table_name AND r.column_name = a.attname)
             THEN pg_catalog.format('b.%I', a.attname)
             ELSE pg_catalog.format('CASE (SELECT platform.masking_requester()) %s ELSE b.%I::text END AS %I',
                 (SELECT pg_catalog.string_agg(pg_catalog.format('WHEN %L THEN %s', r.role,
                     CASE r.method
                         WHEN 'partial' THEN pg_catalog.format('platform.mask_partial(b.%I::text, %s, %L, %s)',
                             a.attname, r.prefix, r.padding, r.suffix)
                         ELSE pg_catalog.format('platform.mask_hash(b.%I::text, '
                             '(SELECT k.inner_pad FROM platform.masking_key k), '
                             '(SELECT k.outer_pad FROM platform.masking_key k))', a.attname)
                     END), ' ' ORDER BY r.role)
                  FROM platform.masking_rule r
                  WHERE r.schema_name = mask_table.schema_name AND r.table_name = mask_table.table_name
                    AND r.column_name = a.attname),
                 a.attname, a.attname)
        END, ', ' ORDER BY a.attnum)
    INTO columns
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = base AND a.attnum > 0 AND NOT a.attisdropped;
    -- Column defaults fill the view row of an INSERT as they would the table's; sequence
    -- defaults stay the table's (masked_write leaves such a column to the table).
    SELECT pg_catalog.string_agg(pg_catalog.format('ALTER VIEW %I.%I ALTER COLUMN %I SET DEFAULT %s',
            schema_name, table_name, a.attname, pg_catalog.pg_get_expr(d.adbin, d.adrelid)), '; '
            ORDER BY a.attnum)
    INTO defaults
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = base AND a.attgenerated = '' AND a.attnum > 0 AND NOT a.attisdropped
      AND pg_catalog.strpos(pg_catalog.pg_get_expr(d.adbin, d.adrelid), 'nextval(') = 0;
    definition := pg_catalog.format(
        'CREATE VIEW %I.%I WITH (security_barrier = true) AS SELECT %s FROM %I.%I b '
        'WHERE (%s) IN (SELECT %s FROM %I.%I r)',
        schema_name, table_name, columns, private, table_name,
        (SELECT pg_catalog.string_agg(pg_catalog.format('b.%I', k), ', ') FROM pg_catalog.unnest(keys) k),
        (SELECT pg_catalog.string_agg(pg_catalog.format('r.%I', k), ', ') FROM pg_catalog.unnest(keys) k),
        private, rows_view);
    signature := 'pgplatform masking view ' || pg_catalog.md5(definition || COALESCE(defaults, ''));
    -- Read now: the rest runs as the table owner, who cannot read the rules.
    masked := (SELECT pg_catalog.jsonb_object_agg(m.role, m.columns)
               FROM (SELECT r.role, pg_catalog.jsonb_agg(r.column_name) AS columns
                     FROM platform.masking_rule r
                     WHERE r.schema_name = mask_table.schema_name
                       AND r.table_name = mask_table.table_name
                     GROUP BY r.role) m);

    -- The admin becomes the table owner and the view owner in turn (SET LOCAL ROLE), so it must
    -- be a member of both (it grants that to itself with CREATEROLE, as for the audit writer).
    FOREACH grantee_role IN ARRAY ARRAY[owner, viewer] LOOP
        IF NOT pg_catalog.pg_has_role(current_user, grantee_role, 'MEMBER') THEN
            EXECUTE pg_catalog.format('GRANT %I TO %I', grantee_role, current_user);
        END IF;
        EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA platform TO %I', grantee_role);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION platform.masking_set_role(text), '
            'platform.masking_grant_acl(regclass, aclitem[]), '
            'platform.masking_revoke_acl(regclass) TO %I', grantee_role);
    END LOOP;
    -- The private schema belongs to the owner of the domain's schema, like the table.
    IF pg_catalog.to_regnamespace(private::text) IS NULL THEN
        EXECUTE pg_catalog.format('CREATE SCHEMA %I AUTHORIZATION %I', private,
            (SELECT pg_catalog.pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace n
             WHERE n.nspname = schema_name));
    END IF;
    EXECUTE pg_catalog.format('GRANT SELECT ON TABLE platform.masking_key TO %I', viewer);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION platform.masked_write() TO %I', viewer);
    -- Code running as the owner or the view owner (SECURITY DEFINER functions) that reads the
    -- view runs its functions as that role.
    readers := ARRAY[owner, viewer];

    -- As the table owner: move the table, let the view owner create its views for this run.
    PERFORM platform.masking_set_role(owner);
    IF api IS NULL THEN
        -- First run: move the table out of the API's reach; the view takes over its grants.
        EXECUTE pg_catalog.format('ALTER TABLE %s SET SCHEMA %I', base, private);
    ELSE
        acl := (SELECT c.relacl FROM pg_catalog.pg_class c WHERE c.oid = api);
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE, CREATE ON SCHEMA %I, %I TO %I', schema_name, private, viewer);
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_policy p
                   WHERE p.polrelid = base AND p.polname = 'platform_masking_view') THEN
        EXECUTE pg_catalog.format(
            'CREATE POLICY platform_masking_view ON %s FOR SELECT TO %I USING (true)', base, viewer);
    END IF;

    -- As the view owner: the views, their defaults and trigger, the grants they carry.
    PERFORM platform.masking_set_role(viewer);
    IF api IS NULL OR pg_catalog.obj_description(api, 'pg_class') IS DISTINCT FROM signature THEN
        EXECUTE pg_catalog.format('DROP VIEW IF EXISTS %I.%I', schema_name, table_name);
        EXECUTE pg_catalog.format('DROP VIEW IF EXISTS %I.%I', private, rows_view);
        EXECUTE pg_catalog.format(
            'CREATE VIEW %I.%I WITH (security_invoker = true) AS SELECT %s FROM %I.%I',
            private, rows_view,
            (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(k), ', ') FROM pg_catalog.unnest(keys) k),
            private, table_name);
        EXECUTE definition;
        IF defaults IS NOT NULL THEN
            EXECUTE defaults;
        END IF;
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER platform_masked_write INSTEAD OF INSERT OR UPDATE OR DELETE ON %I.%I '
            'FOR EACH ROW EXECUTE FUNCTION platform.masked_write()', schema_name, table_name);
        EXECUTE pg_catalog.format('COMMENT ON VIEW %I.%I IS %L', schema_name, table_name, signature);
        api := pg_catalog.format('%I.%I', schema_name, table_name)::regclass;
        PERFORM platform.masking_grant_acl(api, acl);
    END IF;

    -- As the table owner: the table's grants follow the view's: the same privileges, SELECT
    -- without the columns masked for the role. Roles without a grant on the view get none on
    -- the table; the view owner reads it (and only it has the SELECT policy above).
    PERFORM platform.masking_set_role(owner);
    EXECUTE pg_catalog.format('REVOKE CREATE ON SCHEMA %I, %I FROM %I', schema_name, private, viewer);
    acl := (SELECT c.relacl FROM pg_catalog.pg_class c WHERE c.oid = api);
    PERFORM platform.masking_revoke_acl(base);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s TO %I', base, viewer);
    FOR grantee IN
        SELECT pg_catalog.pg_get_userbyid(a.grantee) AS role,
               pg_catalog.array_agg(a.privilege_type) AS privileges
        FROM pg_catalog.aclexplode(acl) a
        WHERE a.grantee <> (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = api)
          AND a.grantee <> 0
          AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')
        GROUP BY a.grantee
    LOOP
        EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %I TO %I', private, grantee.role);
        readers := pg_catalog.array_append(readers, grantee.role);
        IF grantee.privileges <> ARRAY['SELECT'] THEN
            EXECUTE pg_catalog.format('GRANT %s ON %s TO %I',
                (SELECT pg_catalog.string_agg(p, ', ') FROM pg_catalog.unnest(grantee.privileges) p
                 WHERE p <> 'SELECT'), base, grantee.role);
        END IF;
        IF 'SELECT' = ANY (grantee.privileges) THEN
            EXECUTE pg_catalog.format('GRANT SELECT (%s) ON %s TO %I',
                (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
                 FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = base AND a.attnum > 0 AND NOT a.attisdropped
                   AND NOT COALESCE(masked -> grantee.role::text, '[]'::jsonb) ? a.attname::text),
                base, grantee.role);
        END IF;
    END LOOP;
    PERFORM platform.masking_set_role(prior);
    -- The view's callers run its functions (granted by this function's caller, their owner).
    FOR i IN 1..COALESCE(pg_catalog.array_length(readers, 1), 0) LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION platform.masking_requester(), '
            'platform.mask_partial(text, integer, text, integer), '
            'platform.mask_hash(text, bytea, bytea) TO %I', readers[i]);
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION platform.mask_table(name, name) FROM PUBLIC;

-- A masked table without rules any more: the table moves back under its name, with the grants
-- its view had (the access plan's).
CREATE OR REPLACE FUNCTION platform.unmask_table(api regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    schema_name name;
    table_name name;
    base regclass;
    acl aclitem[];
    owner name;
    prior text := pg_catalog.current_setting('role');
    grantee record;
    grantee_role name;
BEGIN
    SELECT n.nspname, c.relname, c.relacl INTO schema_name, table_name, acl
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = api;
    base := (SELECT c.oid FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = schema_name || '_private' AND c.relname = table_name);
    owner := (SELECT pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c WHERE c.oid = base);
    FOREACH grantee_role IN ARRAY ARRAY[owner, 'pgplatform_masking'::name] LOOP
        IF NOT pg_catalog.pg_has_role(current_user, grantee_role, 'MEMBER') THEN
            EXECUTE pg_catalog.format('GRANT %I TO %I', grantee_role, current_user);
        END IF;
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION platform.masking_set_role(text), '
            'platform.masking_grant_acl(regclass, aclitem[]), '
            'platform.masking_revoke_acl(regclass) TO %I', grantee_role);
    END LOOP;
    PERFORM platform.masking_set_role('pgplatform_masking');
    EXECUTE pg_catalog.format('DROP VIEW %s', api);
    EXECUTE pg_catalog.format('DROP VIEW IF EXISTS %I.%I', schema_name || '_private', table_name || '_rows');
    PERFORM platform.masking_set_role(owner);
    EXECUTE pg_catalog.format('DROP POLICY IF EXISTS platform_masking_view ON %s', base);
    PERFORM platform.masking_revoke_acl(base);
    EXECUTE pg_catalog.format('ALTER TABLE %s SET SCHEMA %I', base, schema_name);
    PERFORM platform.masking_grant_acl(pg_catalog.format('%I.%I', schema_name, table_name)::regclass, acl);
    PERFORM platform.masking_set_role(prior);
END
$$;

REVOKE ALL ON FUNCTION platform.unmask_table(regclass) FROM PUBLIC;

-- Make the masking views exactly the rules': mask what is listed, unmask what no longer is.
-- Run by the baseline Job (094_masking.sql) and after the domain migrations.
CREATE OR REPLACE FUNCTION platform.apply_masking()
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    target record;
BEGIN
    FOR target IN SELECT DISTINCT r.schema_name, r.table_name FROM platform.masking_rule r
                  ORDER BY 1, 2 LOOP
        PERFORM platform.mask_table(target.schema_name, target.table_name);
    END LOOP;
    FOR target IN
        SELECT c.oid::pg_catalog.regclass AS api
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid AND t.tgname = 'platform_masked_write'
        WHERE c.relkind = 'v'
          AND NOT EXISTS (SELECT FROM platform.masking_rule r
                          WHERE r.schema_name = n.nspname AND r.table_name = c.relname)
    LOOP
        PERFORM platform.unmask_table(target.api);
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION platform.apply_masking() FROM PUBLIC;
