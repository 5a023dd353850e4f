"""The stack fits the clusters people run: Prometheus selector labels, the gateway's proxy
namespace, CORS origins per domain, and deploy steps that install what the pipeline needs."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import inputs
from components.render import domain_api as render
from components.render.postgrest import render_postgrest_conf
from components.settings import SettingsError, parse_settings
from tests.conftest import ROOT, run_program, stack_config
from tools.mocks import RecordingMocks

pytestmark = pytest.mark.unit

_STAGING: dict[str, Any] = {
    "publicBaseUrl": "https://api.staging.example.com",
    "auth": {"audience": "pgplatform-staging"},
    "domains": {"identity": {}, "content": {}},
}
_PROD: dict[str, Any] = {
    "publicBaseUrl": "https://api.example.com",
    "auth": {"audience": "pgplatform", "jwksUrl": "https://id.example.com/jwks.json"},
    "domains": {"identity": {}, "content": {}},
    "backup": {"destinationPath": "s3://backups/pg", "credentialsSecret": "backup-s3"},
}


def _problems(stack: str, raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse_settings(stack, raw)
    return [str(p) for p in caught.value.problems]


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


# -- monitoring labels -------------------------------------------------------------------------
def _kinds(mocks: RecordingMocks, *kinds: str) -> list[dict[str, Any]]:
    return [r.inputs for r in mocks.kubernetes() if r.type.rsplit(":", 1)[-1] in kinds]


def test_monitors_and_rules_carry_the_prometheus_selector_labels(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    config, secrets = stack_config("staging")
    config = {
        **config,
        "pgplatform:observability": json.dumps(
            {"monitoringLabels": {"release": "kube-prometheus-stack"}}
        ),
    }
    mocks = run_program(pulumi_mocks, "staging", config, secrets)
    selected = _kinds(mocks, "ServiceMonitor", "PodMonitor", "PrometheusRule")
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= {o["kind"] for o in selected}
    for obj in selected:
        labels = obj["metadata"]["labels"]
        assert labels["release"] == "kube-prometheus-stack", obj["kind"]
        assert labels["app.kubernetes.io/part-of"] == "pgplatform"
    # Only the monitoring objects: a Deployment labelled for Prometheus' selector means nothing.
    for obj in _kinds(mocks, "Deployment", "Service"):
        assert "release" not in obj["metadata"]["labels"]


@pytest.mark.parametrize(
    ("labels", "key", "hint"),
    [
        ({"release": "has space"}, "observability.monitoringLabels", "value"),
        ({"-bad": "x"}, "observability.monitoringLabels", "label key"),
        (
            {"app.kubernetes.io/part-of": "other"},
            "observability.monitoringLabels.app.kubernetes.io/part-of",
            "platform's own",
        ),
    ],
)
def test_bad_monitoring_labels_name_the_key(labels: dict[str, str], key: str, hint: str) -> None:
    problems = _problems(
        "staging", _merged(_STAGING, {"observability": {"monitoringLabels": labels}})
    )
    assert any(p.startswith(f"pgplatform:{key}") and hint in p for p in problems), problems


# -- gateway proxy namespace -------------------------------------------------------------------
def test_api_policy_admits_the_envoy_gateway_proxies() -> None:
    gateway = {
        "proxyNamespace": "envoy-gateway-system",
        "proxySelector": {"gateway.envoyproxy.io/owning-gateway-name": "platform-gateway"},
    }
    s = parse_settings("prod", _merged(_PROD, {"gateway": gateway}))
    expected = {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}
        },
        "podSelector": {
            "matchLabels": {"gateway.envoyproxy.io/owning-gateway-name": "platform-gateway"}
        },
    }
    api = render.network_policy_body(inputs.domain_api_spec(s, "identity"))["spec"]
    assert api["ingress"][0]["from"] == [expected]
    # The HTTPRoute still attaches to the Gateway object in its own namespace.
    route = render.http_route_body(inputs.domain_api_spec(s, "identity"))["spec"]
    assert route["parentRefs"][0]["namespace"] == "gateway"


def test_graphql_policy_admits_the_same_proxies() -> None:
    from components.render import graphql_workload as gw

    raw = _merged(_STAGING, {"gateway": {"proxyNamespace": "envoy-gateway-system"}})
    s = parse_settings("staging", raw)
    spec = gw.network_policy_spec(inputs.graphql_network_input(s))
    assert spec["ingress"][0]["from"] == [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}
            }
        }
    ]


def test_proxy_namespace_defaults_to_the_gateway_namespace() -> None:
    s = parse_settings("staging", _STAGING)
    api = render.network_policy_body(inputs.domain_api_spec(s, "identity"))["spec"]
    assert api["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}
    ]


@pytest.mark.parametrize(
    ("gateway", "key"),
    [
        ({"proxyNamespace": "Envoy_System"}, "gateway.proxyNamespace"),
        ({"proxySelector": {"app": "bad value"}}, "gateway.proxySelector"),
    ],
)
def test_bad_proxy_settings_name_the_key(gateway: dict[str, Any], key: str) -> None:
    problems = _problems("staging", _merged(_STAGING, {"gateway": gateway}))
    assert any(p.startswith(f"pgplatform:{key}") for p in problems), problems


# -- CORS --------------------------------------------------------------------------------------
def test_cors_origins_per_domain_reach_postgrest_conf() -> None:
    raw = copy.deepcopy(_PROD)
    raw["domains"]["content"] = {"corsAllowedOrigins": ["https://cms.example.com"]}
    s = parse_settings("prod", raw)
    content = render_postgrest_conf(inputs.postgrest_conf_input(s, "content"))
    identity = render_postgrest_conf(inputs.postgrest_conf_input(s, "identity"))
    assert (
        'server-cors-allowed-origins = "https://api.example.com,https://cms.example.com"'
        in content.splitlines()
    )
    assert 'server-cors-allowed-origins = "https://api.example.com"' in identity.splitlines()


@pytest.mark.parametrize(
    ("stack", "origin", "hint"),
    [
        ("staging", "https://app.example.com/", "trailing '/'"),
        ("staging", "*", "not a browser origin"),
        ("staging", "https://app.example.com/path", "without a path"),
        ("prod", "http://app.example.com", "only https"),
    ],
)
def test_bad_cors_origins_name_the_key(stack: str, origin: str, hint: str) -> None:
    raw = copy.deepcopy(_STAGING if stack == "staging" else _PROD)
    raw["domains"]["content"] = {"corsAllowedOrigins": ["https://ok.example.com", origin]}
    problems = _problems(stack, raw)
    key = "pgplatform:domains.content.corsAllowedOrigins[1]"
    assert any(p.startswith(key) and hint in p for p in problems), problems


def test_staging_accepts_a_local_http_origin() -> None:
    raw = copy.deepcopy(_STAGING)
    raw["domains"]["content"] = {"corsAllowedOrigins": ["http://localhost:5173"]}
    s = parse_settings("staging", raw)
    assert s.domains["content"].cors_allowed_origins == ["http://localhost:5173"]


# -- README deploy steps -----------------------------------------------------------------------
def _deploy_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploying with the Pulumi CLI", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert blocks, "README 'Deploying with the Pulumi CLI' has no sh block"
    return "\n".join(blocks)


def test_deploy_steps_install_the_policy_pack_runtime_into_its_virtualenv() -> None:
    pack = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    venv = (ROOT / "policy" / pack["runtime"]["options"]["virtualenv"]).resolve()
    relative = venv.relative_to(ROOT).as_posix()
    block = _deploy_block()
    creates = re.search(rf"python3 -m venv {re.escape(relative)}\b", block)
    assert creates, f"the deploy steps must create {relative}/, the policy pack's virtualenv"
    installs = [line for line in block.splitlines() if f"{relative}/bin/pip install" in line]
    wanted = {"requirements.txt", "policy/requirements.txt"}
    found = {arg for line in installs for arg in line.split() if arg.endswith("requirements.txt")}
    assert wanted <= found, f"pip installs {sorted(found)}, needs {sorted(wanted)}"
    assert "--policy-pack policy" in block
    # What policy/requirements.txt pins is what the pack's runtime needs.
    pins = (ROOT / "policy" / "requirements.txt").read_text()
    assert re.search(r"^pulumi-policy==", pins, flags=re.M)


def test_deploy_steps_name_the_vault_provider_environment() -> None:
    section = (ROOT / "README.md").read_text().split("## Deploying with the Pulumi CLI", 1)[1]
    section = section.split("\n## ", 1)[0]
    for variable in ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_NAMESPACE", "VAULT_CACERT"):
        assert f"`{variable}`" in section or f"{variable}=" in section, variable


def test_policy_pack_virtualenv_is_the_project_one() -> None:
    pack = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    pack_venv = (ROOT / "policy" / pack["runtime"]["options"]["virtualenv"]).resolve()
    assert pack_venv == Path(ROOT / project["runtime"]["options"]["virtualenv"]).resolve()
