"""Synthetic checks: config errors naming the key, the blackbox config and Probes per stack,
the exporter's hardened pod and its NetworkPolicy, the PostgREST admin port opened to it, and
the alerts on the probe results."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from components import inputs
from components.render import domain_api, pods, synthetic
from components.render.alerts import default_thresholds, render_prometheus_rules
from components.render.metrics_catalog import SOURCES, metric_names, parse_metric_list
from components.settings import decode_config_value, parse_settings
from tests.conftest import ROOT, run_program, stack_config
from tests.unit.test_settings import _PROD, _STAGING, _problems, _with
from tools.mocks import RecordingMocks

pytestmark = pytest.mark.unit

MONITORING = "kubernetes:monitoring.coreos.com/v1"


def checks(**overrides: Any) -> synthetic.SyntheticChecks:
    args: dict[str, Any] = {
        "namespace": "pgplatform",
        "public_base_url": "https://api.example.com",
        "domains": ("identity", "content"),
        "anonymous": False,
        "ready_services": {"identity": "identity-api", "content": "content-api"},
        "admin_port": 3001,
    } | overrides
    return synthetic.SyntheticChecks(**args)


def of_kind(mocks: RecordingMocks, kind: str) -> list[dict[str, Any]]:
    return [
        {**r.inputs, "metadata": r.outputs.get("metadata", r.inputs.get("metadata", {}))}
        for r in mocks.kubernetes()
        if r.type.endswith(f":{kind}")
    ]


def test_defaults_are_on_in_both_environments() -> None:
    for stack, raw in (("staging", _STAGING), ("prod", _PROD)):
        s = parse_settings(stack, raw).observability.synthetic
        assert (s.enabled, s.interval, s.timeout) == (True, "30s", "5s")


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ({"interval": "5s"}, "interval must be 10s..300s"),
        ({"interval": "30s", "timeout": "30s"}, "must fit in the interval"),
        ({"timeout": "1500ms"}, "whole seconds"),
        ({"timeout": "2min"}, "minutes are written 'm'"),
        ({"enabled": "yes please"}, "bool"),
    ],
)
def test_bad_values_name_the_key(value: dict[str, Any], hint: str) -> None:
    raw = _with(_PROD, "observability.synthetic", {"enabled": True, **value})
    problems = _problems("prod", raw)
    assert any(
        p.startswith("pgplatform:observability.synthetic") and hint in p for p in problems
    ), problems


def test_checks_refuse_what_cannot_probe() -> None:
    with pytest.raises(ValueError, match="public_base_url"):
        checks(public_base_url="http://api.example.com")
    with pytest.raises(ValueError, match="ready_services"):
        checks(ready_services={"identity": "identity-api"})
    with pytest.raises(ValueError, match="image: pin"):
        checks(image="quay.io/prometheus/blackbox-exporter:latest")


def test_config_has_one_module_per_expectation() -> None:
    modules = yaml.safe_load(synthetic.blackbox_config(checks(timeout="7s")))["modules"]
    assert set(modules) == {
        synthetic.MODULE_PUBLIC_OPEN,
        synthetic.MODULE_PUBLIC_CLOSED,
        synthetic.MODULE_READY,
    }
    assert {m["timeout"] for m in modules.values()} == {"7s"}
    assert modules[synthetic.MODULE_PUBLIC_OPEN]["http"]["valid_status_codes"] == [200]
    assert modules[synthetic.MODULE_PUBLIC_CLOSED]["http"]["valid_status_codes"] == [401]
    for name in (synthetic.MODULE_PUBLIC_OPEN, synthetic.MODULE_PUBLIC_CLOSED):
        assert modules[name]["http"]["fail_if_not_ssl"] is True
    assert modules[synthetic.MODULE_PUBLIC_OPEN]["http"]["fail_if_body_not_matches_regexp"]


@pytest.mark.parametrize(("anonymous", "module"), [(True, "200"), (False, "401")])
def test_probe_expectation_follows_anonymous_access(anonymous: bool, module: str) -> None:
    probes = synthetic.probes(checks(anonymous=anonymous))
    assert set(probes) == {
        "identity-api-public",
        "identity-api-ready",
        "content-api-public",
        "content-api-ready",
    }
    public = probes["identity-api-public"]
    assert public["module"].endswith(module)
    assert public["targets"]["staticConfig"] == {
        "static": ["https://api.example.com/api/identity/"],
        "labels": {"domain": "identity", "check": "public"},
    }
    ready = probes["content-api-ready"]
    assert ready["module"] == synthetic.MODULE_READY
    assert ready["targets"]["staticConfig"]["static"] == [
        "http://content-api.pgplatform.svc:3001/ready"
    ]
    for spec in probes.values():
        assert spec["jobName"] == synthetic.JOB
        assert spec["prober"] == {"url": "blackbox-exporter.pgplatform.svc:9115", "scheme": "http"}
        assert (spec["interval"], spec["scrapeTimeout"]) == ("30s", "6s")


def test_public_target_is_the_routed_prefix() -> None:
    """The probe calls the path the domain's HTTPRoute matches."""
    url = checks().public_url("identity")
    assert url.removeprefix("https://api.example.com").startswith(
        domain_api.route_prefix("identity") + "/"
    )


def test_exporter_pod_is_hardened_and_pinned() -> None:
    spec = synthetic.deployment_spec(checks(), config_map="cm-1", config_checksum="abc")
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == synthetic.BLACKBOX_EXPORTER_IMAGE
    assert container["image"].endswith(":v0.23.0")
    assert container["securityContext"] == pods.container_security_context(synthetic.UID)
    assert pod["securityContext"] == pods.pod_security_context(synthetic.UID)
    assert pod["automountServiceAccountToken"] is False
    assert container["resources"]["limits"]
    assert container["resources"]["requests"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert f"--config.file={synthetic.CONFIG_DIR}/{synthetic.CONFIG_KEY}" in container["args"]
    assert pod["volumes"] == [
        {"name": "config", "configMap": {"name": "cm-1", "defaultMode": 0o444}}
    ]
    assert spec["template"]["metadata"]["annotations"][pods.CHECKSUM_ANNOTATION] == "abc"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_image_is_the_pinned_metric_source() -> None:
    (source,) = [s for s in SOURCES if s.name == "blackbox_exporter"]
    assert source.image == synthetic.BLACKBOX_EXPORTER_IMAGE
    assert source.list_file == "blackbox_exporter-0.23.0.txt"


def test_network_policy_admits_prometheus_and_reaches_only_its_targets() -> None:
    spec = synthetic.network_policy_spec(
        checks(public_base_url="https://api.example.com:8443"),
        postgrest_selector={"app.kubernetes.io/name": "postgrest"},
    )
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 9115}]
    ports = [[p["port"] for p in rule["ports"]] for rule in spec["egress"]]
    assert ports == [[8443], [3001], [53, 53]]


def test_rules_read_only_listed_exporter_metrics() -> None:
    spec = render_prometheus_rules(
        namespace="pgplatform",
        domains=("identity",),
        cluster_name="pg",
        thresholds=default_thresholds("prod"),
        runbook_base_url="https://example.com/runbooks",
        max_connections=100,
        synthetic_anonymous=True,
    )
    (group,) = [g for g in spec["groups"] if g["name"] == synthetic.RULE_GROUP]
    assert [r["alert"] for r in group["rules"]] == list(synthetic.ALERT_NAMES)
    listed = parse_metric_list(
        (ROOT / "tests" / "data" / "metrics" / "blackbox_exporter-0.23.0.txt").read_text()
    )
    used = frozenset().union(*(metric_names(r["expr"]) for r in group["rules"]))
    assert used == {"probe_success"} <= listed
    assert "200 with the OpenAPI document" in group["rules"][0]["annotations"]["description"]
    for rule in group["rules"]:
        assert 'job="pgplatform-synthetic"' in rule["expr"]
        assert 'namespace="pgplatform"' in rule["expr"]


def test_without_synthetic_checks_no_rules() -> None:
    spec = render_prometheus_rules(
        namespace="pgplatform",
        domains=("identity",),
        cluster_name="pg",
        thresholds=default_thresholds("prod"),
        runbook_base_url="https://example.com/runbooks",
        max_connections=100,
    )
    assert synthetic.RULE_GROUP not in {g["name"] for g in spec["groups"]}


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_stack_renders_exporter_probes_and_opens_the_admin_port(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks = run_program(pulumi_mocks, stack)
    config, secrets = stack_config(stack)
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    s = inputs.synthetic_checks(parse_settings(stack, raw, [k.split(":", 1)[1] for k in secrets]))
    assert s is not None
    probes = {p["metadata"]["name"]: p for p in of_kind(mocks, "Probe")}
    assert set(probes) == {f"{d}-api-{c}" for d in s.domains for c in synthetic.CHECKS}
    expected = (
        synthetic.MODULE_PUBLIC_OPEN if stack == "staging" else synthetic.MODULE_PUBLIC_CLOSED
    )
    assert probes["identity-api-public"]["spec"]["module"] == expected
    deployments = {d["metadata"]["name"]: d for d in of_kind(mocks, "Deployment")}
    exporter = deployments[synthetic.NAME]["spec"]["template"]["spec"]
    assert exporter["serviceAccountName"] == synthetic.NAME
    policies = {p["metadata"]["name"]: p for p in of_kind(mocks, "NetworkPolicy")}
    assert synthetic.NAME in policies
    for domain in s.domains:
        admin = [
            rule
            for rule in policies[domain_api.service_name(domain)]["spec"]["ingress"]
            if rule["ports"] == [{"protocol": "TCP", "port": domain_api.ADMIN_PORT}]
        ]
        (rule,) = admin
        assert {"podSelector": {"matchLabels": synthetic.exporter_selector()}} in rule["from"]
    (rule_object,) = of_kind(mocks, "PrometheusRule")
    assert synthetic.RULE_GROUP in {g["name"] for g in rule_object["spec"]["groups"]}


def test_disabled_renders_nothing_and_keeps_the_admin_port_closed(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    config, secrets = stack_config("prod")
    observability = json.loads(config.get("pgplatform:observability", "{}"))
    observability["synthetic"] = {"enabled": False}
    config = {**config, "pgplatform:observability": json.dumps(observability)}
    mocks = run_program(pulumi_mocks, "prod", config, secrets)
    assert not of_kind(mocks, "Probe")
    assert synthetic.NAME not in {d["metadata"]["name"] for d in of_kind(mocks, "Deployment")}
    for policy in of_kind(mocks, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                assert peer.get("podSelector", {}).get("matchLabels") != (
                    synthetic.exporter_selector()
                )
    (rule_object,) = of_kind(mocks, "PrometheusRule")
    assert synthetic.RULE_GROUP not in {g["name"] for g in rule_object["spec"]["groups"]}
