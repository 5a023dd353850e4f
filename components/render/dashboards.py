"""Grafana dashboards of the platform, as plain JSON documents (file name -> dashboard).

Two dashboards: the API seen from the gateway and PostgREST, and the database seen from
PostgreSQL and PgBouncer. Every query reads a metric of a pinned exporter (``metrics_catalog``);
the tests syntax-check each expression with promtool and prove each metric name exists.

No exporter counts the rows an HTTP route returns: PostgREST exposes no per-request metrics and
Envoy sees bytes, not rows. The "rows" row therefore shows what does exist -- rows read and
written per domain schema (``pg_stat_user_tables``), rows per role (``pg_stat_statements``) and
response bytes per route (Envoy) -- and says so in the panel descriptions. Exact rows per
request are in PostgREST's ``Content-Range`` response header, i.e. in gateway access logs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from components.render.logs import ROWS_RECORD as ROWS_RECORD_NAME
from components.render.logs import LokiLogs, rows_query
from components.render.metrics_catalog import (
    PostgresMode,
    Selectors,
    TargetNaming,
    postgres_metrics,
)
from components.render.slo import BUDGET_RECORD

SCHEMA_VERSION: Final = 39
RATE: Final = "$__rate_interval"
RANGE: Final = "$__range"
_DATASOURCE: Final = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True, kw_only=True)
class Target:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(kw_only=True)
class _Board:
    """Places panels left to right, two per line, and numbers them uniquely."""

    panels: list[dict[str, Any]] = field(default_factory=list)
    next_id: int = 1
    x: int = 0
    y: int = 0

    def _id(self) -> int:
        panel_id = self.next_id
        self.next_id += 1
        return panel_id

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y = 0, self.y + 8
        self.panels.append(
            {
                "id": self._id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def panel(
        self,
        title: str,
        description: str,
        targets: Sequence[Target],
        *,
        unit: str = "short",
        kind: str = "timeseries",
        threshold: float | None = None,
        width: int = 12,
        datasource: Mapping[str, str] = _DATASOURCE,
    ) -> None:
        if self.x + width > 24:
            self.x, self.y = 0, self.y + 8
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
        if threshold is not None:
            steps.append({"color": "red", "value": threshold})
        defaults: dict[str, Any] = {
            "unit": unit,
            "thresholds": {"mode": "absolute", "steps": steps},
        }
        if kind == "timeseries":
            defaults["custom"] = {
                "thresholdsStyle": {"mode": "line" if threshold is not None else "off"}
            }
        options: dict[str, Any] = (
            {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
            if kind == "timeseries"
            else {"showHeader": True}
        )
        self.panels.append(
            {
                "id": self._id(),
                "type": kind,
                "title": title,
                "description": description,
                "datasource": dict(datasource),
                "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "options": options,
                "targets": [
                    {
                        "refId": chr(ord("A") + index),
                        "datasource": dict(datasource),
                        "expr": target.expr,
                        "legendFormat": target.legend,
                        "instant": target.instant,
                        "range": not target.instant,
                        **({"format": "table"} if target.instant else {}),
                    }
                    for index, target in enumerate(targets)
                ],
            }
        )
        self.x += width
        if self.x >= 24:
            self.x, self.y = 0, self.y + 8


def _dashboard(uid: str, title: str, board: _Board) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["pgplatform"],
        "timezone": "utc",
        "editable": False,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "hide": 0,
                    "current": {},
                }
            ]
        },
        "panels": board.panels,
    }


def _api_dashboard(
    domains: Sequence[str], sel: Selectors, mode: PostgresMode, loki: LokiLogs | None = None
) -> _Board:
    m = postgres_metrics(mode)
    board = _Board()

    def per_domain(expr: Callable[[str, str], str], legend: str = "{domain}") -> list[Target]:
        """One target per domain; ``expr(route_matcher, postgrest_matcher)``."""
        return [
            Target(expr=expr(sel.route(d), sel.postgrest(d)), legend=legend.format(domain=d))
            for d in domains
        ]

    board.row("SLOs")
    board.panel(
        "Error budget remaining",
        "Share of each SLO's error budget left over its window (domains.<name>.slo), from the "
        "recording rule pgplatform:slo_error_budget:remaining: 100% = no bad requests, 0% = "
        "budget spent, below 0 = objective missed. Burn-rate alerts: ApiErrorBudgetFastBurn, "
        "ApiErrorBudgetSlowBurn.",
        [
            Target(
                expr=f"{BUDGET_RECORD}{{{sel.kube}}}",
                legend="{{domain}} {{slo}} ({{window}})",
            )
        ],
        unit="percentunit",
        width=24,
    )
    board.row("Traffic")
    board.panel(
        "Request volume per domain",
        "Requests/s Envoy Gateway sent to each domain's PostgREST (all HTTPRoute rules).",
        per_domain(lambda r, _: f"sum(rate(envoy_cluster_upstream_rq_total{{{r}}}[{RATE}]))"),
        unit="reqps",
    )
    board.panel(
        "Responses per status class",
        "Responses/s per HTTP status class (2xx, 4xx, 5xx) and domain.",
        per_domain(
            lambda r, _: (
                "sum by (envoy_response_code_class) "
                f"(rate(envoy_cluster_upstream_rq_xx{{{r}}}[{RATE}]))"
            ),
            "{domain} {{{{envoy_response_code_class}}}}xx",
        ),
        unit="reqps",
    )
    board.row("Latency")

    def latency(quantile: str) -> Callable[[str, str], str]:
        return lambda r, _: (
            f"histogram_quantile({quantile}, sum by (le) "
            f"(rate(envoy_cluster_upstream_rq_time_bucket{{{r}}}[{RATE}])))"
        )

    for quantile in ("0.5", "0.95", "0.99"):
        board.panel(
            f"Latency p{round(float(quantile) * 100)}",
            "Upstream request time per domain as measured by Envoy (time to last byte).",
            per_domain(latency(quantile)),
            unit="ms",
            width=8,
        )
    board.row("Errors")
    board.panel(
        "5xx ratio",
        "Share of responses with status 5xx, per domain.",
        per_domain(
            lambda r, _: (
                "sum(rate(envoy_cluster_upstream_rq_xx"
                f'{{{r}, envoy_response_code_class="5"}}[{RATE}]))'
                f" / sum(rate(envoy_cluster_upstream_rq_xx{{{r}}}[{RATE}]))"
            )
        ),
        unit="percentunit",
    )
    board.panel(
        "401/403 ratio",
        "Share of responses with status 401 or 403 returned by PostgREST, per domain. Requests "
        "the gateway's forward-auth denies never reach the route's backend and are not counted.",
        per_domain(
            lambda r, _: (
                "sum(rate(envoy_cluster_upstream_rq"
                f'{{{r}, envoy_response_code=~"401|403"}}[{RATE}]))'
                f" / sum(rate(envoy_cluster_upstream_rq_xx{{{r}}}[{RATE}]))"
            )
        ),
        unit="percentunit",
    )
    board.row("Rows and payload (no exporter counts rows per HTTP route)")
    schemas = "|".join(domains)
    board.panel(
        "Rows read per domain schema",
        "Rows PostgreSQL fetched by scans of each domain schema's tables (pg_stat_user_tables): "
        "the database side of the rows the API returns, including rows RLS filtered out.",
        [
            Target(
                expr=(
                    f"sum by (schemaname) (rate({m.schema_activity_prefix}_rows_read_total"
                    f'{{{sel.postgres}, schemaname=~"{schemas}"}}[{RATE}]))'
                ),
                legend="{{schemaname}}",
            )
        ],
        unit="rowsps",
    )
    board.panel(
        "Response bytes per route",
        "Bytes/s received from each domain's PostgREST (Envoy upstream connections): payload size "
        "per route. Exact rows per response are in PostgREST's Content-Range header (access log).",
        per_domain(
            lambda r, _: f"sum(rate(envoy_cluster_upstream_cx_rx_bytes_total{{{r}}}[{RATE}]))"
        ),
        unit="Bps",
    )
    if loki is not None:
        board.panel(
            "Rows returned per route and role (gateway access log)",
            "Rows/s the API returned, from the Content-Range header in the gateway's JSON access "
            "log (last - first + 1 per response), by route and the role in X-Api-Role; Loki "
            f"query, also recorded by the Loki ruler as {ROWS_RECORD_NAME}.",
            [Target(expr=rows_query(loki, "$__auto"), legend="{{route}} {{role}}")],
            unit="rowsps",
            width=24,
            datasource={"type": "loki", "uid": loki.datasource_uid},
        )
    board.row("PostgREST")
    board.panel(
        "PostgREST pool connections in use",
        "Connections of PostgREST's own pool that are checked out, per domain.",
        per_domain(
            lambda _, p: f"sum(pgrst_db_pool_max{{{p}}}) - sum(pgrst_db_pool_available{{{p}}})"
        ),
    )
    board.panel(
        "PostgREST requests waiting for a connection",
        "Requests queued for PostgREST's pool, and pool acquisition timeouts (HTTP 504).",
        per_domain(lambda _, p: f"sum(pgrst_db_pool_waiting{{{p}}})", "{domain} waiting")
        + per_domain(
            lambda _, p: f"sum(increase(pgrst_db_pool_timeouts_total{{{p}}}[{RATE}]))",
            "{domain} timeouts",
        ),
    )
    board.panel(
        "Schema cache loads",
        "Schema cache loads per outcome; a FAIL keeps the pod unready.",
        per_domain(
            lambda _, p: (
                f"sum by (status) (increase(pgrst_schema_cache_loads_total{{{p}}}[{RATE}]))"
            ),
            "{domain} {{{{status}}}}",
        ),
        width=24,
    )
    return board


def _database_dashboard(
    domains: Sequence[str], sel: Selectors, mode: PostgresMode, max_connections: int
) -> _Board:
    m = postgres_metrics(mode)
    pg, pgb, inst = sel.postgres, sel.pgbouncer, m.instance_label
    board = _Board()
    board.row("Connections")
    board.panel(
        "Client connections vs max_connections",
        f"Client backends per server; max_connections is {max_connections} in the settings.",
        [
            Target(expr=f"sum by ({inst}) ({m.backends}{{{pg}}})", legend=f"{{{{{inst}}}}}"),
            Target(
                expr=f"max by ({inst}) ({m.max_connections_expr(pg)})",
                legend=f"max_connections {{{{{inst}}}}}",
            ),
        ],
        threshold=float(max_connections),
    )
    board.panel(
        "Client connections by state",
        "Backends per state (active, idle, idle in transaction, ...).",
        [
            Target(
                expr=f"sum by (state) ({m.backends}{{{pg}}})",
                legend="{{state}}",
            )
        ],
    )
    board.row("PgBouncer pool")
    board.panel(
        "Clients active and waiting",
        "Client connections linked to a server connection, and those queued for one.",
        [
            Target(
                expr=f"sum by (database) (pgbouncer_pools_client_active_connections{{{pgb}}})",
                legend="{{database}} active",
            ),
            Target(
                expr=f"sum by (database) (pgbouncer_pools_client_waiting_connections{{{pgb}}})",
                legend="{{database}} waiting",
            ),
        ],
    )
    board.panel(
        "Server connections vs pool size",
        "Server connections in use and idle per pool, against the configured pool_size.",
        [
            Target(
                expr=f"sum by (database) (pgbouncer_pools_server_active_connections{{{pgb}}})",
                legend="{{database}} active",
            ),
            Target(
                expr=f"sum by (database) (pgbouncer_pools_server_idle_connections{{{pgb}}})",
                legend="{{database}} idle",
            ),
            Target(
                expr=f"max by (database) (pgbouncer_databases_pool_size{{{pgb}}})",
                legend="{{database}} pool_size",
            ),
        ],
    )
    board.panel(
        "Longest client wait",
        "Age of the oldest client waiting for a server connection.",
        [
            Target(
                expr=f"max by (database) (pgbouncer_pools_client_maxwait_seconds{{{pgb}}})",
                legend="{{database}}",
            )
        ],
        unit="s",
    )
    board.panel(
        "Pooled transactions",
        "Transactions/s PgBouncer ran on server connections.",
        [
            Target(
                expr=(
                    "sum by (database) (rate(pgbouncer_stats_totals_sql_transactions_pooled_total"
                    f"{{{pgb}}}[{RATE}]))"
                ),
                legend="{{database}}",
            )
        ],
        unit="ops",
    )
    board.row("Queries (pg_stat_statements, top 50 by total time)")
    st = m.statements_prefix
    board.panel(
        "Slowest statements (mean time over the range)",
        "Mean execution time per normalised statement over the dashboard range.",
        [
            Target(
                expr=(
                    f"topk(15, sum by (queryid, query) (increase({st}_exec_seconds_total{{{pg}}}"
                    f"[{RANGE}])) / sum by (queryid, query) (increase({st}_calls_total{{{pg}}}"
                    f"[{RANGE}])) > 0)"
                ),
                instant=True,
            )
        ],
        unit="s",
        kind="table",
        width=24,
    )
    board.panel(
        "Statements by total execution time",
        "Seconds of execution per second, per statement: where the database spends its time.",
        [
            Target(
                expr=(
                    f"topk(10, sum by (queryid, query) (rate({st}_exec_seconds_total{{{pg}}}"
                    f"[{RATE}])))"
                ),
                legend="{{query}}",
            )
        ],
        unit="s",
    )
    board.panel(
        "Rows returned or affected per role",
        "Rows per second per database role (api_user, api_editor, ...), from pg_stat_statements.",
        [
            Target(
                expr=f"sum by (usename) (rate({st}_rows_total{{{pg}}}[{RATE}]))",
                legend="{{usename}}",
            )
        ],
        unit="rowsps",
    )
    board.panel(
        "Rows written per domain schema",
        "Rows inserted, updated and deleted per domain schema (pg_stat_user_tables).",
        [
            Target(
                expr=(
                    f"sum by (schemaname) (rate({m.schema_activity_prefix}_rows_{kind}_total"
                    f'{{{pg}, schemaname=~"{"|".join(domains)}"}}[{RATE}]))'
                ),
                legend=f"{{{{schemaname}}}} {kind}",
            )
            for kind in ("inserted", "updated", "deleted")
        ],
        unit="rowsps",
    )
    board.panel(
        "Longest open transaction",
        "Age of the oldest open transaction per server (blocks vacuum, holds locks).",
        [
            Target(
                expr=f"max by ({inst}) ({m.max_tx_seconds}{{{pg}}})",
                legend=f"{{{{{inst}}}}}",
            )
        ],
        unit="s",
    )
    board.row("Replication and backups")
    board.panel(
        "Replication lag",
        "Seconds since the last replayed transaction on each standby (0 on the primary).",
        [
            Target(
                expr=f"max by ({inst}) ({m.replication_lag_seconds}{{{pg}}})",
                legend=f"{{{{{inst}}}}}",
            )
        ],
        unit="s",
    )
    board.panel(
        "Streaming replicas",
        "Standbys streaming from the primary.",
        [Target(expr=f"max({m.streaming_replicas}{{{pg}}})", legend="streaming")],
    )
    if mode == "cnpg":
        board.panel(
            "Age of the last base backup",
            "Time since the last available base backup (in-core Barman or the Barman Cloud "
            "plugin, whichever reports it).",
            [
                Target(
                    expr=(
                        "time() - max("
                        "label_replace(cnpg_collector_last_available_backup_timestamp"
                        f'{{{pg}}}, "backup_source", "in-core", "", "") or '
                        "label_replace(barman_cloud_cloudnative_pg_io_last_available_backup_timestamp"
                        f'{{{pg}}}, "backup_source", "barman-cloud-plugin", "", ""))'
                    ),
                    legend="backup age",
                )
            ],
            unit="s",
            threshold=26 * 3600,
            width=24,
        )
    return board


def render_dashboards(
    *,
    namespace: str,
    domains: Sequence[str],
    cluster_name: str,
    max_connections: int,
    postgres_mode: PostgresMode = "cnpg",
    naming: TargetNaming | None = None,
    loki: LokiLogs | None = None,
) -> dict[str, dict[str, Any]]:
    """File name -> Grafana dashboard JSON, scoped to this stack's namespace and targets.

    ``loki`` adds the rows-per-route panel, a LogQL query on the gateway's access log."""
    if not domains:
        raise ValueError("domains: at least one API domain is needed")
    if max_connections <= 0:
        raise ValueError(f"max_connections: must be positive, got {max_connections}")
    sel = Selectors(
        namespace=namespace,
        cluster_name=cluster_name,
        postgres_mode=postgres_mode,
        naming=naming or TargetNaming(),
    )
    return {
        "pgplatform-api.json": _dashboard(
            f"pgplatform-api-{namespace}"[:40],
            f"pgplatform / API ({namespace})",
            _api_dashboard(domains, sel, postgres_mode, loki),
        ),
        "pgplatform-database.json": _dashboard(
            f"pgplatform-db-{namespace}"[:40],
            f"pgplatform / Database ({namespace})",
            _database_dashboard(domains, sel, postgres_mode, max_connections),
        ),
    }


def dashboard_expressions(
    dashboards: dict[str, dict[str, Any]], datasource_type: str = "prometheus"
) -> list[str]:
    """Every expression of ``dashboards`` for one kind of data source (PromQL by default, or
    ``"loki"``: LogQL), in panel order."""
    return [
        target["expr"]
        for dashboard in dashboards.values()
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target["datasource"]["type"] == datasource_type
    ]
