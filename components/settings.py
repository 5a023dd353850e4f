"""Stack configuration → one frozen, validated ``StackSettings``.

This is the only module that reads ``pulumi.Config``. Everything is checked before a single
resource is registered, and every problem is reported at once with its key path, the value and
what is allowed, so a typo costs one ``pulumi preview`` instead of a half-applied stack.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components.defaults import ENVIRONMENTS, deep_merge, domain_defaults, stack_defaults
from components.render import durations, schedules
from components.render.baseline import validate_cache_control
from components.render.logs import stream_labels_problem
from components.render.masking import PRIVATE_SUFFIX, parse_column_key, parse_function
from components.render.postgrest import validate_audience, validate_role_claim_key
from components.render.slo import availability_problem, latency_problem, window_days
from components.render.synthetic import interval_problem

if TYPE_CHECKING:
    from components.render.budget import BudgetInput

NAMESPACE: Final = "pgplatform"

# Keys that existed once: what replaced them, instead of a bare "unknown key".
REMOVED_KEYS: Final = {
    f"pgplatform:graphql.{key}": (
        "removed: the GraphQL pilot no longer installs from an npm registry at start; it runs "
        "the image built from components/graphql/Dockerfile: delete this key and set "
        "graphql.image (docs/graphql-pilot.md)"
    )
    for key in ("npmRegistry", "npmRegistryCidrs")
}

# Keys whose value must be a Pulumi secret (`pulumi config set --secret`).
SECRET_KEYS: Final = frozenset({"postgresAdminPassword", "jwtSecret"})

# Names a domain schema or machine client may not take: PostgreSQL's own, the platform's schemas
# and the platform's role names (a schema named like a role confuses every GRANT reading it).
RESERVED_NAMES: Final = frozenset(
    {
        "public",
        "audit",
        "platform",
        "information_schema",
        "postgres",
        "postgrest",
        "postgraphile",
        "pgplatform_owner",
        "pgplatform_audit_writer",
        "pgplatform_masking",
        "pgplatform_admin",
        "pgplatform_monitor",
        "pgbouncer_auth",
        "anonymous",
        "authenticator",
    }
)
RESERVED_PREFIXES: Final = ("pg_", "api_")
# PostgreSQL's fully reserved key words (appendix C): unusable as unquoted identifiers.
SQL_RESERVED_WORDS: Final = frozenset(
    """all analyse analyze and any array as asc asymmetric both case cast check collate column
    constraint create current_catalog current_date current_role current_time current_timestamp
    current_user default deferrable desc distinct do else end except false fetch for foreign from
    grant group having in initially intersect into lateral leading limit localtime localtimestamp
    not null offset on only or order placing primary references returning select session_user
    some symmetric system_user table then to trailing true union unique user using variadic when
    where window with""".split()
)
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_DNS_FORM = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DB_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$")
_DNS_HOST = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$"
)
_HTTP_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_SECTION_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_OBJECT_STORE = re.compile(r"^(s3|gs|https)://[^/\s]+(/[^\s]*)?$")
# Kubernetes resource.Quantity: a decimal number with an optional binary or decimal SI suffix
# or a decimal exponent ("250m", "1", "1.5", "512Mi", "2G", "1e3").
_QUANTITY = re.compile(
    r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)((Ki|Mi|Gi|Ti|Pi|Ei)|(m|k|M|G|T|P|E)|([eE][-+]?[0-9]+))?$"
)


def _sql_name(value: str) -> str:
    if not _IDENTIFIER.match(value) or len(value) > 48:
        raise ValueError(
            f"{value!r} is not a lowercase SQL identifier: use [a-z_][a-z0-9_]*, at most 48 chars"
        )
    if value in SQL_RESERVED_WORDS:
        raise ValueError(f"{value!r} is a reserved SQL key word: choose another name")
    if value in RESERVED_NAMES or value.startswith(RESERVED_PREFIXES):
        raise ValueError(
            f"{value!r} is reserved: not one of {sorted(RESERVED_NAMES)} "
            f"and no prefix {list(RESERVED_PREFIXES)}"
        )
    return value


def _duration(value: Any) -> str:
    durations.parse_duration(value)
    return str(value)


def _go_duration(value: str) -> str:
    """Kept in the config's syntax for checks; External Secrets gets Go's (``1d`` is ``24h``)."""
    return durations.go_duration(value)


def _retention(value: str) -> str:
    """CloudNativePG's retention policy takes days or weeks (its ``m`` means months)."""
    days = durations.whole_days(value)
    return f"{days // 7}w" if days % 7 == 0 else f"{days}d"


def _seconds_between(low: int, high: int) -> Callable[[str], str]:
    """A duration PgBouncer takes in whole seconds, within ``low``..``high``."""

    def check(value: str) -> str:
        seconds = durations.parse_duration(value)
        if seconds != int(seconds) or not low <= seconds <= high:
            raise ValueError(
                f"{value!r}: use whole seconds between {durations.go_duration(f'{low}s')} "
                f"and {durations.go_duration(f'{high}s')}"
            )
        return value

    return check


def _number_as_text(value: Any) -> Any:
    """``pulumi config set --path ... 1`` stores a number; a quantity is its text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, "g") if isinstance(value, float) else str(value)
    return value


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(
            f"{value!r} is not a Kubernetes quantity: use e.g. '250m', '1', 1.5, '512Mi', '2Gi'"
        )
    return value


def _object_name(value: str) -> str:
    if not _OBJECT_NAME.match(value) or len(value) > 253:
        raise ValueError(
            f"{value!r} is not a Kubernetes object name: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return value


def _object_store_path(value: str) -> str:
    if not _OBJECT_STORE.match(value):
        raise ValueError(
            "must be a bucket URL with a bucket name: 's3://<bucket>[/path]', "
            "'gs://<bucket>[/path]' or 'https://<account>.blob.core.windows.net/<container>'"
        )
    return value


def _mount_path(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*", value):
        hint = f": write {value.strip('/')!r}" if value.strip("/") != value else ""
        raise ValueError(
            "must be a Vault mount path such as 'kubernetes' or 'clusters/prod', without a "
            f"leading or trailing '/'{hint}"
        )
    return value


def _db_host(value: str) -> str:
    if not _DB_HOST.match(value):
        raise ValueError(
            "must be a host name or IPv4 address, without scheme or port (the port is "
            "postgres.port), e.g. 'db.example.com'"
        )
    return value


def _http_url(value: str) -> str:
    if not _HTTP_URL.match(value):
        raise ValueError("must be an http(s) URL without spaces, e.g. 'https://s3.example.com'")
    return value


def _section_name(value: str) -> str:
    if not _SECTION_NAME.match(value) or len(value) > 253:
        raise ValueError(
            "must be the name of a Gateway listener: lowercase letters, digits, '-' and '.'"
        )
    return value


_BYTE_SUFFIXES: Final = {
    **{s: 1024**i for i, s in enumerate(("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: 1000**i for i, s in enumerate(("", "k", "M", "G", "T", "P", "E"))},
    "m": 0.001,
}


_SIZE = re.compile(r"([+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)")


def quantity_bytes(value: str) -> float | None:
    """Bytes of a memory or storage quantity; None when it is not one."""
    match = _SIZE.fullmatch(value)
    if match is None:
        return None
    number, suffix = match.groups()
    return float(number) * _BYTE_SUFFIXES.get(suffix, 1)


def _at_least_a_mebibyte(value: str) -> str:
    """A memory or storage size: Kubernetes reads '2' as two bytes."""
    match = _SIZE.fullmatch(value)
    if match is None:  # not a quantity at all: _quantity reports it
        return value
    number = match.group(1)
    if (quantity_bytes(value) or 0) < 1024**2:
        raise ValueError(
            f"{value!r} is less than 1Mi (a number without a unit is bytes): "
            f"use e.g. '{number}Gi' or '{number}Mi'"
        )
    return value


def _public_base_url(value: str) -> str:
    """The scheme and host the API routes hang off; every route adds its own path."""
    bare = value.rstrip("/")
    if value.endswith("/") and re.fullmatch(r"https://[^/]+", bare):
        raise ValueError(f"drop the trailing '/': write {bare!r}")
    if not value.startswith("https://"):
        raise ValueError("must start with 'https://' (e.g. 'https://api.example.com')")
    if not re.fullmatch(r"https://[^/?#\s]+", value):
        raise ValueError(
            "only the scheme and host (and port) belong here, e.g. 'https://api.example.com': "
            "each domain's path is added to it"
        )
    host = value.removeprefix("https://").rsplit(":", 1)
    if not _DNS_HOST.match(host[0]) or (len(host) == 2 and not host[1].isdigit()):
        raise ValueError(
            f"{host[0]!r} is not a DNS host name (letters, digits, '-' and '.'; "
            "an optional ':<port>')"
        )
    return value


def _pinned_image(value: str) -> str:
    name = value.rsplit("/", 1)[-1]
    if " " in value or ":" not in name or value.endswith(":latest"):
        raise ValueError(
            f"{value!r} is not a pinned image: name a version tag, e.g. "
            "'ghcr.io/cloudnative-pg/postgresql:15.18-standard-bookworm'"
        )
    return value


def _image(value: str) -> str:
    from components.render.graphql_image import reference_problem

    problem = reference_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    from components.render.pods import label_problem

    for key, item in value.items():
        problem = label_problem(key, item)
        if problem:
            raise ValueError(problem)
    return value


_ORIGIN = re.compile(
    r"^https?://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(:[0-9]{1,5})?$"
)


def _origin(value: str) -> str:
    if not _ORIGIN.match(value):
        raise ValueError(
            f"{value!r} is not a browser origin: use scheme://host[:port] in lower case, "
            "e.g. 'https://app.example.com', without a path, a trailing '/' or '*'"
        )
    return value


SqlName = Annotated[str, AfterValidator(_sql_name)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]
Origin = Annotated[str, AfterValidator(_origin)]
# One duration syntax for every key (components/render/durations.py).
Duration = Annotated[str, BeforeValidator(_duration)]
GoDuration = Annotated[str, BeforeValidator(_duration), AfterValidator(_go_duration)]
Retention = Annotated[str, BeforeValidator(_duration), AfterValidator(_retention)]
Quantity = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_quantity)]
# Memory and storage: a bare small number is bytes, never what was meant.
ByteQuantity = Annotated[Quantity, AfterValidator(_at_least_a_mebibyte)]
# A Kubernetes object name (DNS subdomain), e.g. of a Secret the stack refers to.
# (also a StorageClass's name)
SecretName = Annotated[str, AfterValidator(_object_name)]
DbHost = Annotated[str, AfterValidator(_db_host)]
CnpgSchedule = Annotated[str, BeforeValidator(schedules.check_cnpg_schedule)]
CronJobSchedule = Annotated[str, BeforeValidator(schedules.check_cronjob_schedule)]
PinnedImage = Annotated[str, AfterValidator(_pinned_image)]


class _Model(BaseModel):
    """Config models: camelCase keys as in the YAML, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=False
    )


class CpuMemory(_Model):
    cpu: Quantity
    memory: ByteQuantity


class ResourceSettings(_Model):
    requests: CpuMemory
    limits: CpuMemory


class ReplicaRange(_Model):
    min: int = Field(ge=1, le=100)
    max: int = Field(ge=1, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


def _no_problem(check: Callable[[Any], str | None]) -> Callable[[Any], Any]:
    """A validator from a builder's ``*_problem`` function (None = fine, else the message)."""

    def validate(value: Any) -> Any:
        problem = check(value)
        if problem:
            raise ValueError(problem)
        return value

    return validate


def _slo_window(value: str) -> str:
    window_days(value)
    return value


class SloSettings(_Model):
    """A domain's service level objectives (burn-rate alerts and error budget)."""

    # Percent of responses that are not 5xx.
    availability: Annotated[float, AfterValidator(_no_problem(availability_problem))]
    # 95% of requests are answered within this many ms (an Envoy histogram bucket boundary).
    latency_p95_ms: Annotated[int, AfterValidator(_no_problem(latency_problem))]
    window: Annotated[Duration, AfterValidator(_slo_window)]


class TenancySettings(_Model):
    """A tenanted domain: the JWT claim naming the tenant (db/025_tenancy.sql)."""

    # A top-level claim name, e.g. tenant_id, org_id or https://example.com/tenant.
    claim: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")
    # pre_request refuses authenticated requests without the claim.
    required: bool = True


class DomainSettings(_Model):
    """One PostgREST API exposing one schema."""

    schema_name: SqlName | None = Field(default=None, alias="schema")
    replicas: ReplicaRange
    max_rows: int = Field(ge=1, le=100_000)
    read_from_replicas: bool
    db_pool: int = Field(ge=1, le=100)
    resources: ResourceSettings
    cpu_target: int = Field(default=70, ge=10, le=95)
    rps_target: int | None = Field(default=None, ge=1)
    log_level: Literal["crit", "error", "warn", "info", "debug"]
    server_timing: bool
    # Browser origins (besides the API's own) allowed to call the API (CORS).
    cors_allowed_origins: list[Origin] = Field(default_factory=list)
    # Cache-Control of GET/HEAD responses per API role; checked in _cache_control_checks.
    cache_control: dict[Annotated[str, Field(min_length=1, max_length=63)], str] = Field(
        default_factory=dict
    )
    slo: SloSettings
    tenancy: TenancySettings | None = None
    # postgres.database (default) or cdc.database: the API then serves the CDC copies from the
    # read replicas; checked in _copy_database_checks.
    database: SqlName | None = None


class GatewayRef(_Model):
    """The Gateway API ``parentRef`` every HTTPRoute attaches to."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    section_name: Annotated[str, AfterValidator(_section_name)] | None = None
    # Forward-auth filter applied to every route: an ExtensionRef to a filter object of the
    # gateway implementation (e.g. group gateway.envoyproxy.io, kind SecurityPolicy is attached
    # by policy instead; group traefik.io kind Middleware is referenced here).
    forward_auth_group: str | None = None
    forward_auth_kind: str | None = None
    forward_auth_name: str | None = None
    # Where the gateway's data-plane pods run (the API NetworkPolicy admits them): Envoy Gateway
    # runs its proxies in its own namespace (envoy-gateway-system), not the Gateway's. Defaults
    # to `namespace`; proxySelector narrows to the proxy pods' labels.
    proxy_namespace: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63
    )
    proxy_selector: Labels = Field(default_factory=dict)

    @model_validator(mode="after")
    def _forward_auth_complete(self) -> GatewayRef:
        parts = (self.forward_auth_group, self.forward_auth_kind, self.forward_auth_name)
        if any(parts) and not all(parts):
            raise ValueError(
                "forwardAuthGroup, forwardAuthKind and forwardAuthName go together: set all or none"
            )
        return self


class VaultSettings(_Model):
    """Where secrets live and how the cluster authenticates to Vault."""

    address: str = Field(pattern=r"^https://")
    kv_mount: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    kubernetes_auth_path: Annotated[str, AfterValidator(_mount_path)]
    refresh_interval: GoDuration


class PgBouncerSettings(_Model):
    """The connection pooler in front of the database (transaction pooling)."""

    replicas: int = Field(ge=1, le=20)
    max_client_conn: int = Field(ge=10, le=100_000)
    default_pool_size: int = Field(ge=1, le=1000)
    reserve_pool_size: int = Field(ge=0, le=100)
    server_idle_timeout: Annotated[Duration, AfterValidator(_seconds_between(10, 86_400))]
    query_wait_timeout: Annotated[Duration, AfterValidator(_seconds_between(1, 3600))]
    server_tls_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
    resources: ResourceSettings


class ReservedConnections(_Model):
    """Server connections kept free of the pools in the connection budget."""

    superuser: int = Field(ge=0)
    replication: int = Field(ge=0)
    exporters: int = Field(ge=0)
    migrations: int = Field(ge=0)


class AlertSettings(_Model):
    api_error_ratio: float = Field(gt=0, lt=1)
    api_denied_ratio: float = Field(gt=0, lt=1)
    api_min_request_rate: float = Field(ge=0)
    db_connections_share: float = Field(gt=0, le=1)
    pool_clients_waiting: int = Field(ge=0)
    longest_transaction_seconds: int = Field(ge=1)
    replication_lag_seconds: int = Field(ge=1)
    backup_age_hours: int = Field(ge=1)
    restore_check_max_age_days: int = Field(ge=1)


class SyntheticSettings(_Model):
    """Blackbox-exporter checks of every API's public route and PostgREST's /ready."""

    enabled: bool
    interval: Duration
    # How long one probe may take; interval and timeout are whole seconds (checked below).
    timeout: Duration

    @model_validator(mode="after")
    def _fits(self) -> SyntheticSettings:
        problem = interval_problem(self.interval, self.timeout)
        if problem:
            raise ValueError(problem)
        return self


class LokiSettings(_Model):
    """Loki holds the gateway's JSON access log: rules and a panel for rows per route."""

    enabled: bool
    # Grafana uid of the Loki data source the dashboard panel queries.
    datasource_uid: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    # Loki stream labels of the gateway proxies' log lines (as the cluster's collector sets
    # them); unset: {namespace: <gateway.proxyNamespace or gateway.namespace>, container: envoy}.
    stream_labels: (
        Annotated[dict[str, str], AfterValidator(_no_problem(stream_labels_problem))] | None
    ) = None
    # Labels of the rule ConfigMap: what the Loki ruler's sidecar loads (loki chart: loki_rule).
    rule_labels: Labels


class GraphqlObservabilitySettings(_Model):
    """Metrics, request log and alerts of the GraphQL pilot (its rc file's server plugin)."""

    # /metrics on its own port, a ServiceMonitor and the pilot's alerts.
    metrics: bool
    # One JSON line per operation on stdout (operation, status, role, duration, traceparent).
    request_log: bool
    # Distinct operation names the metrics keep apart; later names are counted as "other".
    max_operation_names: int = Field(ge=1, le=10_000)
    # GraphqlSlowResponses fires when the p95 response time stays above this.
    slow_seconds: float = Field(gt=0, le=60)


class ObservabilitySettings(_Model):
    alerts: AlertSettings
    graphql: GraphqlObservabilitySettings
    synthetic: SyntheticSettings
    loki: LokiSettings
    runbook_base_url: str = Field(pattern=r"^https://")
    prometheus_namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    # Added to ServiceMonitors, PodMonitors and the PrometheusRule: what the cluster's Prometheus
    # selects them by (kube-prometheus-stack: `release: <helm release name>`).
    monitoring_labels: Labels = Field(default_factory=dict)


class BackupSettings(_Model):
    """CloudNativePG backups (object store + WAL archive) and the monthly restore check."""

    enabled: bool
    method: Literal["plugin", "barmanObjectStore"]
    destination_path: Annotated[str, AfterValidator(_object_store_path)] | None = None
    endpoint_url: Annotated[str, AfterValidator(_http_url)] | None = None
    credentials_secret: SecretName | None = None
    retention: Retention
    schedule: CnpgSchedule
    restore_check_schedule: CronJobSchedule

    @model_validator(mode="after")
    def _destination(self) -> BackupSettings:
        if self.enabled and not (self.destination_path and self.credentials_secret):
            raise ValueError(
                "enabled backups need 'destinationPath' (s3://, gs:// or https://) "
                "and 'credentialsSecret'"
            )
        return self


class GraphqlSettings(_Model):
    """The PostGraphile pilot."""

    enabled: bool
    schemas: list[SqlName] = Field(min_length=1)
    graphiql: bool
    replicas: ReplicaRange
    db_pool: int = Field(ge=1, le=100)
    resources: ResourceSettings
    # The pilot image the pipeline built from components/graphql/Dockerfile and pushed
    # (registry/path:tag or @sha256:digest). Unset: staging runs the pipeline's default
    # reference for this tree (python -m tools.graphql_image); prod refuses to start without it.
    image: Annotated[str, AfterValidator(_image)] | None = None


class AdvisorSettings(_Model):
    """The advisor's scheduled run in the cluster (docs/advisor.md, "Scheduled run")."""

    enabled: bool
    schedule: CronJobSchedule
    # The advisor image the pipeline built from tools/advisor/Dockerfile and pushed. Unset:
    # staging runs the pipeline's default reference for this tree (python -m
    # tools.advisor_image); prod refuses to start without it.
    image: Annotated[str, AfterValidator(_image)] | None = None


class GitopsSettings(_Model):
    """Render manifests to a directory instead of applying them (for Argo CD / Flux)."""

    render_directory: str | None = None


class ServiceSettings(_Model):
    """A machine client: gets its own API role ``api_service_<name>``."""

    name: SqlName
    schemas: list[SqlName] | None = None
    access: Literal["read", "write", "all"] = "read"
    statement_timeout: Duration | None = None
    # Tenanted domains: the one tenant its tokens must name, or all tenants (audited).
    tenant: str | None = Field(
        default=None, min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$"
    )
    cross_tenant: bool = False


class StatementTimeouts(_Model):
    anonymous: Duration
    user: Duration
    editor: Duration
    admin: Duration
    service: Duration


class RoleSettings(_Model):
    statement_timeout: StatementTimeouts


class QueryInsightSettings(_Model):
    """pg_stat_statements and auto_explain on the CloudNativePG cluster (docs/advisor.md)."""

    statements_max: int = Field(ge=100, le=1_000_000)
    statements_track: Literal["top", "all"]
    auto_explain_min_duration: Duration
    auto_explain_analyze: bool
    auto_explain_sample_rate: float = Field(gt=0, le=1)
    qualstats: bool


class PostgresSettings(_Model):
    mode: Literal["cnpg", "external"]
    instances: int = Field(ge=1, le=9)
    storage_size: ByteQuantity
    storage_class: SecretName | None = None
    max_connections: int = Field(ge=20, le=10_000)
    database: SqlName
    port: int = Field(ge=1, le=65535)
    admin_user: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    sslmode: Literal["disable", "require", "verify-ca", "verify-full"]
    resources: ResourceSettings
    image: PinnedImage
    query_insights: QueryInsightSettings
    host: DbHost | None = None
    ro_host: DbHost | None = None
    ca_secret: SecretName | None = None
    provider_ca_file: str | None = Field(default=None, min_length=1)
    """PEM file (on the machine running Pulumi) the pulumi-postgresql provider verifies with."""

    @model_validator(mode="after")
    def _mode_fields(self) -> PostgresSettings:
        if self.mode == "external" and not (self.host and self.ro_host):
            raise ValueError("mode 'external' needs both 'host' (rw) and 'roHost' (ro)")
        if self.mode == "cnpg" and (self.host or self.ro_host):
            raise ValueError("'host'/'roHost' are only for mode 'external'; remove them")
        return self


class GroupRoleSettings(_Model):
    """One entry of ``auth.groupRoles``: the API role a group maps to and its precedence."""

    # An API role name (api_* is reserved for domains and services): checked in _auth_checks.
    role: str = Field(min_length=1, max_length=63)
    priority: int


class AuthSettings(_Model):
    mode: Literal["hs256", "jwks"]
    audience: str = Field(min_length=1)
    # Checked against PostgREST's JSPath syntax in _auth_checks (a message that names the fix).
    role_claim_key: str = Field(min_length=2)
    anonymous: bool
    jwks_url: str | None = Field(default=None, pattern=r"^https://")
    # Checked in _auth_checks against the stack's API roles.
    base_role: str | None = Field(default=None, min_length=1, max_length=63)
    group_roles: dict[Annotated[str, Field(min_length=1, max_length=256)], GroupRoleSettings] = (
        Field(default_factory=dict)
    )


class AuditExportSettings(_Model):
    """The exporter shipping audit.log as JSON lines to a spool volume (docs/audit.md)."""

    enabled: bool
    batch_size: int = Field(ge=1, le=100_000)
    interval_seconds: int = Field(ge=1, le=3600)
    keep_files: int = Field(ge=1, le=10_000)
    spool_size: ByteQuantity
    storage_class: SecretName | None = None

    @model_validator(mode="after")
    def _spool_fits(self) -> AuditExportSettings:
        from components.render.audit_export import ROTATE_BYTES

        match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", self.spool_size)
        needed = (self.keep_files + 2) * ROTATE_BYTES
        if match and float(match[1]) * _BYTE_SUFFIXES.get(match[2], 1) < needed:
            raise ValueError(
                f"spoolSize {self.spool_size!r} cannot hold keepFiles + 2 files of 64Mi "
                f"({needed // 1024**2}Mi): raise spoolSize or lower keepFiles"
            )
        return self


class AuditSettings(_Model):
    """pgaudit's statement classes in the server log, and the export of audit.log."""

    pgaudit_log: list[Literal["read", "write", "function", "role", "ddl", "misc", "misc_set"]] = (
        Field(min_length=1)
    )
    export: AuditExportSettings


def _cdc_table_key(value: str) -> str:
    from components.render.cdc import table_key_problem

    problem = table_key_problem(value)
    if problem:
        raise ValueError(f"{value!r}: {problem}")
    return value


def _column_type(value: str) -> str:
    from components.render.cdc import column_type_problem

    problem = column_type_problem(value)
    if problem:
        raise ValueError(problem)
    return value


ColumnName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]


class CdcTableSettings(_Model):
    """One table published to the analytics database (docs/database.md, "Change data capture").

    ``columns`` (name -> type) is what leaves the table: personal columns are simply not listed.
    ``key`` is the table's replica identity (its primary key, or the index of REPLICA IDENTITY
    USING INDEX); it is published and becomes the target's primary key. ``rowFilter`` may read
    only key columns (PostgreSQL 15 refuses UPDATE and DELETE of the table otherwise).
    """

    key: list[ColumnName] = Field(min_length=1)
    columns: dict[ColumnName, Annotated[str, AfterValidator(_column_type)]] = Field(min_length=1)
    row_filter: str | None = Field(default=None, max_length=1000)


class CdcSettings(_Model):
    """Logical replication of chosen tables into the analytics database of the same cluster."""

    database: SqlName
    # PostgreSQL's max_slot_wal_keep_size: WAL a stalled slot may hold before it is invalidated.
    max_slot_wal_keep_size: ByteQuantity
    tables: dict[Annotated[str, AfterValidator(_cdc_table_key)], CdcTableSettings] = Field(
        default_factory=dict
    )


class StackSettings(_Model):
    """The validated configuration of one stack."""

    stack: str
    environment: Literal["staging", "prod"]
    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    public_base_url: Annotated[str, AfterValidator(_public_base_url)]
    postgres: PostgresSettings
    roles: RoleSettings
    auth: AuthSettings
    domains: dict[SqlName, DomainSettings] = Field(min_length=1)
    services: list[ServiceSettings] = Field(default_factory=list)
    gateway: GatewayRef
    vault: VaultSettings
    pgbouncer: PgBouncerSettings
    reserved_connections: ReservedConnections
    observability: ObservabilitySettings
    backup: BackupSettings
    graphql: GraphqlSettings
    advisor: AdvisorSettings
    gitops: GitopsSettings
    audit: AuditSettings
    cdc: CdcSettings
    # Keep the Cluster, ObjectStore, Vault KV entries and schemas from deletion (protection.py).
    protect_data: bool
    # schema.table.column -> {API role: masking function}; checked in _masking_checks.
    masking: dict[str, dict[str, str]] = Field(default_factory=dict)
    postgres_admin_password: SecretStr | None = None
    jwt_secret: SecretStr | None = None

    def schema_of(self, domain: str) -> str:
        """The schema a domain exposes (defaults to the domain name)."""
        return self.domains[domain].schema_name or domain

    def database_of(self, domain: str) -> str:
        """The database a domain's API reads (defaults to postgres.database)."""
        return self.domains[domain].database or self.postgres.database

    def copy_domains(self) -> tuple[str, ...]:
        """Domains served from the CDC copies in cdc.database (from the read replicas)."""
        return tuple(
            name
            for name in self.domains
            if self.database_of(name) != self.postgres.database
            and self.database_of(name) == self.cdc.database
        )


@dataclass(frozen=True)
class ConfigProblem:
    """One bad config value: where it is, what it was, what is allowed."""

    path: str
    message: str
    value: Any = None

    def __str__(self) -> str:
        shown = "" if self.value is None else f" (got {self.value!r})"
        return f"{self.path}: {self.message}{shown}"


class SettingsError(Exception):
    """Raised with every problem of a stack config; the CLI prints them and exits 2."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid stack configuration ({len(self.problems)} problems):\n{lines}")


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts = [f"[{part}]" if isinstance(part, int) else str(part) for part in loc]
    return f"{NAMESPACE}:" + ".".join(parts).replace(".[", "[")


def _problems_from(error: ValidationError) -> list[ConfigProblem]:
    problems = []
    for item in error.errors():
        loc = tuple(part for part in item["loc"] if part != "[key]")
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = REMOVED_KEYS.get(
                _key_path(loc), "unknown key (check the spelling; see README 'Configuration')"
            )
        value = item.get("input")
        shown = value if isinstance(value, str | int | float | bool) else None
        problems.append(ConfigProblem(_key_path(loc), message, shown))
    return problems


def _problem(key: str, message: str, value: Any = None) -> ConfigProblem:
    return ConfigProblem(f"{NAMESPACE}:{key}", message, value)


def _group_role_checks(s: StackSettings) -> list[ConfigProblem]:
    """auth.baseRole and auth.groupRoles name API roles this stack creates."""
    problems = []
    mapped = ["api_user", "api_editor", "api_admin", *(f"api_service_{c.name}" for c in s.services)]
    base_allowed = ["api_anonymous", *mapped] if s.auth.anonymous else mapped
    base = s.auth.base_role
    if base is not None and base not in base_allowed:
        problems.append(
            _problem("auth.baseRole", f"must be one of {base_allowed} in this stack", base)
        )
    if s.auth.group_roles and base is None:
        problems.append(
            _problem(
                "auth.baseRole",
                "required with auth.groupRoles: the role that groups elevate from "
                f"(one of {base_allowed})",
            )
        )
    for group, entry in s.auth.group_roles.items():
        if entry.role not in mapped:
            problems.append(
                _problem(f"auth.groupRoles.{group}.role", f"must be one of {mapped}", entry.role)
            )
        if not group.isprintable():
            problems.append(
                _problem("auth.groupRoles", "group names are printable text", repr(group))
            )
    return problems


def _auth_checks(s: StackSettings) -> list[ConfigProblem]:
    problems = []
    prod = s.environment == "prod"
    if prod and s.auth.anonymous:
        problems.append(
            _problem(
                "auth.anonymous", "prod must not allow anonymous access: set it to false", True
            )
        )
    if prod and s.auth.mode != "jwks":
        problems.append(
            _problem(
                "auth.mode",
                "prod verifies tokens with the identity provider's keys: use 'jwks'",
                s.auth.mode,
            )
        )
    if s.auth.mode == "jwks" and not s.auth.jwks_url:
        problems.append(
            _problem(
                "auth.jwksUrl",
                "required when auth.mode is 'jwks': the https URL of the identity provider's JWKS",
            )
        )
    try:
        validate_audience(s.auth.audience)
    except ValueError as error:
        problems.append(_problem("auth.audience", str(error), s.auth.audience))
    try:
        validate_role_claim_key(s.auth.role_claim_key)
    except ValueError as error:
        problems.append(_problem("auth.roleClaimKey", str(error), s.auth.role_claim_key))
    problems += _group_role_checks(s)
    if s.jwt_secret is not None and s.auth.mode != "hs256":
        problems.append(
            _problem("jwtSecret", "only used with auth.mode 'hs256': remove it from this stack")
        )
    elif s.jwt_secret is not None and len(s.jwt_secret.get_secret_value()) < 32:
        problems.append(
            _problem("jwtSecret", "PostgREST needs at least 32 characters (48+ recommended)")
        )
    return problems


def _vault_checks(s: StackSettings) -> list[ConfigProblem]:
    seconds = durations.parse_duration(s.vault.refresh_interval)
    if not 60 <= seconds <= 86_400:
        return [
            _problem(
                "vault.refreshInterval",
                "External Secrets re-reads Vault every 1m..24h: use e.g. '15m' or '1h'",
                s.vault.refresh_interval,
            )
        ]
    return []


def _postgres_checks(s: StackSettings) -> list[ConfigProblem]:
    problems = []
    if s.environment == "prod" and s.postgres.sslmode in {"disable", "require"}:
        problems.append(
            _problem(
                "postgres.sslmode",
                "prod verifies the database certificate: use 'verify-full' (or 'verify-ca')",
                s.postgres.sslmode,
            )
        )
    problems += _provider_ca_checks(s)
    if s.postgres.query_insights.qualstats:
        from components.render.postgres_cluster import qualstats_problem

        problem = qualstats_problem(s.postgres.image)
        if s.postgres.mode == "external":
            problem = "mode 'external': the provider's server settings decide what it preloads"
        if problem:
            problems.append(_problem("postgres.queryInsights.qualstats", problem, True))
    if s.postgres.mode == "external":
        if s.postgres_admin_password is None:
            problems.append(
                _problem(
                    "postgresAdminPassword",
                    "required in postgres.mode 'external': "
                    "pulumi config set --secret pgplatform:postgresAdminPassword",
                )
            )
        if s.postgres.sslmode.startswith("verify") and not s.postgres.ca_secret:
            problems.append(
                _problem(
                    "postgres.caSecret",
                    f"sslmode {s.postgres.sslmode!r} needs the name of a Secret holding ca.crt",
                )
            )
    return problems


def _provider_ca_checks(s: StackSettings) -> list[ConfigProblem]:
    """The pulumi-postgresql provider verifies the server only against a CA file it can read."""
    from components.inputs import CLUSTER_NAME

    verifying = s.postgres.sslmode in {"verify-ca", "verify-full"}
    if verifying and not s.postgres.provider_ca_file:
        source = (
            f"the ca.crt of the Secret '{CLUSTER_NAME}-ca' CloudNativePG creates"
            if s.postgres.mode == "cnpg"
            else "the CA that signed the database's certificate"
        )
        return [
            _problem(
                "postgres.providerCaFile",
                f"postgres.sslmode {s.postgres.sslmode!r} makes the pulumi-postgresql provider "
                "verify the server certificate: set the path (relative to the project directory "
                f"on the machine running pulumi) of a PEM file with {source}; "
                "see docs/database.md 'The provider's CA'",
            )
        ]
    if not verifying and s.postgres.provider_ca_file:
        return [
            _problem(
                "postgres.providerCaFile",
                "only read when postgres.sslmode is 'verify-ca' or 'verify-full': remove it "
                "or raise the sslmode",
                s.postgres.provider_ca_file,
            )
        ]
    return []


def _domain_checks(s: StackSettings) -> list[ConfigProblem]:
    problems = []
    schemas: dict[str, str] = {}
    for name, domain in s.domains.items():
        schema = s.schema_of(name)
        if schema in schemas:
            problems.append(
                _problem(
                    f"domains.{name}.schema",
                    f"schema already exposed by domain {schemas[schema]!r}",
                    schema,
                )
            )
        schemas[schema] = name
        if not _DNS_FORM.match(name.replace("_", "-")):
            problems.append(
                _problem(
                    f"domains.{name}",
                    "names Kubernetes objects with '_' as '-': start with a letter and end "
                    "with a letter or digit",
                    name,
                )
            )
        if s.environment == "prod" and domain.replicas.min < 2:
            problems.append(
                _problem(
                    f"domains.{name}.replicas.min",
                    "prod runs at least 2 replicas per API",
                    domain.replicas.min,
                )
            )
        if domain.read_from_replicas and s.postgres.mode == "cnpg" and s.postgres.instances < 2:
            problems.append(
                _problem(
                    f"domains.{name}.readFromReplicas",
                    "needs postgres.instances >= 2 (there is no read replica)",
                    True,
                )
            )
    return problems + _migration_checks(s)


def _migration_checks(s: StackSettings) -> list[ConfigProblem]:
    """The migrations of the stack's domains (migrations/<domain>/) as the Job would read them."""
    from components.render.migrations import MigrationError, plan_migrations

    try:
        plan_migrations(tuple(s.domains))
    except MigrationError as error:
        return [_problem("domains", f"migrations/{error}", sorted(s.domains))]
    return []


def _service_checks(s: StackSettings) -> list[ConfigProblem]:
    problems = []
    seen: set[str] = set()
    for index, service in enumerate(s.services):
        if service.name in seen:
            problems.append(
                _problem(f"services[{index}].name", "duplicate service name", service.name)
            )
        seen.add(service.name)
        problems += [
            _problem(
                f"services[{index}].schemas", f"unknown domain; allowed: {sorted(s.domains)}", d
            )
            for d in service.schemas or ()
            if d not in s.domains
        ]
    return problems


def _tenancy_checks(s: StackSettings) -> list[ConfigProblem]:
    """Tenant-bound machine clients: one binding at most, and a tenanted domain to apply to."""
    problems = []
    tenanted = sorted(name for name, domain in s.domains.items() if domain.tenancy)
    for index, service in enumerate(s.services):
        if service.tenant is None and not service.cross_tenant:
            continue
        if service.tenant is not None and service.cross_tenant:
            problems.append(
                _problem(
                    f"services[{index}].crossTenant",
                    "a machine client is either scoped to one tenant (tenant) or cross-tenant "
                    "(crossTenant: true), not both",
                    True,
                )
            )
        key = "tenant" if service.tenant is not None else "crossTenant"
        domains = service.schemas if service.schemas is not None else sorted(s.domains)
        if not any(d in tenanted for d in domains):
            problems.append(
                _problem(
                    f"services[{index}].{key}",
                    f"none of its domains is tenanted (domains.<name>.tenancy); tenanted: "
                    f"{tenanted}",
                    service.tenant if service.tenant is not None else True,
                )
            )
    if s.graphql.enabled:
        problems += [
            _problem(
                f"domains.{name}.tenancy",
                "the GraphQL pilot does not name the domain of a request, so tenant rules "
                "cannot apply there: remove the domain from graphql.schemas",
                name,
            )
            for name in s.graphql.schemas
            if name in tenanted
        ]
    return problems


def _repeated(values: Iterable[str]) -> list[str]:
    counts = Counter(values)
    return sorted(value for value, count in counts.items() if count > 1)


def _feature_checks(s: StackSettings) -> list[ConfigProblem]:
    problems = [
        _problem("graphql.schemas", "lists a domain twice", twice)
        for twice in _repeated(s.graphql.schemas)
    ]
    problems += [
        _problem(f"services[{index}].schemas", "lists a domain twice", twice)
        for index, service in enumerate(s.services)
        for twice in _repeated(service.schemas or ())
    ]
    if s.graphql.enabled:
        problems += [
            _problem("graphql.schemas", f"unknown domain; allowed: {sorted(s.domains)}", d)
            for d in s.graphql.schemas
            if d not in s.domains
        ]
    if s.environment == "prod" and s.graphql.graphiql:
        problems.append(
            _problem("graphql.graphiql", "GraphiQL stays off in prod: set it to false", True)
        )
    if s.environment == "prod" and s.postgres.mode == "cnpg" and not s.backup.enabled:
        problems.append(
            _problem("backup.enabled", "prod keeps backups with WAL archiving: set it to true")
        )
    if s.backup.enabled and s.postgres.mode == "cnpg":
        from components.render.postgres_cluster import backup_method_problem

        problem = backup_method_problem(s.backup.method, s.postgres.image)
        if problem:
            problems.append(
                _problem("backup.method", f"{problem} (postgres.image)", s.backup.method)
            )
    if s.backup.enabled and s.postgres.mode == "external":
        problems.append(
            _problem(
                "backup.enabled",
                "backups are configured on the managed service in postgres.mode 'external'",
                True,
            )
        )
    if s.environment == "prod" and s.pgbouncer.server_tls_sslmode not in {
        "verify-ca",
        "verify-full",
    }:
        problems.append(
            _problem(
                "pgbouncer.serverTlsSslmode",
                "prod verifies the database certificate: use 'verify-full' (or 'verify-ca')",
                s.pgbouncer.server_tls_sslmode,
            )
        )
    return problems


def _cluster_fit_checks(s: StackSettings) -> list[ConfigProblem]:
    """Labels for the cluster's Prometheus and browser origins that fit the environment."""
    problems = [
        _problem(
            f"observability.monitoringLabels.{key}",
            "app.kubernetes.io/* labels are the platform's own: choose another key "
            "(kube-prometheus-stack selects by 'release')",
            value,
        )
        for key, value in s.observability.monitoring_labels.items()
        if key.startswith("app.kubernetes.io/")
    ]
    if s.environment == "prod":
        problems += [
            _problem(
                f"domains.{name}.corsAllowedOrigins[{index}]",
                "prod allows only https origins",
                origin,
            )
            for name, domain in s.domains.items()
            for index, origin in enumerate(domain.cors_allowed_origins)
            if not origin.startswith("https://")
        ]
    return problems


def _cache_control_checks(s: StackSettings) -> list[ConfigProblem]:
    """domains.<name>.cacheControl: API roles of the stack; shared caches only for anonymous."""
    problems = []
    roles = ["api_user", "api_editor", "api_admin", *(f"api_service_{c.name}" for c in s.services)]
    allowed = ["api_anonymous", *roles] if s.auth.anonymous else roles
    for name, domain in s.domains.items():
        for role, value in domain.cache_control.items():
            key = f"domains.{name}.cacheControl.{role}"
            if role not in allowed:
                problems.append(_problem(key, f"not an API role of this stack: {allowed}", role))
                continue
            try:
                validate_cache_control(value, shared=role == "api_anonymous")
            except ValueError as error:
                problems.append(_problem(key, str(error), value))
    return problems


def _masking_checks(s: StackSettings) -> list[ConfigProblem]:
    """masking: columns of exposed schemas, API roles of the stack, known functions."""
    problems = []
    roles = ["api_user", "api_editor", "api_admin", *(f"api_service_{c.name}" for c in s.services)]
    allowed = ["api_anonymous", *roles] if s.auth.anonymous else roles
    schemas = [s.schema_of(name) for name in s.domains]
    for column, rules in s.masking.items():
        key = f"masking.{column}"
        try:
            schema, _, _ = parse_column_key(column)
        except ValueError as error:
            problems.append(_problem(key, str(error), column))
            continue
        if schema not in schemas:
            problems.append(
                _problem(key, f"schema {schema!r} is not served by a domain: {schemas}", column)
            )
        if f"{schema}{PRIVATE_SUFFIX}" in schemas:
            problems.append(
                _problem(
                    key,
                    f"{schema}{PRIVATE_SUFFIX} is where masked tables of {schema} move; "
                    "no domain may serve it",
                    column,
                )
            )
        if not rules:
            problems.append(
                _problem(key, f"name at least one role: {{role: function}} ({allowed})")
            )
        for role, function in rules.items():
            if role not in allowed:
                problems.append(
                    _problem(f"{key}.{role}", f"not an API role of this stack: {allowed}", role)
                )
            try:
                parse_function(function)
            except ValueError as error:
                problems.append(_problem(f"{key}.{role}", str(error), function))
    return problems


def _cross_checks(s: StackSettings) -> list[ConfigProblem]:
    """Rules spanning several keys; run once every key is individually valid."""
    return (
        _auth_checks(s)
        + _cluster_fit_checks(s)
        + _vault_checks(s)
        + _postgres_checks(s)
        + _domain_checks(s)
        + _cache_control_checks(s)
        + _masking_checks(s)
        + _service_checks(s)
        + _tenancy_checks(s)
        + _feature_checks(s)
        + _graphql_checks(s)
        + _advisor_checks(s)
        + _pgbouncer_checks(s)
        + _budget_checks(s)
        + _audit_checks(s)
        + _cdc_checks(s)
        + _copy_database_checks(s)
    )


def _audit_checks(s: StackSettings) -> list[ConfigProblem]:
    """Prod records every schema and role change in pgaudit's log."""
    from components.render.audit import REQUIRED_IN_PROD

    missing = [name for name in REQUIRED_IN_PROD if name not in s.audit.pgaudit_log]
    if s.environment != "prod" or not missing:
        return []
    return [
        _problem(
            "audit.pgauditLog",
            f"prod must log the pgaudit classes {list(REQUIRED_IN_PROD)}; missing {missing}",
            ", ".join(s.audit.pgaudit_log),
        )
    ]


def _cdc_checks(s: StackSettings) -> list[ConfigProblem]:
    """cdc.tables: tables of the stack's domain schemas, key published, filters on the key."""
    from components.render.cdc import row_filter_problem

    problems: list[ConfigProblem] = []
    if not s.cdc.tables:
        return problems
    if s.cdc.database == s.postgres.database:
        problems.append(
            _problem(
                "cdc.database",
                "the analytics database must differ from postgres.database (logical replication "
                "matches tables by schema and name)",
                s.cdc.database,
            )
        )
    schemas = sorted(s.schema_of(d) for d in s.domains)
    for name, table in s.cdc.tables.items():
        key = f"cdc.tables.{name}"
        if name.split(".")[0] not in schemas:
            problems.append(_problem(key, f"not in a domain's schema; allowed: {schemas}", name))
        # A publication carries raw values: a masked column never leaves through it.
        for column in table.columns:
            roles = s.masking.get(f"{name}.{column}")
            if roles:
                problems.append(
                    _problem(
                        f"{key}.columns.{column}",
                        f"masked for {sorted(roles)} (masking.{name}.{column}): a publication "
                        "carries its raw values to the analytics database; leave it out",
                        column,
                    )
                )
        unpublished = [c for c in table.key if c not in table.columns]
        if unpublished:
            problems.append(
                _problem(
                    f"{key}.key",
                    f"{unpublished} must be in columns: a column list must cover the replica "
                    "identity (PostgreSQL 15 refuses UPDATE and DELETE otherwise)",
                )
            )
        if len(set(table.key)) != len(table.key):
            problems.append(_problem(f"{key}.key", "lists a column twice"))
        if table.row_filter is not None:
            problem = row_filter_problem(table.row_filter, table.key)
            if problem:
                problems.append(_problem(f"{key}.rowFilter", problem, table.row_filter))
    if s.postgres.mode == "cnpg":
        keep = quantity_bytes(s.cdc.max_slot_wal_keep_size) or 0
        if keep >= (quantity_bytes(s.postgres.storage_size) or 0) / 2:
            problems.append(
                _problem(
                    "cdc.maxSlotWalKeepSize",
                    f"must be at most half of postgres.storageSize ({s.postgres.storage_size}): "
                    "a stalled slot may hold this much WAL on the primary's volume",
                    s.cdc.max_slot_wal_keep_size,
                )
            )
    return problems


def _copy_database_checks(s: StackSettings) -> list[ConfigProblem]:
    """domains.<d>.database: the app database, or the CDC database read on the replicas."""
    from components.render.migrations import MIGRATIONS_DIR, MigrationError, read_domain

    problems: list[ConfigProblem] = []
    allowed = sorted({s.postgres.database, s.cdc.database})
    published = sorted({name.split(".")[0] for name in s.cdc.tables})
    for name, domain in s.domains.items():
        key = f"domains.{name}.database"
        if domain.database is None or domain.database == s.postgres.database:
            continue
        if domain.database != s.cdc.database:
            problems.append(
                _problem(
                    key,
                    f"one of {allowed} (postgres.database, or cdc.database to serve the CDC "
                    "copies)",
                    domain.database,
                )
            )
            continue
        if not s.cdc.tables:
            problems.append(
                _problem(key, "the CDC database holds nothing: cdc.tables lists no table", True)
            )
            continue
        if not domain.read_from_replicas:
            problems.append(
                _problem(
                    f"domains.{name}.readFromReplicas",
                    f"must be true while domains.{name}.database is the CDC database: "
                    "replication alone writes the copies, the API reads them on the replicas",
                    False,
                )
            )
        schema = s.schema_of(name)
        if schema in published:
            problems.append(
                _problem(
                    key,
                    f"cdc.tables copies tables of schema {schema!r} into the database that "
                    "serves it: publish other domains' tables only",
                    domain.database,
                )
            )
        if s.graphql.enabled and name in s.graphql.schemas:
            problems.append(
                _problem(
                    "graphql.schemas",
                    f"{name!r} is served from the CDC database, which the GraphQL pilot does "
                    "not reach: remove it",
                    name,
                )
            )
        problems += [
            _problem(
                f"masking.{column}",
                f"domain {name!r} is served from the CDC database, where no table of it is "
                "masked: mask the source table's column in its own domain",
                column,
            )
            for column in s.masking
            if column.split(".")[0] == schema
        ]
        directory = MIGRATIONS_DIR / name
        try:
            migrations = read_domain(name, directory) if directory.is_dir() else ()
        except MigrationError:
            continue  # _migration_checks reports it
        for migration in migrations:
            for other in migration.requires:
                if other in s.domains and other != name and s.schema_of(other) not in published:
                    problems.append(
                        _problem(
                            key,
                            f"migrations/{migration.label} requires domain {other!r}, whose "
                            f"tables the CDC database does not hold: list the ones it reads "
                            f"in cdc.tables (copied schemas: {published})",
                            domain.database,
                        )
                    )
    return problems


def _pgbouncer_checks(s: StackSettings) -> list[ConfigProblem]:
    """PgBouncer verifies the database certificate only with a CA to verify it against."""
    mode = s.pgbouncer.server_tls_sslmode
    if (
        mode in {"verify-ca", "verify-full"}
        and s.postgres.mode == "external"
        and not (s.postgres.ca_secret)
    ):
        return [
            _problem(
                "postgres.caSecret",
                f"pgbouncer.serverTlsSslmode {mode!r} needs the name of a Secret holding ca.crt",
            )
        ]
    return []


def _budget_checks(s: StackSettings) -> list[ConfigProblem]:
    """Connection budget (components/render/budget.py): pools + reserved <= max_connections,
    and every API's connections at full scale <= what the PgBouncer replicas accept."""
    from components.render.budget import compute_budget

    budget = compute_budget(budget_input(s))
    return [_problem(problem.key, problem.message) for problem in budget.problems]


def budget_input(s: StackSettings) -> BudgetInput:
    """The connection budget of the stack (components/render/budget.py).

    A pool's users are the login roles that connect to it: PostgREST (``postgrest``) uses the
    ro pool for domains reading from replicas and the rw pool for the others; the GraphQL pilot
    (``postgraphile``) uses the rw pool. A domain serving the CDC copies bypasses both.
    """
    from components.render.access import AUTHENTICATOR, GRAPHQL_AUTHENTICATOR
    from components.render.budget import ApiClients, BudgetInput, PoolUsers
    from components.render.pgbouncer import AUTH_USER_MAX_CONNECTIONS, RO_SUFFIX, RW_SUFFIX

    rw: list[str] = []
    ro: list[str] = []
    copies = s.copy_domains()
    pooled = [d for name, d in s.domains.items() if name not in copies]
    if any(not d.read_from_replicas for d in pooled):
        rw.append(AUTHENTICATOR)
    if any(d.read_from_replicas for d in pooled):
        ro.append(AUTHENTICATOR)
    clients = [
        # Each PostgREST pod's schema-cache reloader adds one client connection. An API serving
        # the CDC copies connects to the replicas itself (no pooler has its database).
        ApiClients(
            name=f"domains.{name}",
            max_replicas=d.replicas.max,
            db_pool=d.db_pool,
            pollers=1,
            direct=name in copies,
        )
        for name, d in s.domains.items()
    ]
    if s.graphql.enabled:
        rw.append(GRAPHQL_AUTHENTICATOR)
        clients.append(
            ApiClients(
                name="graphql", max_replicas=s.graphql.replicas.max, db_pool=s.graphql.db_pool
            )
        )
    db = s.postgres.database
    pg = s.pgbouncer
    return BudgetInput(
        max_connections=s.postgres.max_connections,
        reserved=s.reserved_connections.model_dump(),
        pgbouncer_replicas=pg.replicas,
        default_pool_size=pg.default_pool_size,
        reserve_pool_size=pg.reserve_pool_size,
        lookup_connections=AUTH_USER_MAX_CONNECTIONS,
        max_client_conn=pg.max_client_conn,
        pools=(
            PoolUsers(pool=db + RW_SUFFIX, users=tuple(rw)),
            PoolUsers(pool=db + RO_SUFFIX, users=tuple(ro)),
        ),
        clients=tuple(clients),
    )


def _graphql_checks(s: StackSettings) -> list[ConfigProblem]:
    """Prod runs the pilot image its own pipeline pushed, named explicitly."""
    if s.environment != "prod" or not s.graphql.enabled or s.graphql.image:
        return []
    return [
        _problem(
            "graphql.image",
            "prod runs the pilot image the deploy workflow built and pushed: set it, e.g. "
            "pulumi config set --path pgplatform:graphql.image "
            "<registry>/<path>:<tag from python -m tools.graphql_image --tag>",
        )
    ]


def _advisor_checks(s: StackSettings) -> list[ConfigProblem]:
    """Prod runs the advisor image its own pipeline pushed, named explicitly."""
    if s.environment != "prod" or not s.advisor.enabled or s.advisor.image:
        return []
    return [
        _problem(
            "advisor.image",
            "prod runs the advisor image the deploy workflow built and pushed: set it, e.g. "
            "pulumi config set --path pgplatform:advisor.image "
            "<registry>/<path>:<tag from python -m tools.advisor_image --tag>",
        )
    ]


def parse_settings(
    stack: str, raw: Mapping[str, Any], secret_keys: Iterable[str] = ()
) -> StackSettings:
    """Validate ``raw`` (config keys without the ``pgplatform:`` prefix) over the env defaults."""
    # An empty value is the project file's "use the environment default" (see Pulumi.yaml).
    raw = {key: value for key, value in raw.items() if value != ""}
    environment = raw.pop("environment", stack)
    if environment not in ENVIRONMENTS:
        raise SettingsError(
            [
                ConfigProblem(
                    f"{NAMESPACE}:environment",
                    f"unknown environment; allowed: {list(ENVIRONMENTS)} "
                    "(defaults to the stack name)",
                    environment,
                )
            ]
        )
    problems = [
        ConfigProblem(
            f"{NAMESPACE}:{key}",
            f"must be a secret: pulumi config set --secret {NAMESPACE}:{key} <value>",
        )
        for key in sorted(SECRET_KEYS & raw.keys() - set(secret_keys))
    ]
    merged = deep_merge(stack_defaults(environment), raw)
    domains = merged.get("domains")
    if isinstance(domains, dict):
        merged["domains"] = {
            name: deep_merge(domain_defaults(environment), body) if isinstance(body, dict) else body
            for name, body in domains.items()
        }
    merged.update(stack=stack, environment=environment)
    try:
        settings = StackSettings.model_validate(merged)
    except ValidationError as error:
        raise SettingsError(problems + _problems_from(error)) from None
    problems += _cross_checks(settings)
    if problems:
        raise SettingsError(problems)
    return settings


def decode_config_value(value: str) -> Any:
    """Pulumi hands objects over as JSON text and scalars as plain text."""
    if value.startswith(("{", "[")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # reported by validation as "not a valid object/list" with its key
    return value


def load_settings() -> StackSettings:
    """Read this stack's ``pgplatform:`` config from the Pulumi engine."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    prefix = f"{NAMESPACE}:"
    # The language host passes config as PULUMI_CONFIG; tests and the renderer set it in-process.
    values = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    secret_env = set(runtime_config.get_config_secret_keys_env())
    raw = {
        key.removeprefix(prefix): decode_config_value(str(value))
        for key, value in values.items()
        if key.startswith(prefix)
    }
    secrets = {
        key.removeprefix(prefix)
        for key in values
        if key.startswith(prefix) and (key in secret_env or runtime_config.is_config_secret(key))
    }
    return parse_settings(pulumi.get_stack(), raw, secrets)
