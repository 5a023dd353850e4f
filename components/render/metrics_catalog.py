"""Where every metric of the alerts and dashboards comes from, and how its series are labelled.

An alert on a metric name that no exporter produces never fires, and nothing tells you. So each
source is pinned here with its version, the exporter queries we ship are data in this module, the
PostgreSQL metric names differ explicitly between the two database modes, and ``metric_names``
lets the tests prove every name used in an expression against a documented list or a real scrape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from components.render.baseline import RLS_GUARD_PRESENT

PostgresMode = Literal["cnpg", "external"]
POSTGRES_MODES: Final = ("cnpg", "external")


@dataclass(frozen=True, kw_only=True)
class MetricSource:
    """One producer of metrics, pinned to the version whose metric names we use."""

    name: str
    version: str
    image: str | None
    url: str
    list_file: str | None  # tests/data/metrics/<list_file>; None = proven by a real scrape


SOURCES: Final[tuple[MetricSource, ...]] = (
    MetricSource(
        name="postgres_exporter",
        version="0.11.1",
        image="quay.io/prometheuscommunity/postgres-exporter:v0.11.1",
        url="https://github.com/prometheus-community/postgres_exporter/tree/v0.11.1",
        list_file=None,
    ),
    MetricSource(
        name="cloudnative-pg",
        version="1.30",
        image=None,
        url="https://github.com/cloudnative-pg/cloudnative-pg/blob/main/docs/src/monitoring.md",
        list_file="cloudnative-pg-1.30.txt",
    ),
    MetricSource(
        name="plugin-barman-cloud",
        version="0.14.0",
        image=None,
        url="https://github.com/cloudnative-pg/plugin-barman-cloud/blob/v0.14.0/internal/cnpgi/instance/metrics.go",
        list_file="plugin-barman-cloud-0.14.0.txt",
    ),
    MetricSource(
        name="pgbouncer_exporter",
        version="0.12.1",
        image="quay.io/prometheuscommunity/pgbouncer-exporter:v0.12.1",
        url="https://github.com/prometheus-community/pgbouncer_exporter/blob/v0.12.1/collector.go",
        list_file="pgbouncer_exporter-0.12.1.txt",
    ),
    MetricSource(
        name="postgrest",
        version="14",
        image=None,
        url="https://docs.postgrest.org/en/v14/references/observability.html#metrics",
        list_file="postgrest-14.txt",
    ),
    MetricSource(
        name="envoy-gateway",
        version="1.8",
        image=None,
        url="https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_stats",
        list_file="envoy-gateway-1.8.txt",
    ),
    MetricSource(
        name="blackbox_exporter",
        version="0.23.0",
        image="quay.io/prometheus/blackbox-exporter:v0.23.0",
        url="https://github.com/prometheus/blackbox_exporter/blob/v0.23.0/prober/http.go",
        list_file="blackbox_exporter-0.23.0.txt",
    ),
    MetricSource(
        name="pgplatform-graphql-plugin",
        version="4.14.1",
        image=None,
        url="https://github.com/pgplatform/pgplatform/blob/main/components/render/postgraphile.py",
        list_file="pgplatform-graphql-plugin-4.14.1.txt",
    ),
    MetricSource(
        name="kube-state-metrics",
        version="2",
        image=None,
        url="https://github.com/kubernetes/kube-state-metrics/tree/main/docs/metrics/workload",
        list_file="kube-state-metrics-2.txt",
    ),
)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _check_dns_label(field: str, value: str) -> None:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(f"{field}: {value!r} is not a DNS-1123 label (a-z, 0-9, '-')")


@dataclass(frozen=True, kw_only=True)
class TargetNaming:
    """Label values the scrape configuration gives each source; must match the monitors.

    ``{domain}`` and ``{cluster}`` are replaced per domain and by the CloudNativePG cluster name.
    """

    httproute: str = "{domain}-api"
    postgrest_job: str = "{domain}-api-metrics"
    pgbouncer_job: str = "pgbouncer"
    postgres_exporter_job: str = "postgres-exporter"
    restore_check_cronjob: str = "{cluster}-restore-check"

    def __post_init__(self) -> None:
        for field in ("httproute", "postgrest_job"):
            if "{domain}" not in getattr(self, field):
                raise ValueError(f"{field}: must contain '{{domain}}' (one target per domain)")
        for field in ("pgbouncer_job", "postgres_exporter_job"):
            _check_dns_label(field, getattr(self, field))


@dataclass(frozen=True, kw_only=True)
class Selectors:
    """PromQL label matchers (without braces) scoping each source to this stack's targets."""

    namespace: str
    cluster_name: str
    postgres_mode: PostgresMode
    naming: TargetNaming

    def __post_init__(self) -> None:
        _check_dns_label("namespace", self.namespace)
        _check_dns_label("cluster_name", self.cluster_name)
        if self.postgres_mode not in POSTGRES_MODES:
            raise ValueError(f"postgres_mode: must be one of {POSTGRES_MODES}")

    @property
    def postgres(self) -> str:
        """CloudNativePG instance pods are ``<cluster>-<n>``; external mode is our exporter job."""
        if self.postgres_mode == "cnpg":
            return f'namespace="{self.namespace}", pod=~"{self.cluster_name}-[0-9]+"'
        return f'namespace="{self.namespace}", job="{self.naming.postgres_exporter_job}"'

    @property
    def pgbouncer(self) -> str:
        return f'namespace="{self.namespace}", job="{self.naming.pgbouncer_job}"'

    @property
    def kube(self) -> str:
        return f'namespace="{self.namespace}"'

    def route(self, domain: str) -> str:
        """Envoy Gateway names an HTTPRoute rule's cluster ``httproute/<ns>/<name>/rule/<n>``."""
        name = self.naming.httproute.format(domain=domain)
        _check_dns_label("httproute name", name)
        return f'envoy_cluster_name=~"httproute/{self.namespace}/{name}/rule/[0-9]+"'

    def postgrest(self, domain: str) -> str:
        job = self.naming.postgrest_job.format(domain=domain)
        _check_dns_label("postgrest job", job)
        return f'namespace="{self.namespace}", job="{job}"'

    @property
    def restore_cronjob(self) -> str:
        name = self.naming.restore_check_cronjob.format(cluster=self.cluster_name)
        _check_dns_label("restore_check_cronjob", name)
        return name


@dataclass(frozen=True, kw_only=True)
class PostgresMetrics:
    """The metric names one database mode offers for each question we ask PostgreSQL."""

    up: str
    backends: str  # client backends, summed over states
    max_connections: str
    max_connections_matcher: str  # extra label matcher picking the setting, or ""
    max_tx_seconds: str
    replication_lag_seconds: str
    streaming_replicas: str
    statements_prefix: str
    schema_activity_prefix: str
    rls_guard: str  # 1 while the RLS guard's event trigger is installed and enabled
    instance_label: str  # the label that tells two database servers apart
    slot_active: str  # per replication slot (label slot_name): 1 while a consumer streams
    slot_retained_wal_bytes: str  # per slot: WAL between the current position and restart_lsn

    def max_connections_expr(self, selector: str) -> str:
        """The ``max_connections`` setting as a series scoped by ``selector``."""
        return f"{self.max_connections}{{{selector}{self.max_connections_matcher}}}"


CNPG_METRICS: Final = PostgresMetrics(
    up="cnpg_collector_up",
    backends="cnpg_backends_total",
    max_connections="cnpg_pg_settings_setting",
    max_connections_matcher=', name="max_connections"',
    max_tx_seconds="cnpg_backends_max_tx_duration_seconds",
    replication_lag_seconds="cnpg_pg_replication_lag",
    streaming_replicas="cnpg_pg_replication_streaming_replicas",
    statements_prefix="cnpg_pg_stat_statements",
    schema_activity_prefix="cnpg_pg_schema_activity",
    rls_guard="cnpg_pg_platform_guard_rls_guard_installed",
    instance_label="pod",
    # CloudNativePG's default query pg_replication_slots (non-temporary slots).
    slot_active="cnpg_pg_replication_slots_active",
    slot_retained_wal_bytes="cnpg_pg_replication_slots_pg_wal_lsn_diff",
)

EXPORTER_METRICS: Final = PostgresMetrics(
    up="pg_up",
    backends="pg_stat_activity_count",
    max_connections="pg_settings_max_connections",
    max_connections_matcher="",
    max_tx_seconds="pg_stat_activity_max_tx_duration",
    replication_lag_seconds="pg_replication_lag",
    streaming_replicas="pg_replication_streaming_replicas",
    statements_prefix="pg_stat_statements",
    schema_activity_prefix="pg_schema_activity",
    rls_guard="pg_platform_guard_rls_guard_installed",
    instance_label="instance",
    # postgres_exporter's built-in pg_replication_slots query.
    slot_active="pg_replication_slots_active",
    slot_retained_wal_bytes="pg_replication_slots_pg_wal_lsn_diff",
)


def postgres_metrics(mode: PostgresMode) -> PostgresMetrics:
    """CloudNativePG prefixes every query metric with ``cnpg_``; postgres_exporter with ``pg_``."""
    return CNPG_METRICS if mode == "cnpg" else EXPORTER_METRICS


# -- queries we add to the exporters --------------------------------------------------------------
# Same SQL for both modes (PostgreSQL >= 13 column names; postgres_exporter 0.11's bundled
# pg_stat_statements example still reads the pre-13 ``total_time``). Catalog objects are
# schema-qualified because CloudNativePG pins search_path to pg_catalog, public.

_REPLICATION_SQL = (
    "SELECT CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN 0"
    " ELSE GREATEST(0, EXTRACT(EPOCH FROM (pg_catalog.now()"
    " OPERATOR(pg_catalog.-) pg_catalog.pg_last_xact_replay_timestamp()))) END AS lag,"
    " CASE WHEN pg_catalog.pg_is_in_recovery() THEN 1 ELSE 0 END AS in_recovery,"
    " (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_replication"
    " WHERE state OPERATOR(pg_catalog.=) 'streaming') AS streaming_replicas"
)

# Top 50 statements by total execution time: bounded cardinality, and the slow ones are on it.
_STATEMENTS_SQL = (
    "SELECT r.rolname AS usename, d.datname,"
    " COALESCE(s.queryid, 0)::text AS queryid,"
    " pg_catalog.left(pg_catalog.regexp_replace(s.query, '\\s+', ' ', 'g'), 120) AS query,"
    " s.calls AS calls_total,"
    " s.total_exec_time / 1000.0 AS exec_seconds_total,"
    " s.rows AS rows_total"
    " FROM public.pg_stat_statements s"
    " JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) s.userid"
    " JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.dbid"
    " WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()"
    " ORDER BY s.total_exec_time DESC LIMIT 50"
)

# Rows read and written per schema (= per API domain): the database side of "rows per route".
_SCHEMA_ACTIVITY_SQL = (
    "SELECT pg_catalog.current_database() AS datname, schemaname,"
    " pg_catalog.sum(COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0))::bigint"
    " AS rows_read_total,"
    " pg_catalog.sum(n_tup_ins)::bigint AS rows_inserted_total,"
    " pg_catalog.sum(n_tup_upd)::bigint AS rows_updated_total,"
    " pg_catalog.sum(n_tup_del)::bigint AS rows_deleted_total,"
    " pg_catalog.sum(n_live_tup)::bigint AS live_rows"
    " FROM pg_catalog.pg_stat_user_tables GROUP BY schemaname"
)


# Whether the RLS guard is installed (the baseline Job runs the same test), reported only by a
# database holding the platform's schema: in cnpg mode the query runs in every database the
# exporter may connect to, and the others must not look like a database that lost its guard.
_PLATFORM_GUARD_SQL = (
    "SELECT pg_catalog.current_database() AS datname,"  # noqa: S608 - constant text, no input
    f" CASE WHEN ({RLS_GUARD_PRESENT}) THEN 1 ELSE 0 END AS rls_guard_installed"
    " FROM pg_catalog.pg_namespace"
    " WHERE nspname OPERATOR(pg_catalog.=) 'platform'"
)


def _column(usage: str, description: str) -> dict[str, str]:
    return {"usage": usage, "description": description}


def _custom_queries(mode: PostgresMode) -> dict[str, Any]:
    """The queries we add; CloudNativePG already has ``pg_replication``."""
    queries: dict[str, Any] = {}
    if mode == "external":
        queries["pg_replication"] = {
            "query": _REPLICATION_SQL,
            "metrics": [
                {
                    "lag": _column(
                        "GAUGE", "Seconds since the last replayed transaction (0 on a primary)"
                    )
                },
                {"in_recovery": _column("GAUGE", "1 when the server is a standby")},
                {"streaming_replicas": _column("GAUGE", "Standbys streaming from this server")},
            ],
        }
    queries["pg_stat_statements"] = {
        "query": _STATEMENTS_SQL,
        "metrics": [
            {"usename": _column("LABEL", "Role that ran the statement")},
            {"datname": _column("LABEL", "Database")},
            {"queryid": _column("LABEL", "pg_stat_statements query id")},
            {"query": _column("LABEL", "Normalised statement text, first 120 characters")},
            {"calls_total": _column("COUNTER", "Times the statement was executed")},
            {"exec_seconds_total": _column("COUNTER", "Total execution time in seconds")},
            {"rows_total": _column("COUNTER", "Rows retrieved or affected")},
        ],
    }
    queries["pg_schema_activity"] = {
        "query": _SCHEMA_ACTIVITY_SQL,
        "metrics": [
            {"datname": _column("LABEL", "Database")},
            {"schemaname": _column("LABEL", "Schema (one per API domain)")},
            {
                "rows_read_total": _column(
                    "COUNTER", "Live rows fetched by sequential and index scans"
                )
            },
            {"rows_inserted_total": _column("COUNTER", "Rows inserted")},
            {"rows_updated_total": _column("COUNTER", "Rows updated")},
            {"rows_deleted_total": _column("COUNTER", "Rows deleted")},
            {"live_rows": _column("GAUGE", "Estimated live rows")},
        ],
    }
    queries["pg_platform_guard"] = {
        "query": _PLATFORM_GUARD_SQL,
        "metrics": [
            {"datname": _column("LABEL", "Database")},
            {
                "rls_guard_installed": _column(
                    "GAUGE", "1 while the event trigger platform_rls_guard is installed and enabled"
                )
            },
        ],
    }
    if mode == "cnpg":
        # CloudNativePG: every database it may connect to (only the platform's reports a row).
        queries["pg_platform_guard"]["target_databases"] = ["*"]
    return queries


def postgres_exporter_queries_yaml() -> str:
    """``--extend.query-path`` file for postgres_exporter 0.11 (external mode).

    0.11 has no pg_stat_statements collector (its only collectors are ``database`` and
    ``bgwriter``), so statements, replication and per-schema activity come from this file.
    """
    return yaml.safe_dump(_custom_queries("external"), sort_keys=False, width=1000)


def cnpg_custom_queries_yaml() -> str:
    """Custom queries for ``Cluster.spec.monitoring.customQueriesConfigMap`` (cnpg mode).

    CloudNativePG's default set already has ``pg_replication``; this adds the rest.
    """
    return yaml.safe_dump(_custom_queries("cnpg"), sort_keys=False, width=1000)


def custom_query_metric_names(mode: PostgresMode) -> frozenset[str]:
    """Names the custom queries produce: ``<prefix>_<query>_<column>`` for non-label columns."""
    prefix = "cnpg_" if mode == "cnpg" else ""
    names: set[str] = set()
    for query_name, query in _custom_queries(mode).items():
        for column in query["metrics"]:
            ((column_name, spec),) = column.items()
            if spec["usage"] != "LABEL":
                names.add(f"{prefix}{query_name}_{column_name}")
    return frozenset(names)


def custom_query_sql(mode: PostgresMode) -> dict[str, str]:
    """Query name -> SQL, so a test can run every shipped query on a real server."""
    queries = _custom_queries(mode)
    return {name: str(query["query"]) for name, query in queries.items()}


# -- PromQL metric-name extraction -----------------------------------------------------------------

_KEYWORDS: Final = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> frozenset[str]:
    """The metric names a PromQL expression reads (functions, keywords and labels removed)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return frozenset(names)


# -- documented metric lists ----------------------------------------------------------------------

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def parse_metric_list(text: str) -> frozenset[str]:
    """Names of a metric list file: one per line, ``#`` comments and blank lines ignored."""
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not _METRIC_NAME.match(line):
            raise ValueError(f"line {number}: {line!r} is not a metric name")
        names.add(line)
    return frozenset(names)


def load_documented_metrics(directory: Path) -> dict[str, frozenset[str]]:
    """Source name -> documented names, from each source's list file in ``directory``."""
    return {
        source.name: parse_metric_list((directory / source.list_file).read_text())
        for source in SOURCES
        if source.list_file is not None
    }


def undocumented(
    names: frozenset[str], documented: dict[str, frozenset[str]], mode: PostgresMode
) -> frozenset[str]:
    """Names neither in a documented list, nor produced by our own custom queries, nor recorded
    by our own SLO rules.

    In external mode the postgres_exporter names are left over on purpose: a real scrape of
    Debian's postgres_exporter 0.11 has to prove them (tests/integration/test_metric_names.py).
    """
    from components.render.slo import RECORDED_NAMES  # slo builds on this module

    known = (
        frozenset().union(*documented.values()) | custom_query_metric_names(mode) | RECORDED_NAMES
    )
    return frozenset(names - known)
