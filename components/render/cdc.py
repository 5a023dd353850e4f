"""Change data capture to the analytics database: logical replication of chosen columns and rows.

One publication in the application database lists the configured tables, each with a column list
(personal columns are never decoded for the subscriber) and an optional row filter (PostgreSQL 15).
One subscription in the analytics database of the same cluster receives it. Names are fixed: the
publication, its replication slot and the subscription are all ``analytics_cdc``.

Who does what (docs/database.md, "Change data capture"):

* ``publisher.psql`` (the database owner, as the tables' owner for the transaction): the
  publication, the publication role's column grants and read policy, and the checks PostgreSQL
  would otherwise only make at the first UPDATE or DELETE of a published table (replica identity
  covered by the column list and the row filter): a publication that fails them would make the
  API's writes to that table fail, so it is never committed.
* ``slot.sql`` (the publication role, REPLICATION): the logical slot, created on its own because
  ``CREATE SUBSCRIPTION`` cannot create a slot on the cluster it runs in (it waits for its own
  transaction); the subscription then uses ``create_slot = false``.
* ``subscriber.sql`` (the database owner, in the analytics database): the target tables, with
  exactly the published columns and the replica identity as primary key.
* The subscription itself: CloudNativePG's ``Subscription`` (cnpg mode; PostgreSQL 15 creates
  subscriptions as superuser only) or ``subscription.sql`` (external mode).

CloudNativePG's ``Publication`` is not used: its table entries have a column list but no row
filter, and its reconciler re-applies ``ALTER PUBLICATION ... SET`` with its own table list, so a
row filter added next to it would be removed at the next reconcile.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from components.render.membership_loan import MembershipLoan

PUBLICATION: Final = "analytics_cdc"
SLOT: Final = PUBLICATION
SUBSCRIPTION: Final = PUBLICATION
ROLE: Final = "cdc_publisher"
"""LOGIN REPLICATION role the subscription connects as; SELECT on the published columns only."""
OWNER: Final = "pgplatform_owner"
"""Owner of the domain tables (migrations run as it); publications need table ownership."""
POLICY: Final = "cdc_publisher_read"
"""Read policy of the publication role on each published table (its initial copy)."""
EXTERNAL_CLUSTER: Final = "cdc-publisher"
"""``externalClusters`` entry of the Cluster the ``Subscription`` connects through."""
_OWNER_LOAN: Final = MembershipLoan(role=OWNER)

PUBLISHER_FILE: Final = "publisher.psql"
SLOT_FILE: Final = "slot.sql"
SUBSCRIBER_FILE: Final = "subscriber.sql"
ROLE_FILE: Final = "role.psql"
SUBSCRIPTION_FILE: Final = "subscription.psql"
PAUSE_FILE: Final = "pause.sql"
RESYNC_FILE: Final = "resync.sql"
JOB_SCRIPT: Final = "apply.sh"

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TABLE = re.compile(r"^([a-z_][a-z0-9_]{0,62})\.([a-z_][a-z0-9_]{0,62})$")
# A type name as a column definition takes it: words, an optional (n[,m]) and [] suffix.
_TYPE = re.compile(r"^[a-z][a-z0-9_]*( [a-z][a-z0-9_]*){0,3}(\(\d{1,4}(, ?\d{1,4})?\))?(\[\])?$")
_STRING = re.compile(r"'(?:[^']|'')*'")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
# Key words and literal names a row filter may use besides column names.
_FILTER_WORDS: Final = frozenset(
    """and or not is null true false in between like ilike similar escape distinct from any
    all some case when then else end isnull notnull unknown collate at time zone interval
    array""".split()
)
_FILTER_FORBIDDEN = re.compile(r";|--|/\*|\bselect\b|\$", re.IGNORECASE)


def table_key_problem(key: str) -> str | None:
    """Why ``key`` is not ``schema.table`` in lower case; None when it is."""
    if not _TABLE.match(key):
        return "a table is named 'schema.table' in lower case, e.g. 'identity.accounts'"
    return None


def column_type_problem(value: str) -> str | None:
    if not _TYPE.match(value):
        return (
            f"{value!r} is not a column type: use a type name as in CREATE TABLE, e.g. 'bigint', "
            "'timestamp with time zone', 'numeric(12,2)', 'text[]'"
        )
    return None


def filter_columns(row_filter: str) -> frozenset[str]:
    """Column names a row filter reads (string literals, casts and function names left out)."""
    text = _STRING.sub(" ", row_filter)
    names = set()
    for match in _WORD.finditer(text):
        word = match.group(0)
        before = text[: match.start()].rstrip()
        after = text[match.end() :].lstrip()
        if before.endswith("::") or after.startswith("(") or word.lower() in _FILTER_WORDS:
            continue
        if word[0].isdigit():
            continue
        names.add(word)
    return frozenset(names)


def row_filter_problem(row_filter: str, key: Sequence[str]) -> str | None:
    """Why ``row_filter`` cannot filter a published table; None when it can.

    PostgreSQL 15 refuses a row filter on UPDATE and DELETE (and so the API's writes) when it
    reads a column outside the replica identity; subqueries and user functions are refused at
    ``ALTER PUBLICATION``. Both surface here, before anything is applied.
    """
    if not row_filter.strip():
        return "an empty row filter: remove rowFilter to publish every row"
    if _FILTER_FORBIDDEN.search(row_filter):
        return "a row filter is one expression: no ';', comments, '$' or subqueries"
    if row_filter.count("(") != row_filter.count(")"):
        return "unbalanced parentheses"
    outside = sorted(filter_columns(row_filter) - set(key))
    if outside:
        return (
            f"reads {outside}, not part of the replica identity {list(key)}: PostgreSQL 15 "
            "would refuse every UPDATE and DELETE of the table. Filter on key columns only, or "
            "make the filter's columns part of the replica identity (REPLICA IDENTITY USING "
            "INDEX) and list them in 'key'"
        )
    return None


@dataclass(frozen=True, kw_only=True)
class CdcTable:
    """One published table: the replica identity, the columns with their types, the rows."""

    schema: str
    name: str
    key: tuple[str, ...]
    """The table's replica identity columns (primary key or REPLICA IDENTITY USING INDEX)."""
    columns: tuple[tuple[str, str], ...]
    """``(column, type)`` published, in order; personal columns are left out."""
    row_filter: str | None = None
    config_name: str | None = None
    """The ``cdc.tables`` key when it names the table otherwise: a masked table is published
    from ``<schema>_private`` where it lives (docs/masking.md)."""

    def __post_init__(self) -> None:
        if table_key_problem(self.qualified):
            raise ValueError(f"table: {table_key_problem(self.qualified)}, got {self.qualified!r}")
        names = [column for column, _ in self.columns]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{self.qualified}: columns must be non-empty and distinct")
        for column, kind in self.columns:
            if not _IDENT.match(column):
                raise ValueError(f"{self.qualified}: {column!r} is not a column name")
            if column_type_problem(kind):
                raise ValueError(f"{self.qualified}.{column}: {column_type_problem(kind)}")
        if not self.key or not set(self.key) <= set(names):
            raise ValueError(
                f"{self.qualified}: key {list(self.key)} must be non-empty and published "
                "(a column list must cover the replica identity)"
            )
        if self.row_filter is not None:
            problem = row_filter_problem(self.row_filter, self.key)
            if problem:
                raise ValueError(f"{self.qualified}: row filter {problem}")

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column for column, _ in self.columns)


@dataclass(frozen=True, kw_only=True)
class CdcPlan:
    """What is published from ``source_database`` and lands in ``target_database``."""

    source_database: str
    target_database: str
    tables: tuple[CdcTable, ...]

    def __post_init__(self) -> None:
        for field in ("source_database", "target_database"):
            if not _IDENT.match(getattr(self, field)):
                raise ValueError(f"{field}: not a database name, got {getattr(self, field)!r}")
        if self.source_database == self.target_database:
            raise ValueError("target_database: must differ from the published database")
        if not self.tables:
            raise ValueError("tables: at least one table is published")
        names = [t.qualified for t in self.tables]
        if len(set(names)) != len(names):
            raise ValueError(
                f"tables: listed twice: {sorted({n for n in names if names.count(n) > 1})}"
            )


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _columns(table: CdcTable) -> str:
    return ", ".join(table.column_names)


def _config_key(table: CdcTable) -> str:
    return f"pgplatform:cdc.tables.{table.config_name or table.qualified}"


def _table_checks(table: CdcTable) -> list[str]:
    """The table and columns exist and the declared key is the table's replica identity."""
    key = _config_key(table)
    columns = ", ".join(_literal(c) for c in table.column_names)
    declared = ", ".join(_literal(c) for c in table.key)
    return [
        "DO $$",
        "DECLARE",
        f"    rel regclass := pg_catalog.to_regclass({_literal(table.qualified)});",
        "    missing text[];",
        "    identity text[];",
        '    mode "char";',
        "BEGIN",
        "    IF rel IS NULL THEN",
        f"        RAISE EXCEPTION '{key}: table {table.qualified} does not exist'",
        "            USING HINT = 'Tables come from migrations: run them first, or fix the name.';",
        "    END IF;",
        "    SELECT pg_catalog.array_agg(c ORDER BY c) INTO missing",
        f"    FROM pg_catalog.unnest(ARRAY[{columns}]) c",
        "    WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = rel",
        "                      AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped);",
        "    IF missing IS NOT NULL THEN",
        f"        RAISE EXCEPTION '{key}: no column % in {table.qualified}', missing;",
        "    END IF;",
        "    SELECT c.relreplident INTO mode FROM pg_catalog.pg_class c WHERE c.oid = rel;",
        "    SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attname) INTO identity",
        "    FROM pg_catalog.pg_index i",
        "    JOIN pg_catalog.pg_attribute a",
        "      ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)",
        "    WHERE i.indrelid = rel",
        "      AND ((mode = 'd' AND i.indisprimary) OR (mode = 'i' AND i.indisreplident));",
        "    IF mode NOT IN ('d', 'i') OR identity IS DISTINCT FROM",
        "       (SELECT pg_catalog.array_agg(c ORDER BY c)",
        f"        FROM pg_catalog.unnest(ARRAY[{declared}]) c) THEN",
        f"        RAISE EXCEPTION '{key}: key % is not the replica identity of {table.qualified}',",
        f"            ARRAY[{declared}]",
        "            USING DETAIL = pg_catalog.format('replica identity: %s %s',",
        "                CASE mode WHEN 'd' THEN 'primary key' WHEN 'i' THEN 'index'",
        "                          WHEN 'f' THEN 'full' ELSE 'nothing' END,",
        "                COALESCE(identity::text, '{}')),",
        "            HINT = 'Set key to the primary key columns (or those of REPLICA IDENTITY "
        "USING INDEX).';",
        "    END IF;",
        "END",
        "$$;",
    ]


def _writes_still_allowed(table: CdcTable) -> list[str]:
    """PostgreSQL checks a publication against the replica identity when an UPDATE or DELETE
    starts: run that check now. EXPLAIN starts the executor (fires no trigger, touches no row);
    a publication publishing both makes the same check for either, and a DELETE needs no
    assignable column (an identity column GENERATED ALWAYS refuses ``SET id = id``)."""
    return [
        "DO $$",
        "DECLARE",
        "    detail text;",
        "BEGIN",
        f"    EXECUTE 'EXPLAIN DELETE FROM {table.qualified}';",  # noqa: S608 - checked names
        "EXCEPTION WHEN OTHERS THEN",
        "    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;",
        f"    RAISE EXCEPTION '{_config_key(table)}: this publication would break writes: %', "
        "SQLERRM",
        "        USING DETAIL = detail,",
        "        HINT = 'The column list must include the replica identity (key) and the row "
        "filter may read only its columns.';",
        "END",
        "$$;",
    ]


def render_publisher_psql(plan: CdcPlan) -> str:
    """``publisher.psql``: the publication and the publication role's reach, in one transaction.

    Run by the database owner (the admin), who owns the publication (creating one needs CREATE
    on the database). Adding a table, granting on it and creating its policy need the table's
    owner, so the admin inherits ``pgplatform_owner``'s rights for this transaction: when it is
    not a member, it grants itself the membership and revokes it before COMMIT (a CREATEROLE
    role may in PostgreSQL 15), so no standing membership remains.
    """
    lines = [
        "-- Publication for the analytics database (rendered by pgplatform from cdc.tables).",
        "\\set ON_ERROR_STOP on",
        "\\set QUIET on",
        "SET client_min_messages = warning;",
        *_OWNER_LOAN.check(),
        "BEGIN;",
        "SET LOCAL lock_timeout = '10s';",
        "DO $$",
        "BEGIN",
        f"    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {_literal(ROLE)}",
        "                   AND rolreplication AND rolcanlogin) THEN",
        f"        RAISE EXCEPTION 'role {ROLE} (LOGIN REPLICATION) does not exist yet'",
        "            USING HINT = 'cnpg: the Cluster creates it (managed role); external: apply "
        f"{ROLE_FILE} first.';",
        "    END IF;",
        "END",
        "$$;",
        f"GRANT CONNECT ON DATABASE {plan.source_database} TO {ROLE};",
        *_OWNER_LOAN.grant(),
    ]
    for table in plan.tables:
        lines += ["", f"-- {table.qualified}", *_table_checks(table)]
    lines += ["", "-- Tables no longer published: the role's grants and policy go."]
    listed = ", ".join(_literal(t.qualified) for t in plan.tables)
    lines += [
        "DO $$",
        "DECLARE",
        "    rel regclass;",
        "BEGIN",
        "    FOR rel IN SELECT p.polrelid::regclass FROM pg_catalog.pg_policy p",
        f"               WHERE p.polname = {_literal(POLICY)}",
        "                 AND p.polrelid::regclass::text <> ALL (ARRAY[" + listed + "])",
        "    LOOP",
        f"        EXECUTE pg_catalog.format('DROP POLICY {POLICY} ON %s', rel);",
        f"        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM {ROLE}', rel);",
        "    END LOOP;",
        "END",
        "$$;",
    ]
    for table in plan.tables:
        q = table.qualified
        lines += [
            "",
            f"GRANT USAGE ON SCHEMA {table.schema} TO {ROLE};",
            f"REVOKE ALL ON {q} FROM {ROLE};",
            "-- Column grants are revoked column by column: every column, then the published ones.",
            "DO $$",
            "BEGIN",
            f"    EXECUTE pg_catalog.format('REVOKE SELECT (%s) ON {q} FROM {ROLE}',",  # noqa: S608
            "        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ')",
            "         FROM pg_catalog.pg_attribute a",
            f"         WHERE a.attrelid = {_literal(q)}::regclass AND a.attnum > 0",
            "           AND NOT a.attisdropped));",
            "END",
            "$$;",
            f"GRANT SELECT ({_columns(table)}) ON {q} TO {ROLE};",
            f"DROP POLICY IF EXISTS {POLICY} ON {q};",
            f"CREATE POLICY {POLICY} ON {q} FOR SELECT TO {ROLE}",
            f"    USING ({table.row_filter or 'true'});",
        ]
    objects = ",\n    ".join(
        f"TABLE {t.qualified} ({_columns(t)})"
        + (f" WHERE ({t.row_filter})" if t.row_filter else "")
        for t in plan.tables
    )
    lines += [
        "",
        "DO $$",
        "BEGIN",
        "    IF NOT EXISTS (SELECT FROM pg_catalog.pg_publication",
        f"                   WHERE pubname = {_literal(PUBLICATION)}) THEN",
        f"        CREATE PUBLICATION {PUBLICATION};",
        "    END IF;",
        "END",
        "$$;",
        f"ALTER PUBLICATION {PUBLICATION} SET",
        f"    {objects};",
        f"ALTER PUBLICATION {PUBLICATION} SET (publish = 'insert, update, delete, truncate');",
    ]
    for table in plan.tables:
        lines += _writes_still_allowed(table)
    lines += [
        *_OWNER_LOAN.revoke(),
        "COMMIT;",
        f"\\echo publication {PUBLICATION} applied",
        "",
    ]
    return "\n".join(lines)


def render_slot_sql() -> str:
    """``slot.sql``: the logical slot, as the publication role, after the publication exists
    (pgoutput looks the publication up at the slot's position: a slot older than its
    publication fails to decode)."""
    return "\n".join(
        [
            "-- Logical replication slot of the analytics subscription (rendered by pgplatform).",
            f"SELECT pg_catalog.pg_create_logical_replication_slot({_literal(SLOT)}, 'pgoutput')",
            "WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots",
            f"                  WHERE slot_name = {_literal(SLOT)});",
            "",
        ]
    )


def render_subscriber_sql(plan: CdcPlan) -> str:
    """``subscriber.sql``: the target tables in the analytics database (idempotent).

    Logical replication matches tables by schema and name and columns by name, so each target is
    ``schema.table`` with the published columns; the replica identity is its primary key (the
    subscriber finds rows to update and delete by it). Columns added to the config are added.
    """
    lines = ["-- Target tables of the analytics subscription (rendered by pgplatform).", "BEGIN;"]
    for schema in sorted({t.schema for t in plan.tables}):
        lines.append(f"CREATE SCHEMA IF NOT EXISTS {schema};")
    for table in plan.tables:
        defs = [f"    {column} {kind}" for column, kind in table.columns]
        defs.append(f"    PRIMARY KEY ({', '.join(table.key)})")
        lines += [f"CREATE TABLE IF NOT EXISTS {table.qualified} (", ",\n".join(defs), ");"]
        lines += [
            f"ALTER TABLE {table.qualified} ADD COLUMN IF NOT EXISTS {column} {kind};"
            for column, kind in table.columns
            if column not in table.key
        ]
    lines += ["COMMIT;", ""]
    return "\n".join(lines)


def subscription_parameters() -> dict[str, str]:
    """``WITH`` options of the subscription: the slot made by ``slot.sql``, an initial copy."""
    return {"create_slot": "false", "slot_name": SLOT, "copy_data": "true"}


def render_subscription_psql() -> str:
    """``subscription.psql`` (external mode, run by a role allowed to create subscriptions in
    the analytics database): the connection string comes as a psql variable, never in a file."""
    options = ", ".join(f"{k} = {_literal(v)}" for k, v in subscription_parameters().items())
    return "\n".join(
        [
            "-- Subscription of the analytics database (rendered by pgplatform).",
            '-- psql -v publisher="host=... dbname=... user=cdc_publisher password=... '
            'sslmode=verify-full" -f subscription.psql',
            "\\set ON_ERROR_STOP on",
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_subscription WHERE subname = "  # noqa: S608
            f"{_literal(SUBSCRIPTION)}) AS subscribed \\gset",
            "\\if :subscribed",
            f"ALTER SUBSCRIPTION {SUBSCRIPTION} CONNECTION :'publisher';",
            f"ALTER SUBSCRIPTION {SUBSCRIPTION} SET PUBLICATION {PUBLICATION};",
            "\\else",
            f"CREATE SUBSCRIPTION {SUBSCRIPTION} CONNECTION :'publisher'",
            f"    PUBLICATION {PUBLICATION} WITH ({options});",
            "\\endif",
            "",
        ]
    )


def render_role_psql() -> str:
    """``role.psql`` (external mode, a role allowed to grant REPLICATION): the publication
    role; its password comes as the psql variable ``password`` (from Vault), never in a file."""
    return "\n".join(
        [
            "-- The publication role of the analytics subscription (rendered by pgplatform).",
            '-- psql -v password="$(vault kv get -field=password ...)" -f role.psql',
            "\\set ON_ERROR_STOP on",
            f"SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {_literal(ROLE)})"  # noqa: S608
            " AS present \\gset",
            "\\if :present",
            f"ALTER ROLE {ROLE} LOGIN REPLICATION NOSUPERUSER NOBYPASSRLS NOCREATEDB "
            "NOCREATEROLE NOINHERIT PASSWORD :'password';",
            "\\else",
            f"CREATE ROLE {ROLE} LOGIN REPLICATION NOINHERIT PASSWORD :'password';",
            "\\endif",
            "",
        ]
    )


def render_job_script(*, source_database: str, target_database: str) -> str:
    """``apply.sh`` of the cnpg Job: publication (admin), slot (publication role), targets."""
    for name in (source_database, target_database):
        if not _IDENT.match(name):
            raise ValueError(f"not a database name: {name!r}")
    return "\n".join(
        [
            "#!/bin/sh",
            "# Change data capture to the analytics database (rendered by pgplatform).",
            "set -eu",
            'dir="$(dirname "$0")"',
            f'psql -X -d {source_database} -f "$dir/{PUBLISHER_FILE}"',
            f'PGUSER={ROLE} PGPASSWORD="$CDC_PASSWORD" psql -X -v ON_ERROR_STOP=1 -q '
            f'-d {source_database} -f "$dir/{SLOT_FILE}"',
            f'psql -X -v ON_ERROR_STOP=1 -q -d {target_database} -f "$dir/{SUBSCRIBER_FILE}"',
            "echo 'analytics_cdc: publication, slot and target tables in place'",
            "",
        ]
    )


def render_pause_sql() -> str:
    """``pause.sql`` (analytics database): stop applying before the slot is made again, so the
    old subscription never resumes from a new slot's later position (a silent gap)."""
    return "\n".join(
        [
            "-- Re-sync, step 1 (docs/runbooks/CdcSlotMissing.md): stop the subscription.",
            f"ALTER SUBSCRIPTION {SUBSCRIPTION} DISABLE;",
            "",
        ]
    )


def render_resync_sql(plan: CdcPlan) -> str:
    """``resync.sql`` (analytics database, once the slot exists again): drop the subscription
    without touching the slot and empty its tables, in one transaction. The subscription is then
    created again (CloudNativePG's ``Subscription`` does so by itself; external mode re-applies
    ``subscription.psql``) and copies every table anew."""
    targets = ", ".join(t.qualified for t in plan.tables)
    return "\n".join(
        [
            "-- Re-sync, step 3 (docs/runbooks/CdcSlotMissing.md): a fresh copy of every table.",
            "BEGIN;",
            f"ALTER SUBSCRIPTION {SUBSCRIPTION} DISABLE;",
            f"ALTER SUBSCRIPTION {SUBSCRIPTION} SET (slot_name = NONE);",
            f"DROP SUBSCRIPTION {SUBSCRIPTION};",
            f"TRUNCATE {targets};",
            "COMMIT;",
            "",
        ]
    )


def job_files(plan: CdcPlan) -> dict[str, str]:
    """ConfigMap data of the cnpg Job (and the re-sync runbook's SQL)."""
    return {
        JOB_SCRIPT: render_job_script(
            source_database=plan.source_database, target_database=plan.target_database
        ),
        PUBLISHER_FILE: render_publisher_psql(plan),
        SLOT_FILE: render_slot_sql(),
        SUBSCRIBER_FILE: render_subscriber_sql(plan),
        PAUSE_FILE: render_pause_sql(),
        RESYNC_FILE: render_resync_sql(plan),
    }


def external_files(plan: CdcPlan) -> dict[str, str]:
    """What an operator applies in external mode, in this order (docs/database.md)."""
    return {
        f"1-{ROLE_FILE}": render_role_psql(),
        f"2-{PUBLISHER_FILE}": render_publisher_psql(plan),
        f"3-{SLOT_FILE}": render_slot_sql(),
        f"4-{SUBSCRIBER_FILE}": render_subscriber_sql(plan),
        f"5-{SUBSCRIPTION_FILE}": render_subscription_psql(),
        PAUSE_FILE: render_pause_sql(),
        RESYNC_FILE: render_resync_sql(plan),
    }


# -- CloudNativePG objects ------------------------------------------------------------------------
def managed_role(password_secret: str) -> dict[str, Any]:
    """``spec.managed.roles[]`` entry: the operator (a superuser) may grant REPLICATION."""
    return {
        "name": ROLE,
        "ensure": "present",
        "login": True,
        "replication": True,
        "superuser": False,
        "createrole": False,
        "createdb": False,
        "bypassrls": False,
        "inherit": False,
        "connectionLimit": 4,
        "passwordSecret": {"name": password_secret},
        "comment": "pgplatform: publication role of the analytics subscription",
    }


def external_cluster(
    *, host: str, port: int, database: str, password_secret: str, ca_secret: str
) -> dict[str, Any]:
    """``spec.externalClusters[]`` entry the ``Subscription`` connects through: the cluster's own
    read-write Service, as the publication role, verifying the server certificate."""
    return {
        "name": EXTERNAL_CLUSTER,
        "connectionParameters": {
            "host": host,
            "port": str(port),
            "dbname": database,
            "user": ROLE,
            "sslmode": "verify-full",
        },
        "password": {"name": password_secret, "key": "password"},
        "sslRootCert": {"name": ca_secret, "key": "ca.crt"},
    }


def database_spec(*, cluster: str, database: str, owner: str) -> dict[str, Any]:
    """``Database.spec`` of the analytics database (kept when the object goes)."""
    return {
        "cluster": {"name": cluster},
        "name": database,
        "owner": owner,
        "ensure": "present",
        "databaseReclaimPolicy": "retain",
    }


def subscription_spec(plan: CdcPlan, *, cluster: str) -> dict[str, Any]:
    """``Subscription.spec``: the analytics database subscribes to the application database's
    publication through the cluster's own ``externalClusters`` entry."""
    return {
        "cluster": {"name": cluster},
        "dbname": plan.target_database,
        "name": SUBSCRIPTION,
        "externalClusterName": EXTERNAL_CLUSTER,
        "publicationName": PUBLICATION,
        "publicationDBName": plan.source_database,
        "parameters": subscription_parameters(),
        "subscriptionReclaimPolicy": "retain",
    }


def max_slot_wal_keep_size(quantity_bytes: int) -> str:
    """``max_slot_wal_keep_size`` in MB: beyond it PostgreSQL invalidates the slot instead of
    filling the disk (the subscription then needs a re-sync, docs/runbooks)."""
    if quantity_bytes < 1024**2:
        raise ValueError("max_slot_wal_keep_size: at least 1MB")
    return f"{quantity_bytes // 1024**2}MB"
