"""Grafana dashboards: valid JSON, unique panel ids, the panels on-call needs, per-domain
queries, and only metric names a documented exporter produces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.render.dashboards import dashboard_expressions, render_dashboards
from components.render.metrics_catalog import (
    PostgresMode,
    load_documented_metrics,
    metric_names,
    undocumented,
)

pytestmark = pytest.mark.unit

METRIC_LISTS = Path(__file__).resolve().parents[2] / "tests" / "data" / "metrics"
DOMAINS = ("identity", "content", "analytics")


def render(**overrides: Any) -> dict[str, dict[str, Any]]:
    args: dict[str, Any] = {
        "namespace": "pgplatform",
        "domains": DOMAINS,
        "cluster_name": "pgplatform-db",
        "max_connections": 400,
        "postgres_mode": "cnpg",
    } | overrides
    return render_dashboards(**args)


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def titles(dashboards: dict[str, dict[str, Any]]) -> set[str]:
    return {panel["title"] for d in dashboards.values() for panel in d["panels"]}


@pytest.mark.parametrize("mode", ["cnpg", "external"])
def test_dashboards_are_json_with_unique_ids_and_sane_layout(mode: PostgresMode) -> None:
    dashboards = render(postgres_mode=mode)
    assert set(dashboards) == {"pgplatform-api.json", "pgplatform-database.json"}
    uids = set()
    for name, dashboard in dashboards.items():
        assert json.loads(json.dumps(dashboard)) == dashboard, name
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        assert dashboard["schemaVersion"] >= 36
        uids.add(dashboard["uid"])
        assert len(dashboard["uid"]) <= 40
        occupied: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (name, panel["title"])
            cells = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not cells & occupied, f"{name}: {panel['title']} overlaps another panel"
            occupied |= cells
        for panel in panels(dashboard):
            assert panel["targets"], panel["title"]
            assert panel["description"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    assert len(uids) == 2


def test_panels_on_call_needs_exist() -> None:
    found = titles(render())
    for needed in (
        "Request volume per domain",
        "Latency p50",
        "Latency p95",
        "Latency p99",
        "Rows read per domain schema",
        "Response bytes per route",
        "Client connections vs max_connections",
        "Clients active and waiting",
        "Server connections vs pool size",
        "Slowest statements (mean time over the range)",
        "Replication lag",
        "Age of the last base backup",
    ):
        assert needed in found, needed


def test_backup_panel_only_in_cnpg_mode() -> None:
    assert "Age of the last base backup" not in titles(render(postgres_mode="external"))


def test_api_panels_query_each_domain_route() -> None:
    api = render()["pgplatform-api.json"]
    volume = next(p for p in api["panels"] if p["title"] == "Request volume per domain")
    assert [t["legendFormat"] for t in volume["targets"]] == list(DOMAINS)
    for target, domain in zip(volume["targets"], DOMAINS, strict=True):
        assert f"httproute/pgplatform/{domain}-api/rule/" in target["expr"]


def test_slow_query_table_is_an_instant_table_query() -> None:
    database = render()["pgplatform-database.json"]
    table = next(p for p in database["panels"] if p["title"].startswith("Slowest statements"))
    assert table["type"] == "table"
    (target,) = table["targets"]
    assert target["instant"] is True
    assert target["format"] == "table"
    assert "cnpg_pg_stat_statements_exec_seconds_total" in target["expr"]


def test_external_mode_reads_postgres_exporter_names() -> None:
    expressions = " ".join(dashboard_expressions(render(postgres_mode="external")))
    assert "cnpg_" not in expressions
    assert 'job="postgres-exporter"' in expressions
    assert "pg_stat_statements_exec_seconds_total" in expressions


def test_max_connections_draws_the_limit_line() -> None:
    database = render(max_connections=321)["pgplatform-database.json"]
    panel = next(p for p in database["panels"] if p["title"].startswith("Client connections vs"))
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 321
    assert "321" in panel["description"]


@pytest.mark.parametrize("mode", ["cnpg", "external"])
def test_every_dashboard_metric_comes_from_a_documented_list(mode: PostgresMode) -> None:
    documented = load_documented_metrics(METRIC_LISTS)
    expressions = dashboard_expressions(render(postgres_mode=mode))
    used = frozenset().union(*(metric_names(expr) for expr in expressions))
    left = undocumented(used, documented, mode)
    if mode == "cnpg":
        assert not left, sorted(left)
    else:
        # Proven by a real postgres_exporter scrape in tests/integration/test_metric_names.py.
        assert left <= {
            "pg_stat_activity_count",
            "pg_settings_max_connections",
            "pg_stat_activity_max_tx_duration",
        }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"domains": ()}, "domains:"), ({"max_connections": 0}, "max_connections:")],
)
def test_invalid_inputs_are_named(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(**overrides)
