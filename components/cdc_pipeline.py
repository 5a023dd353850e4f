"""CdcPipeline: chosen columns and rows of the domain tables, replicated to the analytics database.

Topology: the analytics database lives in the platform's own Cluster (docs/database.md, "Change
data capture"). Mode cnpg:

* ``Database`` (CloudNativePG) creates the analytics database, owned by the admin role;
* a Job (the baseline Job's pod, its own script) applies the publication as the admin, creates
  the logical slot as the publication role and the target tables in the analytics database;
* ``Subscription`` (CloudNativePG) subscribes through the Cluster's ``externalClusters`` entry
  with ``create_slot = false`` (a subscription cannot create a slot on its own cluster).

Mode external: the same SQL, rendered into a ConfigMap for the operator to apply in order with
the managed service's privileged role (PostgreSQL 15 creates subscriptions and REPLICATION roles
as superuser only).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components import inputs
from components.k8s import KubeObject, meta
from components.managed_postgres import DatabaseEndpoint
from components.render import baseline_job, cdc, copy_database, pods
from components.render.access import AUTHENTICATOR
from components.render.baseline import CacheControl, Tenancy
from components.render.checksum import content_checksum
from components.render.masking import PRIVATE_SUFFIX, masked_columns, masking_rules
from components.render.postgres_cluster import CNPG_API_VERSION
from components.settings import StackSettings
from components.sql_baseline import SqlBaselineArgs, admin_connection

APP_NAME = "cdc"
INSTANCE = "analytics"
SCRIPT_DIR = baseline_job.SQL_DIR


@dataclass(frozen=True, kw_only=True)
class CdcPipelineArgs:
    namespace: str
    mode: str
    plan: cdc.CdcPlan
    sslmode: str
    admin_user: str
    endpoint: DatabaseEndpoint
    """Host, port, CA, cluster, admin and publication role Secrets (ManagedPostgres.endpoint)."""

    def __post_init__(self) -> None:
        if self.mode not in {"cnpg", "external"}:
            raise ValueError(f"mode: 'cnpg' or 'external', got {self.mode!r}")
        if self.mode == "cnpg" and not (self.endpoint.cluster and self.endpoint.cdc_secret):
            raise ValueError("endpoint: mode cnpg needs the cluster and the publication role")


def cdc_plan(s: StackSettings) -> cdc.CdcPlan | None:
    """The plan of ``cdc.tables``; None when no table is published."""
    if not s.cdc.tables:
        return None
    tables = []
    # A masked table lives in <schema>_private, under the name the API serves as a view.
    masked = {(schema, table) for schema, table, _ in masked_columns(masking_rules(s.masking))}
    for name, table in s.cdc.tables.items():
        schema, relation = name.split(".")
        tables.append(
            cdc.CdcTable(
                schema=f"{schema}{PRIVATE_SUFFIX}" if (schema, relation) in masked else schema,
                name=relation,
                key=tuple(table.key),
                columns=tuple(table.columns.items()),
                row_filter=table.row_filter,
                config_name=name if (schema, relation) in masked else None,
            )
        )
    return cdc.CdcPlan(
        source_database=s.postgres.database,
        target_database=s.cdc.database,
        tables=tuple(tables),
    )


def cdc_pipeline_args(s: StackSettings, endpoint: DatabaseEndpoint) -> CdcPipelineArgs | None:
    plan = cdc_plan(s)
    if plan is None:
        return None
    return CdcPipelineArgs(
        namespace=s.namespace,
        mode=s.postgres.mode,
        plan=plan,
        sslmode=s.postgres.sslmode,
        admin_user=s.postgres.admin_user,
        endpoint=endpoint,
    )


def job_labels() -> dict[str, str]:
    return baseline_job.labels(APP_NAME, INSTANCE)


class CdcPipeline(pulumi.ComponentResource):
    """The analytics database, its subscription and the SQL that prepares both ends."""

    config_map_name: pulumi.Output[str]
    """ConfigMap with the rendered SQL (and, in mode cnpg, the Job's script)."""
    job_name: pulumi.Output[str]
    """Generated name of the Job preparing both ends ("" in mode external)."""

    def __init__(
        self, name: str, args: CdcPipelineArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:CdcPipeline", name, None, opts)
        ns = args.namespace
        labels = job_labels()
        child = pulumi.ResourceOptions(parent=self)
        files = cdc.job_files(args.plan) if args.mode == "cnpg" else cdc.external_files(args.plan)
        config = KubeObject(
            f"{name}-sql",
            api_version="v1",
            kind="ConfigMap",
            metadata=meta(ns, labels),
            body={"data": files},
            opts=child,
        )
        self.config_map_name = config.object_name
        self.job_name = pulumi.Output.from_input("")
        if args.mode == "cnpg":
            self.job_name = self._cnpg(name, args, config, files)
        self.register_outputs({"config_map_name": self.config_map_name, "job_name": self.job_name})

    def _cnpg(
        self, name: str, args: CdcPipelineArgs, config: KubeObject, files: dict[str, str]
    ) -> pulumi.Output[str]:
        endpoint = args.endpoint
        cluster = endpoint.cluster or ""
        ns = args.namespace
        labels = job_labels()
        database = KubeObject(
            f"{name}-database",
            api_version=CNPG_API_VERSION,
            kind="Database",
            metadata=meta(ns, labels, name=f"{cluster}-{args.plan.target_database}"),
            body={
                "spec": cdc.database_spec(
                    cluster=cluster,
                    database=args.plan.target_database,
                    owner=args.admin_user,
                )
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        spec = admin_connection(ns, args.plan.source_database, args.sslmode, endpoint)
        checksum = content_checksum(*(part for item in sorted(files.items()) for part in item))
        job = KubeObject(
            f"{name}-job-{baseline_job.job_suffix(checksum)}",
            api_version="batch/v1",
            kind="Job",
            metadata=meta(ns, labels),
            body=baseline_job.job_body(
                spec,
                config_map=config.object_name,
                bundle_checksum=checksum,
                command=["sh", f"{SCRIPT_DIR}/{cdc.JOB_SCRIPT}"],
                extra_env=(pods.secret_env("CDC_PASSWORD", endpoint.cdc_secret or "", "password"),),
                app_name=APP_NAME,
                instance=INSTANCE,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[config, database]),
        )
        KubeObject(
            f"{name}-netpol",
            api_version="networking.k8s.io/v1",
            kind="NetworkPolicy",
            metadata=meta(ns, labels),
            body=baseline_job.network_policy_body(spec, app_name=APP_NAME, instance=INSTANCE),
            opts=pulumi.ResourceOptions(parent=self),
        )
        KubeObject(
            f"{name}-subscription",
            api_version=CNPG_API_VERSION,
            kind="Subscription",
            metadata=meta(ns, labels, name=f"{cluster}-{cdc.SUBSCRIPTION.replace('_', '-')}"),
            body={"spec": cdc.subscription_spec(args.plan, cluster=cluster)},
            # The slot and the target tables exist before the subscription starts.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[job, database]),
        )
        return job.object_name


def copy_database_input(s: StackSettings) -> copy_database.CopyDatabase:
    """The CDC database as the APIs serving its copies need it (``domains.<d>.database``)."""
    plan = cdc_plan(s)
    domains = s.copy_domains()
    if plan is None or not domains:
        raise ValueError("no domain serves the CDC copies (domains.<name>.database)")
    schemas = tuple(s.schema_of(d) for d in domains)
    cache = inputs.cache_control(s)
    tenancy = inputs.tenancy(s)
    return copy_database.CopyDatabase(
        database=s.cdc.database,
        schemas=schemas,
        copies=tuple((table.schema, table.name) for table in plan.tables),
        authenticators=(AUTHENTICATOR,),
        access=inputs.access_plan(s),
        groups=inputs.group_roles(s),
        cache=CacheControl(rows=tuple(row for row in cache.rows if row[0] in schemas)),
        tenancy=Tenancy(
            domains=tuple(row for row in tenancy.domains if row[0] in schemas),
            clients=tenancy.clients,
        ),
    )


def copy_baseline_args(s: StackSettings, endpoint: DatabaseEndpoint) -> SqlBaselineArgs:
    """The Jobs preparing the CDC database, as the admin, through ``endpoint``."""
    copies = copy_database_input(s)
    return SqlBaselineArgs(
        namespace=s.namespace,
        database=copies.database,
        sslmode=s.postgres.sslmode,
        exposed_schemas=copies.schemas,
        endpoint=endpoint,
        migrations=inputs.copy_migration_plan(s),
        copies=copies,
    )
