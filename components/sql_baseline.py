"""SqlBaseline: the platform SQL baseline applied in the cluster by a Kubernetes Job.

Who applies what (docs/database.md, "Superuser-only statements"):

* Roles, schemas and grants: ``DatabaseAccess`` (pulumi-postgresql, as the admin role).
* The superuser part of the baseline (the RLS guard's event trigger, the PgBouncer lookup that
  reads ``pg_authid``): CloudNativePG runs it once as ``postgres`` when the cluster is created
  (``bootstrap.initdb.postInitApplicationSQLRefs``, a ConfigMap made by ``ManagedPostgres``).
  Superuser access stays disabled and no superuser password exists anywhere: the alternatives,
  enabling it for a Job or giving a Job ``pods/exec`` on the database pods, put a standing
  superuser credential in the namespace for what changes a few times a year.
* Everything else: this Job, as the admin role (the database owner), in one transaction. It
  checks the version marker of the superuser part; when a release changes those files the Job
  fails with the file to apply by hand (``kubectl cnpg psql``) instead of skipping them. With
  an external database whose admin is a superuser, the Job applies that part itself.
* The domain migrations (``migrations/<domain>/``): a second Job of the same shape, named by the
  hash of its own bundle, after the baseline Job (it needs the ledger table the baseline
  creates); ``components/render/migrations.py`` says what its script checks and how it applies.
* The CDC database, where APIs serve the copies (``copies``): the same two Jobs in that
  database, with the owner-level setup of ``components/render/copy_database.py`` in place of the
  baseline (no superuser part can run there) and its seal inside each migration's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

import pulumi

from components.k8s import KubeObject, meta
from components.managed_postgres import DatabaseEndpoint
from components.render import baseline_job as render
from components.render import copy_database
from components.render.baseline import (
    APPLY_SCRIPT,
    NO_CACHE_CONTROL,
    NO_GROUP_ROLES,
    NO_TENANCY,
    CacheControl,
    GroupRoles,
    Tenancy,
    bundle_checksum,
    job_bundle,
)
from components.render.masking import MaskRule
from components.render.migrations import SCRIPT as MIGRATE_SCRIPT
from components.render.migrations import MigrationPlan
from components.render.migrations import job_bundle as migrations_bundle
from components.render.pgbouncer_pool import DatabaseEgress

MIGRATIONS_DEADLINE_SECONDS: Final = 3600
"""A migration may rewrite a large table; the baseline Job's 15 minutes are too short."""


@dataclass(frozen=True, kw_only=True)
class SqlBaselineArgs:
    """The stack's exposed schemas and how the Job reaches the database as the admin role."""

    namespace: str
    database: str
    sslmode: str
    """libpq sslmode towards the database (``postgres.sslmode``)."""
    exposed_schemas: tuple[str, ...]
    group_roles: GroupRoles = NO_GROUP_ROLES
    """Roles from the groups claim (``auth.baseRole``, ``auth.groupRoles``)."""
    cache_control: CacheControl = NO_CACHE_CONTROL
    """Cache-Control per domain schema and API role (``domains.<name>.cacheControl``)."""
    tenancy: Tenancy = NO_TENANCY
    """Tenanted domains and tenant-bound machine clients (``domains.<name>.tenancy``)."""
    masking: tuple[MaskRule, ...] = ()
    """Masked columns per API role (``masking``)."""
    endpoint: DatabaseEndpoint
    """Host, port, CA Secret, cluster and admin Secret (ManagedPostgres.endpoint)."""
    migrations: MigrationPlan | None = None
    """The stack's domain migrations; None: no migrations Job."""
    copies: copy_database.CopyDatabase | None = None
    """Set: these Jobs prepare the CDC database for the APIs serving its copies."""

    def __post_init__(self) -> None:
        if self.copies is not None and self.copies.database != self.database:
            raise ValueError("database: must be copies.database")
        if not self.exposed_schemas:
            raise ValueError("exposed_schemas: at least one schema is exposed by an API")
        if self.sslmode not in render.SSLMODES:
            raise ValueError(f"sslmode: one of {render.SSLMODES}, got {self.sslmode!r}")
        job_bundle(
            self.exposed_schemas, self.group_roles, self.cache_control, self.tenancy, self.masking
        )  # validates the schema names


class SqlBaseline(pulumi.ComponentResource):
    """ConfigMap with the SQL bundle, the Job applying it, and the Job's NetworkPolicy."""

    bundle_checksum: pulumi.Output[str]
    """Content hash of the bundle (names and texts); part of the Job's name."""
    job_name: pulumi.Output[str]
    """Generated name of the Job applying this bundle."""
    config_map_name: pulumi.Output[str]
    """Generated name of the ConfigMap holding the bundle."""
    migrations_job_name: pulumi.Output[str] | None
    """Generated name of the Job applying the domain migrations (None without migrations)."""

    def __init__(
        self, name: str, args: SqlBaselineArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:SqlBaseline", name, None, opts)
        if args.copies is None:
            bundle = job_bundle(
                args.exposed_schemas,
                args.group_roles,
                args.cache_control,
                args.tenancy,
                args.masking,
            )
        else:
            bundle = copy_database.job_bundle(args.copies)
        checksum = bundle_checksum(bundle)
        spec = _resolve(args)
        # The CDC database's Jobs carry their own labels (their NetworkPolicies select them).
        suffix = "" if args.copies is None else "-copies"
        config, job = self._sql_job(
            name, args, spec, bundle, checksum, instance=render.INSTANCE + suffix
        )
        self.migrations_job_name = None
        if args.migrations is not None and args.migrations.migrations:
            plan = args.migrations
            # No RLS guard in the CDC database: each migration's transaction ends with the
            # seal, so no table it creates is ever committed without row level security.
            seal = () if args.copies is None else copy_database.seal_statements(args.copies)
            data = migrations_bundle(plan, after_each=seal)
            _, migrate = self._sql_job(
                f"{name}-migrations",
                args,
                replace(spec, active_deadline_seconds=MIGRATIONS_DEADLINE_SECONDS),
                data,
                bundle_checksum(data),
                instance=render.MIGRATIONS_INSTANCE + suffix,
                command=render.psql_command(MIGRATE_SCRIPT),
                application_name=render.MIGRATIONS_APPLICATION,
                after=[job],
            )
            self.migrations_job_name = migrate.object_name

        self.bundle_checksum = pulumi.Output.from_input(checksum)
        self.job_name = job.object_name
        self.config_map_name = config.object_name
        self.register_outputs(
            {
                "bundle_checksum": self.bundle_checksum,
                "job_name": self.job_name,
                "config_map_name": self.config_map_name,
                "migrations_job_name": self.migrations_job_name,
            }
        )

    def _sql_job(
        self,
        name: str,
        args: SqlBaselineArgs,
        spec: render.BaselineJobSpec,
        bundle: dict[str, str],
        checksum: str,
        *,
        instance: str = render.INSTANCE,
        command: list[str] | None = None,
        application_name: str = render.BASELINE_APPLICATION,
        after: tuple[pulumi.Resource, ...] | list[pulumi.Resource] = (),
    ) -> tuple[KubeObject, KubeObject]:
        """ConfigMap, Job named by the bundle hash, and NetworkPolicy of one SQL Job."""
        labels = render.labels(instance=instance)
        config = KubeObject(
            f"{name}-sql",
            api_version="v1",
            kind="ConfigMap",
            metadata=meta(args.namespace, labels),
            body={"data": bundle},
            opts=pulumi.ResourceOptions(parent=self),
        )
        job = KubeObject(
            f"{name}-job-{render.job_suffix(checksum)}",
            api_version="batch/v1",
            kind="Job",
            metadata=meta(args.namespace, labels),
            body=render.job_body(
                spec,
                config_map=config.object_name,
                bundle_checksum=checksum,
                command=command or render.psql_command(APPLY_SCRIPT),
                instance=instance,
                application_name=application_name,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[config, *after]),
        )
        KubeObject(
            f"{name}-netpol",
            api_version="networking.k8s.io/v1",
            kind="NetworkPolicy",
            metadata=meta(args.namespace, labels),
            body=render.network_policy_body(spec, instance=instance),
            opts=pulumi.ResourceOptions(parent=self),
        )
        return config, job


def _resolve(args: SqlBaselineArgs) -> render.BaselineJobSpec:
    return admin_connection(args.namespace, args.database, args.sslmode, args.endpoint)


def admin_connection(
    namespace: str, database: str, sslmode: str, endpoint: DatabaseEndpoint
) -> render.BaselineJobSpec:
    """How a pod of ours reaches the read-write endpoint as the admin role, with the server's
    own image (the SQL Jobs, the CDC Job, AuditExport, the advisor)."""
    return render.BaselineJobSpec(
        namespace=namespace,
        host=endpoint.rw_host,
        port=endpoint.port,
        database=database,
        sslmode=sslmode,
        admin_secret=endpoint.admin_secret,
        ca_secret=endpoint.ca_secret if sslmode.startswith("verify") else None,
        egress=DatabaseEgress(port=endpoint.port, cluster=endpoint.cluster),
        image=endpoint.image,
    )
