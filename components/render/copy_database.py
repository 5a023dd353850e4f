"""The copy database: where an API reads the change-data-capture copies (``cdc.database``).

Change data capture (``cdc.py``) replicates chosen columns and rows of the application
database into a second database of the same cluster; a domain served from it reads those
copies there, on the cluster's read replicas. That database has no superuser part of the
baseline: in CloudNativePG nobody holds a superuser password and the bootstrap SQL runs in the
application database only. So it gets what its owner can set up alone, applied by a Job as the
admin role (``psql -X -f apply.psql``), in one transaction:

* the access plan restricted to this database (``subset_plan``): no roles and no memberships
  (roles are cluster-wide and exist already), CONNECT for the authenticators only, the served
  schemas and the platform's own, grants for the served schemas and ``platform``;
* the admin part of the baseline, except the files that use an object only the superuser part
  creates (``superuser_dependent_files`` says which and why): they could not apply here;
* the copies: USAGE on their schemas and SELECT on each copy for the API roles reaching a
  served schema (the views of the served schema read the copies as the caller), USAGE for the
  schema owner (migrations name the copies), nothing else to anyone;
* the seal (``seal_statements``): what the RLS guard's event trigger does in the application
  database, done explicitly. Every table of a served schema gets row level security enabled and
  forced, a materialized view there is refused. ``apply.psql`` ends with it; the migrations Job
  of this database runs it inside each migration's transaction
  (``migrations.job_bundle(plan, after_each=...)``), so no table is committed unsealed;
  ``seal.sql`` is the same on its own, for a run after the migrations.

The admin holds ``pgplatform_owner``'s membership for the transaction only
(``membership_loan.py``), as for the CDC publication: default privileges of that role and the
seal of its tables need it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Final

from components.render.access import (
    AUDIT_SCHEMA,
    OWNER,
    PLATFORM_SCHEMA,
    AccessPlan,
    DatabaseGrant,
    render_access_sql,
)
from components.render.baseline import (
    ACCESS_FILE,
    APPLY_SCRIPT,
    NO_CACHE_CONTROL,
    NO_GROUP_ROLES,
    NO_TENANCY,
    CacheControl,
    GroupRoles,
    Tenancy,
    admin_sql_files,
    owner_transaction,
    superuser_sql_files,
)
from components.render.membership_loan import MembershipLoan

COPY_GRANTS_FILE: Final = "095_copy_grants.sql"
SEAL_FILE: Final = "seal.sql"
"""The seal on its own (``psql -X -f seal.sql``, as the admin), e.g. after a change by hand."""

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_INTERNAL: Final = frozenset({"public", PLATFORM_SCHEMA, AUDIT_SCHEMA, "information_schema"})
_LOAN: Final = MembershipLoan(role=OWNER)
# An object a SQL file creates, by its qualified name (what another file can refer to).
_CREATED = re.compile(
    r"\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE|TABLE|VIEW|SEQUENCE|TYPE)\s+"
    r"(?:IF\s+NOT\s+EXISTS\s+)?([a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*)",
    re.IGNORECASE,
)
_LINE_COMMENT = re.compile(r"--[^\n]*")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _names(values: tuple[str, ...]) -> str:
    """``ARRAY[...]::name[]`` of checked identifiers."""
    return "ARRAY[" + ", ".join(_literal(v) for v in values) + "]::name[]"


@dataclass(frozen=True, kw_only=True)
class CopyDatabase:
    """The copy database of a stack and the domains it serves."""

    database: str
    """``cdc.database``, e.g. ``analytics``."""
    schemas: tuple[str, ...]
    """Schemas of the domains served from this database (each owned by pgplatform_owner)."""
    copies: tuple[tuple[str, str], ...]
    """``(schema, table)`` of the replicated copies, as ``subscriber.sql`` creates them."""
    authenticators: tuple[str, ...]
    """Login roles that may CONNECT (the PostgREST authenticator of the served domains)."""
    access: AccessPlan
    """The stack's whole access plan; the part for this database is taken from it."""
    groups: GroupRoles = NO_GROUP_ROLES
    cache: CacheControl = NO_CACHE_CONTROL
    """Rows of the served schemas only."""
    tenancy: Tenancy = NO_TENANCY
    """Tenanted domains among the served schemas only."""

    def __post_init__(self) -> None:
        if not _IDENT.match(self.database):
            raise ValueError(f"database: not a database name, got {self.database!r}")
        self._check_schemas()
        self._check_copies()
        self._check_authenticators()
        outside = sorted({row[0] for row in self.cache.rows} - set(self.schemas))
        if outside:
            raise ValueError(f"cache: rows for schemas not served here: {outside}")
        outside = sorted({row[0] for row in self.tenancy.domains} - set(self.schemas))
        if outside:
            raise ValueError(f"tenancy: domains not served here: {outside}")
        if not self.readers:
            raise ValueError(f"access: no API role reaches the served schemas {list(self.schemas)}")

    def _check_schemas(self) -> None:
        if not self.schemas:
            raise ValueError("schemas: at least one served schema is required")
        owners = {s.name: s.owner for s in self.access.schemas}
        for name in self.schemas:
            if not _IDENT.match(name) or name in _INTERNAL or name.startswith("pg_"):
                raise ValueError(f"schemas: {name!r} is not a domain schema")
            if owners.get(name, "") != OWNER:
                raise ValueError(
                    f"schemas: {name!r} is not an exposed schema of the access plan "
                    f"(exposed: {sorted(n for n, o in owners.items() if o == OWNER)})"
                )
        if len(set(self.schemas)) != len(self.schemas):
            raise ValueError(f"schemas: listed more than once: {list(self.schemas)}")

    def _check_copies(self) -> None:
        if not self.copies:
            raise ValueError("copies: at least one replicated table is required")
        for schema, table in self.copies:
            if not _IDENT.match(schema) or not _IDENT.match(table):
                raise ValueError(f"copies: {schema!r}.{table!r} is not schema.table")
            if schema in self.schemas:
                raise ValueError(
                    f"copies: {schema}.{table} is in a served schema: copies live in schemas "
                    "of their own, the served schemas read them"
                )
            if schema in _INTERNAL or schema.startswith("pg_"):
                raise ValueError(f"copies: {schema}.{table} is in an internal schema")
        if len(set(self.copies)) != len(self.copies):
            raise ValueError("copies: a table is listed more than once")

    def _check_authenticators(self) -> None:
        if not self.authenticators:
            raise ValueError("authenticators: at least one login role is required")
        logins = {r.name for r in self.access.roles if r.login}
        switching = {m.member for m in self.access.memberships}
        for name in self.authenticators:
            if name not in logins or name not in switching:
                raise ValueError(
                    f"authenticators: {name!r} is not an authenticator of the access plan "
                    f"(authenticators: {sorted(logins & switching)})"
                )

    @property
    def copy_schemas(self) -> tuple[str, ...]:
        return tuple(sorted({schema for schema, _ in self.copies}))

    @property
    def readers(self) -> tuple[str, ...]:
        """API roles with USAGE on a served schema: they read the copies (through its views)."""
        served = set(self.schemas)
        return tuple(
            role
            for role in self.access.api_roles
            if any(
                g.role == role and g.schema in served and g.privileges
                for g in self.access.schema_grants
            )
        )


def subset_plan(cd: CopyDatabase) -> AccessPlan:
    """The access plan's part for the copy database (rendered by ``render_access_sql``)."""
    plan = cd.access
    served = set(cd.schemas)
    readers = set(cd.readers)
    # PUBLIC and every other login of the plan: nothing; the authenticators: CONNECT.
    database_grants = [g for g in plan.database_grants if not g.privileges]
    database_grants += [
        DatabaseGrant(role=r.name, privileges=())
        for r in plan.roles
        if r.login and r.name not in cd.authenticators
    ]
    database_grants += [DatabaseGrant(role=a, privileges=("CONNECT",)) for a in cd.authenticators]
    return replace(
        plan,
        roles=(),
        memberships=(),
        schemas=tuple(
            s for s in plan.schemas if s.name in served | {PLATFORM_SCHEMA, AUDIT_SCHEMA}
        ),
        database_grants=tuple(database_grants),
        # ``public``: only the revocation from PUBLIC and pg_monitor's USAGE (no API role).
        schema_grants=tuple(
            g
            for g in plan.schema_grants
            if g.schema in served
            or g.schema == "public"
            or (g.schema == PLATFORM_SCHEMA and g.role in readers)
        ),
        default_grants=tuple(
            d
            for d in plan.default_grants
            if (d.schema is None and (d.role in readers or d.role == "public"))
            or d.schema in served
        ),
        object_grants=tuple(o for o in plan.object_grants if o.schema in served),
        api_roles=tuple(r for r in plan.api_roles if r in readers),
    )


def superuser_objects() -> frozenset[str]:
    """Qualified names of the objects the superuser part of the baseline creates."""
    return frozenset(
        match.group(1).lower()
        for _, text in superuser_sql_files()
        for match in _CREATED.finditer(text)
    )


def superuser_dependent_files(cd: CopyDatabase) -> dict[str, tuple[str, ...]]:
    """Admin files that use (outside comments) an object only the superuser part creates,
    with those objects: without the superuser part they cannot apply."""
    objects = superuser_objects()
    found: dict[str, tuple[str, ...]] = {}
    for name, text in _admin_files(cd):
        code = _LINE_COMMENT.sub("", text)
        used = tuple(
            sorted(o for o in objects if re.search(rf"\b{re.escape(o)}\b", code, re.IGNORECASE))
        )
        if used:
            found[name] = used
    return found


def _admin_files(cd: CopyDatabase) -> list[tuple[str, str]]:
    # No masking rules: the copies hold no masked column (CDC leaves personal columns out).
    return admin_sql_files(cd.schemas, cd.groups, cd.cache, cd.tenancy, ())


def copy_sql_files(cd: CopyDatabase) -> list[tuple[str, str]]:
    """The admin baseline files the copy database gets, in order."""
    skipped = superuser_dependent_files(cd)
    return [(name, text) for name, text in _admin_files(cd) if name not in skipped]


def render_copy_grants_sql(cd: CopyDatabase) -> str:
    """The copies exist; their readers get USAGE and SELECT, nothing else, nobody else."""
    copies = ", ".join(_literal(f"{s}.{t}") for s, t in cd.copies)
    others = _names((*cd.schemas, *sorted(_INTERNAL)))
    revoked = _names((*cd.access.api_roles, OWNER))
    readers = ", ".join(cd.readers)
    lines = [
        "-- The replicated copies (cdc.tables) in this database (rendered by pgplatform).",
        "DO $$",
        "DECLARE",
        "    missing text;",
        "BEGIN",
        "    SELECT pg_catalog.string_agg(t, ', ') INTO missing",
        f"    FROM pg_catalog.unnest(ARRAY[{copies}]) t",
        "    WHERE pg_catalog.to_regclass(t) IS NULL;",
        "    IF missing IS NOT NULL THEN",
        "        RAISE EXCEPTION 'copy database: no copy % yet', missing",
        "            USING HINT = 'The change data capture Job creates the copies "
        "(subscriber.sql): run it first.';",
        "    END IF;",
        "END",
        "$$;",
        "",
        "-- The database owner's other schemas (the copies', and those of copies no longer",
        "-- listed): no API role, not the schema owner and not PUBLIC keeps anything there.",
        "DO $$",
        "DECLARE",
        "    s name;",
        "    r name;",
        "BEGIN",
        "    FOR s IN SELECT n.nspname FROM pg_catalog.pg_namespace n",
        "             WHERE n.nspowner = (SELECT d.datdba FROM pg_catalog.pg_database d",
        "                                 WHERE d.datname = pg_catalog.current_database())",
        f"               AND n.nspname <> ALL ({others})",
        "               AND n.nspname NOT LIKE 'pg\\_%'",
        "             ORDER BY 1",
        "    LOOP",
        "        EXECUTE pg_catalog.format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', s);",
        "        EXECUTE pg_catalog.format(",
        "            'REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM PUBLIC', s);",
        "        FOR r IN SELECT a.rolname FROM pg_catalog.pg_roles a",
        f"                 WHERE a.rolname = ANY ({revoked}) ORDER BY 1",
        "        LOOP",
        "            EXECUTE pg_catalog.format('REVOKE ALL ON SCHEMA %I FROM %I', s, r);",
        "            EXECUTE pg_catalog.format(",
        "                'REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', s, r);",
        "            EXECUTE pg_catalog.format(",
        "                'REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I', s, r);",
        "            EXECUTE pg_catalog.format(",
        "                'REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM %I', s, r);",
        "        END LOOP;",
        "    END LOOP;",
        "END",
        "$$;",
        "",
        "-- Readers: the API roles reaching a served schema, whose views read the copies as",
        "-- the caller. The schema owner names the copies in migrations (USAGE, no SELECT).",
    ]
    for schema in cd.copy_schemas:
        lines.append(f"GRANT USAGE ON SCHEMA {schema} TO {readers}, {OWNER};")
    for schema, table in cd.copies:
        lines.append(f"GRANT SELECT ON {schema}.{table} TO {readers};")
    return "\n".join(lines) + "\n"


def seal_statements(cd: CopyDatabase) -> tuple[str, ...]:
    """Row level security enabled and forced on every table of the served schemas, a
    materialized view there refused. Run as the database owner holding pgplatform_owner's
    rights: in ``apply.psql``, ``seal.sql``, and after each migration in its transaction
    (``migrations.job_bundle(plan, after_each=seal_statements(cd))``)."""
    served = _names(cd.schemas)
    return (
        "DO $$",
        "DECLARE",
        "    target regclass;",
        "BEGIN",
        "    FOR target IN SELECT c.oid::regclass FROM pg_catalog.pg_class c",
        "                  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
        f"                  WHERE n.nspname = ANY ({served}) AND c.relkind = 'm'",
        "    LOOP",
        "        RAISE EXCEPTION USING",
        "            ERRCODE = 'insufficient_privilege',",
        "            MESSAGE = pg_catalog.format(",
        "                'materialized view %s: a served schema holds no materialized view', "
        "target),",
        "            DETAIL = 'A materialized view has no row level security: every API role "
        "granted SELECT would read all of its rows.',",
        "            HINT = 'Create it in a schema no API serves and expose its rows through a "
        "security_barrier view.';",
        "    END LOOP;",
        "    FOR target IN SELECT c.oid::regclass FROM pg_catalog.pg_class c",
        "                  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
        f"                  WHERE n.nspname = ANY ({served}) AND c.relkind IN ('r', 'p')",
        "                    AND NOT (c.relrowsecurity AND c.relforcerowsecurity)",
        "                  ORDER BY 1",
        "    LOOP",
        "        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, '",
        "            'FORCE ROW LEVEL SECURITY', target);",
        "    END LOOP;",
        "END",
        "$$;",
    )


def _opening(cd: CopyDatabase, title: str) -> list[str]:
    """Settings, the owner, the transaction with its timeouts, the database check, the loan."""
    return [
        f"-- {title} (rendered by pgplatform).",
        "\\set ON_ERROR_STOP on",
        "\\set QUIET on",
        "SET client_min_messages = warning;",
        *owner_transaction(),
        "DO $$",
        "BEGIN",
        f"    IF pg_catalog.current_database() <> {_literal(cd.database)} THEN",
        "        RAISE EXCEPTION 'this bundle is for database %, connected to %',",
        f"            {_literal(cd.database)}, pg_catalog.current_database()",
        "            USING HINT = 'Set PGDATABASE to the copy database (cdc.database).';",
        "    END IF;",
        "END",
        "$$;",
        "-- Objects here have one owner, the database owner, whoever runs the script.",
        'SET LOCAL ROLE :"database_owner";',
        *_LOAN.check(),
        *_LOAN.grant(),
    ]


def _closing() -> list[str]:
    return [*_LOAN.revoke(), "COMMIT;"]


def render_seal_sql(cd: CopyDatabase) -> str:
    """``seal.sql``: the seal on its own (the migrations Job seals inside each migration)."""
    return "\n".join(
        [
            *_opening(cd, f"Seal of the served schemas of database {cd.database}"),
            *seal_statements(cd),
            *_closing(),
            "\\echo served schemas sealed",
            "",
        ]
    )


def render_apply_script(cd: CopyDatabase) -> str:
    """``apply.psql``: the copy database's setup in one transaction (``psql -X -f``)."""
    included = [f"\\ir {name}" for name, _ in copy_sql_files(cd)]
    return "\n".join(
        [
            *_opening(cd, f"Copy database {cd.database}: access, baseline, copies, seal"),
            f"\\ir {ACCESS_FILE}",
            *included,
            f"\\ir {COPY_GRANTS_FILE}",
            "-- The seal (also inside each migration's transaction, and seal.sql on its own).",
            *seal_statements(cd),
            *_closing(),
            f"\\echo copy database {cd.database} applied",
            "",
        ]
    )


def job_bundle(cd: CopyDatabase) -> dict[str, str]:
    """ConfigMap data of the copy database's Job: the script, every file it includes, and
    ``seal.sql``. The Job runs ``psql -X -f <dir>/apply.psql`` as the admin, with PGDATABASE
    the copy database."""
    bundle = {
        APPLY_SCRIPT: render_apply_script(cd),
        ACCESS_FILE: render_access_sql(subset_plan(cd), cd.database),
        COPY_GRANTS_FILE: render_copy_grants_sql(cd),
        SEAL_FILE: render_seal_sql(cd),
    }
    bundle.update(copy_sql_files(cd))
    return dict(sorted(bundle.items()))
