-- The ledger of domain migrations (migrations/<domain>/NNNN_<name>.sql): one row per applied
-- migration, written by the migrations Job in the same transaction as the migration itself
-- (components/render/migrations.py). The Job compares every row with the bundle it carries
-- before applying anything: a changed, renumbered or removed applied migration is refused.
--
-- Owned by the database owner (the admin role), like every platform table: migrations run as
-- the schema owner pgplatform_owner, which can neither read nor rewrite their own history.
-- No API role reads it.
-- squawk-ignore-file require-lock-timeout, require-statement-timeout
-- (apply.psql sets both for the baseline's one transaction; docs/sql-lint.md)

CREATE TABLE IF NOT EXISTS platform.migration (
    domain     name NOT NULL,
    version    bigint NOT NULL CHECK (version > 0),
    name       text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_]*$'),
    checksum   text NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    applied_by name NOT NULL DEFAULT session_user,
    PRIMARY KEY (domain, version),
    UNIQUE (domain, name)
);

COMMENT ON TABLE platform.migration IS
    'Applied domain migrations: (domain, version, name, sha256 of the file, when, by which login).';

REVOKE ALL ON TABLE platform.migration FROM PUBLIC;
