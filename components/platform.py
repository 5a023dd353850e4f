"""build_platform: instantiate and wire the components of one stack."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components import inputs
from components.audit_export import AuditExport, AuditExportArgs
from components.cdc_pipeline import CdcPipeline, cdc_pipeline_args, copy_baseline_args
from components.database_access import DatabaseAccess, DatabaseAccessArgs
from components.domain_api import (
    DomainApi,
    api_resource_name,
    domain_api_args,
    domain_api_report,
    jwt_signing_secret,
)
from components.gitops import kubernetes_providers
from components.graphql_pilot import GraphqlPilot, graphql_pilot_args, graphql_pilot_report
from components.managed_postgres import ManagedPostgres, ManagedPostgresArgs
from components.observability import (
    ObservabilityStack,
    observability_args,
    observability_report,
)
from components.pgbouncer_pool import PgBouncerPool, PgBouncerPoolArgs
from components.postgres_advisor import PostgresAdvisor, PostgresAdvisorArgs
from components.postgres_backups import PostgresBackups, postgres_backups_args
from components.protection import protection_options, protection_report
from components.render.access import AUTHENTICATOR, POOLER_LOOKUP
from components.render.advisor_job import AdvisedDatabase
from components.render.baseline import render_bootstrap_sql
from components.render.budget import budget_table, compute_budget
from components.settings import StackSettings
from components.sql_baseline import SqlBaseline, SqlBaselineArgs


@dataclass(frozen=True)
class Platform:
    """The components of a stack, for outputs and tests."""

    database: ManagedPostgres
    access: DatabaseAccess
    apis: dict[str, DomainApi] | None = None
    """PostgREST API per domain."""
    graphql: GraphqlPilot | None = None
    """The PostGraphile pilot, where ``graphql.enabled``."""
    observability: ObservabilityStack | None = None
    """Monitors, alert rules and dashboards."""
    backups: PostgresBackups | None = None
    """Nightly backup and monthly restore check, where ``backup.enabled``."""
    pooler: PgBouncerPool | None = None
    """PgBouncer (transaction pooling) in front of the database."""
    baseline: SqlBaseline | None = None
    """The Job applying the platform SQL baseline."""
    audit_export: AuditExport | None = None
    """audit.log as JSON lines on a spool volume, where ``audit.export.enabled``."""
    cdc: CdcPipeline | None = None
    """Change data capture into the analytics database, where ``cdc.tables`` lists tables."""


def build_platform(s: StackSettings) -> Platform:
    """Everything one stack deploys; settings are already validated."""
    pg = s.postgres
    # Every component hands this provider list to its Kubernetes children (GitOps render mode),
    # and the protection of what holds data to every child (protection.py, ``protectData``).
    k8s = pulumi.ResourceOptions.merge(
        pulumi.ResourceOptions(providers=kubernetes_providers(s)),
        protection_options(s.protect_data),
    )

    def after(*deps: pulumi.Resource) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions.merge(k8s, pulumi.ResourceOptions(depends_on=list(deps)))

    database = ManagedPostgres(
        "postgres",
        ManagedPostgresArgs(
            namespace=s.namespace,
            env=s.stack,
            vault=s.vault,
            mode=pg.mode,
            database=pg.database,
            port=pg.port,
            admin_user=pg.admin_user,
            cluster=inputs.cluster_input(s, admin_secret="") if pg.mode == "cnpg" else None,
            external_rw_host=pg.host,
            external_ro_host=pg.ro_host,
            external_ca_secret=pg.ca_secret,
            client_image=pg.image,
            # The superuser part of the SQL baseline runs once at cluster creation (SqlBaseline).
            bootstrap_sql=render_bootstrap_sql() if pg.mode == "cnpg" else None,
            cdc_max_slot_wal_keep_size=inputs.cdc_max_slot_wal_keep_size(s),
            admin_password=(
                s.postgres_admin_password.get_secret_value()
                if s.postgres_admin_password is not None
                else None
            ),
        ),
        opts=k8s,
    )
    access = DatabaseAccess(
        "access",
        DatabaseAccessArgs(
            plan=inputs.access_plan(s),
            host=database.rw_host,
            port=database.port,
            database=pg.database,
            admin_user=pg.admin_user,
            admin_password=database.admin_password,
            sslmode=pg.sslmode,
            ca_file=pg.provider_ca_file,
        ),
        opts=after(database),
    )
    # HS256 key shared by every API verifying tokens (None in jwks mode).
    jwt_secret = jwt_signing_secret(s)
    # The CDC database on the read replicas, for the APIs serving its copies.
    endpoint = database.endpoint
    copy_host = inputs.DatabaseHost(
        ro_host=endpoint.ro_host,
        port=endpoint.port,
        cluster=endpoint.cluster,
        ca_secret=endpoint.ca_secret,
    )
    copies = s.copy_domains()
    # The GraphQL pilot: its own authenticator, the REST APIs' JWT key (never a second one).
    graphql = (
        GraphqlPilot(
            "graphql",
            graphql_pilot_args(
                s,
                db_password=access.passwords[inputs.GRAPHQL_AUTHENTICATOR],
                jwt_secret=jwt_secret,
            ),
            opts=after(access),
        )
        if s.graphql.enabled
        else None
    )
    # Scraping, alerts and dashboards for everything above (the exporter login is in the plan).
    observability = ObservabilityStack(
        "observability",
        observability_args(s, monitor_password=access.passwords.get(inputs.MONITOR)),
        opts=after(database),
    )
    backups_args = postgres_backups_args(s)
    backups = (
        PostgresBackups("backups", backups_args, opts=after(database))
        if backups_args is not None
        else None
    )
    # The SQL baseline (as the admin; the superuser part came with the cluster), then the pooler
    # whose auth_query needs the baseline's lookup function.
    baseline = SqlBaseline(
        "sql-baseline",
        SqlBaselineArgs(
            namespace=s.namespace,
            database=pg.database,
            sslmode=pg.sslmode,
            exposed_schemas=inputs.exposed_schemas(s),
            group_roles=inputs.group_roles(s),
            cache_control=inputs.cache_control(s),
            tenancy=inputs.tenancy(s),
            masking=inputs.masking(s),
            endpoint=database.endpoint,
            migrations=inputs.migration_plan(s),
        ),
        opts=after(access),
    )
    export = s.audit.export
    audit_export = (
        AuditExport(
            "audit-export",
            AuditExportArgs(
                namespace=s.namespace,
                database=pg.database,
                sslmode=pg.sslmode,
                endpoint=database.endpoint,
                batch_size=export.batch_size,
                interval_seconds=export.interval_seconds,
                keep_files=export.keep_files,
                spool_size=export.spool_size,
                storage_class=export.storage_class,
            ),
            opts=after(baseline),
        )
        if export.enabled
        else None
    )
    # The advisor's scheduled run reads what the baseline set up (the exposed-schema registry).
    if s.advisor.enabled:
        PostgresAdvisor(
            "advisor",
            PostgresAdvisorArgs(
                namespace=s.namespace,
                database=pg.database,
                sslmode=pg.sslmode,
                schedule=s.advisor.schedule,
                image=inputs.advisor_image(s),
                endpoint=database.endpoint,
                # The CDC database, where its served schemas' objects now live.
                others=(
                    (
                        AdvisedDatabase(
                            database=s.cdc.database,
                            schemas=tuple(s.schema_of(d) for d in copies),
                        ),
                    )
                    if copies
                    else ()
                ),
            ),
            opts=after(baseline),
        )
    pooler = PgBouncerPool(
        "pgbouncer",
        PgBouncerPoolArgs(
            spec=inputs.pgbouncer_pool_spec(s),
            pool=inputs.pgbouncer_pool_settings(s),
            database=pg.database,
            endpoint=database.endpoint,
            auth_password=access.passwords[POOLER_LOOKUP],
            env=s.stack,
            vault=s.vault,
        ),
        opts=after(access, baseline),
    )
    # Change data capture: after the baseline (roles, schemas), next to the APIs.
    cdc_args = cdc_pipeline_args(s, database.endpoint)
    cdc = CdcPipeline("cdc", cdc_args, opts=after(baseline)) if cdc_args else None
    # The CDC database set up for the APIs serving its copies: after the copies exist.
    copy_baseline = (
        SqlBaseline(
            "sql-baseline-copies",
            copy_baseline_args(s, database.endpoint),
            opts=after(access, *([cdc] if cdc else [])),
        )
        if copies
        else None
    )
    apis = {
        domain: DomainApi(
            api_resource_name(domain),
            domain_api_args(
                s,
                domain,
                db_password=access.passwords[AUTHENTICATOR],
                jwt_secret=jwt_secret,
                database=copy_host if domain in copies else None,
            ),
            opts=after(
                *access.ready_for(s.schema_of(domain)),
                *([copy_baseline] if copy_baseline and domain in copies else []),
            ),
        )
        for domain in s.domains
    }
    return Platform(
        cdc=cdc,
        database=database,
        access=access,
        pooler=pooler,
        baseline=baseline,
        audit_export=audit_export,
        apis=apis,
        graphql=graphql,
        observability=observability,
        backups=backups,
    )


def export_outputs(platform: Platform) -> None:
    """Stack outputs: endpoints only, never a secret."""
    pulumi.export("postgresRwHost", platform.database.rw_host)
    pulumi.export("postgresRoHost", platform.database.ro_host)
    apis = platform.apis or {}
    pulumi.export("apiUrls", {domain: api.url for domain, api in apis.items()})
    pulumi.export("apiServices", {domain: api.service_address for domain, api in apis.items()})
    if platform.graphql is not None:
        pulumi.export("graphqlUrl", platform.graphql.url)
    if platform.pooler is not None:
        pulumi.export("pgbouncerHost", platform.pooler.host)
    if platform.baseline is not None:
        pulumi.export("sqlBaselineJob", platform.baseline.job_name)
        if platform.baseline.migrations_job_name is not None:
            pulumi.export("migrationsJob", platform.baseline.migrations_job_name)


def report_lines(s: StackSettings) -> list[str]:
    """Extra tables the offline render prints after the resource summary."""
    plan = inputs.access_plan(s)
    budget_input = inputs.budget_input(s)
    return [
        "",
        f"API roles: {', '.join(plan.api_roles)}",
        *domain_api_report(s),
        *graphql_pilot_report(s),
        *budget_table(compute_budget(budget_input), budget_input),
        *observability_report(s),
        protection_report(s.protect_data),
    ]
