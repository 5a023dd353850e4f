"""Alert rules: complete annotations, a runbook per alert, per-domain rules, thresholds in the
expressions, metric names from documented exporter lists, and promtool cases for every alert."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.render.alerts import (
    ALERT_NAMES,
    AlertThresholds,
    CdcSlotAlert,
    default_thresholds,
    render_prometheus_rules,
)
from components.render.metrics_catalog import (
    SOURCES,
    PostgresMode,
    TargetNaming,
    load_documented_metrics,
    metric_names,
    parse_metric_list,
    undocumented,
)
from components.render.slo import RECORDED_NAMES, SloObjectives, recorded_names

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks"
METRIC_LISTS = ROOT / "tests" / "data" / "metrics"
PROMTOOL_TESTS = ROOT / "tests" / "promtool"
BASE_URL = "https://github.com/pgplatform/pgplatform/blob/main/docs/runbooks"
DOMAINS = ("identity", "content", "analytics")


def render(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "namespace": "pgplatform",
        "domains": DOMAINS,
        "cluster_name": "pgplatform-db",
        "thresholds": default_thresholds("prod"),
        "runbook_base_url": BASE_URL,
        "max_connections": 400,
        "postgres_mode": "cnpg",
        "expected_replicas": 2,
    } | overrides
    args.setdefault("slos", dict.fromkeys(args["domains"], SLOS))
    args.setdefault("cdc", CdcSlotAlert(slot="analytics_cdc", retained_wal_bytes=2 * 1024**3))
    args.setdefault("synthetic_anonymous", False)
    args.setdefault("graphql_slow_seconds", 1.0)
    return render_prometheus_rules(**args)


SLOS = SloObjectives(availability=99.9, latency_p95_ms=250, window="30d")


def rules_of(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The alerting rules of ``spec`` (recording rules have no alert name)."""
    return [rule for group in spec["groups"] for rule in group["rules"] if "alert" in rule]


def by_name(spec: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [rule for rule in rules_of(spec) if rule["alert"] == name]


def test_full_render_emits_every_known_alert() -> None:
    assert {rule["alert"] for rule in rules_of(render())} == set(ALERT_NAMES)


@pytest.mark.parametrize("mode", ["cnpg", "external"])
def test_every_alert_is_annotated_and_has_a_runbook(mode: PostgresMode) -> None:
    for rule in rules_of(render(postgres_mode=mode)):
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert len(annotations["description"]) > 40, name
        assert annotations["runbook_url"] == f"{BASE_URL}/{name}.md"
        assert (RUNBOOKS / f"{name}.md").is_file(), f"docs/runbooks/{name}.md is missing"
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_runbook_explains_meaning_impact_diagnosis_mitigation(name: str) -> None:
    text = (RUNBOOKS / f"{name}.md").read_text()
    assert text.startswith(f"# {name}\n")
    for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation"):
        assert section in text, f"{name}.md lacks {section}"
    assert "```" in text, f"{name}.md has no diagnosis commands"


def test_runbook_index_lists_every_alert_and_nothing_else() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    linked = set(re.findall(r"\]\(([A-Za-z]+)\.md\)", index))
    assert linked == set(ALERT_NAMES)
    on_disk = {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"}
    assert on_disk == set(ALERT_NAMES)


def test_api_rules_exist_once_per_domain_and_select_the_domains_route() -> None:
    spec = render()
    for name in ("ApiHighErrorRate", "ApiHighPermissionDeniedRate"):
        rules = by_name(spec, name)
        assert [rule["labels"]["domain"] for rule in rules] == list(DOMAINS)
        for rule in rules:
            domain = rule["labels"]["domain"]
            assert f"httproute/pgplatform/{domain}-api/rule/" in rule["expr"]
            others = [d for d in DOMAINS if d != domain]
            assert not any(f"/{other}-api/" in rule["expr"] for other in others)
    for rule in by_name(spec, "PostgrestSchemaCacheReloadFailed"):
        assert f'job="{rule["labels"]["domain"]}-api-metrics"' in rule["expr"]


def test_naming_changes_the_selected_targets() -> None:
    naming = TargetNaming(
        httproute="api-{domain}",
        postgrest_job="postgrest-{domain}",
        pgbouncer_job="pooler",
        postgres_exporter_job="pg-exporter",
        restore_check_cronjob="{cluster}-verify",
    )
    spec = render(naming=naming, domains=("identity",))
    text = yaml.safe_dump(spec)
    assert "httproute/pgplatform/api-identity/rule/" in text
    assert 'job="postgrest-identity"' in text
    assert 'job="pooler"' in text
    assert "pgplatform-db-verify" in text


def test_thresholds_flow_into_the_expressions() -> None:
    thresholds = AlertThresholds(
        api_error_ratio=0.037,
        api_denied_ratio=0.41,
        api_min_request_rate=0.25,
        db_connections_share=0.66,
        pool_clients_waiting=13,
        longest_transaction_seconds=777,
        replication_lag_seconds=45,
        backup_age_hours=30,
        restore_check_max_age_days=40,
    )
    spec = render(thresholds=thresholds, expected_replicas=3)
    expected = {
        "ApiHighErrorRate": ["> 0.037", "> 0.25"],
        "ApiHighPermissionDeniedRate": ["> 0.41", "> 0.25"],
        "PostgresConnectionsNearLimit": ["> 0.66"],
        "PgbouncerClientsWaiting": ["> 13"],
        "PostgresLongRunningTransaction": ["> 777"],
        "PostgresReplicationLagHigh": ["> 45"],
        "PostgresReplicaMissing": ["< 3"],
        "PostgresBackupTooOld": [f"> {30 * 3600}"],
        "RestoreVerificationStale": [f"> {40 * 86400}"],
    }
    for name, fragments in expected.items():
        for rule in by_name(spec, name):
            for fragment in fragments:
                assert fragment in rule["expr"], f"{name}: {fragment!r} not in {rule['expr']}"
    description = by_name(spec, "PostgresConnectionsNearLimit")[0]["annotations"]["description"]
    assert "66%" in description
    assert "400" in description


def test_environments_differ_but_both_keep_the_26h_backup_limit() -> None:
    staging, prod = default_thresholds("staging"), default_thresholds("prod")
    assert staging != prod
    assert staging.backup_age_hours == prod.backup_age_hours == 26
    assert prod.api_error_ratio < staging.api_error_ratio
    assert prod.replication_lag_seconds < staging.replication_lag_seconds


def test_unknown_environment_is_named() -> None:
    with pytest.raises(ValueError, match="environment: 'dev'"):
        default_thresholds("dev")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_error_ratio", 1.5),
        ("api_denied_ratio", 0),
        ("db_connections_share", -0.1),
        ("pool_clients_waiting", 0),
        ("backup_age_hours", -1),
        ("replication_lag_seconds", True),
    ],
)
def test_invalid_threshold_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        replace(default_thresholds("prod"), **{field: value})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"domains": ()}, "domains:"),
        ({"domains": ("identity", "identity")}, "domains: duplicates"),
        ({"runbook_base_url": "docs/runbooks"}, "runbook_base_url:"),
        ({"max_connections": 0}, "max_connections:"),
        ({"expected_replicas": -1}, "expected_replicas:"),
        ({"namespace": "Bad_NS"}, "namespace:"),
        ({"postgres_mode": "rds"}, "postgres_mode:"),
    ],
)
def test_invalid_inputs_are_named(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(**overrides)


def test_naming_templates_must_be_per_domain() -> None:
    with pytest.raises(ValueError, match="httproute: must contain"):
        TargetNaming(httproute="api")


def test_external_mode_has_no_backup_alerts_and_uses_postgres_exporter() -> None:
    spec = render(postgres_mode="external")
    names = {rule["alert"] for rule in rules_of(spec)}
    assert not names & {"PostgresBackupTooOld", "RestoreVerificationFailed"}
    database = next(g for g in spec["groups"] if g["name"] == "pgplatform-database")
    for rule in database["rules"]:
        assert "cnpg_" not in rule["expr"]
        assert 'job="postgres-exporter"' in rule["expr"]


def test_replica_alert_only_when_replicas_are_expected() -> None:
    assert not by_name(render(expected_replicas=0), "PostgresReplicaMissing")
    assert by_name(render(expected_replicas=1), "PostgresReplicaMissing")


def test_metric_lists_name_their_source_and_version() -> None:
    for source in SOURCES:
        if source.list_file is None:
            continue
        assert source.list_file == f"{source.name}-{source.version}.txt"
        text = (METRIC_LISTS / source.list_file).read_text()
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        assert "https://" in header, f"{source.list_file}: no source URL"
        assert source.version in header, f"{source.list_file}: no version"
        assert parse_metric_list(text)


def test_metric_list_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_metric_list("# header\nnot a metric\n")


@pytest.mark.parametrize("mode", ["cnpg", "external"])
def test_every_metric_comes_from_a_documented_list(mode: PostgresMode) -> None:
    documented = load_documented_metrics(METRIC_LISTS)
    spec = render(postgres_mode=mode)
    every_rule = [rule for group in spec["groups"] for rule in group["rules"]]
    used = frozenset().union(*(metric_names(r["expr"]) for r in every_rule))
    assert used & RECORDED_NAMES <= recorded_names(spec["groups"])
    left = undocumented(used, documented, mode)
    if mode == "cnpg":
        assert not left, f"undocumented metrics: {sorted(left)}"
    else:
        # postgres_exporter's own names: proven by a real scrape in test_metric_names.py.
        assert left == {
            "pg_up",
            "pg_stat_activity_count",
            "pg_settings_max_connections",
            "pg_stat_activity_max_tx_duration",
            "pg_replication_slots_active",
            "pg_replication_slots_pg_wal_lsn_diff",
        }


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (le) (rate(a_bucket{x="y"}[5m])) / on (pod) group_left () '
        'max(label_replace(b{n="m"}, "s", "t", "", "")) > 1e3 and time() - c offset 5m'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


def promtool_cases() -> dict[str, dict[str, set[str]]]:
    """rule file -> {"fires": alert names, "silent": alert names} over tests/promtool/*.yaml."""
    cases: dict[str, dict[str, set[str]]] = {}
    for path in sorted(PROMTOOL_TESTS.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        (rule_file,) = document["rule_files"]
        seen = cases.setdefault(rule_file, {"fires": set(), "silent": set()})
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                seen["fires" if case.get("exp_alerts") else "silent"].add(case["alertname"])
    return cases


def test_every_alert_has_a_firing_and_a_silent_promtool_case() -> None:
    cases = promtool_cases()
    assert set(cases) == {
        "rules-cnpg.yaml",
        "rules-external.yaml",
        "rules-slo.yaml",
        "rules-synthetic.yaml",
        "rules-graphql.yaml",
    }
    fires = set().union(*(c["fires"] for c in cases.values()))
    silent = set().union(*(c["silent"] for c in cases.values()))
    assert fires == set(ALERT_NAMES)
    assert silent == set(ALERT_NAMES)
    # Database alerts read other metrics per mode: each mode needs its own cases.
    for mode in ("cnpg", "external"):
        spec = render(postgres_mode=mode)
        database = next(g for g in spec["groups"] if g["name"] == "pgplatform-database")
        for rule in database["rules"]:
            mode_cases = cases[f"rules-{mode}.yaml"]
            assert rule["alert"] in mode_cases["fires"], (mode, rule["alert"])
            assert rule["alert"] in mode_cases["silent"], (mode, rule["alert"])
