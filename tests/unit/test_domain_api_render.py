"""Domain API manifests from the pure builder: hardening, probes, scaling, reach, routing."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from components.render import domain_api as render
from components.render import pods
from components.render.postgres_cluster import POSTGRES_IMAGE
from components.render.postgrest import (
    HS256_SECRET_FILE,
    JWKS_FILE,
    JWT_KEY_DIR,
    JWT_RELOADER_IMAGE,
    POSTGREST_IMAGE,
    PostgrestConfInput,
)
from components.render.secret_sync import CHECKSUM_KEY, SECRETS_CHECKSUM_ANNOTATION

pytestmark = pytest.mark.unit

RESOURCES = pods.Resources(
    cpu_request="100m", memory_request="128Mi", cpu_limit="500m", memory_limit="256Mi"
)


def spec(**overrides: Any) -> render.DomainApiSpec:
    values: dict[str, Any] = {
        "domain": "identity",
        "namespace": "pgplatform",
        "replicas_min": 2,
        "replicas_max": 6,
        "resources": RESOURCES,
        "auth_mode": "jwks",
        "gateway": render.GatewayParent(name="platform-gateway", namespace="gateway"),
        "public_host": "api.example.com",
        "prometheus_namespace": "monitoring",
    }
    values.update(overrides)
    return render.DomainApiSpec(**values)


CONF = PostgrestConfInput(
    domain="identity",
    schema="identity",
    db_host="pgbouncer.pgplatform.svc.cluster.local",
    db_name="app_rw",
    jwt_secret_file=JWKS_FILE,
)


def deployment(s: render.DomainApiSpec, conf: str = "db-pool = 10\n") -> dict[str, Any]:
    return render.deployment_body(
        s,
        conf=CONF,
        config_map="identity-api-config-abc",
        service_account="identity-api-sa-abc",
        secret_name="identity-postgrest-secrets",
        conf_checksum=render.conf_checksum(conf),
        secrets_checksum="f" * 64,
    )["spec"]


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.mark.parametrize("mode", ["hs256", "jwks"])
def test_every_container_is_hardened(mode: str) -> None:
    pod = deployment(spec(auth_mode=mode))["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    uids = set()
    for container in all_containers(pod):
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        uids.add(ctx["runAsUser"])
        assert set(container["resources"]) == {"requests", "limits"}
        assert ":" in container["image"]
        assert not container["image"].endswith(":latest")
    # The reloader signals postgrest: same UID (no CAP_KILL) and a shared process namespace.
    assert len(uids) == 1
    assert pod["shareProcessNamespace"] is True
    assert {c["image"] for c in pod["containers"]} == {
        POSTGREST_IMAGE,
        JWT_RELOADER_IMAGE,
        POSTGRES_IMAGE,
    }


def test_probes_use_the_admin_port() -> None:
    (postgrest,) = [
        c for c in deployment(spec())["template"]["spec"]["containers"] if c["name"] == "postgrest"
    ]
    ports = {p["name"]: p["containerPort"] for p in postgrest["ports"]}
    assert ports == {"http": render.HTTP_PORT, "admin": render.ADMIN_PORT}
    probes = {k: postgrest[k]["httpGet"] for k in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == {"path": "/live", "port": "admin"}
    assert probes["readinessProbe"] == {"path": "/ready", "port": "admin"}
    assert postgrest["startupProbe"]["httpGet"]["port"] == "admin"
    assert postgrest["command"] == ["postgrest", render.CONF_FILE]


def test_password_only_from_secret_and_no_literal_secret_env() -> None:
    pod = deployment(spec())["template"]["spec"]
    (postgrest,) = [c for c in pod["containers"] if c["name"] == "postgrest"]
    env = {e["name"]: e for e in postgrest["env"]}
    assert env["PGPASSWORD"] == {
        "name": "PGPASSWORD",
        "valueFrom": {
            "secretKeyRef": {"name": "identity-postgrest-secrets", "key": render.PASSWORD_KEY}
        },
    }
    for container in all_containers(pod):
        for item in container.get("env", []):
            assert "value" not in item or item["name"] in {
                "PGAPPNAME",
                "SECRET_NAME",
                "DB_URI",
                "PGCONNECT_TIMEOUT",
                "SCHEMA_POLL_SECONDS",
            }, item


@pytest.mark.parametrize(
    ("mode", "secret", "key", "file"),
    [
        ("jwks", "identity-postgrest-jwks", "jwks.json", JWKS_FILE),
        ("hs256", "identity-postgrest-secrets", render.JWT_SECRET_KEY, HS256_SECRET_FILE),
    ],
)
def test_jwt_key_is_a_directory_mount(mode: str, secret: str, key: str, file: str) -> None:
    pod = deployment(spec(auth_mode=mode))["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    jwt = volumes["jwt-keys"]["secret"]
    assert jwt["secretName"] == secret
    # Only the key reaches the key directory: the password never becomes a file there.
    assert jwt["items"] == [{"key": key, "path": file.rsplit("/", 1)[-1]}]
    for container in all_containers(pod):
        for mount in container.get("volumeMounts", []):
            assert "subPath" not in mount, "a subPath mount never sees a rotated Secret"
            assert mount["readOnly"] is True
            if mount["name"] == "jwt-keys":
                assert mount["mountPath"] == JWT_KEY_DIR
    (reloader,) = [c for c in pod["containers"] if c["name"] == "jwt-key-reloader"]
    assert f"key_file='{file}'" in reloader["command"][2]
    assert reloader["readinessProbe"]["exec"]["command"] == ["sh", "-c", f"test -s {file}"]
    assert reloader["livenessProbe"]["exec"]["command"] == ["sh", "-c", f"test -d {JWT_KEY_DIR}"]


def test_checksums_roll_the_pods_on_change() -> None:
    s = spec()
    first = deployment(s, "db-pool = 10\n")["template"]["metadata"]["annotations"]
    same = deployment(s, "db-pool = 10\n")["template"]["metadata"]["annotations"]
    changed = deployment(s, "db-pool = 11\n")["template"]["metadata"]["annotations"]
    assert first == same
    assert first[pods.CHECKSUM_ANNOTATION] != changed[pods.CHECKSUM_ANNOTATION]
    assert first[SECRETS_CHECKSUM_ANNOTATION] == "f" * 64


def test_init_container_waits_for_the_synced_secret() -> None:
    pod = deployment(spec())["template"]["spec"]
    (wait,) = pod["initContainers"]
    env = {e["name"]: e.get("valueFrom") for e in wait["env"]}
    assert env["ACTUAL_CHECKSUM"] == {
        "secretKeyRef": {"name": "identity-postgrest-secrets", "key": CHECKSUM_KEY}
    }
    assert env["EXPECTED_CHECKSUM"] == {
        "fieldRef": {"fieldPath": f"metadata.annotations['{SECRETS_CHECKSUM_ANNOTATION}']"}
    }


def test_deployment_leaves_replicas_to_the_autoscaler() -> None:
    body = deployment(spec())
    assert "replicas" not in body
    assert body["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert body["selector"]["matchLabels"] == render.selector("identity")
    labels = body["template"]["metadata"]["labels"]
    assert render.selector("identity").items() <= labels.items()


@pytest.mark.parametrize(
    ("low", "high", "budget"),
    [(1, 3, {"maxUnavailable": 1}), (2, 8, {"minAvailable": 1}), (3, 12, {"minAvailable": 1})],
)
def test_pdb_and_hpa_follow_the_replica_range(low: int, high: int, budget: dict[str, int]) -> None:
    s = spec(replicas_min=low, replicas_max=high)
    pdb = render.pdb_body(s)["spec"]
    assert {k: pdb[k] for k in ("minAvailable", "maxUnavailable") if k in pdb} == budget
    assert pdb["selector"]["matchLabels"] == render.selector("identity")
    # The budget can always be met by the autoscaler's floor, so drains never block forever.
    if "minAvailable" in pdb:
        assert pdb["minAvailable"] < low
    hpa = render.hpa_body(s, deployment="dep")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (low, high)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "dep"}


def test_hpa_cpu_and_optional_rps() -> None:
    metrics = render.hpa_body(spec(cpu_target=60), deployment="d")["spec"]["metrics"]
    assert metrics == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 60},
            },
        }
    ]
    with_rps = render.hpa_body(spec(rps_target=150), deployment="d")["spec"]["metrics"]
    assert len(with_rps) == 2
    rps = with_rps[1]["object"]
    assert rps["describedObject"] == {"apiVersion": "v1", "kind": "Service", "name": "identity-api"}
    assert rps["metric"] == {"name": render.RPS_METRIC}
    assert rps["target"] == {"type": "AverageValue", "averageValue": "150"}


def test_network_policy_reach() -> None:
    policy = render.network_policy_body(spec())["spec"]
    assert policy["podSelector"]["matchLabels"] == render.selector("identity")
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ingress = {
        rule["from"][0]["namespaceSelector"]["matchLabels"][render.DNS_NAMESPACE_LABEL]: [
            p["port"] for p in rule["ports"]
        ]
        for rule in policy["ingress"]
    }
    assert ingress == {"gateway": [render.HTTP_PORT], "monitoring": [render.ADMIN_PORT]}
    to_pgbouncer, to_dns = policy["egress"]
    assert to_pgbouncer["to"] == [
        {"podSelector": {"matchLabels": pods.selector_labels("pgbouncer", "pgbouncer")}}
    ]
    assert to_pgbouncer["ports"] == [{"protocol": "TCP", "port": 5432}]
    assert to_dns["to"][0]["namespaceSelector"]["matchLabels"] == {
        render.DNS_NAMESPACE_LABEL: "kube-system"
    }
    assert {(p["protocol"], p["port"]) for p in to_dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert len(policy["egress"]) == 2


def test_http_route_strips_the_prefix_after_forward_auth() -> None:
    auth = render.ForwardAuth(group="traefik.io", kind="Middleware", name="forward-auth")
    gateway = render.GatewayParent(
        name="gw", namespace="gateway", section_name="https", forward_auth=auth
    )
    route = render.http_route_body(spec(gateway=gateway))["spec"]
    assert route["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "gw",
            "namespace": "gateway",
            "sectionName": "https",
        }
    ]
    assert route["hostnames"] == ["api.example.com"]
    (rule,) = route["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/api/identity"}}]
    assert [f["type"] for f in rule["filters"]] == ["ExtensionRef", "URLRewrite"]
    assert rule["filters"][0]["extensionRef"] == {
        "group": "traefik.io",
        "kind": "Middleware",
        "name": "forward-auth",
    }
    assert rule["filters"][1]["urlRewrite"] == {
        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}
    }
    assert rule["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "identity-api", "port": render.HTTP_PORT}
    ]
    plain = render.http_route_body(spec())["spec"]["rules"][0]["filters"]
    assert [f["type"] for f in plain] == ["URLRewrite"]


def test_service_selects_the_pods_and_names_the_ports() -> None:
    svc = render.service_body(spec())["spec"]
    assert svc["selector"] == render.selector("identity")
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["ports"]} == {
        ("http", render.HTTP_PORT, "http"),
        ("admin", render.ADMIN_PORT, "admin"),
    }


def test_names_of_domains_with_underscores() -> None:
    assert render.service_name("user_data") == "user-data-api"
    assert render.consumer_name("user_data") == "user-data-postgrest"
    assert render.route_prefix("user_data") == "/api/user_data"
    for bad in ("_x", "x_", "9x"):
        with pytest.raises(ValueError, match="no valid Kubernetes name"):
            render.dns_name(bad)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("replicas_max", 1, "replicas_max"),
        ("replicas_min", 0, "replicas_max"),
        ("cpu_target", 5, "cpu_target"),
        ("rps_target", 0, "rps_target"),
        ("auth_mode", "basic", "auth_mode"),
        ("public_host", "https://x", "public_host"),
        ("image", "postgrest/postgrest:latest", "image"),
        ("sidecar_image", "busybox", "sidecar_image"),
        ("namespace", "Bad_NS", "namespace"),
    ],
)
def test_spec_errors_name_the_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"DomainApiSpec.{message}"):
        dataclasses.replace(spec(), **{field: value})
