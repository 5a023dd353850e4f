"""Stack settings → the inputs of the pure builders.

The one place that knows both shapes, so the builders stay independent of the config format and
the offline renderer, the components and the tests derive identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from components.render.access import (
    AUDIT_SCHEMA,
    AUTHENTICATOR,
    GRAPHQL_AUTHENTICATOR,
    MONITOR,
    PLATFORM_SCHEMA,
    AccessInput,
    AccessPlan,
    ServiceClient,
    build_access_plan,
)
from components.render.alerts import AlertThresholds, CdcSlotAlert
from components.render.audit import pgaudit_parameters
from components.render.baseline import CacheControl, GroupRoles, Tenancy
from components.render.cdc import SLOT, max_slot_wal_keep_size
from components.render.domain_api import DomainApiSpec
from components.render.durations import duration_ms, parse_duration
from components.render.graphql_workload import NetworkInput, RouteInput
from components.render.logs import LokiLogs
from components.render.masking import MaskRule, masking_rules
from components.render.migrations import MigrationPlan, plan_migrations
from components.render.observability import ExporterInput
from components.render.pgbouncer_pool import PgBouncerPoolSpec, PoolSettings
from components.render.postgraphile import PostgraphileInput
from components.render.postgres_cluster import (
    ClusterInput,
    ObjectStoreInput,
    QueryInsights,
    object_store_name,
)
from components.render.postgrest import PostgrestConfInput
from components.render.restore_check import RestoreCheckInput
from components.render.slo import SloObjectives
from components.render.synthetic import SyntheticChecks, exporter_selector
from components.settings import StackSettings, budget_input, quantity_bytes


def access_input(s: StackSettings) -> AccessInput:
    timeouts = s.roles.statement_timeout
    return AccessInput(
        schemas=exposed_schemas(s),
        anonymous=s.auth.anonymous,
        timeouts_ms={
            "anonymous": duration_ms(timeouts.anonymous),
            "user": duration_ms(timeouts.user),
            "editor": duration_ms(timeouts.editor),
            "admin": duration_ms(timeouts.admin),
        },
        services=tuple(
            ServiceClient(
                name=svc.name,
                schemas=tuple(s.schema_of(d) for d in svc.schemas or ()),
                access=svc.access,
                statement_timeout_ms=duration_ms(svc.statement_timeout or timeouts.service),
            )
            for svc in s.services
        ),
        authenticators=(AUTHENTICATOR, GRAPHQL_AUTHENTICATOR)
        if s.graphql.enabled
        else (AUTHENTICATOR,),
        # CloudNativePG's exporter runs inside the instances; an external database needs ours.
        monitoring_logins=(MONITOR,) if s.postgres.mode == "external" else (),
    )


def access_plan(s: StackSettings) -> AccessPlan:
    return build_access_plan(access_input(s))


def cluster_input(s: StackSettings, admin_secret: str) -> ClusterInput:
    pg = s.postgres
    qi = pg.query_insights
    return ClusterInput(
        instances=pg.instances,
        storage_size=pg.storage_size,
        storage_class=pg.storage_class,
        max_connections=pg.max_connections,
        database=pg.database,
        admin_user=pg.admin_user,
        admin_secret=admin_secret,
        resources=pg.resources.model_dump(),
        image=pg.image,
        backup=backup_store(s),
        audit_parameters=tuple(pgaudit_parameters(s.audit.pgaudit_log).items()),
        query_insights=QueryInsights(
            statements_max=qi.statements_max,
            statements_track=qi.statements_track,
            auto_explain_min_duration_ms=duration_ms(qi.auto_explain_min_duration),
            auto_explain_analyze=qi.auto_explain_analyze,
            auto_explain_sample_rate=qi.auto_explain_sample_rate,
            qualstats=qi.qualstats,
        ),
    )


def cdc_max_slot_wal_keep_size(s: StackSettings) -> str | None:
    """``max_slot_wal_keep_size`` of a stack publishing tables (None: change data capture off)."""
    if not s.cdc.tables:
        return None
    return max_slot_wal_keep_size(int(quantity_bytes(s.cdc.max_slot_wal_keep_size) or 0))


def cdc_slot_alert(s: StackSettings) -> CdcSlotAlert | None:
    """Alerts on the change data capture slot: WAL held above half of what PostgreSQL keeps."""
    if not s.cdc.tables:
        return None
    keep = int(quantity_bytes(s.cdc.max_slot_wal_keep_size) or 0)
    return CdcSlotAlert(slot=SLOT, retained_wal_bytes=keep // 2)


def backup_store(s: StackSettings) -> ObjectStoreInput | None:
    """The object store of base backups and WAL; None when backups are off."""
    b = s.backup
    if not b.enabled or s.postgres.mode != "cnpg":
        return None
    return ObjectStoreInput(
        destination_path=b.destination_path or "",
        credentials_secret=b.credentials_secret or "",
        retention=b.retention,
        endpoint_url=b.endpoint_url,
        method=b.method,
        name=object_store_name(CLUSTER_NAME),
    )


def exposed_schemas(s: StackSettings) -> tuple[str, ...]:
    return tuple(s.schema_of(d) for d in s.domains)


def group_roles(s: StackSettings) -> GroupRoles:
    """Roles from the groups claim (auth.baseRole, auth.groupRoles) for the SQL baseline."""
    return GroupRoles(
        base_role=s.auth.base_role,
        mapping=tuple(
            (group, entry.role, entry.priority) for group, entry in s.auth.group_roles.items()
        ),
    )


def cache_control(s: StackSettings) -> CacheControl:
    """Cache-Control per domain schema and API role (domains.<name>.cacheControl)."""
    return CacheControl(
        rows=tuple(
            (s.schema_of(name), role, value)
            for name, domain in s.domains.items()
            for role, value in domain.cache_control.items()
        )
    )


def tenancy(s: StackSettings) -> Tenancy:
    """Tenanted domain schemas and tenant-bound machine clients (domains.<name>.tenancy,
    services[].tenant, services[].crossTenant) for the SQL baseline."""
    return Tenancy(
        domains=tuple(
            (s.schema_of(name), domain.tenancy.claim, domain.tenancy.required)
            for name, domain in s.domains.items()
            if domain.tenancy
        ),
        clients=tuple(
            (f"api_service_{service.name}", service.tenant)
            for service in s.services
            if service.tenant is not None or service.cross_tenant
        ),
    )


def masking(s: StackSettings) -> tuple[MaskRule, ...]:
    """Masked columns per API role (masking) for the SQL baseline."""
    return masking_rules(s.masking)


def sql_files(s: StackSettings) -> list[tuple[str, str]]:
    """The ordered SQL bundle: access plan, then the platform baseline for the exposed schemas."""
    from components.render.access import render_access_sql
    from components.render.baseline import ACCESS_FILE, stack_sql_files

    access = render_access_sql(access_plan(s), s.postgres.database)
    return [
        (ACCESS_FILE, access),
        *stack_sql_files(
            exposed_schemas(s), group_roles(s), cache_control(s), tenancy(s), masking(s)
        ),
    ]


def migration_plan(s: StackSettings) -> MigrationPlan:
    """The domain migrations the stack's migrations Job applies in postgres.database."""
    copies = s.copy_domains()
    return plan_migrations(tuple(s.domains), only=[d for d in s.domains if d not in copies])


def copy_migration_plan(s: StackSettings) -> MigrationPlan:
    """The migrations of the domains served from the CDC copies, applied in cdc.database."""
    return plan_migrations(tuple(s.domains), only=s.copy_domains())


@dataclass(frozen=True, kw_only=True)
class DatabaseHost:
    """Where an API that bypasses PgBouncer connects: the CDC database on the replicas."""

    ro_host: str
    port: int
    cluster: str | None
    """CloudNativePG cluster (its pods are the NetworkPolicy peer); None: external."""
    ca_secret: str | None


def pgbouncer_host(s: StackSettings) -> str:
    """In-cluster DNS name of the PgBouncer Service (contract: Service ``pgbouncer``)."""
    return f"pgbouncer.{s.namespace}.svc.cluster.local"


def domain_public_url(s: StackSettings, domain: str) -> str:
    """Public base URL of a domain API (the gateway route prefix)."""
    from components.render.domain_api import route_prefix

    return f"{s.public_base_url}{route_prefix(domain)}"


def direct_database(
    s: StackSettings, domain: str, database: DatabaseHost | None
) -> DatabaseHost | None:
    """Where ``domain``'s API connects itself (None: through PgBouncer), its CA kept only when
    ``postgres.sslmode`` verifies the server."""
    if domain not in s.copy_domains():
        return None
    if database is None:
        raise ValueError(f"database: domain {domain!r} serves the CDC copies, name its host")
    verify = s.postgres.sslmode in ("verify-ca", "verify-full")
    return replace(database, ca_secret=database.ca_secret if verify else None)


def postgrest_conf_input(
    s: StackSettings, domain: str, database: DatabaseHost | None = None
) -> PostgrestConfInput:
    """``postgrest.conf`` inputs of one domain: PgBouncer pool, JWT key file, limits, logging.

    A domain serving the CDC copies connects to ``database`` (its read replicas) itself.
    """
    from components.render.domain_api import DB_CA_FILE, dns_name
    from components.render.pgbouncer import RO_SUFFIX, RW_SUFFIX
    from components.render.postgrest import HS256_SECRET_FILE, JWKS_FILE

    d = s.domains[domain]
    pool = s.postgres.database + (RO_SUFFIX if d.read_from_replicas else RW_SUFFIX)
    direct = direct_database(s, domain, database)
    if direct is not None:
        target: dict[str, Any] = {
            "db_host": direct.ro_host,
            "db_port": direct.port,
            "db_name": s.cdc.database,
            "db_sslmode": s.postgres.sslmode,
            "db_sslrootcert": DB_CA_FILE if direct.ca_secret else None,
        }
    else:
        target = {"db_host": pgbouncer_host(s), "db_port": 5432, "db_name": pool}
    return PostgrestConfInput(
        domain=dns_name(domain),
        schema=s.schema_of(domain),
        **target,
        db_user=AUTHENTICATOR,
        anon_role="api_anonymous" if s.auth.anonymous else None,
        jwt_secret_file=JWKS_FILE if s.auth.mode == "jwks" else HS256_SECRET_FILE,
        jwt_audience=s.auth.audience,
        role_claim_key=s.auth.role_claim_key,
        db_pool=d.db_pool,
        db_max_rows=d.max_rows,
        pre_request="platform.pre_request",
        public_url=domain_public_url(s, domain),
        # The API's own origin (its OpenAPI/Swagger pages) first, then the configured ones.
        cors_allowed_origins=tuple(dict.fromkeys([s.public_base_url, *d.cors_allowed_origins])),
        log_level=d.log_level,
        server_timing_enabled=d.server_timing,
        trace_header="X-Request-Id",
    )


def domain_api_spec(
    s: StackSettings, domain: str, database: DatabaseHost | None = None
) -> DomainApiSpec:
    """Manifest inputs of one domain API (``database``: see ``postgrest_conf_input``)."""
    from urllib.parse import urlsplit

    from components.render.domain_api import DirectDatabase, ForwardAuth, GatewayParent
    from components.render.pgbouncer_pool import DatabaseEgress
    from components.render.pods import Resources

    host = direct_database(s, domain, database)
    direct = (
        DirectDatabase(
            egress=DatabaseEgress(port=host.port, cluster=host.cluster), ca_secret=host.ca_secret
        )
        if host is not None
        else None
    )

    d = s.domains[domain]
    gw = s.gateway
    forward_auth = (
        ForwardAuth(
            group=gw.forward_auth_group, kind=gw.forward_auth_kind, name=gw.forward_auth_name
        )
        if gw.forward_auth_group and gw.forward_auth_kind and gw.forward_auth_name
        else None
    )
    return DomainApiSpec(
        domain=domain,
        namespace=s.namespace,
        replicas_min=d.replicas.min,
        replicas_max=d.replicas.max,
        cpu_target=d.cpu_target,
        rps_target=d.rps_target,
        resources=Resources(
            cpu_request=d.resources.requests.cpu,
            memory_request=d.resources.requests.memory,
            cpu_limit=d.resources.limits.cpu,
            memory_limit=d.resources.limits.memory,
        ),
        auth_mode=s.auth.mode,
        gateway=GatewayParent(
            name=gw.name,
            namespace=gw.namespace,
            section_name=gw.section_name,
            forward_auth=forward_auth,
            proxy_namespace=gw.proxy_namespace or gw.namespace,
            proxy_selector=dict(gw.proxy_selector),
        ),
        public_host=urlsplit(s.public_base_url).hostname or "",
        prometheus_namespace=s.observability.prometheus_namespace,
        prober_selector=(exporter_selector() if s.observability.synthetic.enabled else None),
        # Its schema poller runs psql: the server's own image, like the SQL Jobs.
        schema_poller_image=s.postgres.image,
        direct_database=direct,
    )


def postgraphile_input(s: StackSettings) -> PostgraphileInput:
    """The GraphQL pilot's PostGraphile: the REST APIs' audience, role claim, anonymous role,
    pre-request function and key source, on the rw pool as its own authenticator."""
    from components.render import graphql_workload as gw
    from components.render import postgraphile as pgr
    from components.render.access import ANONYMOUS
    from components.render.pgbouncer import RW_SUFFIX
    from components.render.postgraphile import SecretKeyRef

    g = s.graphql
    o = s.observability.graphql
    route = gw.route_path(tuple(g.schemas))
    secret = gw.secret_name()
    hs256 = s.auth.mode == "hs256"
    plan = access_plan(s)
    return PostgraphileInput(
        schemas=tuple(s.schema_of(d) for d in g.schemas),
        db_host=pgbouncer_host(s),
        db_port=5432,
        db_name=s.postgres.database + RW_SUFFIX,
        db_user=GRAPHQL_AUTHENTICATOR,
        db_password=SecretKeyRef(name=secret, key=gw.PASSWORD_KEY),
        db_sslmode="disable",
        jwt_audience=s.auth.audience,
        jwt_role_claim_key=s.auth.role_claim_key,
        jwt_secret=SecretKeyRef(name=secret, key=gw.JWT_SECRET_KEY) if hs256 else None,
        jwks_file=None if hs256 else f"{gw.JWKS_DIR}/{gw.JWKS_KEY}",
        default_role=ANONYMOUS if s.auth.anonymous else None,
        pre_request="platform.pre_request",
        graphiql=g.graphiql,
        graphql_route=route,
        graphiql_route=f"{route}/graphiql",
        max_pool_size=g.db_pool,
        role_timeouts_ms=role_timeouts_ms(plan),
        metrics_port=pgr.METRICS_PORT if o.metrics else None,
        max_operation_names=o.max_operation_names,
        request_log=o.request_log,
    )


def role_timeouts_ms(plan: AccessPlan) -> dict[str, int]:
    """Each API role's statement_timeout (ms): applied per request by the GraphQL pilot."""
    return {
        r.name: r.statement_timeout_ms
        for r in plan.roles
        if r.name in plan.api_roles and r.statement_timeout_ms is not None
    }


def graphql_image(s: StackSettings) -> str:
    """The pilot image: ``graphql.image``, or (staging only; prod requires the key) the
    reference the pipeline builds from this tree by default."""
    from components.render.graphql_image import default_reference

    return s.graphql.image or default_reference()


def advisor_image(s: StackSettings) -> str:
    """The advisor image: ``advisor.image``, or (staging only; prod requires the key) the
    reference the pipeline builds from this tree by default."""
    from components.render.advisor_job import default_reference

    return s.advisor.image or default_reference()


def graphql_route_input(s: StackSettings) -> RouteInput:
    """The pilot's HTTPRoute: the parentRef and forward-auth filter of its domain's REST route."""
    from components.render import graphql_workload as gw

    g = s.graphql
    rest = domain_api_spec(s, g.schemas[0])
    route = gw.route_path(tuple(g.schemas))
    return RouteInput(
        gateway=rest.gateway,
        public_host=rest.public_host,
        paths=(route, f"{route}/graphiql") if g.graphiql else (route,),
        service_port=postgraphile_input(s).port,
    )


def graphql_network_input(s: StackSettings) -> NetworkInput:
    """Gateway in; PgBouncer and DNS out (the image installs nothing at run time)."""
    from components.render.pods import selector_labels

    return NetworkInput(
        gateway=domain_api_spec(s, s.graphql.schemas[0]).gateway,
        server_port=postgraphile_input(s).port,
        pgbouncer_selector=selector_labels("pgbouncer", "pgbouncer"),
        pgbouncer_port=5432,
        metrics_port=postgraphile_input(s).metrics_port,
        prometheus_namespace=s.observability.prometheus_namespace,
    )


# -- observability and backups -----------------------------------------------------------------

CLUSTER_NAME = "postgres-db"
"""``ManagedPostgres("postgres")`` names its CloudNativePG Cluster ``<name>-db``."""


def alert_thresholds(s: StackSettings) -> AlertThresholds:
    """The stack's alert thresholds (``observability.alerts``, env defaults in defaults.py)."""
    return AlertThresholds(**s.observability.alerts.model_dump())


def slo_objectives(s: StackSettings) -> dict[str, SloObjectives]:
    """Each domain's SLOs (``domains.<name>.slo``, env defaults in defaults.py)."""
    return {
        name: SloObjectives(
            availability=d.slo.availability,
            latency_p95_ms=d.slo.latency_p95_ms,
            window=d.slo.window,
        )
        for name, d in s.domains.items()
    }


def synthetic_checks(s: StackSettings) -> SyntheticChecks | None:
    """The blackbox checks (``observability.synthetic``); None when they are off."""
    from components.render import domain_api

    synthetic = s.observability.synthetic
    if not synthetic.enabled:
        return None
    return SyntheticChecks(
        namespace=s.namespace,
        public_base_url=s.public_base_url,
        domains=tuple(s.domains),
        anonymous=s.auth.anonymous,
        ready_services={d: domain_api.service_name(d) for d in s.domains},
        admin_port=domain_api.ADMIN_PORT,
        interval=synthetic.interval,
        timeout=synthetic.timeout,
        prometheus_namespace=s.observability.prometheus_namespace,
    )


def loki_logs(s: StackSettings) -> LokiLogs | None:
    """The gateway access log in Loki (``observability.loki``); None when it is off."""
    from components.render import domain_api

    loki = s.observability.loki
    if not loki.enabled:
        return None
    gw = s.gateway
    return LokiLogs(
        namespace=s.namespace,
        route_names=tuple(domain_api.service_name(d) for d in s.domains),
        stream_labels=dict(
            loki.stream_labels
            or {"namespace": gw.proxy_namespace or gw.namespace, "container": "envoy"}
        ),
        datasource_uid=loki.datasource_uid,
        rule_labels=dict(loki.rule_labels),
    )


def expected_replicas(s: StackSettings) -> int:
    """Streaming standbys the primary should report (CloudNativePG: instances - 1)."""
    return s.postgres.instances - 1 if s.postgres.mode == "cnpg" else 0


def restore_check_input(s: StackSettings) -> RestoreCheckInput | None:
    """The monthly restore verification; None without backups."""
    store = backup_store(s)
    if store is None:
        return None
    return RestoreCheckInput(
        namespace=s.namespace,
        source_cluster=CLUSTER_NAME,
        database=s.postgres.database,
        schemas=(*exposed_schemas(s), PLATFORM_SCHEMA, AUDIT_SCHEMA),
        schedule=s.backup.restore_check_schedule,
        destination_path=store.destination_path,
        object_store=store.name if store.method == "plugin" else None,
    )


def exporter_input(s: StackSettings) -> ExporterInput | None:
    """postgres_exporter for an external database; None in mode cnpg."""
    pg = s.postgres
    if pg.mode != "external":
        return None
    return ExporterInput(
        namespace=s.namespace,
        host=pg.host or "",
        port=pg.port,
        database=pg.database,
        user=MONITOR,
        sslmode=pg.sslmode,
        ca_secret=pg.ca_secret,
        prometheus_namespace=s.observability.prometheus_namespace,
    )


def pgbouncer_pool_spec(s: StackSettings) -> PgBouncerPoolSpec:
    """Manifest inputs of the pooler (the database egress and CA follow from ManagedPostgres)."""
    from components.render.pods import Resources

    pg = s.pgbouncer
    r = pg.resources
    return PgBouncerPoolSpec(
        namespace=s.namespace,
        replicas=pg.replicas,
        resources=Resources(
            cpu_request=r.requests.cpu,
            memory_request=r.requests.memory,
            cpu_limit=r.limits.cpu,
            memory_limit=r.limits.memory,
        ),
        prometheus_namespace=s.observability.prometheus_namespace,
    )


def pgbouncer_pool_settings(s: StackSettings) -> PoolSettings:
    """The ``pgbouncer.*`` knobs that reach ``pgbouncer.ini``, and the query timeout backstop
    sized from the API roles' statement timeouts."""
    from components.render.pgbouncer import query_timeout_backstop

    pg = s.pgbouncer
    return PoolSettings(
        max_client_conn=pg.max_client_conn,
        default_pool_size=pg.default_pool_size,
        reserve_pool_size=pg.reserve_pool_size,
        server_idle_timeout=round(parse_duration(pg.server_idle_timeout)),
        query_wait_timeout=round(parse_duration(pg.query_wait_timeout)),
        server_tls_sslmode=pg.server_tls_sslmode,
        query_timeout=query_timeout_backstop(role_timeouts_ms(access_plan(s)).values()),
    )


__all__ = ["GRAPHQL_AUTHENTICATOR", "budget_input"]  # re-exported for the components
