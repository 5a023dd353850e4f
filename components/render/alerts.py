"""Alert rules of the platform: the ``spec`` of one PrometheusRule (= a Prometheus rule file).

Every rule reads metrics a pinned exporter really produces (see ``metrics_catalog``), carries a
severity, a summary, a description and a ``runbook_url`` to ``docs/runbooks/<Alert>.md``, and is
exercised by promtool unit tests in both directions (fires / stays silent). Thresholds are data
per environment, so staging can be noisy-tolerant while prod pages early.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

from components.render.graphql_metrics import ALERT_NAMES as GRAPHQL_ALERT_NAMES
from components.render.graphql_metrics import rule_group as graphql_rule_group
from components.render.metrics_catalog import (
    PostgresMode,
    Selectors,
    TargetNaming,
    postgres_metrics,
)
from components.render.promql import number as _num
from components.render.promql import percent as _percent
from components.render.slo import ALERT_NAMES as SLO_ALERT_NAMES
from components.render.slo import SloObjectives, slo_rule_groups
from components.render.synthetic import ALERT_NAMES as SYNTHETIC_ALERT_NAMES
from components.render.synthetic import rule_group as synthetic_rule_group

# Every alert this module can emit; docs/runbooks/<name>.md must exist for each.
ALERT_NAMES: Final = (
    "ApiHighErrorRate",
    "ApiHighPermissionDeniedRate",
    "PostgrestSchemaCacheReloadFailed",
    "PostgresDown",
    "PostgresConnectionsNearLimit",
    "PgbouncerClientsWaiting",
    "PostgresLongRunningTransaction",
    "PostgresReplicationLagHigh",
    "PostgresReplicaMissing",
    "PostgresRlsGuardMissing",
    "PostgresBackupTooOld",
    "RestoreVerificationFailed",
    "RestoreVerificationStale",
    "PostgresAdvisorFindings",
    "PodCrashLooping",
    "CdcSlotInactive",
    "CdcSlotMissing",
    "CdcSlotRetainedWalHigh",
    *SLO_ALERT_NAMES,
    *SYNTHETIC_ALERT_NAMES,
    *GRAPHQL_ALERT_NAMES,
)


@dataclass(frozen=True, kw_only=True)
class AlertThresholds:
    """When an alert fires; one instance per environment (``default_thresholds``)."""

    api_error_ratio: float  # share of responses that are 5xx
    api_denied_ratio: float  # share of responses that are 401 or 403
    api_min_request_rate: float  # requests/s below which ratios are not judged (too few samples)
    db_connections_share: float  # client backends / max_connections
    pool_clients_waiting: int  # PgBouncer clients queued for a server connection
    longest_transaction_seconds: int
    replication_lag_seconds: int
    backup_age_hours: int = 26  # nightly backup plus two hours of slack
    restore_check_max_age_days: int = 35  # monthly restore check plus a few days

    def __post_init__(self) -> None:
        for name in ("api_error_ratio", "api_denied_ratio", "db_connections_share"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name}: must be a share in (0, 1], got {value}")
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{field.name}: must be a positive number, got {value!r}")


_DEFAULT_THRESHOLDS: Final = {
    "staging": AlertThresholds(
        api_error_ratio=0.10,
        api_denied_ratio=0.50,
        api_min_request_rate=0.05,
        db_connections_share=0.90,
        pool_clients_waiting=20,
        longest_transaction_seconds=900,
        replication_lag_seconds=300,
    ),
    "prod": AlertThresholds(
        api_error_ratio=0.02,
        api_denied_ratio=0.20,
        api_min_request_rate=0.5,
        db_connections_share=0.80,
        pool_clients_waiting=5,
        longest_transaction_seconds=300,
        replication_lag_seconds=30,
    ),
}


def default_thresholds(environment: str) -> AlertThresholds:
    """Thresholds of ``environment`` ("staging" or "prod"); the stack may override fields."""
    try:
        return _DEFAULT_THRESHOLDS[environment]
    except KeyError:
        raise ValueError(
            f"environment: {environment!r} has no alert thresholds; use one of "
            f"{sorted(_DEFAULT_THRESHOLDS)}"
        ) from None


@dataclass(frozen=True, kw_only=True)
class _Rule:
    name: str
    severity: str
    component: str
    expr: str
    for_: str
    summary: str
    description: str
    extra_labels: tuple[tuple[str, str], ...] = ()


def _rule_dict(rule: _Rule, runbook_base_url: str) -> dict[str, Any]:
    labels = {"severity": rule.severity, "component": rule.component, **dict(rule.extra_labels)}
    return {
        "alert": rule.name,
        "expr": rule.expr,
        "for": rule.for_,
        "labels": labels,
        "annotations": {
            "summary": rule.summary,
            "description": rule.description,
            "runbook_url": f"{runbook_base_url}/{rule.name}.md",
        },
    }


def _api_rules(
    domains: Sequence[str], sel: Selectors, t: AlertThresholds, namespace: str
) -> list[_Rule]:
    rules: list[_Rule] = []
    for domain in domains:
        route = sel.route(domain)
        total = f"sum(rate(envoy_cluster_upstream_rq_xx{{{route}}}[5m]))"
        enough = f"{total} > {_num(t.api_min_request_rate)}"
        labels = (("domain", domain), ("namespace", namespace))
        route_name = sel.naming.httproute.format(domain=domain)
        errors = (
            f'sum(rate(envoy_cluster_upstream_rq_xx{{{route}, envoy_response_code_class="5"}}[5m]))'
        )
        rules.append(
            _Rule(
                name="ApiHighErrorRate",
                severity="critical",
                component="api",
                expr=f"({errors} / {total}) > {_num(t.api_error_ratio)} and {enough}",
                for_="5m",
                summary=f"{domain} API: {{{{ $value | humanizePercentage }}}} of responses are 5xx",
                description=(
                    f"More than {_percent(t.api_error_ratio)} of the responses of the {domain} "
                    f"API (HTTPRoute {namespace}/{route_name}) were 5xx over 5 minutes, as "
                    "counted by Envoy Gateway for the route's backend."
                ),
                extra_labels=labels,
            )
        )
        denied = (
            f'sum(rate(envoy_cluster_upstream_rq{{{route}, envoy_response_code=~"401|403"}}[5m]))'
        )
        rules.append(
            _Rule(
                name="ApiHighPermissionDeniedRate",
                severity="warning",
                component="api",
                expr=f"({denied} / {total}) > {_num(t.api_denied_ratio)} and {enough}",
                for_="10m",
                summary=(
                    f"{domain} API: {{{{ $value | humanizePercentage }}}} of responses are 401/403"
                ),
                description=(
                    f"More than {_percent(t.api_denied_ratio)} of the responses of the {domain} "
                    "API were 401 or 403 for 10 minutes: expired or wrong-audience tokens, a "
                    "missing grant or RLS policy after a migration, or someone probing the API."
                ),
                extra_labels=labels,
            )
        )
        pgrst = sel.postgrest(domain)
        fail = f'pgrst_schema_cache_loads_total{{{pgrst}, status="FAIL"}}'
        rules.append(
            _Rule(
                name="PostgrestSchemaCacheReloadFailed",
                severity="critical",
                component="api",
                expr=(
                    f"sum by (pod) (increase({fail}[10m])) > 0"
                    f" or count by (pod) ({fail} unless {fail} offset 10m) > 0"
                ),
                for_="0m",
                summary=f"{domain} API: PostgREST failed to load its schema cache",
                description=(
                    f"PostgREST pod {{{{ $labels.pod }}}} of the {domain} API failed to load the "
                    "schema cache in the last 10 minutes; until a load succeeds it is not ready "
                    "and serves no requests (or stale metadata after a signalled reload)."
                ),
                extra_labels=labels,
            )
        )
    return rules


def _database_rules(
    sel: Selectors,
    t: AlertThresholds,
    mode: PostgresMode,
    max_connections: int,
    expected_replicas: int,
) -> list[_Rule]:
    m = postgres_metrics(mode)
    pg = sel.postgres
    by = f"namespace, {m.instance_label}"
    who = f"{{{{ $labels.{m.instance_label} }}}}"
    rules = [
        _Rule(
            name="PostgresDown",
            severity="critical",
            component="database",
            expr=f"{m.up}{{{pg}}} == 0 or absent({m.up}{{{pg}}})",
            for_="2m",
            summary="PostgreSQL is down or not scraped",
            description=(
                f"An instance reports PostgreSQL down ({m.up} == 0), or no series of {m.up} "
                "reaches Prometheus at all (exporter or scrape broken): the API cannot reach "
                "the data."
            ),
        ),
        _Rule(
            name="PostgresConnectionsNearLimit",
            severity="warning",
            component="database",
            expr=(
                f"sum by ({by}) ({m.backends}{{{pg}}})"
                f" / on ({by}) max by ({by}) ({m.max_connections_expr(pg)})"
                f" > {_num(t.db_connections_share)}"
            ),
            for_="5m",
            summary=(
                f"PostgreSQL {who} uses {{{{ $value | humanizePercentage }}}} of max_connections"
            ),
            description=(
                f"Client backends on {who} exceed {_percent(t.db_connections_share)} of "
                f"max_connections (configured: {max_connections}); new connections will soon be "
                "refused with 'too many clients'."
            ),
        ),
        _Rule(
            name="PostgresLongRunningTransaction",
            severity="warning",
            component="database",
            expr=(
                f"max by ({by}) ({m.max_tx_seconds}{{{pg}}})"
                f" > {_num(t.longest_transaction_seconds)}"
            ),
            for_="2m",
            summary=f"A transaction on {who} has been open for {{{{ $value | humanizeDuration }}}}",
            description=(
                f"The oldest open transaction on {who} is older than "
                f"{_num(t.longest_transaction_seconds)}s; it holds locks and blocks vacuum."
            ),
        ),
        _Rule(
            name="PostgresReplicationLagHigh",
            severity="warning",
            component="database",
            expr=(
                f"max by ({by}) ({m.replication_lag_seconds}{{{pg}}})"
                f" > {_num(t.replication_lag_seconds)}"
            ),
            for_="5m",
            summary=f"Replica {who} lags {{{{ $value | humanizeDuration }}}} behind the primary",
            description=(
                f"Standby {who} replays WAL more than {_num(t.replication_lag_seconds)}s behind "
                "the primary: reads served from replicas return stale rows."
            ),
        ),
        _Rule(
            name="PostgresRlsGuardMissing",
            severity="critical",
            component="database",
            expr=f"min by (namespace) ({m.rls_guard}{{{pg}}}) < 1 or absent({m.rls_guard}{{{pg}}})",
            for_="5m",
            summary="The RLS guard of the platform database is missing or disabled",
            description=(
                "The event trigger platform_rls_guard, which enables and forces row level "
                f"security on every new table of an exposed schema, is gone or disabled "
                f"({m.rls_guard} is 0 or not reported): new tables are served without RLS."
            ),
        ),
    ]
    if expected_replicas > 0:
        rules.append(
            _Rule(
                name="PostgresReplicaMissing",
                severity="warning",
                component="database",
                expr=(f"max by (namespace) ({m.streaming_replicas}{{{pg}}}) < {expected_replicas}"),
                for_="5m",
                summary=(
                    f"Only {{{{ $value }}}} of {expected_replicas} replicas stream from the primary"
                ),
                description=(
                    f"The primary reports fewer than {expected_replicas} streaming standbys: read "
                    "capacity and failover safety are reduced."
                ),
            )
        )
    return rules


@dataclass(frozen=True, kw_only=True)
class CdcSlotAlert:
    """The logical slot of change data capture and how much WAL it may hold before we page."""

    slot: str
    retained_wal_bytes: int
    """Alert above this (half of ``max_slot_wal_keep_size``, where PostgreSQL drops the slot)."""

    def __post_init__(self) -> None:
        if not self.slot.replace("_", "a").isalnum() or self.slot != self.slot.lower():
            raise ValueError(f"slot: a lowercase slot name, got {self.slot!r}")
        if self.retained_wal_bytes <= 0:
            raise ValueError(f"retained_wal_bytes: must be positive, got {self.retained_wal_bytes}")


def _cdc_rules(sel: Selectors, mode: PostgresMode, cdc: CdcSlotAlert) -> list[_Rule]:
    """The slot of the analytics subscription: consumed, present, not holding too much WAL.

    PostgreSQL 15 keeps logical slots on the primary only (no slot synchronisation before 17): a
    failover or a restore leaves the new primary without the slot, which only ``absent`` sees.
    """
    m = postgres_metrics(mode)
    slot = f'{sel.postgres}, slot_name="{cdc.slot}"'
    gib = cdc.retained_wal_bytes / 1024**3
    return [
        _Rule(
            name="CdcSlotInactive",
            severity="warning",
            component="cdc",
            expr=f"max by (namespace, slot_name) ({m.slot_active}{{{slot}}}) == 0",
            for_="10m",
            summary=f"Nothing consumes the replication slot {cdc.slot}",
            description=(
                f"The logical slot {cdc.slot} has had no consumer for 10 minutes: the analytics "
                "subscription is down or failing (disabled, an apply error, the target database "
                "unreachable) and the primary keeps WAL for it."
            ),
        ),
        _Rule(
            name="CdcSlotMissing",
            severity="warning",
            component="cdc",
            expr=f"absent({m.slot_active}{{{slot}}})",
            for_="15m",
            summary=f"The replication slot {cdc.slot} does not exist",
            description=(
                f"No server reports the logical slot {cdc.slot}. PostgreSQL 15 does not copy "
                "logical slots to standbys: after a failover, switchover or restore the new "
                "primary has none, and the analytics database stops receiving changes until it "
                "is re-synchronised."
            ),
        ),
        _Rule(
            name="CdcSlotRetainedWalHigh",
            severity="warning",
            component="cdc",
            expr=(
                f"max by (namespace, slot_name) ({m.slot_retained_wal_bytes}{{{slot}}})"
                f" > {cdc.retained_wal_bytes}"
            ),
            for_="10m",
            summary=(
                f"The replication slot {cdc.slot} holds {{{{ $value | humanize1024 }}}}B of WAL"
            ),
            description=(
                f"The logical slot {cdc.slot} keeps more than {gib:g}GiB of WAL on the primary: "
                "the subscriber falls behind. At twice this (max_slot_wal_keep_size) PostgreSQL "
                "invalidates the slot and the analytics database must be re-synchronised."
            ),
        ),
    ]


def _pool_rules(sel: Selectors, t: AlertThresholds) -> list[_Rule]:
    return [
        _Rule(
            name="PgbouncerClientsWaiting",
            severity="warning",
            component="pool",
            expr=(
                "sum by (namespace, pod, database) (pgbouncer_pools_client_waiting_connections"
                f'{{{sel.pgbouncer}, database!="pgbouncer"}}) > {t.pool_clients_waiting}'
            ),
            for_="2m",
            summary=(
                "{{ $value }} clients wait for a server connection in PgBouncer pool "
                "{{ $labels.database }}"
            ),
            description=(
                f"More than {t.pool_clients_waiting} clients of PgBouncer {{{{ $labels.pod }}}} "
                "are queued for a server connection: the pool is saturated and API latency grows."
            ),
        )
    ]


def _newest_job_failed(jobs: str) -> str:
    """The newest of a CronJob's Jobs (matched by ``jobs``) has failed, by kube-state-metrics."""
    return (
        f"(kube_job_status_start_time{{{jobs}}}"
        " == on (namespace) group_left ()"
        f" max by (namespace) (kube_job_status_start_time{{{jobs}}}))"
        " and on (namespace, job_name)"
        f' (kube_job_failed{{{jobs}, condition="true"}} == 1)'
    )


def _backup_rules(sel: Selectors, t: AlertThresholds) -> list[_Rule]:
    pg = sel.postgres
    cron = sel.restore_cronjob
    kube = sel.kube
    jobs = f'{kube}, job_name=~"{cron}-[0-9]+"'
    # The Barman Cloud plugin (backup.method plugin) reports barman_cloud_cloudnative_pg_io_*,
    # in-core Barman cnpg_collector_*; the other one stays 0 or absent. max() over both: after a
    # migration to the plugin the last in-core backup counts until the plugin's first one. The
    # source label keeps both series apart so max() sees each.
    latest_backup = (
        "max by (namespace) ("
        f'label_replace(cnpg_collector_last_available_backup_timestamp{{{pg}}}, "backup_source", '
        '"in-core", "", "")'
        " or "
        f"label_replace(barman_cloud_cloudnative_pg_io_last_available_backup_timestamp{{{pg}}}, "
        '"backup_source", "barman-cloud-plugin", "", ""))'
    )
    max_age = _num(t.restore_check_max_age_days * 86400)
    last_success = f'kube_cronjob_status_last_successful_time{{{kube}, cronjob="{cron}"}}'
    return [
        _Rule(
            name="PostgresBackupTooOld",
            severity="critical",
            component="backup",
            expr=f"time() - {latest_backup} > {_num(t.backup_age_hours * 3600)}",
            for_="15m",
            summary="Last successful base backup is {{ $value | humanizeDuration }} old",
            description=(
                f"No base backup of cluster {sel.cluster_name} completed in the last "
                f"{t.backup_age_hours}h: the nightly ScheduledBackup failed or did not run, and "
                "point-in-time recovery depends on an ever longer WAL chain."
            ),
        ),
        _Rule(
            name="RestoreVerificationFailed",
            severity="critical",
            component="backup",
            expr=_newest_job_failed(jobs),
            for_="5m",
            summary="The latest restore verification job {{ $labels.job_name }} failed",
            description=(
                f"The newest Job of CronJob {cron}, which restores the latest backup and checks "
                "it, failed: the backups may not be restorable."
            ),
        ),
        _Rule(
            name="RestoreVerificationStale",
            severity="warning",
            component="backup",
            expr=(
                f"time() - max by (namespace, cronjob) ({last_success}) > {max_age}"
                " or (time() - max by (namespace, cronjob)"
                f' (kube_cronjob_created{{{kube}, cronjob="{cron}"}}) > {max_age}'
                f" unless on (namespace, cronjob) {last_success})"
            ),
            for_="1h",
            summary="No successful restore verification for {{ $value | humanizeDuration }}",
            description=(
                f"CronJob {cron} has not completed successfully for more than "
                f"{t.restore_check_max_age_days} days: nobody has proven the backups restorable."
            ),
        ),
    ]


ADVISOR_RULE_GROUP: Final = "pgplatform-advisor"
"""Left out by the stack when the advisor's CronJob is not deployed (``advisor.enabled``)."""
ADVISOR_CRONJOB: Final = "postgres-advisor"
"""The advisor's CronJob (``render.advisor_job`` names it with this)."""


def _advisor_rules(sel: Selectors) -> list[_Rule]:
    """The advisor's newest run failed: error-level findings (or it could not run at all)."""
    jobs = f'{sel.kube}, job_name=~"{ADVISOR_CRONJOB}-[0-9]+"'
    return [
        _Rule(
            name="PostgresAdvisorFindings",
            severity="warning",
            component="database",
            expr=_newest_job_failed(jobs),
            for_="5m",
            summary="The latest advisor run {{ $labels.job_name }} failed",
            description=(
                f"The newest Job of CronJob {ADVISOR_CRONJOB} failed: the advisor reported "
                "error-level findings (RLS off on an exposed table, WITH CHECK (true), an "
                "unpinned SECURITY DEFINER, concatenated dynamic SQL...) or could not reach the "
                "database. Its log has one line per finding with its fix, and the JSON report."
            ),
        )
    ]


def _kubernetes_rules(sel: Selectors) -> list[_Rule]:
    return [
        _Rule(
            name="PodCrashLooping",
            severity="warning",
            component="kubernetes",
            expr=(
                "max by (namespace, pod, container) (max_over_time("
                f'kube_pod_container_status_waiting_reason{{{sel.kube}, reason="CrashLoopBackOff"}}'
                "[5m])) >= 1"
            ),
            for_="10m",
            summary="Container {{ $labels.container }} of pod {{ $labels.pod }} is crash-looping",
            description=(
                "Container {{ $labels.container }} of pod {{ $labels.namespace }}/"
                "{{ $labels.pod }} has been in CrashLoopBackOff for 10 minutes."
            ),
        )
    ]


def render_prometheus_rules(
    *,
    namespace: str,
    domains: Sequence[str],
    cluster_name: str,
    thresholds: AlertThresholds,
    runbook_base_url: str,
    max_connections: int,
    postgres_mode: PostgresMode = "cnpg",
    expected_replicas: int = 0,
    naming: TargetNaming | None = None,
    slos: Mapping[str, SloObjectives] | None = None,
    cdc: CdcSlotAlert | None = None,
    synthetic_anonymous: bool | None = None,
    graphql_slow_seconds: float | None = None,
) -> dict[str, Any]:
    """The PrometheusRule ``spec``: one group per concern, per-domain API rules.

    ``cdc`` (change data capture on) adds the rules about its replication slot.

    ``slos`` (domain -> objectives, one per domain) adds the SLO recording rules and burn-rate
    alerts of ``render.slo``; without it they are left out. ``synthetic_anonymous`` adds the
    alerts on the synthetic checks of ``render.synthetic`` (its value: whether the public check
    expects anonymous access to be on); None leaves them out. ``graphql_slow_seconds`` adds the
    GraphQL pilot's alerts (``render.graphql_metrics``; its p95 limit); None: no pilot metrics.

    ``expected_replicas`` is the number of streaming standbys (CloudNativePG: instances - 1);
    0 omits PostgresReplicaMissing. Backup and restore-check alerts exist in cnpg mode only: an
    external database's backups are its provider's.
    """
    if not domains:
        raise ValueError("domains: at least one API domain is needed")
    if len(set(domains)) != len(domains):
        raise ValueError(f"domains: duplicates in {list(domains)}")
    if not runbook_base_url.startswith(("https://", "http://")):
        raise ValueError(f"runbook_base_url: must be an http(s) URL, got {runbook_base_url!r}")
    if max_connections <= 0:
        raise ValueError(f"max_connections: must be positive, got {max_connections}")
    if expected_replicas < 0:
        raise ValueError(f"expected_replicas: must be >= 0, got {expected_replicas}")
    if slos is not None and set(slos) != set(domains):
        raise ValueError(f"slos: needs exactly one SLO per domain {sorted(domains)}")
    sel = Selectors(
        namespace=namespace,
        cluster_name=cluster_name,
        postgres_mode=postgres_mode,
        naming=naming or TargetNaming(),
    )
    base = runbook_base_url.rstrip("/")
    groups: list[tuple[str, list[_Rule]]] = [
        ("pgplatform-api", _api_rules(domains, sel, thresholds, namespace)),
        (
            "pgplatform-database",
            _database_rules(sel, thresholds, postgres_mode, max_connections, expected_replicas),
        ),
        ("pgplatform-pool", _pool_rules(sel, thresholds)),
    ]
    if postgres_mode == "cnpg":
        groups.append(("pgplatform-backup", _backup_rules(sel, thresholds)))
    if cdc is not None:
        groups.append(("pgplatform-cdc", _cdc_rules(sel, postgres_mode, cdc)))
    groups.append((ADVISOR_RULE_GROUP, _advisor_rules(sel)))
    groups.append(("pgplatform-kubernetes", _kubernetes_rules(sel)))
    rendered = [
        {"name": name, "rules": [_rule_dict(rule, base) for rule in rules]}
        for name, rules in groups
    ]
    if slos is not None:
        rendered += slo_rule_groups(
            sel=sel, slos={d: slos[d] for d in domains}, runbook_base_url=base
        )
    if synthetic_anonymous is not None:
        rendered.append(
            synthetic_rule_group(
                namespace=namespace, anonymous=synthetic_anonymous, runbook_base_url=base
            )
        )
    if graphql_slow_seconds is not None:
        rendered.append(
            graphql_rule_group(
                namespace=namespace,
                error_ratio=thresholds.api_error_ratio,
                min_request_rate=thresholds.api_min_request_rate,
                slow_seconds=graphql_slow_seconds,
                runbook_base_url=base,
            )
        )
    return {"groups": rendered}
