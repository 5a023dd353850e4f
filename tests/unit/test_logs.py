"""Request logs: the gateway's JSON access-log format, the LogQL that reads it (checked on a line
that format produces, with a real JSON parser), the Loki rule ConfigMap and the dashboard panel,
and the ``observability.loki`` settings."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from components import inputs
from components.render import logs
from components.render.dashboards import dashboard_expressions, render_dashboards
from components.settings import decode_config_value, parse_settings
from tests.conftest import ROOT, run_program, stack_config
from tests.unit.test_settings import _PROD, _STAGING, _problems, _with
from tools.mocks import RecordingMocks

pytestmark = pytest.mark.unit

LOKI = logs.LokiLogs(
    namespace="pgplatform",
    route_names=("identity-api", "content-api"),
    stream_labels={"namespace": "envoy-gateway-system", "container": "envoy"},
)

# What Envoy substitutes for each command operator on one GET that returned 25 rows, as the
# data plane would see it (numbers typed, as Envoy's JSON formatter writes them).
SAMPLE_VALUES: dict[str, Any] = {
    "%START_TIME%": "2026-12-06T09:30:00.123Z",
    "%REQ(X-REQUEST-ID)%": "5f1c2d9e-8a4b-4c3d-9e2f-1a2b3c4d5e6f",
    "%REQ(TRACEPARENT)%": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "%REQ(:METHOD)%": "GET",
    "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%": "/api/identity/profiles?limit=25",
    "%UPSTREAM_CLUSTER%": "httproute/pgplatform/identity-api/rule/0",
    "%RESPONSE_CODE%": 200,
    "%DURATION%": 12,
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%": "11",
    "%BYTES_SENT%": 5120,
    "%RESP(CONTENT-RANGE)%": "0-24/*",
    "%RESP(X-API-ROLE)%": "api_user",
    "%RESPONSE_FLAGS%": "-",
    "%REQ(USER-AGENT)%": "curl/8.5.0",
}


def envoy_line(**overrides: Any) -> str:
    """One access-log line of the rendered format, compact like Envoy's JSON formatter."""
    fmt = logs.envoy_proxy_access_log()["accessLog"]["settings"][0]["format"]["json"]
    values = {**SAMPLE_VALUES, **overrides}
    line = {key: values.get(op, op) for key, op in fmt.items()}
    return json.dumps(line, separators=(",", ":"))


def pipeline(line: str, loki: logs.LokiLogs = LOKI) -> dict[str, str] | None:
    """The labels the rendered LogQL pipeline extracts from ``line`` (None: line dropped).

    Each stage of ``logs.rows_query`` is applied with its real counterpart: the line filter as a
    substring test, ``| json`` with Python's JSON parser, the label and ``regexp`` filters with
    the expression's own regular expressions, ``label_format`` as its arithmetic."""
    query = logs.rows_query(loki)
    (marker,) = re.findall(r'\|= "([^"]+)"', query)
    if marker not in line:
        return None
    (json_stage,) = re.findall(r"\| json ([^|]+)", query)
    record = json.loads(line)
    labels = {
        label: str(record[field]) for label, field in re.findall(r'(\w+)="(\w+)"', json_stage)
    }
    (route_regex,) = re.findall(r'\| route=~"([^"]+)"', query)
    if not re.fullmatch(route_regex, labels["route"]):
        return None
    (range_regex,) = re.findall(r"\| regexp `([^`]+)`", query)
    match = re.search(range_regex, line)
    if match is None:
        return None
    labels.update(match.groupdict())
    assert "label_format rows=`{{ add (sub .last_row .first_row) 1 }}`" in query
    labels["rows"] = str(int(labels["last_row"]) - int(labels["first_row"]) + 1)
    return labels


def test_access_log_fields_are_envoy_operators() -> None:
    fmt = logs.envoy_proxy_access_log()["accessLog"]["settings"][0]["format"]
    assert fmt["type"] == "JSON"
    for key, value in fmt["json"].items():
        assert key == logs.LOG_MARKER_FIELD or re.fullmatch(r"%[A-Z_]+(\([^)]*\))?%", value), key
    assert fmt["json"]["content_range"] == "%RESP(CONTENT-RANGE)%"
    assert fmt["json"]["role"] == "%RESP(X-API-ROLE)%"
    assert fmt["json"]["route"] == "%UPSTREAM_CLUSTER%"


def test_a_line_of_the_format_yields_route_role_and_rows() -> None:
    labels = pipeline(envoy_line())
    assert labels is not None
    assert labels["route"] == "httproute/pgplatform/identity-api/rule/0"
    assert labels["role"] == "api_user"
    assert labels["status"] == "200"
    assert labels["rows"] == "25"


@pytest.mark.parametrize(
    ("overrides", "kept"),
    [
        ({"%RESP(CONTENT-RANGE)%": "100-149/5000"}, "50"),
        ({"%RESP(CONTENT-RANGE)%": "*/0"}, None),  # nothing returned: no rows sample
        ({"%RESP(CONTENT-RANGE)%": "-"}, None),  # not a read (no header)
        ({"%UPSTREAM_CLUSTER%": "httproute/other/identity-api/rule/0"}, None),
        ({"%UPSTREAM_CLUSTER%": "httproute/pgplatform/graphql/rule/0"}, None),
    ],
)
def test_the_pipeline_counts_only_this_stacks_rows(
    overrides: dict[str, Any], kept: str | None
) -> None:
    labels = pipeline(envoy_line(**overrides))
    assert (labels or {}).get("rows") == kept


def test_spaced_json_still_parses() -> None:
    """A collector that re-serialises the line with spaces does not lose the row count."""
    spaced = json.dumps(json.loads(envoy_line()))
    assert (pipeline(spaced) or {}).get("rows") == "25"


def test_other_log_lines_are_filtered_out() -> None:
    postgrest = (
        '10.0.0.1 - api_user [06/Dec/2026:09:30:00 +0000] "GET /profiles HTTP/1.1" 200 56 "" "curl"'
    )
    assert pipeline(postgrest) is None


def test_rule_file_records_rows_and_requests() -> None:
    rules = yaml.safe_load(logs.loki_rules_yaml(LOKI))
    (group,) = rules["groups"]
    assert group["name"] == logs.RULE_GROUP
    assert [r["record"] for r in group["rules"]] == [logs.ROWS_RECORD, logs.REQUESTS_RECORD]
    for rule in group["rules"]:
        assert rule["labels"] == {"namespace": "pgplatform"}
        assert rule["expr"].startswith("sum by (route, role")
        assert '{container="envoy", namespace="envoy-gateway-system"}' in rule["expr"]
    assert "&" not in logs.loki_rules_yaml(LOKI), "no YAML anchors in a file the ruler reads"


def test_dashboard_panel_queries_loki_and_promql_lists_stay_promql() -> None:
    boards = render_dashboards(
        namespace="pgplatform",
        domains=("identity", "content"),
        cluster_name="pg",
        max_connections=100,
        loki=LOKI,
    )
    (logql,) = dashboard_expressions(boards, "loki")
    assert logql == logs.rows_query(LOKI, "$__auto")
    assert all("|=" not in expr for expr in dashboard_expressions(boards))
    panels = [p for p in boards["pgplatform-api.json"]["panels"] if p.get("type") != "row"]
    (panel,) = [p for p in panels if p["datasource"]["type"] == "loki"]
    assert panel["datasource"] == {"type": "loki", "uid": "loki"}
    plain = render_dashboards(
        namespace="pgplatform", domains=("identity",), cluster_name="pg", max_connections=100
    )
    assert dashboard_expressions(plain, "loki") == []


def test_loki_settings_default_off_and_derive_the_gateway_stream() -> None:
    assert parse_settings("prod", _PROD).observability.loki.enabled is False
    s = parse_settings("staging", _with(_STAGING, "observability.loki", {"enabled": True}))
    loki = inputs.loki_logs(s)
    assert loki is not None
    assert loki.stream_labels == {"namespace": "gateway", "container": "envoy"}
    assert loki.route_names == ("identity-api", "content-api", "analytics-api")


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ({"streamLabels": {"k8s-app": "envoy"}}, "not a Loki label name"),
        ({"streamLabels": {"namespace": 'a"b'}}, "without quotes"),
        ({"streamLabels": {}}, "at least one label"),
        ({"datasourceUid": "has space"}, "pattern"),
    ],
)
def test_bad_loki_settings_name_the_key(value: dict[str, Any], hint: str) -> None:
    raw = _with(_STAGING, "observability.loki", {"enabled": True, **value})
    problems = _problems("staging", raw)
    assert any(p.startswith("pgplatform:observability.loki") and hint in p for p in problems), (
        problems
    )


def test_docs_show_the_rendered_gateway_format() -> None:
    """docs/observability.md carries the EnvoyProxy telemetry block exactly as rendered."""
    text = (ROOT / "docs" / "observability.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    documents = [yaml.safe_load(b) for b in blocks]
    proxies = [d for d in documents if isinstance(d, dict) and d.get("kind") == "EnvoyProxy"]
    assert len(proxies) == 1, "one EnvoyProxy example in docs/observability.md"
    assert proxies[0]["spec"]["telemetry"] == logs.envoy_proxy_access_log()


def test_staging_renders_the_rule_config_map(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    mocks = run_program(pulumi_mocks, "staging")
    config_maps = [r for r in mocks.kubernetes() if r.type.endswith(":ConfigMap")]
    (rules,) = [r for r in config_maps if r.inputs["metadata"].get("name") == logs.RULES_CONFIG_MAP]
    assert rules.inputs["metadata"]["labels"]["loki_rule"] == "1"
    config, secrets = stack_config("staging")
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    loki = inputs.loki_logs(parse_settings("staging", raw, [k.split(":", 1)[1] for k in secrets]))
    assert loki is not None
    assert rules.inputs["data"][logs.RULE_FILE] == logs.loki_rules_yaml(loki)
