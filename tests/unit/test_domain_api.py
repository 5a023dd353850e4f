"""Every DomainApi of both stacks under mocks: conf, secrecy, hardening, scaling, reach, routing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from components import inputs
from components.render import domain_api as render
from components.render import pods
from components.render.postgrest import render_postgrest_conf
from components.render.secret_sync import SECRETS_CHECKSUM_ANNOTATION
from components.settings import StackSettings, decode_config_value, parse_settings
from tests.conftest import api_database, run_program, stack_config
from tools.mocks import RecordingMocks, is_secret

pytestmark = pytest.mark.unit

JWT_SECRET = "staging-jwt-secret-for-tests-0123456789abcdefghij"
RANDOM = "random:index/randomPassword:RandomPassword"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


@pytest.fixture(params=["staging", "prod"])
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def settings_of(stack: str, config: dict[str, str], secrets: list[str]) -> StackSettings:
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    return parse_settings(stack, raw, [s.split(":", 1)[1] for s in secrets])


def run(
    install: Callable[..., RecordingMocks], stack: str, **overrides: Any
) -> tuple[RecordingMocks, StackSettings]:
    config, secrets = stack_config(stack)
    secrets = list(secrets)
    for key, value in overrides.items():
        config[f"pgplatform:{key}"] = value if isinstance(value, str) else json.dumps(value)
        if key == "jwtSecret":
            secrets.append("pgplatform:jwtSecret")
    return run_program(install, stack, config, secrets), settings_of(stack, config, secrets)


def objects(mocks: RecordingMocks, kind: str, domain: str) -> list[dict[str, Any]]:
    """Kubernetes objects of ``kind`` labelled as the domain's PostgREST, with generated names."""
    found = []
    for r in mocks.kubernetes():
        labels = (r.inputs.get("metadata") or {}).get("labels") or {}
        if r.type.endswith(f":{kind}") and labels == render.pod_labels(domain):
            found.append({**r.inputs, "metadata": r.outputs.get("metadata", r.inputs["metadata"])})
    return found


def single(mocks: RecordingMocks, kind: str, domain: str) -> dict[str, Any]:
    (found,) = objects(mocks, kind, domain)
    return found


def pod_of(mocks: RecordingMocks, domain: str) -> dict[str, Any]:
    return dict(single(mocks, "Deployment", domain)["spec"]["template"])


def test_every_domain_gets_the_full_workload(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks, settings = run(pulumi_mocks, stack)
    kinds = [
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HTTPRoute",
    ]
    apis = [r.name for r in mocks.by_type("pgplatform:index:DomainApi")]
    # The SDK registers from a pool of threads: the order of registrations is not a contract.
    assert sorted(apis) == sorted(f"{render.dns_name(d)}-api" for d in settings.domains)
    for domain in settings.domains:
        for kind in kinds:
            assert len(objects(mocks, kind, domain)) == 1, (domain, kind)
        stores = objects(mocks, "SecretStore", domain)
        externals = objects(mocks, "ExternalSecret", domain)
        # Vault store + secret per domain; prod adds the JWKS store + secret.
        assert len(stores) == len(externals) == (2 if stack == "prod" else 1)


def test_conf_is_the_builder_output(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks, settings = run(pulumi_mocks, stack)
    for domain, d in settings.domains.items():
        conf = single(mocks, "ConfigMap", domain)["data"][render.CONF_KEY]
        if domain in settings.copy_domains():
            # The CDC copies: the analytics database on the Cluster's replicas, no pooler.
            host = api_database(settings, domain)
            expected = inputs.postgrest_conf_input(settings, domain, host)
            assert conf == render_postgrest_conf(expected)
            assert f"@{host.ro_host}:5432/{settings.cdc.database}?sslmode=" in conf
        else:
            assert conf == render_postgrest_conf(inputs.postgrest_conf_input(settings, domain))
            pool = "app_ro" if d.read_from_replicas else "app_rw"
            assert f'@pgbouncer.pgplatform.svc.cluster.local:5432/{pool}"' in conf
            assert (domain == "analytics") == (pool == "app_ro")
        assert ('db-anon-role = "api_anonymous"' in conf) == (stack == "staging")
        assert f'openapi-server-proxy-uri = "{settings.public_base_url}/api/{domain}"' in conf
        assert f'jwt-aud = "{settings.auth.audience}"' in conf
        assert 'jwt-role-claim-key = ".role"' in conf
        assert 'db-pre-request = "platform.pre_request"' in conf
        assert f"db-max-rows = {d.max_rows}\n" in conf
        assert f"db-pool = {d.db_pool}\n" in conf
        assert "db-prepared-statements = false\n" in conf
        assert f'log-level = "{d.log_level}"' in conf
        assert f"server-timing-enabled = {str(d.server_timing).lower()}" in conf
        key_file = "jwks.json" if stack == "prod" else "jwt-secret"
        assert f'jwt-secret = "@/etc/postgrest/jwt/{key_file}"' in conf


def _strings(value: Any) -> Iterator[str]:
    """Every string of ``value`` outside the parts marked secret."""
    if is_secret(value):
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _secret_values(mocks: RecordingMocks) -> set[str]:
    values = {str(r.outputs["result"]["value"]) for r in mocks.by_type(RANDOM)}
    assert all(len(v) >= 32 for v in values)
    return values


@pytest.mark.parametrize(
    ("stack", "jwt_from_config"), [("staging", False), ("staging", True), ("prod", False)]
)
def test_no_secret_value_outside_secrets(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str, jwt_from_config: bool
) -> None:
    overrides = {"jwtSecret": JWT_SECRET} if jwt_from_config else {}
    mocks, _ = run(pulumi_mocks, stack, **overrides)
    secrets = _secret_values(mocks) | ({JWT_SECRET} if jwt_from_config else set())
    leaks = []
    for r in mocks.resources:
        for text in _strings(r.inputs):
            leaks += [(r.type, r.name) for secret in secrets if secret in text]
    assert not leaks
    # The scan is meaningful: the values do reach the Vault secrets, marked secret.
    stored = " ".join(
        str(r.inputs["dataJson"]["value"]) for r in mocks.by_type("vault:kv/secretV2:SecretV2")
    )
    (password,) = [
        str(r.outputs["result"]["value"])
        for r in mocks.by_type(RANDOM)
        if r.name == "access-postgrest-password"
    ]
    assert password in stored
    if stack == "staging":
        jwt = JWT_SECRET if jwt_from_config else None
        if jwt is None:
            (generated,) = [r for r in mocks.by_type(RANDOM) if r.name == "jwt-secret"]
            assert generated.inputs["length"] >= 48
            jwt = str(generated.outputs["result"]["value"])
        assert jwt in stored
    # Specifically: ConfigMaps and env literals of every pod in the render.
    for r in mocks.kubernetes():
        if r.type == "kubernetes:core/v1:ConfigMap":
            assert not any(s in json.dumps(r.inputs.get("data")) for s in secrets)
        for container in _containers(r.inputs):
            for env in container.get("env", []):
                assert "value" not in env or not any(s in env["value"] for s in secrets)


def _containers(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = manifest.get("spec")
    template = spec.get("template") if isinstance(spec, dict) else None
    pod = template.get("spec") if isinstance(template, dict) else None
    if isinstance(pod, dict):
        yield from pod.get("initContainers", [])
        yield from pod.get("containers", [])


def test_pods_are_hardened_and_probed(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks, settings = run(pulumi_mocks, stack)
    for domain in settings.domains:
        deployment = single(mocks, "Deployment", domain)
        account = single(mocks, "ServiceAccount", domain)
        assert account["automountServiceAccountToken"] is False
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["shareProcessNamespace"] is True
        assert pod["topologySpreadConstraints"]
        for container in _containers(deployment):
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]
            assert ctx["runAsNonRoot"] is True
            assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
            assert container["resources"]["limits"]
            assert container["resources"]["requests"]
        for container in pod["containers"]:
            assert container["livenessProbe"], container["name"]
            assert container["readinessProbe"], container["name"]
        (postgrest,) = [c for c in pod["containers"] if c["name"] == "postgrest"]
        assert postgrest["livenessProbe"]["httpGet"] == {"path": "/live", "port": "admin"}
        assert postgrest["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
        admin = [p for p in postgrest["ports"] if p["name"] == "admin"]
        assert admin == [{"name": "admin", "containerPort": 3001, "protocol": "TCP"}]
        limits = settings.domains[domain].resources.limits
        assert postgrest["resources"]["limits"] == {"cpu": limits.cpu, "memory": limits.memory}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert (
            volumes["config"]["configMap"]["name"]
            == (single(mocks, "ConfigMap", domain)["metadata"]["name"])
        )


def test_pdb_and_hpa_consistent_with_replicas(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks, settings = run(pulumi_mocks, stack)
    for domain, d in settings.domains.items():
        deployment = single(mocks, "Deployment", domain)
        hpa = single(mocks, "HorizontalPodAutoscaler", domain)["spec"]
        pdb = single(mocks, "PodDisruptionBudget", domain)["spec"]
        assert "replicas" not in deployment["spec"]
        assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (d.replicas.min, d.replicas.max)
        assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == d.cpu_target
        assert pdb["selector"] == deployment["spec"]["selector"]
        if d.replicas.min >= 2:
            assert pdb["minAvailable"] == 1
            assert "maxUnavailable" not in pdb
        else:
            assert pdb["maxUnavailable"] == 1
        if stack == "prod":
            assert hpa["minReplicas"] >= 2
            assert pdb["minAvailable"] >= 1


def test_rps_target_adds_an_hpa_metric(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    config, _ = stack_config("staging")
    domains = json.loads(config["pgplatform:domains"])
    domains["content"]["rpsTarget"] = 200
    mocks, _ = run(pulumi_mocks, "staging", domains=domains)
    metrics = single(mocks, "HorizontalPodAutoscaler", "content")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Object"]
    assert metrics[1]["object"]["target"]["averageValue"] == "200"
    identity = single(mocks, "HorizontalPodAutoscaler", "identity")["spec"]["metrics"]
    assert [m["type"] for m in identity] == ["Resource"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_network_policy_selects_exactly_its_pods(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks, settings = run(pulumi_mocks, stack)
    templates = {
        r.name: r.inputs["spec"]["template"]["metadata"]["labels"]
        for r in mocks.by_type(DEPLOYMENT)
    }
    for domain in settings.domains:
        policy = single(mocks, "NetworkPolicy", domain)["spec"]
        own = single(mocks, "Deployment", domain)["spec"]["template"]["metadata"]["labels"]
        selector = policy["podSelector"]["matchLabels"]
        assert _selects(selector, own)
        others = [
            n for n, labels in templates.items() if labels != own and _selects(selector, labels)
        ]
        assert not others
        sources = {
            r["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]: r[
                "ports"
            ]
            for r in policy["ingress"]
        }
        assert sources == {
            settings.gateway.namespace: [{"protocol": "TCP", "port": 3000}],
            settings.observability.prometheus_namespace: [{"protocol": "TCP", "port": 3001}],
        }
        egress = policy["egress"]
        # The API serving the CDC copies reaches the database pods; every other the pooler.
        database = (
            {"cnpg.io/cluster": "postgres-db"}
            if domain in settings.copy_domains()
            else pods.selector_labels("pgbouncer", "pgbouncer")
        )
        assert egress[0]["to"] == [{"podSelector": {"matchLabels": database}}]
        assert egress[0]["ports"] == [{"protocol": "TCP", "port": 5432}]
        assert {p["port"] for p in egress[1]["ports"]} == {53}
        assert len(egress) == 2


def test_http_route_path_and_backend(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks, settings = run(pulumi_mocks, stack)
    for domain in settings.domains:
        route = single(mocks, "HTTPRoute", domain)["spec"]
        service = single(mocks, "Service", domain)
        assert service["metadata"]["name"] == f"{domain}-api"
        assert (
            service["spec"]["selector"]
            == single(mocks, "Deployment", domain)["spec"]["selector"]["matchLabels"]
        )
        (parent,) = route["parentRefs"]
        assert (parent["name"], parent["namespace"]) == (
            settings.gateway.name,
            settings.gateway.namespace,
        )
        assert route["hostnames"] == [settings.public_base_url.removeprefix("https://")]
        (rule,) = route["rules"]
        assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": f"/api/{domain}"}}]
        assert rule["filters"] == [
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
            }
        ]
        (backend,) = rule["backendRefs"]
        ports = {p["port"] for p in service["spec"]["ports"]}
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"] == 3000
        assert backend["port"] in ports


def test_forward_auth_filter_from_settings(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    gateway = {
        "name": "edge",
        "namespace": "edge-system",
        "sectionName": "https",
        "forwardAuthGroup": "traefik.io",
        "forwardAuthKind": "Middleware",
        "forwardAuthName": "oidc-forward-auth",
    }
    mocks, settings = run(pulumi_mocks, "prod", gateway=gateway)
    for domain in settings.domains:
        route = single(mocks, "HTTPRoute", domain)["spec"]
        assert route["parentRefs"][0]["sectionName"] == "https"
        filters = route["rules"][0]["filters"]
        assert filters[0] == {
            "type": "ExtensionRef",
            "extensionRef": {
                "group": "traefik.io",
                "kind": "Middleware",
                "name": "oidc-forward-auth",
            },
        }
        assert filters[1]["type"] == "URLRewrite"
        policy = single(mocks, "NetworkPolicy", domain)["spec"]
        ns = policy["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
        assert ns == {"kubernetes.io/metadata.name": "edge-system"}


def _annotations(mocks: RecordingMocks, domain: str) -> dict[str, str]:
    return dict(pod_of(mocks, domain)["metadata"]["annotations"])


def test_conf_change_rolls_only_that_domain(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    before, settings = run(pulumi_mocks, "staging")
    config, _ = stack_config("staging")
    domains = json.loads(config["pgplatform:domains"])
    domains["identity"]["maxRows"] = 250
    after, _ = run(pulumi_mocks, "staging", domains=domains)
    for domain in settings.domains:
        old, new = _annotations(before, domain), _annotations(after, domain)
        conf = single(after, "ConfigMap", domain)["data"][render.CONF_KEY]
        assert new[pods.CHECKSUM_ANNOTATION] == render.conf_checksum(conf)
        changed = old[pods.CHECKSUM_ANNOTATION] != new[pods.CHECKSUM_ANNOTATION]
        assert changed == (domain == "identity"), domain
        assert old[SECRETS_CHECKSUM_ANNOTATION] == new[SECRETS_CHECKSUM_ANNOTATION]


def test_secret_change_rolls_every_api(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    first, settings = run(pulumi_mocks, "staging", jwtSecret=JWT_SECRET)
    second, _ = run(pulumi_mocks, "staging", jwtSecret=JWT_SECRET[::-1])
    for domain in settings.domains:
        old, new = _annotations(first, domain), _annotations(second, domain)
        assert old[pods.CHECKSUM_ANNOTATION] == new[pods.CHECKSUM_ANNOTATION]
        assert old[SECRETS_CHECKSUM_ANNOTATION] != new[SECRETS_CHECKSUM_ANNOTATION]
        # The ExternalSecret carries the same checksum, so the operator re-syncs at once.
        vault_secret = [
            e
            for e in objects(second, "ExternalSecret", domain)
            if e["spec"]["target"]["name"] == f"{domain}-postgrest-secrets"
        ]
        (external,) = vault_secret
        assert external["metadata"]["annotations"] == {
            SECRETS_CHECKSUM_ANNOTATION: new[SECRETS_CHECKSUM_ANNOTATION]
        }


def test_vault_consumer_per_domain(pulumi_mocks: Callable[..., RecordingMocks], stack: str) -> None:
    mocks, settings = run(pulumi_mocks, stack)
    roles = {
        r.inputs["roleName"]: r.inputs
        for r in mocks.by_type("vault:kubernetes/authBackendRole:AuthBackendRole")
    }
    kvs = {r.inputs["name"]: r.inputs for r in mocks.by_type("vault:kv/secretV2:SecretV2")}
    for domain in settings.domains:
        account = single(mocks, "ServiceAccount", domain)["metadata"]["name"]
        role = roles[f"pgplatform-{stack}-{domain}-postgrest"]
        assert role["boundServiceAccountNames"] == [account]
        assert role["boundServiceAccountNamespaces"] == [settings.namespace]
        assert role["backend"] == settings.vault.kubernetes_auth_path
        kv = kvs[f"pgplatform/{stack}/{domain}-postgrest"]
        assert kv["mount"] == settings.vault.kv_mount
        fields = set(json.loads(kv["dataJson"]["value"]))
        expected = {"password", "checksum"} | ({"jwt_secret"} if stack == "staging" else set())
        assert fields == expected
        (external,) = [
            e
            for e in objects(mocks, "ExternalSecret", domain)
            if e["spec"]["target"]["name"] == f"{domain}-postgrest-secrets"
        ]
        assert external["spec"]["refreshInterval"] == settings.vault.refresh_interval


def test_jwks_only_in_jwks_mode(pulumi_mocks: Callable[..., RecordingMocks], stack: str) -> None:
    mocks, settings = run(pulumi_mocks, stack)
    generated = [r for r in mocks.by_type(RANDOM) if r.name == "jwt-secret"]
    assert len(generated) == (1 if stack == "staging" else 0)
    for domain in settings.domains:
        webhooks = [
            s["spec"]["provider"]["webhook"]
            for s in objects(mocks, "SecretStore", domain)
            if "webhook" in s["spec"]["provider"]
        ]
        jwks = [
            e
            for e in objects(mocks, "ExternalSecret", domain)
            if e["spec"]["target"]["name"] == f"{domain}-postgrest-jwks"
        ]
        if stack == "prod":
            assert [w["url"] for w in webhooks] == [settings.auth.jwks_url]
            (external,) = jwks
            assert external["spec"]["data"][0]["secretKey"] == "jwks.json"
            volume = [
                v for v in pod_of(mocks, domain)["spec"]["volumes"] if v["name"] == "jwt-keys"
            ]
            assert volume[0]["secret"]["secretName"] == f"{domain}-postgrest-jwks"
        else:
            assert not webhooks
            assert not jwks


def _record(into: dict[str, str], key: str, value: str) -> None:
    into[key] = value


def test_outputs_name_url_and_service(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    from components.platform import build_platform, export_outputs
    from components.settings import load_settings
    from tools import mocks as recording

    config, secrets = stack_config("prod")
    pulumi_mocks("prod", config, secrets)
    urls: dict[str, str] = {}
    addresses: dict[str, str] = {}
    try:
        platform = build_platform(load_settings())
        export_outputs(platform)
        assert platform.apis is not None
        for domain, api in platform.apis.items():
            api.url.apply(partial(_record, urls, domain))
            api.service_address.apply(partial(_record, addresses, domain))
    finally:
        recording.settle()
    domains = ("identity", "content", "analytics", "billing")
    assert urls == {d: f"https://api.example.com/api/{d}" for d in domains}
    assert addresses == {d: f"http://{d}-api.pgplatform.svc.cluster.local:3000" for d in domains}
