"""The database access plan: roles, schemas, memberships and grants as plain data.

One plan, two renderings: ``DatabaseAccess`` turns it into pulumi-postgresql resources, and
``render_access_sql`` into the SQL the offline render and the integration tests apply. Keeping
the decisions here means the security model is reviewed once and both renderings agree by
construction (a unit test checks that they do).

Privileges never include TRUNCATE, REFERENCES or TRIGGER: TRUNCATE ignores row-level security,
and the others let an API role reach rows or code it cannot see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

AUTHENTICATOR: Final = "postgrest"
GRAPHQL_AUTHENTICATOR: Final = "postgraphile"
POOLER_LOOKUP: Final = "pgbouncer_auth"
MONITOR: Final = "pgplatform_monitor"
"""Login role of the postgres exporter in external mode (CloudNativePG runs its own)."""
MONITOR_TIMEOUT_MS: Final = 10_000
PG_MONITOR: Final = "pg_monitor"
OWNER: Final = "pgplatform_owner"
AUDIT_WRITER: Final = "pgplatform_audit_writer"
"""Owner of the audit trigger function: INSERT on audit.log and nothing else (db/030_audit.sql)."""
MASKING_OWNER: Final = "pgplatform_masking"
"""Owner of the masking views; reads masked tables through its own policy (db/080_masking.sql)."""
ANONYMOUS: Final = "api_anonymous"
USER: Final = "api_user"
EDITOR: Final = "api_editor"
ADMIN: Final = "api_admin"
PLATFORM_SCHEMA: Final = "platform"
AUDIT_SCHEMA: Final = "audit"
SERVICE_PREFIX: Final = "api_service_"

ObjectType = Literal["table", "sequence", "function"]
ServiceAccess = Literal["read", "write", "all"]

_TABLE_PRIVILEGES: Final[dict[str, tuple[str, ...]]] = {
    "read": ("SELECT",),
    "write": ("SELECT", "INSERT", "UPDATE"),
    "all": ("SELECT", "INSERT", "UPDATE", "DELETE"),
}
# None on sequences: SELECT (last_value, currval) and USAGE (nextval) both reveal how many rows
# a table holds. Identity columns need no sequence privilege; serial columns cannot be filled by
# API roles (docs/database.md).
_SEQUENCE_PRIVILEGES: Final[dict[str, tuple[str, ...]]] = {"read": (), "write": (), "all": ()}


@dataclass(frozen=True, kw_only=True)
class ServiceClient:
    """A machine client's access: its schemas and read/write level."""

    name: str
    schemas: tuple[str, ...]
    access: ServiceAccess
    statement_timeout_ms: int


@dataclass(frozen=True, kw_only=True)
class AccessInput:
    """What the plan depends on; mapped from the stack settings."""

    schemas: tuple[str, ...]
    anonymous: bool
    timeouts_ms: dict[str, int]
    services: tuple[ServiceClient, ...] = ()
    authenticators: tuple[str, ...] = (AUTHENTICATOR,)
    # Login roles that switch to nothing (PgBouncer's auth_query lookup role).
    service_logins: tuple[str, ...] = (POOLER_LOOKUP,)
    # Login roles of metrics exporters: INHERIT members of pg_monitor, nothing else.
    monitoring_logins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        missing = {"anonymous", "user", "editor", "admin"} - self.timeouts_ms.keys()
        if missing:
            raise ValueError(f"timeouts_ms: missing {sorted(missing)}")
        if not self.schemas:
            raise ValueError("schemas: at least one exposed schema is required")


@dataclass(frozen=True, kw_only=True)
class RoleSpec:
    name: str
    login: bool
    inherit: bool
    statement_timeout_ms: int | None = None
    with_password: bool = False


@dataclass(frozen=True, kw_only=True)
class SchemaSpec:
    """``owner`` None: the admin role applying the plan owns it (``CURRENT_USER`` in SQL).

    The platform's own schemas are not owned by ``pgplatform_owner``: migrations run as that
    role, and a schema owner may drop anything inside, the audit log and RLS guard included.
    """

    name: str
    owner: str | None


@dataclass(frozen=True, kw_only=True)
class Membership:
    """``member`` may ``SET ROLE`` to ``role``."""

    role: str
    member: str


@dataclass(frozen=True, kw_only=True)
class SchemaGrant:
    schema: str
    role: str
    privileges: tuple[str, ...] = ("USAGE",)


@dataclass(frozen=True, kw_only=True)
class DatabaseGrant:
    """Database-level privileges; an empty tuple revokes everything (used for PUBLIC)."""

    role: str
    privileges: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class DefaultGrant:
    """Privileges ``role`` gets on objects ``owner`` creates later (``schema`` None = global)."""

    owner: str
    schema: str | None
    role: str
    object_type: ObjectType
    privileges: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ObjectGrant:
    """Privileges ``role`` holds on every object of ``object_type`` that exists in ``schema``.

    Default privileges cover only objects created after them; a role added to a database that
    already has tables (a machine client configured later) needs these too. Applying it sets
    exactly ``privileges``: what the role held beyond them on those objects is revoked.
    """

    schema: str
    role: str
    object_type: ObjectType
    privileges: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class AccessPlan:
    roles: tuple[RoleSpec, ...]
    schemas: tuple[SchemaSpec, ...]
    memberships: tuple[Membership, ...]
    database_grants: tuple[DatabaseGrant, ...]
    schema_grants: tuple[SchemaGrant, ...]
    default_grants: tuple[DefaultGrant, ...]
    object_grants: tuple[ObjectGrant, ...]
    api_roles: tuple[str, ...]


def service_role(name: str) -> str:
    return f"{SERVICE_PREFIX}{name}"


def build_access_plan(inp: AccessInput) -> AccessPlan:
    """Derive every role, schema and grant from the input; pure and deterministic."""
    human: list[tuple[str, ServiceAccess, int]] = [
        (USER, "read", inp.timeouts_ms["user"]),
        (EDITOR, "write", inp.timeouts_ms["editor"]),
        (ADMIN, "all", inp.timeouts_ms["admin"]),
    ]
    if inp.anonymous:
        human.insert(0, (ANONYMOUS, "read", inp.timeouts_ms["anonymous"]))
    # (role, access level, schemas it may use)
    api: list[tuple[str, ServiceAccess, tuple[str, ...], int]] = [
        (role, level, inp.schemas, timeout) for role, level, timeout in human
    ]
    for service in inp.services:
        api.append(
            (
                service_role(service.name),
                service.access,
                service.schemas or inp.schemas,
                service.statement_timeout_ms,
            )
        )

    roles = [
        RoleSpec(name=OWNER, login=False, inherit=False),
        RoleSpec(name=AUDIT_WRITER, login=False, inherit=False),
        RoleSpec(name=MASKING_OWNER, login=False, inherit=False),
    ]
    roles += [
        RoleSpec(name=name, login=True, inherit=False, with_password=True)
        for name in (*inp.authenticators, *inp.service_logins)
    ]
    roles += [
        RoleSpec(name=role, login=False, inherit=False, statement_timeout_ms=timeout)
        for role, _, _, timeout in api
    ]
    roles += [
        RoleSpec(
            name=name,
            login=True,
            inherit=True,
            with_password=True,
            statement_timeout_ms=MONITOR_TIMEOUT_MS,
        )
        for name in inp.monitoring_logins
    ]
    schemas = [SchemaSpec(name=s, owner=OWNER) for s in inp.schemas]
    schemas += [SchemaSpec(name=s, owner=None) for s in (PLATFORM_SCHEMA, AUDIT_SCHEMA)]
    memberships = [
        Membership(role=role, member=auth) for auth in inp.authenticators for role, *_ in api
    ]
    memberships += [Membership(role=PG_MONITOR, member=name) for name in inp.monitoring_logins]
    database_grants = [DatabaseGrant(role="public", privileges=())]
    database_grants += [
        DatabaseGrant(role=a, privileges=("CONNECT",))
        for a in (*inp.authenticators, *inp.service_logins, *inp.monitoring_logins)
    ]
    # Nobody but the owner creates objects in the public schema (PostgreSQL < 15 allowed all).
    schema_grants: list[SchemaGrant] = [SchemaGrant(schema="public", role="public", privileges=())]
    # The metrics exporters read public.pg_stat_statements as pg_monitor (CloudNativePG runs its
    # queries with SET ROLE pg_monitor), which the revoke above would lock out.
    schema_grants.append(SchemaGrant(schema="public", role=PG_MONITOR))
    default_grants: list[DefaultGrant] = []
    object_grants: list[ObjectGrant] = []
    for role, level, role_schemas, _ in api:
        schema_grants.append(SchemaGrant(schema=PLATFORM_SCHEMA, role=role))
        schema_grants += [SchemaGrant(schema=schema, role=role) for schema in role_schemas]
        # A role reaching every exposed schema gets owner-wide default privileges: the owner
        # creates objects only in exposed schemas, and this keeps the grant count independent of
        # the number of domains. A role limited to some schemas gets them per schema.
        scopes: tuple[str | None, ...] = (
            (None,) if set(role_schemas) == set(inp.schemas) else tuple(role_schemas)
        )
        matrix: tuple[tuple[ObjectType, tuple[str, ...]], ...] = (
            ("table", _TABLE_PRIVILEGES[level]),
            ("sequence", _SEQUENCE_PRIVILEGES[level]),
            ("function", ("EXECUTE",)),
        )
        for scope in scopes:
            default_grants += [
                DefaultGrant(
                    owner=OWNER,
                    schema=scope,
                    role=role,
                    object_type=object_type,
                    privileges=privileges,
                )
                for object_type, privileges in matrix
            ]
        # The same privileges on what already exists in each of its schemas.
        object_grants += [
            ObjectGrant(schema=schema, role=role, object_type=object_type, privileges=privileges)
            for schema in role_schemas
            for object_type, privileges in matrix
        ]
    # Functions are executable by PUBLIC by default, which would include the authenticator.
    default_grants.append(
        DefaultGrant(owner=OWNER, schema=None, role="public", object_type="function", privileges=())
    )
    return AccessPlan(
        roles=tuple(roles),
        schemas=tuple(schemas),
        memberships=tuple(memberships),
        database_grants=tuple(database_grants),
        schema_grants=tuple(schema_grants),
        default_grants=tuple(default_grants),
        object_grants=tuple(object_grants),
        api_roles=tuple(role for role, *_ in api),
    )


def quote_ident(name: str) -> str:
    """Quote an identifier the way PostgreSQL's quote_ident does."""
    return '"' + name.replace('"', '""') + '"'


def _grantee(role: str) -> str:
    return "PUBLIC" if role == "public" else quote_ident(role)


_OBJECT_PLURAL: Final = {"table": "TABLES", "sequence": "SEQUENCES", "function": "FUNCTIONS"}
_ALL_PRIVILEGES: Final = {
    "table": "SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER",
    "sequence": "SELECT, USAGE, UPDATE",
    "function": "EXECUTE",
}


def _role_sql(role: RoleSpec) -> list[str]:
    q = quote_ident(role.name)
    attributes = (
        f"{'LOGIN' if role.login else 'NOLOGIN'} {'INHERIT' if role.inherit else 'NOINHERIT'} "
        "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
    )
    lines = [
        "DO $$ BEGIN\n"
        f"  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role.name}') THEN\n"
        f"    CREATE ROLE {q};\n"
        "  END IF;\n"
        "END $$;",
        f"ALTER ROLE {q} WITH {attributes};",
    ]
    if role.statement_timeout_ms is not None:
        lines.append(f"ALTER ROLE {q} SET statement_timeout = {role.statement_timeout_ms};")
    return lines


def render_access_sql(plan: AccessPlan, database: str) -> str:
    """Idempotent SQL for the plan; applied as superuser (or the admin role) in ``database``."""
    out = [
        "-- Roles, schemas and grants of the platform's access plan. Idempotent.",
        "SET client_min_messages = warning;",
        "",
        "-- roles",
    ]
    for role in plan.roles:
        out += _role_sql(role)
    out += ["", "-- database"]
    for dbg in plan.database_grants:
        out.append(f"REVOKE ALL ON DATABASE {quote_ident(database)} FROM {_grantee(dbg.role)};")
        if dbg.privileges:
            out.append(
                f"GRANT {', '.join(dbg.privileges)} ON DATABASE {quote_ident(database)} "
                f"TO {_grantee(dbg.role)};"
            )
    out += ["", "-- schemas"]
    for schema in plan.schemas:
        q = quote_ident(schema.name)
        owner = quote_ident(schema.owner) if schema.owner else "CURRENT_USER"
        out += [
            f"CREATE SCHEMA IF NOT EXISTS {q} AUTHORIZATION {owner};",
            f"ALTER SCHEMA {q} OWNER TO {owner};",
            f"REVOKE ALL ON SCHEMA {q} FROM PUBLIC;",
        ]
    out += ["", "-- memberships: the roles an authenticator may SET ROLE to"]
    for m in plan.memberships:
        out.append(f"GRANT {quote_ident(m.role)} TO {quote_ident(m.member)};")
    out += ["", "-- schema usage"]
    for g in plan.schema_grants:
        target = f"ON SCHEMA {quote_ident(g.schema)}"
        if g.privileges:
            out.append(f"GRANT {', '.join(g.privileges)} {target} TO {_grantee(g.role)};")
        else:
            out.append(f"REVOKE ALL {target} FROM {_grantee(g.role)};")
    out += ["", "-- default privileges on objects the schema owner creates later"]
    for d in plan.default_grants:
        scope = f" IN SCHEMA {quote_ident(d.schema)}" if d.schema else ""
        prefix = f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote_ident(d.owner)}{scope}"
        plural = _OBJECT_PLURAL[d.object_type]
        # Revoke first so a narrowed privilege set really narrows on re-apply.
        out.append(
            f"{prefix} REVOKE {_ALL_PRIVILEGES[d.object_type]} ON {plural} FROM {_grantee(d.role)};"
        )
        if d.privileges:
            out.append(
                f"{prefix} GRANT {', '.join(d.privileges)} ON {plural} TO {_grantee(d.role)};"
            )
    out += ["", "-- privileges on objects that already exist (a role added after them)"]
    for o in plan.object_grants:
        target = f"ON ALL {_OBJECT_PLURAL[o.object_type]} IN SCHEMA {quote_ident(o.schema)}"
        # Revoke first, as pulumi-postgresql's Grant does: the role ends with exactly these.
        out.append(f"REVOKE {_ALL_PRIVILEGES[o.object_type]} {target} FROM {_grantee(o.role)};")
        if o.privileges:
            out.append(f"GRANT {', '.join(o.privileges)} {target} TO {_grantee(o.role)};")
    out.append("")
    return "\n".join(out)
