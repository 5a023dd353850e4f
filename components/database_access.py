"""DatabaseAccess: the access plan rendered as pulumi-postgresql resources."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_postgresql as pg
import pulumi_random as random

from components.render.access import AUDIT_SCHEMA, PLATFORM_SCHEMA, AccessPlan


@dataclass(frozen=True, kw_only=True)
class DatabaseAccessArgs:
    """Where to connect (as the admin role) and what to create there."""

    plan: AccessPlan
    host: pulumi.Input[str]
    port: pulumi.Input[int]
    database: str
    admin_user: str
    admin_password: pulumi.Input[str]
    sslmode: str
    ca_file: str | None = None
    """PEM file the provider verifies the server certificate with (``sslrootcert``)."""


class DatabaseAccess(pulumi.ComponentResource):
    """Roles, schemas, memberships and grants of the plan, plus the login roles' passwords."""

    passwords: dict[str, pulumi.Output[str]]
    """Secret password of each login role (the authenticators), by role name."""
    roles: pulumi.Output[list[str]]
    """Names of every role created."""
    shared: list[pulumi.Resource]
    """What every client of the database relies on: roles, memberships, database grants,
    grants on the platform's own schemas and the default privileges that span schemas."""
    by_schema: dict[str, list[pulumi.Resource]]
    """Per exposed schema: the schema itself and its grants and default privileges."""

    def ready_for(self, schema: str) -> list[pulumi.Resource]:
        """What an API serving ``schema`` waits for: the shared part and that schema's own.

        Depending on the whole component would make each API wait on (and the engine track)
        every other schema's grants too: edges growing with the square of the domains.
        """
        return [*self.shared, *self.by_schema.get(schema, [])]

    def __init__(
        self, name: str, args: DatabaseAccessArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:DatabaseAccess", name, None, opts)
        plan = args.plan
        provider = pg.Provider(
            f"{name}-provider",
            host=args.host,
            port=args.port,
            database=args.database,
            username=args.admin_user,
            password=pulumi.Output.secret(args.admin_password),
            sslmode=args.sslmode,
            sslrootcert=args.ca_file,
            superuser=False,
            connect_timeout=15,
            opts=pulumi.ResourceOptions(parent=self),
        )
        opts_pg = pulumi.ResourceOptions(parent=self, provider=provider)

        self.passwords = {}
        self.shared = []
        self.by_schema = {}
        roles: dict[str, pg.Role] = {}
        for spec in plan.roles:
            password: pulumi.Output[str] | None = None
            if spec.with_password:
                generated = random.RandomPassword(
                    f"{name}-{spec.name}-password",
                    length=40,
                    special=False,
                    opts=pulumi.ResourceOptions(parent=self),
                )
                password = pulumi.Output.secret(generated.result)
                self.passwords[spec.name] = password
            roles[spec.name] = pg.Role(
                f"{name}-role-{spec.name}",
                name=spec.name,
                login=spec.login,
                inherit=spec.inherit,
                superuser=False,
                create_database=False,
                create_role=False,
                replication=False,
                bypass_row_level_security=False,
                statement_timeout=spec.statement_timeout_ms,
                password=password,
                opts=opts_pg,
            )

        self.shared.extend(roles.values())
        exposed = {schema.name for schema in plan.schemas} - {PLATFORM_SCHEMA, AUDIT_SCHEMA}

        def mine(resource: pulumi.Resource, schema: str | None) -> None:
            # Grants on the platform's own schemas (platform, audit) are everyone's.
            if schema in exposed:
                self.by_schema.setdefault(schema, []).append(resource)
            else:
                self.shared.append(resource)

        schemas: dict[str, pg.Schema] = {}

        # PostgreSQL refuses two transactions that rewrite the same catalog row at once ("tuple
        # concurrently updated"), and the provider applies each grant as REVOKE + GRANT. Grants
        # on one ACL (a database, a schema, the objects of one type in a schema, one
        # pg_default_acl row) therefore run one after the other, each after the previous.
        last_on_acl: dict[tuple[str, ...], pulumi.Resource] = {}

        def after(
            *names: str, schema: str | None = None, acl: tuple[str, ...] = ()
        ) -> pulumi.ResourceOptions:
            """After the named roles, ``schema`` when the plan creates it, and ``acl``'s last."""
            deps: list[pulumi.Resource] = [roles[n] for n in names if n in roles]
            if schema in schemas:
                deps.append(schemas[schema])
            if acl in last_on_acl:
                deps.append(last_on_acl[acl])
            return pulumi.ResourceOptions(parent=self, provider=provider, depends_on=deps)

        def on_acl(acl: tuple[str, ...], resource: pulumi.Resource, schema: str | None) -> None:
            last_on_acl[acl] = resource
            mine(resource, schema)

        for schema in plan.schemas:
            schemas[schema.name] = pg.Schema(
                f"{name}-schema-{schema.name}",
                name=schema.name,
                database=args.database,
                owner=schema.owner or args.admin_user,
                drop_cascade=False,
                opts=after(schema.owner or ""),
            )
            mine(schemas[schema.name], schema.name)

        for m in plan.memberships:
            membership = pg.GrantRole(
                f"{name}-member-{m.member}-{m.role}",
                role=m.member,
                grant_role=m.role,
                with_admin_option=False,
                opts=after(m.member, m.role),
            )
            mine(membership, None)

        for d in plan.database_grants:
            database_grant = pg.Grant(
                f"{name}-db-{d.role}",
                database=args.database,
                object_type="database",
                role=d.role,
                privileges=list(d.privileges),
                opts=after(d.role, acl=("database",)),
            )
            on_acl(("database",), database_grant, None)

        for g in plan.schema_grants:
            usage = pg.Grant(
                f"{name}-usage-{g.schema}-{g.role}",
                database=args.database,
                object_type="schema",
                schema=g.schema,
                role=g.role,
                privileges=list(g.privileges),
                opts=after(g.role, schema=g.schema, acl=("schema", g.schema)),
            )
            on_acl(("schema", g.schema), usage, g.schema)

        for dg in plan.default_grants:
            scope = dg.schema or "all"
            default_acl = ("default", dg.owner, scope, dg.object_type)
            default = pg.DefaultPrivileges(
                f"{name}-default-{scope}-{dg.object_type}-{dg.role}",
                database=args.database,
                owner=dg.owner,
                schema=dg.schema,
                role=dg.role,
                object_type=dg.object_type,
                privileges=list(dg.privileges),
                opts=after(dg.owner, dg.role, schema=dg.schema, acl=default_acl),
            )
            on_acl(default_acl, default, dg.schema)

        for og in plan.object_grants:
            objects_acl = ("objects", og.schema, og.object_type)
            # No ``objects``: every object of the type in the schema, as it exists when applied.
            existing = pg.Grant(
                f"{name}-existing-{og.schema}-{og.object_type}-{og.role}",
                database=args.database,
                schema=og.schema,
                object_type=og.object_type,
                role=og.role,
                privileges=list(og.privileges),
                opts=after(og.role, schema=og.schema, acl=objects_acl),
            )
            on_acl(objects_acl, existing, og.schema)

        self.roles = pulumi.Output.from_input([spec.name for spec in plan.roles])
        self.register_outputs({"passwords": self.passwords, "roles": self.roles})
