"""The rendered alert rules and dashboard queries through the real promtool.

``promtool check rules`` proves the rule files load in Prometheus (syntax, templates, types) for
staging-like and prod-like thresholds; ``promtool test rules`` runs tests/promtool/*.yaml, where
every alert has a case that fires and one that stays silent, against rules rendered with a fixed,
known threshold set. Dashboard queries are wrapped as recording rules so the same parser checks
them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components.render import graphql_metrics, synthetic
from components.render.alerts import (
    AlertThresholds,
    CdcSlotAlert,
    default_thresholds,
    render_prometheus_rules,
)
from components.render.dashboards import dashboard_expressions, render_dashboards
from components.render.metrics_catalog import POSTGRES_MODES, PostgresMode
from components.render.slo import SloObjectives
from tests.conftest import STACKS
from tests.integration.alert_feed import promtool, write_yaml
from tests.integration.rendered import rendered_dashboards, rendered_rule_specs

pytestmark = pytest.mark.integration

PROMTOOL_TESTS = Path(__file__).resolve().parent.parent / "promtool"
RUNBOOK_BASE = "https://example.com/pgplatform/runbooks"
TEST_DOMAINS = ("identity", "content")

# The thresholds the expectations in tests/promtool/*.yaml are computed from.
FIXED_THRESHOLDS = AlertThresholds(
    api_error_ratio=0.05,
    api_denied_ratio=0.2,
    api_min_request_rate=0.1,
    db_connections_share=0.8,
    pool_clients_waiting=5,
    longest_transaction_seconds=300,
    replication_lag_seconds=30,
    backup_age_hours=26,
    restore_check_max_age_days=2,
)

# The change data capture slot the Cdc* cases are computed from (1GiB held raises the alert).
FIXED_CDC = CdcSlotAlert(slot="analytics_cdc", retained_wal_bytes=1024**3)

# The objectives tests/promtool/slo.yaml is computed from (error budgets 0.1% and 5%).
FIXED_SLOS = {
    domain: SloObjectives(availability=99.9, latency_p95_ms=250, window="30d")
    for domain in TEST_DOMAINS
}
SLO_GROUPS = ("pgplatform-slo", "pgplatform-slo-budget")

# Grafana's interval variables are not PromQL; promtool sees typical values instead.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h"}


def fixed_rules(
    mode: PostgresMode,
    *,
    thresholds: AlertThresholds = FIXED_THRESHOLDS,
    slos: dict[str, SloObjectives] | None = None,
    cdc: CdcSlotAlert = FIXED_CDC,
) -> dict[str, Any]:
    """The rules tests/promtool/*.yaml were written against (or a variation of them)."""
    return render_prometheus_rules(
        namespace="pgplatform",
        domains=TEST_DOMAINS,
        cluster_name="pg",
        thresholds=thresholds,
        runbook_base_url=RUNBOOK_BASE,
        max_connections=100,
        postgres_mode=mode,
        expected_replicas=2,
        slos=slos,
        cdc=cdc,
    )


def slo_rules(slos: dict[str, SloObjectives] = FIXED_SLOS) -> dict[str, Any]:
    """Only the SLO groups (rules-slo.yaml): their days of input stay fast without the rest."""
    spec = fixed_rules("cnpg", slos=slos)
    groups = [g for g in spec["groups"] if g["name"] in SLO_GROUPS]
    assert len(groups) == len(SLO_GROUPS)
    return {"groups": groups}


def synthetic_rules() -> dict[str, Any]:
    """Only the synthetic-check group (rules-synthetic.yaml), anonymous access off."""
    spec = render_prometheus_rules(
        namespace="pgplatform",
        domains=TEST_DOMAINS,
        cluster_name="pg",
        thresholds=FIXED_THRESHOLDS,
        runbook_base_url=RUNBOOK_BASE,
        max_connections=100,
        synthetic_anonymous=False,
    )
    return {"groups": [g for g in spec["groups"] if g["name"] == synthetic.RULE_GROUP]}


def graphql_rules() -> dict[str, Any]:
    """Only the GraphQL pilot's group (rules-graphql.yaml), p95 limit 1 s."""
    spec = render_prometheus_rules(
        namespace="pgplatform",
        domains=TEST_DOMAINS,
        cluster_name="pg",
        thresholds=FIXED_THRESHOLDS,
        runbook_base_url=RUNBOOK_BASE,
        max_connections=100,
        graphql_slow_seconds=1.0,
    )
    return {"groups": [g for g in spec["groups"] if g["name"] == graphql_metrics.RULE_GROUP]}


@pytest.mark.parametrize("mode", POSTGRES_MODES)
@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_rendered_rules_pass_promtool_check(
    tmp_path: Path, environment: str, mode: PostgresMode
) -> None:
    domains = ("identity", "content", "analytics")
    spec = render_prometheus_rules(
        namespace="pgplatform",
        domains=domains,
        cluster_name="pgplatform-db",
        thresholds=default_thresholds(environment),
        runbook_base_url="https://github.com/pgplatform/pgplatform/blob/main/docs/runbooks",
        max_connections=400 if environment == "prod" else 200,
        postgres_mode=mode,
        expected_replicas=2,
        slos={d: SloObjectives(availability=99.5, latency_p95_ms=500) for d in domains},
        cdc=FIXED_CDC,
        synthetic_anonymous=environment == "staging",
        graphql_slow_seconds=1.0,
    )
    rules = write_yaml(tmp_path / f"{environment}-{mode}.yaml", spec)
    result = promtool("check", "rules", str(rules), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in spec["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    for mode in POSTGRES_MODES:
        write_yaml(tmp_path / f"rules-{mode}.yaml", fixed_rules(mode))
    write_yaml(tmp_path / "rules-slo.yaml", slo_rules())
    write_yaml(tmp_path / "rules-synthetic.yaml", synthetic_rules())
    write_yaml(tmp_path / "rules-graphql.yaml", graphql_rules())
    test_files = sorted(PROMTOOL_TESTS.glob("*.yaml"))
    assert test_files, f"no promtool tests in {PROMTOOL_TESTS}"
    for source in test_files:
        shutil.copy(source, tmp_path / source.name)
    result = promtool("test", "rules", *(f.name for f in test_files), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(test_files), result.stdout


def test_promtool_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The cases are sharp: rules rendered with another threshold make them fail."""
    looser = AlertThresholds(
        **{**FIXED_THRESHOLDS.__dict__, "db_connections_share": 0.95},
    )
    write_yaml(tmp_path / "rules-cnpg.yaml", fixed_rules("cnpg", thresholds=looser))
    shutil.copy(PROMTOOL_TESTS / "alerts-cnpg.yaml", tmp_path / "alerts-cnpg.yaml")
    result = promtool("test", "rules", "alerts-cnpg.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "PostgresConnectionsNearLimit" in result.stdout + result.stderr


@pytest.mark.parametrize("mode", POSTGRES_MODES)
def test_cdc_cases_catch_a_changed_wal_threshold(tmp_path: Path, mode: PostgresMode) -> None:
    """The retained-WAL cases sit around 1GiB: a 2GiB threshold fails them."""
    looser = CdcSlotAlert(slot="analytics_cdc", retained_wal_bytes=2 * 1024**3)
    write_yaml(tmp_path / f"rules-{mode}.yaml", fixed_rules(mode, cdc=looser))
    shutil.copy(PROMTOOL_TESTS / f"alerts-{mode}.yaml", tmp_path / f"alerts-{mode}.yaml")
    result = promtool("test", "rules", f"alerts-{mode}.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "CdcSlotRetainedWalHigh" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("objectives", "alert"),
    [
        (SloObjectives(availability=99.8, latency_p95_ms=250), "availability"),
        (SloObjectives(availability=99.9, latency_p95_ms=500), "latency"),
    ],
)
def test_slo_promtool_cases_catch_a_changed_objective(
    tmp_path: Path, objectives: SloObjectives, alert: str
) -> None:
    """The burn-rate cases sit just around the thresholds: another objective fails them."""
    write_yaml(tmp_path / "rules-slo.yaml", slo_rules(dict.fromkeys(TEST_DOMAINS, objectives)))
    shutil.copy(PROMTOOL_TESTS / "slo.yaml", tmp_path / "slo.yaml")
    result = promtool("test", "rules", "slo.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert f'slo="{alert}"' in result.stdout + result.stderr


@pytest.mark.parametrize("mode", POSTGRES_MODES)
def test_dashboard_queries_parse(tmp_path: Path, mode: PostgresMode) -> None:
    dashboards = render_dashboards(
        namespace="pgplatform",
        domains=("identity", "content", "analytics"),
        cluster_name="pgplatform-db",
        max_connections=400,
        postgres_mode=mode,
    )
    expressions = dashboard_expressions(dashboards)
    assert expressions
    rules = []
    for index, expr in enumerate(expressions):
        promql = expr
        for variable, value in GRAFANA_VARIABLES.items():
            promql = promql.replace(variable, value)
        assert "$" not in promql, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"pgplatform:dashboard_query:{index}", "expr": promql})
    path = write_yaml(tmp_path / "dashboards.yaml", {"groups": [{"name": "q", "rules": rules}]})
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_check_rejects_a_broken_query(tmp_path: Path) -> None:
    """Control: the wrapping above would notice a query Prometheus cannot parse."""
    broken = {"groups": [{"name": "q", "rules": [{"record": "x:y", "expr": "sum by (le (x)"}]}]}
    path = write_yaml(tmp_path / "broken.yaml", broken)
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode != 0


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_stack_rules_pass_promtool_check(
    tmp_path: Path, rendered_stack: Callable[[str], Path], stack: str
) -> None:
    """The PrometheusRule the stack deploys, exactly as rendered, loads in Prometheus."""
    specs = rendered_rule_specs(rendered_stack(stack))
    assert len(specs) == 1, f"expected one PrometheusRule in {stack}, found {len(specs)}"
    path = write_yaml(tmp_path / f"{stack}-rules.yaml", specs[0])
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in specs[0]["groups"])
    assert count >= 10
    assert f"SUCCESS: {count} rules found" in result.stdout


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_stack_dashboard_queries_parse(
    tmp_path: Path, rendered_stack: Callable[[str], Path], stack: str
) -> None:
    boards = rendered_dashboards(rendered_stack(stack))
    assert set(boards) == {"pgplatform-api.json", "pgplatform-database.json"}
    rules = []
    for index, expr in enumerate(dashboard_expressions(boards)):
        promql = expr
        for variable, value in GRAFANA_VARIABLES.items():
            promql = promql.replace(variable, value)
        assert "$" not in promql, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"pgplatform:dashboard_query:{index}", "expr": promql})
    path = write_yaml(tmp_path / "dashboards.yaml", {"groups": [{"name": "q", "rules": rules}]})
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
