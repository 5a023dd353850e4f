"""ObservabilityStack under mocks: one monitor per target, rules and dashboards wired to them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from components import inputs
from components.observability import (
    BACKUP_RULE_GROUP,
    ObservabilityStackArgs,
    PgBouncerTarget,
    httproute_name,
    observability_args,
    rule_spec,
)
from components.render import observability as render
from components.render import pgbouncer_pool, pods
from components.render.access import MONITOR, PG_MONITOR, build_access_plan
from components.render.metrics_catalog import postgres_exporter_queries_yaml
from components.settings import StackSettings, decode_config_value, parse_settings
from tests.conftest import run_program, stack_config
from tools.mocks import RecordingMocks, is_secret

pytestmark = pytest.mark.unit

MONITORING = "kubernetes:monitoring.coreos.com/v1"
EXTERNAL = {
    "pgplatform:postgres": json.dumps(
        {
            "mode": "external",
            "host": "db.example.internal",
            "roHost": "db-ro.example.internal",
            "sslmode": "verify-full",
            "caSecret": "db-ca",
            "providerCaFile": "ca/db-ca.crt",
        }
    ),
    "pgplatform:postgresAdminPassword": "external-admin-password-for-tests",
    "pgplatform:backup": json.dumps({"enabled": False}),
}


@pytest.fixture(params=["staging", "prod"])
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def settings_of(stack: str, config: dict[str, str], secrets: list[str]) -> StackSettings:
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    return parse_settings(stack, raw, [s.split(":", 1)[1] for s in secrets])


def external_config(stack: str) -> tuple[dict[str, str], list[str]]:
    config, secrets = stack_config(stack)
    config = {**config, **EXTERNAL}
    return config, [*secrets, "pgplatform:postgresAdminPassword"]


def of_kind(mocks: RecordingMocks, kind: str) -> list[dict[str, Any]]:
    return [
        {**r.inputs, "metadata": r.outputs.get("metadata", r.inputs.get("metadata", {}))}
        for r in mocks.kubernetes()
        if r.type.endswith(f":{kind}")
    ]


def children_of(mocks: RecordingMocks, parent: str) -> list[str]:
    return [r.type for r in mocks.resources if r.parent == parent]


def rule_exprs(spec: dict[str, Any]) -> list[str]:
    return [rule["expr"] for group in spec["groups"] for rule in group["rules"]]


def test_observability_stack_in_both_stacks(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks = run_program(pulumi_mocks, stack)
    stacks = mocks.by_type("pgplatform:index:ObservabilityStack")
    assert [r.name for r in stacks] == ["observability"]
    kinds = children_of(mocks, "observability")
    assert kinds.count(f"{MONITORING}:PrometheusRule") == 1
    assert kinds.count(f"{MONITORING}:PodMonitor") == 1
    # Two dashboards, the blackbox exporter's config (synthetic checks are on by default) and,
    # where Loki is on (the staging stack), its rule file.
    settings = settings_of(stack, *stack_config(stack))
    loki = settings.observability.loki.enabled
    assert kinds.count("kubernetes:core/v1:ConfigMap") == 3 + loki
    assert kinds.count(f"{MONITORING}:Probe") == 2 * len(settings.domains)


def test_one_monitor_per_target_and_no_duplicates(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks = run_program(pulumi_mocks, stack)
    config, secrets = stack_config(stack)
    s = settings_of(stack, config, secrets)
    service_monitors = of_kind(mocks, "ServiceMonitor")
    selectors = [json.dumps(m["spec"]["selector"], sort_keys=True) for m in service_monitors]
    assert len(selectors) == len(set(selectors)), "two ServiceMonitors scrape the same Service"
    by_selector = {json.dumps(m["spec"]["selector"], sort_keys=True): m for m in service_monitors}
    for domain in s.domains:
        wanted = {"matchLabels": pods.selector_labels("postgrest", domain)}
        monitor = by_selector[json.dumps(wanted, sort_keys=True)]
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["admin"]
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [s.namespace]}
    pgbouncer = by_selector[json.dumps({"matchLabels": pgbouncer_pool.selector()}, sort_keys=True)]
    assert [e["port"] for e in pgbouncer["spec"]["endpoints"]] == ["metrics"]
    # The CloudNativePG instances: scraped once, by ObservabilityStack only.
    (pod_monitor,) = of_kind(mocks, "PodMonitor")
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {
        "cnpg.io/cluster": inputs.CLUSTER_NAME,
        "cnpg.io/podRole": "instance",
    }
    (cluster,) = of_kind(mocks, "Cluster")
    assert cluster["metadata"]["name"] == inputs.CLUSTER_NAME
    assert cluster["spec"]["monitoring"]["enablePodMonitor"] is False


def test_rule_selectors_match_the_scraped_jobs(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    """Every ``job="..."`` an alert selects is a Service some ServiceMonitor scrapes."""
    mocks = run_program(pulumi_mocks, stack)
    (rule,) = of_kind(mocks, "PrometheusRule")
    jobs = set()
    for expr in rule_exprs(rule["spec"]):
        jobs |= set(re.findall(r'\bjob="([^"]+)"', expr))
    scraped = set()
    services = {
        json.dumps(dict(sorted(s["metadata"]["labels"].items()))): s["metadata"]["name"]
        for s in of_kind(mocks, "Service")
    }
    for monitor in of_kind(mocks, "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        for labels, name in services.items():
            if wanted.items() <= json.loads(labels).items():
                scraped.add(name)
    # Probe results carry the Probe's jobName.
    scraped |= {probe["spec"]["jobName"] for probe in of_kind(mocks, "Probe")}
    assert pgbouncer_pool.SERVICE_NAME in jobs
    assert jobs, "no rule selects a job"
    assert jobs <= scraped, f"alerts select jobs nobody scrapes: {sorted(jobs - scraped)}"


def test_thresholds_and_runbooks_come_from_the_settings(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    config, secrets = stack_config(stack)
    config["pgplatform:observability"] = json.dumps(
        {"alerts": {"apiErrorRatio": 0.037}, "runbookBaseUrl": "https://runbooks.example.com/pg"}
    )
    mocks = run_program(pulumi_mocks, stack, config, secrets)
    (rule,) = of_kind(mocks, "PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    errors = [r for r in rules if r["alert"] == "ApiHighErrorRate"]
    assert errors
    assert all(") > 0.037 and" in r["expr"] for r in errors)
    assert all(
        r["annotations"]["runbook_url"] == f"https://runbooks.example.com/pg/{r['alert']}.md"
        for r in rules
    )


def test_backup_alerts_only_where_backups_run(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks = run_program(pulumi_mocks, stack)
    (rule,) = of_kind(mocks, "PrometheusRule")
    groups = {g["name"] for g in rule["spec"]["groups"]}
    assert (BACKUP_RULE_GROUP in groups) == (stack == "prod")
    if stack == "prod":
        (cronjob,) = of_kind(mocks, "CronJob")
        backup_exprs = [
            r["expr"]
            for g in rule["spec"]["groups"]
            if g["name"] == BACKUP_RULE_GROUP
            for r in g["rules"]
        ]
        assert any(f'cronjob="{cronjob["metadata"]["name"]}"' in e for e in backup_exprs)
        assert any(f'job_name=~"{cronjob["metadata"]["name"]}-' in e for e in backup_exprs)


def test_dashboards_are_sidecar_config_maps(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks = run_program(pulumi_mocks, stack)
    boards = [
        m
        for m in of_kind(mocks, "ConfigMap")
        if m["metadata"]["labels"].get(render.GRAFANA_DASHBOARD_LABEL) == "1"
    ]
    assert len(boards) == 2
    for board in boards:
        ((file_name, text),) = board["data"].items()
        dashboard = json.loads(text)
        assert file_name.endswith(".json")
        assert dashboard["uid"]
        assert dashboard["panels"]
        assert board["metadata"]["annotations"] == {"grafana_folder": "pgplatform"}


def test_external_mode_deploys_a_hardened_exporter(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    config, secrets = external_config(stack)
    mocks = run_program(pulumi_mocks, stack, config, secrets)
    assert of_kind(mocks, "PodMonitor") == []
    (deployment,) = [
        d
        for d in of_kind(mocks, "Deployment")
        if d["metadata"]["labels"] == render.exporter_labels()
    ]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "quay.io/prometheuscommunity/postgres-exporter:v0.11.1"
    assert container["env"] == [
        {
            "name": "DATA_SOURCE_NAME",
            "valueFrom": {
                "secretKeyRef": {"name": "postgres-exporter-secrets", "key": "DATA_SOURCE_NAME"}
            },
        }
    ]
    assert "--extend.query-path=/etc/postgres-exporter/queries.yaml" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    assert {v["name"] for v in pod["volumes"]} == {"queries", "ca"}
    queries = next(
        m
        for m in of_kind(mocks, "ConfigMap")
        if m["metadata"]["name"] == pod["volumes"][0]["configMap"]["name"]
    )
    assert queries["data"] == {"queries.yaml": postgres_exporter_queries_yaml()}
    (service,) = [
        s for s in of_kind(mocks, "Service") if s["metadata"]["name"] == "postgres-exporter"
    ]
    assert service["spec"]["selector"] == render.exporter_selector()
    # The DSN reaches Vault only as a secret, and names the monitoring role.
    kv = next(
        r for r in mocks.by_type("vault:kv/secretV2:SecretV2") if "postgres-exporter" in r.name
    )
    assert is_secret(kv.inputs["dataJson"])
    dsn = json.loads(kv.inputs["dataJson"]["value"])["DATA_SOURCE_NAME"]
    assert dsn.startswith(f"postgresql://{MONITOR}:")
    assert "sslmode=verify-full" in dsn
    assert "sslrootcert=%2Fetc%2Fpostgres-ca%2Fca.crt" in dsn


def test_external_mode_adds_the_monitoring_login(stack: str) -> None:
    config, secrets = external_config(stack)
    plan = build_access_plan(inputs.access_input(settings_of(stack, config, secrets)))
    (monitor,) = [r for r in plan.roles if r.name == MONITOR]
    assert monitor.login
    assert monitor.inherit
    assert monitor.with_password
    assert [m for m in plan.memberships if m.member == MONITOR] == [
        type(plan.memberships[0])(role=PG_MONITOR, member=MONITOR)
    ]
    assert any(g.role == MONITOR and g.privileges == ("CONNECT",) for g in plan.database_grants)
    # Nothing else: no API role, no schema, no default privilege.
    assert not [g for g in plan.schema_grants if g.role == MONITOR]
    assert not [d for d in plan.default_grants if d.role == MONITOR]
    cnpg = build_access_plan(inputs.access_input(settings_of(stack, *stack_config(stack))))
    assert MONITOR not in {r.name for r in cnpg.roles}


def test_no_secret_value_in_any_manifest(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    """Generated passwords appear only inside secret-marked values."""
    config, secrets = external_config(stack)
    mocks = run_program(pulumi_mocks, stack, config, secrets)
    values = [
        r.outputs["result"]["value"]
        for r in mocks.by_type("random:index/randomPassword:RandomPassword")
        if is_secret(r.outputs.get("result"))
    ]
    values.append("external-admin-password-for-tests")
    assert len(values) > 5, "expected the generated passwords of the stack"

    def plain(value: Any) -> list[str]:
        if is_secret(value):
            return []
        if isinstance(value, dict):
            return [text for v in value.values() for text in plain(v)]
        if isinstance(value, list):
            return [text for v in value for text in plain(v)]
        return [str(value)]

    texts = [t for r in mocks.kubernetes() for t in plain(r.inputs)]
    texts += [
        t for r in mocks.resources if r.type.startswith("pgplatform:") for t in plain(r.inputs)
    ]
    leaked = [v for v in values if any(v in t for t in texts)]
    assert not leaked, "a secret value appears in plain text"


def base_args(**overrides: Any) -> ObservabilityStackArgs:
    fields: dict[str, Any] = {
        "namespace": "pgplatform",
        "domains": ("identity",),
        "postgrest_services": {"identity": "identity-api"},
        "httproutes": {"identity": "identity-api"},
        "pgbouncer": PgBouncerTarget(service="pgbouncer", selector={"a": "b"}),
        "postgres_mode": "cnpg",
        "cluster_name": "postgres-db",
        "max_connections": 100,
        "expected_replicas": 1,
        "thresholds": inputs.alert_thresholds(settings_of("prod", *stack_config("prod"))),
        "runbook_base_url": "https://example.com/runbooks",
        "backups": True,
    }
    fields.update(overrides)
    return ObservabilityStackArgs(**fields)


def test_target_naming_follows_the_real_names() -> None:
    naming = render.target_naming(
        postgrest_services={"identity": "identity-api", "content": "content-api"},
        pgbouncer_job="pgbouncer",
        httproutes={"identity": "identity-route", "content": "content-route"},
    )
    assert (naming.postgrest_job, naming.httproute) == ("{domain}-api", "{domain}-route")
    with pytest.raises(ValueError, match="postgrest_job"):
        render.target_naming(
            postgrest_services={"identity": "identity-api", "content": "content-svc"},
            pgbouncer_job="pgbouncer",
            httproutes={"identity": "identity-route", "content": "content-route"},
        )
    spec = rule_spec(base_args(httproutes={"identity": "identity-route"}))
    assert any("httproute/pgplatform/identity-route/rule/" in e for e in rule_exprs(spec))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"postgres_mode": "mysql"}, "postgres_mode"),
        ({"postgrest_services": {}}, "postgrest_services"),
        ({"httproutes": {"other": "x"}}, "httproutes"),
        ({"postgres_mode": "external"}, "exporter"),
    ],
)
def test_args_name_the_bad_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        base_args(**overrides)


def test_rules_without_backups_drop_only_the_backup_group() -> None:
    with_backups = {g["name"] for g in rule_spec(base_args())["groups"]}
    without = {g["name"] for g in rule_spec(base_args(backups=False))["groups"]}
    assert with_backups - without == {BACKUP_RULE_GROUP}


def test_exporter_dsn_encodes_the_password() -> None:
    inp = render.ExporterInput(
        namespace="pgplatform",
        host="db.example.internal",
        port=5432,
        database="app",
        user=MONITOR,
        sslmode="require",
        ca_secret=None,
        prometheus_namespace="monitoring",
    )
    dsn = render.exporter_dsn(inp, "p@ss/word:1")
    assert dsn.startswith("postgresql://pgplatform_monitor:p%40ss%2Fword%3A1@db.example.internal")
    assert "sslrootcert" not in dsn
    with pytest.raises(ValueError, match="ca_secret"):
        render.ExporterInput(**{**inp.__dict__, "sslmode": "verify-full"})


def test_dashboard_config_map_data_is_stable_json() -> None:
    data = render.dashboard_config_map_data("x.json", {"b": 1, "a": [2]})
    assert data == {"x.json": json.dumps({"a": [2], "b": 1}, indent=2, sort_keys=True) + "\n"}
    with pytest.raises(ValueError, match="name"):
        render.dashboard_config_map_data("x.yaml", {})


def test_args_of_the_committed_stacks(stack: str) -> None:
    s = settings_of(stack, *stack_config(stack))
    args = observability_args(s, monitor_password=None)
    assert args.naming.postgrest_job == "{domain}-api"
    assert args.naming.pgbouncer_job == pgbouncer_pool.SERVICE_NAME
    assert args.backups == (stack == "prod")
    assert args.expected_replicas == s.postgres.instances - 1


def test_httproutes_carry_the_names_the_alerts_select(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    mocks = run_program(pulumi_mocks, "staging")
    names = sorted(
        r["metadata"]["name"]
        for r in of_kind(mocks, "HTTPRoute")
        if r["metadata"]["labels"]["app.kubernetes.io/component"] == "api"
    )
    s = settings_of("staging", *stack_config("staging"))
    assert names == sorted(httproute_name(d) for d in s.domains)


def test_rendered_rule_file_is_plain_yaml(stack: str) -> None:
    spec = rule_spec(
        observability_args(settings_of(stack, *stack_config(stack)), monitor_password=None)
    )
    assert yaml.safe_load(yaml.safe_dump(spec)) == spec
