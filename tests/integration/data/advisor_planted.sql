-- One planted instance of every advisor finding (tests/integration/test_advisor.py).
-- Its own roles, so it shares a cluster with the platform's bundle without touching its roles;
-- roles are cluster-wide, so several planted databases of one cluster share them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'seed_authenticator') THEN
        CREATE ROLE seed_authenticator LOGIN NOINHERIT;
        CREATE ROLE seed_reader NOLOGIN;
        CREATE ROLE seed_writer NOLOGIN;
        GRANT seed_reader, seed_writer TO seed_authenticator;
    END IF;
END $$;

-- Claim helper outside the exposed schema, as the platform's are.
CREATE SCHEMA claims;
CREATE FUNCTION claims.sub() RETURNS text
LANGUAGE sql STABLE SET search_path = ''
AS $$ SELECT nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::pg_catalog.jsonb ->> 'sub' $$;

CREATE SCHEMA shop;
GRANT USAGE ON SCHEMA shop, claims TO seed_reader, seed_writer;

-- A claim read hidden two calls deep: shop.current_customer() -> shop.customer_claim() -> claims.sub().
CREATE FUNCTION shop.customer_claim() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = ''
AS $$ BEGIN RETURN claims.sub(); END $$;
CREATE FUNCTION shop.current_customer() RETURNS text
LANGUAGE sql STABLE SET search_path = ''
AS $$ SELECT shop.customer_claim() $$;

CREATE TABLE shop.customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sub text NOT NULL UNIQUE
);
CREATE TABLE shop.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES shop.customers (id),   -- fk_unindexed
    owner_sub text NOT NULL,                                       -- policy_column_unindexed
    reference text NOT NULL,                                       -- index_advice
    status text NOT NULL DEFAULT 'new'
);
ALTER TABLE shop.customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE shop.orders ENABLE ROW LEVEL SECURITY;

-- rls_per_row_claim: a claim helper called bare ...
CREATE POLICY orders_own ON shop.orders FOR SELECT TO seed_reader
    USING (owner_sub = claims.sub());
-- ... one hidden inside functions (and, with orders_own, policy_overlap for seed_reader SELECT) ...
CREATE POLICY orders_hidden ON shop.orders FOR SELECT TO seed_reader
    USING (owner_sub = shop.current_customer());
-- ... and the raw setting.
CREATE POLICY customers_own ON shop.customers FOR SELECT TO seed_reader
    USING (sub = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
-- policy_to_public and with_check_true.
CREATE POLICY orders_insert ON shop.orders FOR INSERT WITH CHECK (true);

CREATE TABLE shop.coupons (code text PRIMARY KEY);                 -- rls_disabled
CREATE TABLE shop.notes (id int PRIMARY KEY, note text);           -- rls_no_policy
ALTER TABLE shop.notes ENABLE ROW LEVEL SECURITY;

GRANT SELECT ON ALL TABLES IN SCHEMA shop TO seed_reader;
GRANT INSERT ON shop.orders TO seed_writer;

-- definer_search_path.
CREATE FUNCTION shop.close_order(order_id bigint) RETURNS void
LANGUAGE sql SECURITY DEFINER
AS $$ UPDATE shop.orders SET status = 'closed' WHERE id = order_id $$;

-- dynamic_sql (and plpgsql_check's security warning on the same EXECUTE).
CREATE FUNCTION shop.search_orders(filter text) RETURNS SETOF shop.orders
LANGUAGE plpgsql STABLE SET search_path = ''
AS $$ BEGIN RETURN QUERY EXECUTE 'SELECT * FROM shop.orders WHERE ' || filter; END $$;

INSERT INTO shop.customers (sub) SELECT 'customer-' || i FROM generate_series(1, 100) i;
INSERT INTO shop.orders (customer_id, owner_sub, reference)
SELECT 1 + i % 100, 'customer-' || (1 + i % 100), 'ref-' || i FROM generate_series(1, 20000) i;
ANALYZE shop.customers, shop.orders;
