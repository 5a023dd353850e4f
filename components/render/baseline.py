"""The platform SQL baseline (``db/``) and the per-stack SQL that goes with it.

The baseline files are the same for every stack; what differs is which schemas an API exposes,
so that list is rendered into one small, idempotent file that registers them for the RLS guard
(``db/040_rls_guard.sql``) and secures tables that existed before the guard did.

Two privilege levels. Files whose first line is ``-- pgplatform: superuser`` (the event trigger,
the functions that must run as a superuser) need a superuser; everything else runs as the
database owner, the platform's admin role. In-cluster (CloudNativePG) nobody holds a superuser
password, so the superuser files run once at cluster bootstrap (``bootstrap_sql``, for
``postInitApplicationSQLRefs``) and carry a version marker; the baseline Job runs ``apply.psql``
as the admin, which applies the admin files in one transaction and, for the superuser part,
either applies it (when connected as a superuser) or insists that the installed version is the
bundled one. A changed superuser file thus stops the deploy with instructions instead of being
skipped silently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from components.render.checksum import content_checksum
from components.render.masking import MASKING_FILE, MaskRule, render_masking_sql

DB_DIR: Final = Path(__file__).resolve().parents[2] / "db"
# Every baseline file runs after the rendered access file, which creates roles and schemas.
ACCESS_FILE: Final = "010_access.sql"
EXPOSED_SCHEMAS_FILE: Final = "090_exposed_schemas.sql"
GROUP_ROLES_FILE: Final = "091_group_roles.sql"
CACHE_CONTROL_FILE: Final = "092_cache_control.sql"
TENANCY_FILE: Final = "093_tenancy.sql"
# The postgrest.conf key whose value names the domain's schema in every request's transaction
# (PostgREST sets app.settings.* as transaction-local settings, like request.headers).
SCHEMA_SETTING: Final = "app.settings.pgplatform_schema"
# First line of a file that only a superuser can apply.
SUPERUSER_MARK: Final = "-- pgplatform: superuser"
# Rendered last among the superuser files: records which superuser part is installed.
SUPERUSER_VERSION_FILE: Final = "089_superuser_baseline.sql"
# True when the RLS guard is installed: its event trigger, enabled, calling the superuser-owned
# platform.rls_guard(). Catalog reads only (no privilege needed, no name resolved through the
# admin's schema); the baseline Job and the metrics exporters run it.
RLS_GUARD_PRESENT: Final = (
    "SELECT EXISTS (SELECT FROM pg_catalog.pg_event_trigger e"
    " JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) e.evtfoid"
    " JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace"
    " JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) p.proowner"
    " WHERE e.evtname OPERATOR(pg_catalog.=) 'platform_rls_guard'"
    " AND e.evtenabled OPERATOR(pg_catalog.=) ANY (ARRAY['O', 'A']::\"char\"[])"
    " AND n.nspname OPERATOR(pg_catalog.=) 'platform'"
    " AND p.proname OPERATOR(pg_catalog.=) 'rls_guard' AND r.rolsuper)"
)
# Timeouts of the baseline's one transaction (apply.psql): the baseline files rely on them
# instead of setting their own (their squawk-ignore-file comments say so).
BASELINE_LOCK_TIMEOUT: Final = "10s"
BASELINE_STATEMENT_TIMEOUT: Final = "60s"
# The baseline Job's psql script and the bootstrap ConfigMap key.
APPLY_SCRIPT: Final = "apply.psql"
BOOTSTRAP_KEY: Final = "superuser.sql"

_FILE_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Schemas an API must never serve: PostgreSQL's own and the platform's internals.
_NEVER_EXPOSED: Final = frozenset({"public", "audit", "platform", "information_schema"})
_API_ROLE = re.compile(r"^(api_user|api_editor|api_admin|api_service_[a-z0-9_]+)$")


@dataclass(frozen=True, kw_only=True)
class GroupRoles:
    """Roles from the ``groups`` claim: the base role and ``group -> (role, priority)``."""

    base_role: str | None = None
    """The role a token without a role claim runs as; only it is elevated by groups."""
    mapping: tuple[tuple[str, str, int], ...] = ()
    """``(group, API role, priority)``; the highest priority among a token's groups wins."""

    def __post_init__(self) -> None:
        if self.base_role is not None and not (
            self.base_role == "api_anonymous" or _API_ROLE.match(self.base_role)
        ):
            raise ValueError(f"base_role: {self.base_role!r} is not an API role")
        if self.mapping and self.base_role is None:
            raise ValueError("base_role: required when groups map to roles")
        groups = [group for group, _, _ in self.mapping]
        for group, role, priority in self.mapping:
            if not group or not group.isprintable():
                raise ValueError(f"mapping: group {group!r} is empty or not printable")
            if not _API_ROLE.match(role):
                raise ValueError(
                    f"mapping: group {group!r} maps to {role!r}; allowed: api_user, "
                    "api_editor, api_admin, api_service_<name>"
                )
            if not isinstance(priority, int) or isinstance(priority, bool):
                raise ValueError(f"mapping: priority of group {group!r} must be an integer")
        duplicates = sorted({group for group in groups if groups.count(group) > 1})
        if duplicates:
            raise ValueError(f"mapping: groups listed more than once: {duplicates}")


# No groups mapping: tokens keep the role PostgREST switched to.
NO_GROUP_ROLES: Final = GroupRoles()

_CACHE_DIRECTIVE = re.compile(r"^(?:[a-z-]+|(?:max-age|s-maxage|stale-while-revalidate)=\d{1,9})$")
_SHARED_ONLY: Final = ("public", "s-maxage")


def validate_cache_control(value: str, *, shared: bool) -> str:
    """Check a Cache-Control value; ``shared=False`` (authenticated) must be private or no-store.

    A response to a token depends on who sent it: a shared cache (CDN, gateway) serving it to
    someone else would leak rows, so only anonymous responses may be cached publicly.
    """
    directives = [part.strip() for part in value.split(",")]
    if not value or not all(_CACHE_DIRECTIVE.match(d) for d in directives):
        raise ValueError(
            f"{value!r} is not a list of Cache-Control directives "
            "(e.g. 'public, max-age=60' or 'private, max-age=30')"
        )
    if not shared:
        if any(d.split("=")[0] in _SHARED_ONLY for d in directives):
            raise ValueError(f"{value!r}: authenticated responses must not be cached publicly")
        if "private" not in directives and "no-store" not in directives:
            raise ValueError(f"{value!r}: authenticated responses must be 'private' or 'no-store'")
    return value


@dataclass(frozen=True, kw_only=True)
class CacheControl:
    """Cache-Control of GET/HEAD responses: ``(schema, API role, header value)`` rows."""

    rows: tuple[tuple[str, str, str], ...] = ()

    def __post_init__(self) -> None:
        keys = [(schema, role) for schema, role, _ in self.rows]
        for schema, role, value in self.rows:
            if not _SCHEMA_NAME.match(schema):
                raise ValueError(f"rows: {schema!r} is not a schema name")
            if role != "api_anonymous" and not _API_ROLE.match(role):
                raise ValueError(f"rows: {role!r} is not an API role")
            validate_cache_control(value, shared=role == "api_anonymous")
        if len(set(keys)) != len(keys):
            raise ValueError("rows: a (schema, role) pair is listed more than once")


NO_CACHE_CONTROL: Final = CacheControl()

_SERVICE_ROLE = re.compile(r"^api_service_[a-z0-9_]+$")


def _label_problem(value: object) -> str | None:
    """Why ``value`` is not a claim name or tenant id (non-empty printable text, <= 256)."""
    if not isinstance(value, str) or not value or len(value) > 256 or not value.isprintable():
        return f"{value!r} is not a non-empty printable string of at most 256 characters"
    return None


@dataclass(frozen=True, kw_only=True)
class Tenancy:
    """Tenanted domains and tenant-bound machine clients (``db/025_tenancy.sql``)."""

    domains: tuple[tuple[str, str, bool], ...] = ()
    """``(schema, claim, required)``: the claim naming the tenant in requests to the schema."""
    clients: tuple[tuple[str, str | None], ...] = ()
    """``(machine client role, tenant)``; tenant ``None`` declares the client cross-tenant."""

    def __post_init__(self) -> None:
        for schema, claim, required in self.domains:
            if not _SCHEMA_NAME.match(schema):
                raise ValueError(f"domains: {schema!r} is not a schema name")
            problem = _label_problem(claim)
            if problem:
                raise ValueError(f"domains: claim of {schema!r}: {problem}")
            if not isinstance(required, bool):
                raise ValueError(f"domains: required of {schema!r} must be a boolean")
        for role, tenant in self.clients:
            if not _SERVICE_ROLE.match(role):
                raise ValueError(f"clients: {role!r} is not a machine client role (api_service_*)")
            problem = None if tenant is None else _label_problem(tenant)
            if problem:
                raise ValueError(f"clients: tenant of {role!r}: {problem}")
        for what, keys in (
            ("domains", [row[0] for row in self.domains]),
            ("clients", [row[0] for row in self.clients]),
        ):
            if len(set(keys)) != len(keys):
                raise ValueError(f"{what}: listed more than once: {sorted(keys)}")


NO_TENANCY: Final = Tenancy()


def baseline_sql_files() -> list[tuple[str, str]]:
    """``(file name, text)`` of ``db/*.sql`` in the order they must be applied."""
    files = []
    for path in sorted(DB_DIR.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None or path.name <= ACCESS_FILE or path.name >= EXPOSED_SCHEMAS_FILE:
            raise ValueError(
                f"db/{path.name}: baseline files are named NNN_name.sql and sort between "
                f"{ACCESS_FILE} and {EXPOSED_SCHEMAS_FILE}"
            )
        files.append((path.name, path.read_text(encoding="utf-8")))
    return files


def render_exposed_schemas_sql(schemas: Sequence[str]) -> str:
    """Idempotent SQL making ``schemas`` exactly the exposed set and securing their tables.

    Registry rows of schemas no longer listed are removed (their tables keep RLS: switching it
    off is never automatic). Pre-existing tables are secured with ``platform.enforce_rls``, the
    same function the event trigger uses, so there is one definition of "secured".
    """
    names = list(schemas)
    for name in names:
        if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
            raise ValueError(
                f"schemas: {name!r} is not a lowercase SQL identifier ([a-z_][a-z0-9_]*, <= 63)"
            )
        if name in _NEVER_EXPOSED or name.startswith("pg_"):
            raise ValueError(f"schemas: {name!r} is internal and can never be exposed by an API")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"schemas: listed more than once: {duplicates}")
    ordered = sorted(names)
    keep = ", ".join(f"'{name}'" for name in ordered)
    lines = ["-- Schemas served by an API in this stack (rendered from the stack config)."]
    if ordered:
        values = ",\n".join(f"    ('{name}')" for name in ordered)
        lines += [
            "INSERT INTO platform.exposed_schema (name) VALUES",
            values,
            "ON CONFLICT (name) DO NOTHING;",
            "",
            "DELETE FROM platform.exposed_schema",
            f"WHERE name <> ALL (ARRAY[{keep}]::name[]);",
        ]
    else:
        lines += ["DELETE FROM platform.exposed_schema;"]
    lines += [
        "",
        "-- Tables created before the RLS guard existed: ENABLE + FORCE ROW LEVEL SECURITY.",
        "SELECT platform.enforce_rls(c.oid::regclass)",
        "FROM pg_catalog.pg_class c",
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
        "JOIN platform.exposed_schema e ON e.name = n.nspname",
        "WHERE c.relkind IN ('r', 'p');",
    ]
    return "\n".join(lines) + "\n"


def _sql_value(value: str | int | None) -> str:
    """A SQL literal: NULL, booleans and integers as they are, text with quotes doubled."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _replace_rows_sql(
    table: str, columns: Sequence[str], rows: Sequence[tuple[str | int | None, ...]]
) -> list[str]:
    """Statements making ``table`` hold exactly ``rows`` (in the bundle's one transaction).

    Rows are sorted: their first values (the table's key) are distinct, so None never compares.

    ``table`` and ``columns`` are this module's constants; every value goes through _sql_value.
    """
    lines = [f"DELETE FROM {table};"]  # noqa: S608 - constant table name
    if rows:
        values = ",\n".join(
            "    (" + ", ".join(_sql_value(v) for v in row) + ")" for row in sorted(rows)
        )
        lines += [f"INSERT INTO {table} ({', '.join(columns)}) VALUES", values + ";"]
    return lines


def render_group_roles_sql(groups: GroupRoles) -> str:
    """Idempotent SQL making ``platform.group_role`` and the base role exactly the stack's."""
    base = [] if groups.base_role is None else [(groups.base_role,)]
    lines = [
        "-- Roles from the groups claim (rendered from auth.groupRoles and auth.baseRole).",
        *_replace_rows_sql(
            "platform.group_role", ("group_name", "role", "priority"), groups.mapping
        ),
        *_replace_rows_sql("platform.group_base_role", ("role",), base),
    ]
    return "\n".join(lines) + "\n"


def render_cache_control_sql(cache: CacheControl) -> str:
    """Idempotent SQL making ``platform.cache_control`` exactly the stack's."""
    lines = [
        "-- Cache-Control per schema and API role (rendered from domains.<name>.cacheControl).",
        *_replace_rows_sql("platform.cache_control", ("schema_name", "role", "value"), cache.rows),
    ]
    return "\n".join(lines) + "\n"


def render_tenancy_sql(tenancy: Tenancy) -> str:
    """Idempotent SQL making ``platform.tenancy`` and ``platform.tenant_client`` the stack's."""
    clients = [(role, tenant, tenant is None) for role, tenant in tenancy.clients]
    domains = ("schema_name", "claim", "required")
    lines = [
        "-- Tenanted domains and tenant-bound machine clients (rendered from",
        "-- domains.<name>.tenancy, services[].tenant and services[].crossTenant).",
        *_replace_rows_sql("platform.tenancy", domains, tenancy.domains),
        *_replace_rows_sql("platform.tenant_client", ("role", "tenant", "cross_tenant"), clients),
    ]
    return "\n".join(lines) + "\n"


def is_superuser_file(text: str) -> bool:
    """True when the file starts with the superuser mark (see the module doc)."""
    return text.split("\n", 1)[0].strip() == SUPERUSER_MARK


def superuser_version() -> str:
    """Checksum of the superuser files: the version the marker records and the Job expects."""
    parts = [part for name, text in baseline_sql_files() if is_superuser_file(text)
             for part in (name, text)]  # fmt: skip
    if not parts:
        raise ValueError(f"db/: no file starts with {SUPERUSER_MARK!r}")
    return content_checksum(*parts)


def render_superuser_version_sql(version: str) -> str:
    """The marker function recording the installed superuser part (owned by the superuser)."""
    if not re.fullmatch(r"[0-9a-f]{64}", version):
        raise ValueError(f"version: {version!r} is not a sha256 hex digest")
    return "\n".join(
        [
            SUPERUSER_MARK,
            "-- Which superuser part of the baseline is installed (rendered: the checksum of the",
            "-- superuser files). The baseline Job compares it with the version it was built with.",
            "CREATE OR REPLACE FUNCTION platform.superuser_baseline()",
            "RETURNS text",
            "LANGUAGE sql",
            "IMMUTABLE",
            "SET search_path = ''",
            f"AS $$ SELECT '{version}'::text $$;",
            "",
            "REVOKE ALL ON FUNCTION platform.superuser_baseline() FROM PUBLIC;",
            "",
            "DO $$",
            "DECLARE",
            "    owner name := (SELECT pg_catalog.pg_get_userbyid(d.datdba)",
            "                   FROM pg_catalog.pg_database d",
            "                   WHERE d.datname = pg_catalog.current_database());",
            "BEGIN",
            "    IF owner <> current_user THEN",
            "        EXECUTE pg_catalog.format(",
            "            'GRANT EXECUTE ON FUNCTION platform.superuser_baseline() TO %I', owner);",
            "    END IF;",
            "END",
            "$$;",
            "",
        ]
    )


def superuser_sql_files() -> list[tuple[str, str]]:
    """The superuser files in order, ending with the version marker."""
    files = [(name, text) for name, text in baseline_sql_files() if is_superuser_file(text)]
    return [*files, (SUPERUSER_VERSION_FILE, render_superuser_version_sql(superuser_version()))]


def admin_sql_files(
    exposed_schemas: Sequence[str],
    groups: GroupRoles = NO_GROUP_ROLES,
    cache: CacheControl = NO_CACHE_CONTROL,
    tenancy: Tenancy = NO_TENANCY,
    masking: tuple[MaskRule, ...] = (),
) -> list[tuple[str, str]]:
    """What the database owner applies: the other baseline files, exposed schemas, groups."""
    files = [(name, text) for name, text in baseline_sql_files() if not is_superuser_file(text)]
    return [
        *files,
        (EXPOSED_SCHEMAS_FILE, render_exposed_schemas_sql(exposed_schemas)),
        (GROUP_ROLES_FILE, render_group_roles_sql(groups)),
        (CACHE_CONTROL_FILE, render_cache_control_sql(cache)),
        (TENANCY_FILE, render_tenancy_sql(tenancy)),
        (MASKING_FILE, render_masking_sql(masking)),
    ]


def stack_sql_files(
    exposed_schemas: Sequence[str],
    groups: GroupRoles = NO_GROUP_ROLES,
    cache: CacheControl = NO_CACHE_CONTROL,
    tenancy: Tenancy = NO_TENANCY,
    masking: tuple[MaskRule, ...] = (),
) -> list[tuple[str, str]]:
    """Everything after ``010_access.sql`` in file-name order, for one superuser to apply."""
    admin = admin_sql_files(exposed_schemas, groups, cache, tenancy, masking)
    return sorted([*superuser_sql_files(), *admin])


def render_bootstrap_sql() -> str:
    """The superuser part as one script (CloudNativePG runs each referenced key as one batch).

    It runs in the application database right after ``initdb``, before the access plan: the
    files create the ``platform`` schema for the database owner themselves and name no role
    of the plan.
    """
    parts = [f"-- {name}\n{text.rstrip()}\n" for name, text in superuser_sql_files()]
    return "\n".join(parts)


def owner_transaction() -> list[str]:
    """psql lines: the database owner's name into ``:database_owner``, then the transaction
    with the baseline's timeouts (shared by the scripts the admin runs as the owner)."""
    return [
        "SELECT pg_catalog.pg_get_userbyid(d.datdba) AS database_owner",
        "FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database() \\gset",
        "BEGIN;",
        "-- Wait for locks held by the running APIs at most this long, and hold the locks taken",
        "-- no longer than a statement may run; the Job retries.",
        f"SET LOCAL lock_timeout = '{BASELINE_LOCK_TIMEOUT}';",
        f"SET LOCAL statement_timeout = '{BASELINE_STATEMENT_TIMEOUT}';",
    ]


def render_apply_script(
    exposed_schemas: Sequence[str],
    groups: GroupRoles = NO_GROUP_ROLES,
    cache: CacheControl = NO_CACHE_CONTROL,
    tenancy: Tenancy = NO_TENANCY,
    masking: tuple[MaskRule, ...] = (),
) -> str:
    """``apply.psql``: the baseline Job's script (``psql -X -f apply.psql``), one transaction.

    The superuser part is applied when the session is a superuser (an external database whose
    admin is one) and otherwise must already be installed at the bundled version; the admin
    files follow, always as the database owner so their objects have one owner. ``\\ir``
    reads the files next to the script (the mounted ConfigMap).
    """
    version = superuser_version()
    include = [f"\\ir {name}" for name, _ in superuser_sql_files()]
    admin_files = admin_sql_files(exposed_schemas, groups, cache, tenancy, masking)
    admin = [f"\\ir {name}" for name, _ in admin_files]
    lines = [
        "-- Platform SQL baseline, applied by the database owner (rendered by pgplatform).",
        "\\set ON_ERROR_STOP on",
        "\\set QUIET on",
        "SET client_min_messages = warning;",
        "SELECT r.rolsuper AS is_superuser FROM pg_catalog.pg_roles r",
        "WHERE r.rolname = current_user \\gset",
        "SELECT pg_catalog.to_regprocedure('platform.superuser_baseline()') IS NOT NULL",
        "    AS has_version \\gset",
        "\\if :has_version",
        "SELECT platform.superuser_baseline() AS installed_version \\gset",
        "\\else",
        "\\set installed_version none",
        "\\endif",
        "-- The RLS guard must be in place: the admin owns schema platform and can drop the",
        "-- guard's function with CASCADE, which removes the event trigger without a word.",
        f"SELECT ({RLS_GUARD_PRESENT}) AS rls_guard_present \\gset",
        f"SELECT :'installed_version' = '{version}'",
        "    AND :'rls_guard_present'::boolean AS superuser_current,",
        "    CASE WHEN :'rls_guard_present'::boolean THEN :'installed_version'",
        "         ELSE :'installed_version' || ' without its RLS guard (event trigger "
        "platform_rls_guard missing, disabled or not calling platform.rls_guard())'",
        "    END AS installed_label \\gset",
        *owner_transaction(),
        "\\if :superuser_current",
        f"\\echo superuser part {version[:12]}: installed",
        "\\elif :is_superuser",
        f"\\echo superuser part {version[:12]}: applying",
        *include,
        "\\else",
        "SELECT pg_catalog.set_config('pgplatform.installed', :'installed_label', true)",
        "    AS installed \\gset",
        "DO $$",
        "BEGIN",
        "    RAISE EXCEPTION USING",
        "        ERRCODE = 'insufficient_privilege',",
        "        MESSAGE = pg_catalog.format(",
        f"            'superuser part of the baseline: installed %s, this bundle needs {version}',",
        "            pg_catalog.current_setting('pgplatform.installed')),",
        f"        HINT = 'Apply {BOOTSTRAP_KEY} of the bootstrap ConfigMap as a superuser, '",
        "            'then re-run this Job (docs/database.md, \"Superuser-only statements\").';",
        "END",
        "$$;",
        "\\endif",
        "-- The rest belongs to the database owner, whoever runs the Job (a superuser included):",
        "-- objects owned by anyone else could not be replaced by the next run as the owner.",
        'SET LOCAL ROLE :"database_owner";',
        *admin,
        "COMMIT;",
        "\\echo platform baseline applied",
        "",
    ]
    return "\n".join(lines)


def job_bundle(
    exposed_schemas: Sequence[str],
    groups: GroupRoles = NO_GROUP_ROLES,
    cache: CacheControl = NO_CACHE_CONTROL,
    tenancy: Tenancy = NO_TENANCY,
    masking: tuple[MaskRule, ...] = (),
) -> dict[str, str]:
    """ConfigMap data of the baseline Job: the script and every file it may include."""
    bundle = {APPLY_SCRIPT: render_apply_script(exposed_schemas, groups, cache, tenancy, masking)}
    bundle.update(superuser_sql_files())
    bundle.update(admin_sql_files(exposed_schemas, groups, cache, tenancy, masking))
    return dict(sorted(bundle.items()))


def bundle_checksum(bundle: dict[str, str]) -> str:
    """Content hash of a bundle (names and texts); the baseline Job's name carries it."""
    return content_checksum(*(part for item in sorted(bundle.items()) for part in item))
