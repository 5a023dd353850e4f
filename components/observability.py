"""ObservabilityStack: what scrapes the platform, what alerts on it, what draws it.

One place for every monitor, so the labels the rules select on (``TargetNaming``) and the
targets that produce them are decided together: PostgREST admin ports, the PgBouncer exporter,
the CloudNativePG instances (or, in external mode, a postgres exporter deployed here), one
PrometheusRule from ``render.alerts`` and the Grafana dashboards as sidecar ConfigMaps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi

from components.k8s import KubeObject, meta
from components.render import logs as logs_render
from components.render import observability as render
from components.render import pods
from components.render import synthetic as synth
from components.render.alerts import (
    ADVISOR_RULE_GROUP,
    AlertThresholds,
    CdcSlotAlert,
    render_prometheus_rules,
)
from components.render.checksum import content_checksum
from components.render.dashboards import render_dashboards
from components.render.metrics_catalog import TargetNaming, postgres_exporter_queries_yaml
from components.render.secret_sync import wait_for_secret_container
from components.render.slo import SloObjectives
from components.settings import StackSettings, VaultSettings
from components.workload import VaultAccountSpec, vault_account

BACKUP_RULE_GROUP = "pgplatform-backup"
WAIT_IMAGE = "docker.io/library/busybox:1.37.0"
"""Image of the init container that waits for the exporter's Secret to be in sync."""


@dataclass(frozen=True, kw_only=True)
class PgBouncerTarget:
    """The PgBouncer Service exposing the exporter; its name becomes the scrape ``job``."""

    service: str
    selector: Mapping[str, str]
    port: str = "metrics"


@dataclass(frozen=True, kw_only=True)
class ExporterSecrets:
    """Where the external-mode exporter's DSN comes from (Vault, like every other secret)."""

    env: str
    vault: VaultSettings
    password: pulumi.Input[str]


@dataclass(frozen=True, kw_only=True)
class ObservabilityStackArgs:
    """Inputs of the monitors, rules and dashboards of one stack."""

    namespace: str
    domains: tuple[str, ...]
    postgrest_services: Mapping[str, str]
    """Domain -> PostgREST Service (admin port ``admin``)."""
    httproutes: Mapping[str, str]
    """Domain -> HTTPRoute name (Envoy Gateway labels its upstream metrics with it)."""
    pgbouncer: PgBouncerTarget
    postgres_mode: str
    cluster_name: str
    max_connections: int
    expected_replicas: int
    thresholds: AlertThresholds
    runbook_base_url: str
    backups: bool
    """Backups and the restore check exist: their alerts are rendered."""
    advisor: bool = False
    """The advisor's CronJob exists (``advisor.enabled``): its alert is rendered."""
    slos: Mapping[str, SloObjectives] | None = None
    """Domain -> SLOs: recording rules, burn-rate alerts and the error-budget panel."""
    cdc: CdcSlotAlert | None = None
    """The change data capture slot to watch (when ``cdc.tables`` lists tables)."""
    synthetic: synth.SyntheticChecks | None = None
    """Blackbox exporter, Probes and their alerts; None: no synthetic checks."""
    graphql_slow_seconds: float | None = None
    """The GraphQL pilot runs with metrics: its ServiceMonitor and alerts (p95 limit)."""
    loki: logs_render.LokiLogs | None = None
    """Gateway access log in Loki: the ruler's rule ConfigMap and the rows-per-route panel."""
    exporter: render.ExporterInput | None = None
    exporter_secrets: ExporterSecrets | None = None
    labels: Mapping[str, str] = field(
        default_factory=lambda: pods.labels("pgplatform", "monitoring", "pgplatform")
    )
    monitoring_labels: Mapping[str, str] = field(default_factory=dict)
    """Added to every ServiceMonitor, PodMonitor and PrometheusRule: the labels the cluster's
    Prometheus selects them by (kube-prometheus-stack: ``release: <helm release>``)."""

    def __post_init__(self) -> None:
        if self.postgres_mode not in {"cnpg", "external"}:
            raise ValueError(f"postgres_mode: 'cnpg' or 'external', got {self.postgres_mode!r}")
        if set(self.postgrest_services) != set(self.domains):
            raise ValueError("postgrest_services: needs exactly one Service per domain")
        if set(self.httproutes) != set(self.domains):
            raise ValueError("httproutes: needs exactly one HTTPRoute per domain")
        if self.slos is not None and set(self.slos) != set(self.domains):
            raise ValueError("slos: needs exactly one SLO per domain")
        if self.synthetic is not None and set(self.synthetic.domains) != set(self.domains):
            raise ValueError("synthetic: must check exactly the stack's domains")
        external = self.postgres_mode == "external"
        if external != (self.exporter is not None and self.exporter_secrets is not None):
            raise ValueError(
                "exporter/exporter_secrets: required in mode 'external' and only there"
            )
        if external and self.backups:
            raise ValueError("backups: an external database's backups are its provider's")
        try:
            pods.with_extra_labels(self.labels, self.monitoring_labels)
        except ValueError as error:
            raise ValueError(f"monitoring_labels: {error}") from None

    @property
    def monitor_labels(self) -> dict[str, str]:
        """Labels of the monitors and the rule: ours plus the Prometheus selector's."""
        return pods.with_extra_labels(self.labels, self.monitoring_labels)

    @property
    def naming(self) -> TargetNaming:
        return render.target_naming(
            postgrest_services=self.postgrest_services,
            pgbouncer_job=self.pgbouncer.service,
            httproutes=self.httproutes,
        )


def rule_spec(args: ObservabilityStackArgs) -> dict[str, Any]:
    """The PrometheusRule ``spec``; without backups their group is left out (nothing to watch)."""
    spec = render_prometheus_rules(
        namespace=args.namespace,
        domains=args.domains,
        cluster_name=args.cluster_name,
        thresholds=args.thresholds,
        runbook_base_url=args.runbook_base_url,
        max_connections=args.max_connections,
        postgres_mode="cnpg" if args.postgres_mode == "cnpg" else "external",
        expected_replicas=args.expected_replicas,
        naming=args.naming,
        slos=args.slos,
        cdc=args.cdc,
        synthetic_anonymous=None if args.synthetic is None else args.synthetic.anonymous,
        graphql_slow_seconds=args.graphql_slow_seconds,
    )
    if not args.backups:
        spec["groups"] = [g for g in spec["groups"] if g["name"] != BACKUP_RULE_GROUP]
    if not args.advisor:
        spec["groups"] = [g for g in spec["groups"] if g["name"] != ADVISOR_RULE_GROUP]
    return spec


def dashboards(args: ObservabilityStackArgs) -> dict[str, dict[str, Any]]:
    return render_dashboards(
        namespace=args.namespace,
        domains=args.domains,
        cluster_name=args.cluster_name,
        max_connections=args.max_connections,
        postgres_mode="cnpg" if args.postgres_mode == "cnpg" else "external",
        naming=args.naming,
        loki=args.loki,
    )


class ObservabilityStack(pulumi.ComponentResource):
    """ServiceMonitors, PodMonitors, PrometheusRule, dashboards and (external mode) an exporter."""

    rule_name: pulumi.Output[str]
    """Name of the PrometheusRule."""
    dashboard_config_maps: pulumi.Output[list[str]]
    """ConfigMaps the Grafana sidecar loads (label ``grafana_dashboard: "1"``)."""
    monitors: pulumi.Output[list[str]]
    """ServiceMonitors and PodMonitors of the stack."""
    alert_count: pulumi.Output[int]
    """Number of alerting rules rendered."""

    def __init__(
        self, name: str, args: ObservabilityStackArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:ObservabilityStack", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        labels = dict(args.labels)
        monitor_labels = args.monitor_labels
        monitors: list[KubeObject] = []

        for domain in args.domains:
            service = args.postgrest_services[domain]
            monitors.append(
                KubeObject(
                    f"{name}-{service}",
                    api_version=render.MONITORING_API_VERSION,
                    kind="ServiceMonitor",
                    metadata=meta(ns, monitor_labels),
                    body={
                        "spec": render.service_monitor_spec(
                            namespace=ns,
                            selector=pods.selector_labels("postgrest", domain),
                            port="admin",
                        )
                    },
                    opts=child,
                )
            )
        monitors.append(
            KubeObject(
                f"{name}-pgbouncer",
                api_version=render.MONITORING_API_VERSION,
                kind="ServiceMonitor",
                metadata=meta(ns, monitor_labels),
                body={
                    "spec": render.service_monitor_spec(
                        namespace=ns, selector=args.pgbouncer.selector, port=args.pgbouncer.port
                    )
                },
                opts=child,
            )
        )
        if args.postgres_mode == "cnpg":
            monitors.append(
                KubeObject(
                    f"{name}-cnpg",
                    api_version=render.MONITORING_API_VERSION,
                    kind="PodMonitor",
                    metadata=meta(ns, monitor_labels),
                    body={
                        "spec": render.cnpg_pod_monitor_spec(
                            namespace=ns, cluster=args.cluster_name
                        )
                    },
                    opts=child,
                )
            )
        else:
            monitors.append(self._exporter(name, args, monitor_labels))
        if args.synthetic is not None:
            monitors += self._synthetic(name, args.synthetic, labels, monitor_labels)
        if args.graphql_slow_seconds is not None:
            from components.render import graphql_workload as gw

            monitors.append(
                KubeObject(
                    f"{name}-graphql",
                    api_version=render.MONITORING_API_VERSION,
                    kind="ServiceMonitor",
                    metadata=meta(ns, monitor_labels),
                    body={
                        "spec": render.service_monitor_spec(
                            namespace=ns, selector=gw.selector(), port=gw.METRICS_PORT_NAME
                        )
                    },
                    opts=child,
                )
            )
        if args.loki is not None:
            KubeObject(
                f"{name}-loki-rules",
                api_version="v1",
                kind="ConfigMap",
                metadata=meta(
                    ns,
                    pods.with_extra_labels(labels, args.loki.rule_labels),
                    name=logs_render.RULES_CONFIG_MAP,
                ),
                body={"data": {logs_render.RULE_FILE: logs_render.loki_rules_yaml(args.loki)}},
                opts=child,
            )

        spec = rule_spec(args)
        rule = KubeObject(
            f"{name}-rules",
            api_version=render.MONITORING_API_VERSION,
            kind="PrometheusRule",
            metadata=meta(ns, monitor_labels),
            body={"spec": spec},
            opts=child,
        )
        boards = [
            KubeObject(
                f"{name}-{file_name.removesuffix('.json')}",
                api_version="v1",
                kind="ConfigMap",
                metadata=meta(
                    ns,
                    render.dashboard_labels(labels),
                    annotations={render.GRAFANA_FOLDER_ANNOTATION: render.GRAFANA_FOLDER},
                ),
                body={"data": render.dashboard_config_map_data(file_name, board)},
                opts=child,
            )
            for file_name, board in dashboards(args).items()
        ]

        self.rule_name = rule.object_name
        self.dashboard_config_maps = pulumi.Output.all(*(b.object_name for b in boards)).apply(
            lambda names: [str(n) for n in names]
        )
        self.monitors = pulumi.Output.all(*(m.object_name for m in monitors)).apply(
            lambda names: [str(n) for n in names]
        )
        self.alert_count = pulumi.Output.from_input(
            sum(len(group["rules"]) for group in spec["groups"])
        )
        self.register_outputs(
            {
                "rule_name": self.rule_name,
                "dashboard_config_maps": self.dashboard_config_maps,
                "monitors": self.monitors,
                "alert_count": self.alert_count,
            }
        )

    def _synthetic(
        self,
        name: str,
        checks: synth.SyntheticChecks,
        labels: dict[str, str],
        monitor_labels: dict[str, str],
    ) -> list[KubeObject]:
        """The blackbox exporter and one Probe per domain and check; returns the Probes."""
        from components.render import domain_api

        ns = checks.namespace
        child = pulumi.ResourceOptions(parent=self)
        app_labels = synth.exporter_labels()
        account = KubeObject(
            f"{name}-blackbox-sa",
            api_version="v1",
            kind="ServiceAccount",
            metadata=meta(ns, app_labels, name=synth.NAME),
            body={"automountServiceAccountToken": False},
            opts=child,
        )
        config_text = synth.blackbox_config(checks)
        config = KubeObject(
            f"{name}-blackbox-config",
            api_version="v1",
            kind="ConfigMap",
            metadata=meta(ns, app_labels),
            body={"data": {synth.CONFIG_KEY: config_text}},
            opts=child,
        )
        KubeObject(
            f"{name}-blackbox",
            api_version="apps/v1",
            kind="Deployment",
            metadata=meta(ns, app_labels, name=synth.NAME),
            body={
                "spec": synth.deployment_spec(
                    checks,
                    config_map=config.object_name,
                    config_checksum=content_checksum(config_text),
                )
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[config, account]),
        )
        KubeObject(
            f"{name}-blackbox-service",
            api_version="v1",
            kind="Service",
            metadata=meta(ns, app_labels, name=synth.NAME),
            body={"spec": synth.service_spec()},
            opts=child,
        )
        KubeObject(
            f"{name}-blackbox-netpol",
            api_version="networking.k8s.io/v1",
            kind="NetworkPolicy",
            metadata=meta(ns, app_labels, name=synth.NAME),
            body={
                "spec": synth.network_policy_spec(
                    checks, postgrest_selector={"app.kubernetes.io/name": domain_api.APP_NAME}
                )
            },
            opts=child,
        )
        return [
            KubeObject(
                f"{name}-probe-{probe}",
                api_version=render.MONITORING_API_VERSION,
                kind="Probe",
                metadata=meta(ns, monitor_labels, name=probe),
                body={"spec": spec},
                opts=child,
            )
            for probe, spec in synth.probes(checks).items()
        ]

    def _exporter(
        self, name: str, args: ObservabilityStackArgs, labels: dict[str, str]
    ) -> KubeObject:
        """postgres_exporter for an external database; returns its ServiceMonitor."""
        inp = args.exporter
        secrets_in = args.exporter_secrets
        if inp is None or secrets_in is None:  # checked by the args; keeps mypy informed
            raise ValueError("exporter: required in mode 'external'")
        ns = args.namespace
        child = pulumi.ResourceOptions(parent=self)
        app_labels = render.exporter_labels()
        consumer = render.POSTGRES_EXPORTER_NAME
        dsn = pulumi.Output.secret(secrets_in.password).apply(
            lambda password: render.exporter_dsn(inp, password)
        )
        account = vault_account(
            self,
            f"{name}-exporter",
            VaultAccountSpec(
                name=render.POSTGRES_EXPORTER_NAME,
                namespace=ns,
                labels=app_labels,
                env=secrets_in.env,
                vault=secrets_in.vault,
                consumer=consumer,
                values={render.DSN_KEY: pulumi.Output.secret(dsn)},
            ),
        )
        secret_name = account.secret_name
        queries = postgres_exporter_queries_yaml()
        config = KubeObject(
            f"{name}-exporter-queries",
            api_version="v1",
            kind="ConfigMap",
            metadata=meta(ns, app_labels),
            body={"data": {render.QUERIES_KEY: queries}},
            opts=child,
        )
        init = [
            wait_for_secret_container(
                secret_name,
                image=WAIT_IMAGE,
                security_context=pods.container_security_context(inp.uid),
            )
        ]

        spec = render.exporter_deployment_spec(
            inp,
            queries_config_map=config.object_name,
            secret_name=secret_name,
            queries_checksum=content_checksum(queries),
            secrets_checksum=account.checksum,
            init_containers=init,
        )
        spec["template"]["spec"]["serviceAccountName"] = account.service_account_name
        KubeObject(
            f"{name}-exporter",
            api_version="apps/v1",
            kind="Deployment",
            metadata=meta(ns, app_labels, name=render.POSTGRES_EXPORTER_NAME),
            body={"spec": spec},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[config, account.secrets]),
        )
        KubeObject(
            f"{name}-exporter-service",
            api_version="v1",
            kind="Service",
            metadata=meta(ns, app_labels, name=render.POSTGRES_EXPORTER_NAME),
            body={"spec": render.exporter_service_spec()},
            opts=child,
        )
        KubeObject(
            f"{name}-exporter-netpol",
            api_version="networking.k8s.io/v1",
            kind="NetworkPolicy",
            metadata=meta(ns, app_labels, name=render.POSTGRES_EXPORTER_NAME),
            body={"spec": render.exporter_network_policy_spec(inp)},
            opts=child,
        )
        return KubeObject(
            f"{name}-exporter-monitor",
            api_version=render.MONITORING_API_VERSION,
            kind="ServiceMonitor",
            metadata=meta(ns, labels),
            body={
                "spec": render.service_monitor_spec(
                    namespace=ns, selector=render.exporter_selector(), port="metrics"
                )
            },
            opts=child,
        )


def httproute_name(domain: str) -> str:
    """Name the HTTPRoute of a domain API must carry: ``<domain>-api``, like its Service.

    Envoy Gateway labels a route's upstream metrics ``httproute/<ns>/<name>/rule/<n>``, so the
    API alerts can only select a route whose name is fixed (not generated with a suffix).
    """
    from components.render import domain_api

    return domain_api.service_name(domain)


def observability_args(
    s: StackSettings, *, monitor_password: pulumi.Input[str] | None
) -> ObservabilityStackArgs:
    """Settings -> args; names of the other components' objects from their pure builders."""
    from components import inputs
    from components.render import domain_api, pgbouncer_pool

    domains = tuple(s.domains)
    exporter = inputs.exporter_input(s)
    secrets = None
    if exporter is not None:
        if monitor_password is None:
            raise ValueError("monitor_password: required in postgres.mode 'external'")
        secrets = ExporterSecrets(env=s.stack, vault=s.vault, password=monitor_password)
    return ObservabilityStackArgs(
        monitoring_labels=dict(s.observability.monitoring_labels),
        namespace=s.namespace,
        domains=domains,
        postgrest_services={d: domain_api.service_name(d) for d in domains},
        httproutes={d: httproute_name(d) for d in domains},
        pgbouncer=PgBouncerTarget(
            service=pgbouncer_pool.SERVICE_NAME, selector=pgbouncer_pool.selector()
        ),
        postgres_mode=s.postgres.mode,
        cluster_name=inputs.CLUSTER_NAME,
        max_connections=s.postgres.max_connections,
        expected_replicas=inputs.expected_replicas(s),
        thresholds=inputs.alert_thresholds(s),
        runbook_base_url=s.observability.runbook_base_url,
        backups=inputs.backup_store(s) is not None,
        advisor=s.advisor.enabled,
        slos=inputs.slo_objectives(s),
        cdc=inputs.cdc_slot_alert(s),
        synthetic=inputs.synthetic_checks(s),
        loki=inputs.loki_logs(s),
        graphql_slow_seconds=(
            s.observability.graphql.slow_seconds
            if s.graphql.enabled and s.observability.graphql.metrics
            else None
        ),
        exporter=exporter,
        exporter_secrets=secrets,
    )


def observability_report(s: StackSettings) -> list[str]:
    """Summary lines for the offline render: what is scraped, alerted on and backed up."""
    from components import inputs

    args = observability_args(s, monitor_password="" if s.postgres.mode == "external" else None)
    rules = [r for g in rule_spec(args)["groups"] for r in g["rules"]]
    alerts = sorted({r["alert"] for r in rules if "alert" in r})
    slos = ", ".join(
        f"{domain} {slo.availability:g}%/p95 {slo.latency_p95_ms}ms/{slo.window}"
        for domain, slo in (args.slos or {}).items()
    )
    database = "PodMonitor (CloudNativePG)" if args.postgres_mode == "cnpg" else "postgres_exporter"
    lines = [
        "",
        f"Observability: ServiceMonitors for {len(args.domains)} PostgREST admin ports and "
        f"PgBouncer, {database}; {len(alerts)} alerts; 2 dashboards",
        f"SLOs (availability/latency/window): {slos or 'none'}",
        "Loki: "
        + (
            "off"
            if args.loki is None
            else f"rule ConfigMap {logs_render.RULES_CONFIG_MAP} ({logs_render.ROWS_RECORD}), "
            f"rows-per-route panel, gateway log {args.loki.selector}"
        ),
        "Synthetic checks: "
        + (
            "off"
            if args.synthetic is None
            else f"blackbox exporter {synth.BLACKBOX_EXPORTER_VERSION}, public route "
            f"(expects {200 if args.synthetic.anonymous else 401}) and /ready per domain every "
            f"{args.synthetic.interval}"
        ),
    ]
    store = inputs.backup_store(s)
    if store is None:
        lines.append("Backups: off")
    else:
        lines.append(
            f"Backups ({store.method}): WAL + base backups to {store.destination_path} (retention "
            f"{store.retention}), nightly '{s.backup.schedule}', restore check "
            f"'{s.backup.restore_check_schedule}'"
        )
    return lines
