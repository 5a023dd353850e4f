"""SLOs per domain: config with errors naming the key, env defaults, the recording rules and
burn-rate alerts they render, and the error-budget panel reading what the rules record."""

from __future__ import annotations

import re
from typing import Any

import pytest

from components import inputs
from components.observability import observability_args, rule_spec
from components.render.alerts import default_thresholds, render_prometheus_rules
from components.render.dashboards import dashboard_expressions, render_dashboards
from components.render.metrics_catalog import metric_names
from components.render.slo import (
    BUDGET_RECORD,
    FAST_BURN_ALERT,
    LATENCY_BUCKETS_MS,
    RECORDED_NAMES,
    SLOW_BURN_ALERT,
    SloObjectives,
    recorded_names,
)
from components.settings import parse_settings
from tests.unit.test_settings import _PROD, _STAGING, _problems, _with

pytestmark = pytest.mark.unit

DOMAINS = ("identity", "content")


def render(slos: dict[str, SloObjectives]) -> dict[str, Any]:
    return render_prometheus_rules(
        namespace="pgplatform",
        domains=tuple(slos),
        cluster_name="pgplatform-db",
        thresholds=default_thresholds("prod"),
        runbook_base_url="https://example.com/runbooks",
        max_connections=400,
        slos=slos,
    )


def alerts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in spec["groups"] for r in g["rules"] if "alert" in r]


def records(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in spec["groups"] for r in g["rules"] if "record" in r]


def test_environment_defaults() -> None:
    staging = parse_settings("staging", _STAGING).domains["identity"].slo
    prod = parse_settings("prod", _PROD).domains["identity"].slo
    assert (prod.availability, prod.latency_p95_ms, prod.window) == (99.9, 250, "30d")
    assert (staging.availability, staging.latency_p95_ms, staging.window) == (99.5, 500, "30d")


def test_stack_yaml_sets_one_domain_and_keeps_the_others_defaults() -> None:
    raw = _with(_PROD, "domains.content", {"slo": {"availability": 99.95, "latencyP95Ms": 100}})
    settings = parse_settings("prod", raw)
    objectives = inputs.slo_objectives(settings)
    assert objectives["content"] == SloObjectives(
        availability=99.95, latency_p95_ms=100, window="30d"
    )
    assert objectives["identity"] == SloObjectives(availability=99.9, latency_p95_ms=250)


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("availability", 100, "between 95 and 99.99"),
        ("availability", 90, "between 95 and 99.99"),
        ("latencyP95Ms", 300, "allowed: [5, 10, 25, 50, 100, 250, 500"),
        ("window", "12h", "whole number of days"),
        ("window", "180d", "7d..90d"),
        ("window", "30 days", "not a duration"),
        ("budget", 1, "unknown key"),
    ],
)
def test_bad_slo_names_its_key(field: str, value: Any, hint: str) -> None:
    problems = _problems("prod", _with(_PROD, f"domains.identity.slo.{field}", value))
    key = f"pgplatform:domains.identity.slo.{field}"
    assert any(p.startswith(key) and hint in p for p in problems), problems


def test_objectives_validate_their_fields() -> None:
    with pytest.raises(ValueError, match=r"^latency_p95_ms: .*allowed"):
        SloObjectives(availability=99.9, latency_p95_ms=300)
    with pytest.raises(ValueError, match=r"^availability:"):
        SloObjectives(availability=100.0, latency_p95_ms=250)
    with pytest.raises(ValueError, match=r"^window:"):
        SloObjectives(availability=99.9, latency_p95_ms=250, window="1d")
    assert SloObjectives(availability=99.9, latency_p95_ms=250, window="4w").promql_window == "28d"


def test_every_domain_needs_an_slo() -> None:
    with pytest.raises(ValueError, match="slos: needs exactly one SLO per domain"):
        render_prometheus_rules(
            namespace="pgplatform",
            domains=DOMAINS,
            cluster_name="pgplatform-db",
            thresholds=default_thresholds("prod"),
            runbook_base_url="https://example.com/runbooks",
            max_connections=400,
            slos={"identity": SloObjectives(availability=99.9, latency_p95_ms=250)},
        )


def test_alerts_per_domain_and_sli_with_the_workbook_burn_rates() -> None:
    spec = render(
        {
            "identity": SloObjectives(availability=99.9, latency_p95_ms=250),
            "content": SloObjectives(availability=99.5, latency_p95_ms=1000, window="28d"),
        }
    )
    rules = alerts(spec)
    slo_alerts = [r for r in rules if r["alert"] in (FAST_BURN_ALERT, SLOW_BURN_ALERT)]
    keys = {(r["alert"], r["labels"]["domain"], r["labels"]["slo"]) for r in slo_alerts}
    assert len(slo_alerts) == len(keys) == 8
    by_key = {(r["alert"], r["labels"]["domain"], r["labels"]["slo"]): r for r in slo_alerts}
    fast = by_key[(FAST_BURN_ALERT, "content", "availability")]
    assert fast["labels"]["severity"] == "critical"
    for window, factor in (("1h", "14.4"), ("5m", "14.4"), ("6h", "6"), ("30m", "6")):
        assert re.search(rf"ratio_rate{window}\{{[^}}]*\}} > \({factor} \* 0\.005\)", fast["expr"])
    slow = by_key[(SLOW_BURN_ALERT, "identity", "latency")]
    assert slow["labels"]["severity"] == "warning"
    for window, factor in (("1d", "3"), ("2h", "3"), ("3d", "1"), ("6h", "1")):
        assert re.search(rf"ratio_rate{window}\{{[^}}]*\}} > \({factor} \* 0\.05\)", slow["expr"])
    assert 'domain="identity"' in slow["expr"]
    assert 'domain="content"' not in slow["expr"]
    assert (
        "over 28d" in by_key[(SLOW_BURN_ALERT, "content", "latency")]["annotations"]["description"]
    )


def test_recording_rules_read_the_domains_route_and_the_objective_bucket() -> None:
    spec = render({"identity": SloObjectives(availability=99.9, latency_p95_ms=500)})
    rules = records(spec)
    assert recorded_names(spec["groups"]) == RECORDED_NAMES
    for rule in rules:
        assert "httproute/pgplatform/identity-api/rule/" in rule["expr"]
        assert rule["labels"]["domain"] == "identity"
    latency = [r for r in rules if r["labels"]["slo"] == "latency"]
    assert latency
    assert all('le=~"500(\\\\.0)?"' in r["expr"] for r in latency)
    assert all("envoy_cluster_upstream_rq_time_count" in r["expr"] for r in latency)
    (budget,) = [
        r for r in rules if r["record"] == BUDGET_RECORD and r["labels"]["slo"] == "latency"
    ]
    assert "[30d]" in budget["expr"]
    assert budget["expr"].endswith("/ 0.05")
    assert budget["labels"]["window"] == "30d"


def test_alerts_read_only_series_the_rules_record() -> None:
    spec = render({"identity": SloObjectives(availability=99.9, latency_p95_ms=250)})
    recorded = recorded_names(spec["groups"])
    for rule in alerts(spec):
        if rule["alert"] in (FAST_BURN_ALERT, SLOW_BURN_ALERT):
            assert metric_names(rule["expr"]) <= recorded, rule["expr"]


def test_latency_buckets_are_envoys_default_boundaries() -> None:
    envoy_defaults = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
    assert set(LATENCY_BUCKETS_MS) <= set(envoy_defaults)


def test_dashboard_shows_the_budget_the_rules_record() -> None:
    boards = render_dashboards(
        namespace="pgplatform", domains=DOMAINS, cluster_name="pgplatform-db", max_connections=400
    )
    api = boards["pgplatform-api.json"]
    (panel,) = [p for p in api["panels"] if p.get("title") == "Error budget remaining"]
    (target,) = panel["targets"]
    assert target["expr"] == f'{BUDGET_RECORD}{{namespace="pgplatform"}}'
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
    used = frozenset().union(*(metric_names(e) for e in dashboard_expressions(boards)))
    spec = render({d: SloObjectives(availability=99.9, latency_p95_ms=250) for d in DOMAINS})
    assert used & RECORDED_NAMES <= recorded_names(spec["groups"])


@pytest.mark.parametrize(("stack", "raw"), [("staging", _STAGING), ("prod", _PROD)])
def test_stack_rule_carries_the_slo_groups(stack: str, raw: dict[str, Any]) -> None:
    settings = parse_settings(stack, raw)
    spec = rule_spec(observability_args(settings, monitor_password=None))
    names = [g["name"] for g in spec["groups"]]
    assert {"pgplatform-slo", "pgplatform-slo-budget"} <= set(names)
    domains = {r["labels"]["domain"] for r in alerts(spec) if r["alert"] == FAST_BURN_ALERT}
    assert domains == set(settings.domains)
