"""The GraphQL pilot's Kubernetes objects as plain specs: hardening, routing, network policy."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import kubernetes_validate
import pytest

from components.render import graphql_workload as gw
from components.render import pods
from components.render import postgraphile as pgr
from components.render.domain_api import ForwardAuth, GatewayParent
from components.render.secret_sync import SECRETS_CHECKSUM_ANNOTATION
from tests.crd_schema import load_crd_validator

pytestmark = pytest.mark.unit

K8S_VERSION = "1.33.0"
CHECKSUM = "ab" * 32
SECRETS_CHECKSUM = "cd" * 32
IMAGE = "ghcr.io/pgplatform/graphql-pilot:4.14.1-0123456789ab"
DB_PASSWORD = pgr.SecretKeyRef(name="graphql-secrets", key="db_password")
JWT_SECRET = pgr.SecretKeyRef(name="graphql-secrets", key="jwt_secret")


def postgraphile(**overrides: Any) -> pgr.PostgraphileInput:
    values: dict[str, Any] = {
        "schemas": ("identity",),
        "db_host": "pgbouncer.pgplatform.svc.cluster.local",
        "db_name": "app_rw",
        "db_password": DB_PASSWORD,
        "db_sslmode": "disable",
        "jwt_audience": "pgplatform",
        "jwt_secret": JWT_SECRET,
        "graphql_route": "/graphql/identity",
    }
    values.update(overrides)
    return pgr.PostgraphileInput(**values)


def workload(**overrides: Any) -> gw.GraphqlWorkloadInput:
    values: dict[str, Any] = {
        "postgraphile": postgraphile(),
        "config_map": "graphql-config-1234abcd",
        "service_account": "graphql",
        "image": IMAGE,
        "secret_name": "graphql-secrets",
        "resources": pods.Resources(
            cpu_request="100m", memory_request="128Mi", cpu_limit="500m", memory_limit="256Mi"
        ),
        "min_replicas": 1,
        "max_replicas": 2,
        "config_checksum": CHECKSUM,
        "secrets_checksum": SECRETS_CHECKSUM,
    }
    values.update(overrides)
    return gw.GraphqlWorkloadInput(**values)


def jwks_workload() -> gw.GraphqlWorkloadInput:
    return workload(
        postgraphile=postgraphile(jwt_secret=None, jwks_file=f"{gw.JWKS_DIR}/{gw.JWKS_KEY}"),
        jwks_secret=gw.JWKS_SECRET,
    )


def manifest(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = spec if kind == "ServiceAccount" else {"spec": spec}
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "graphql", "namespace": "pgplatform", "labels": gw.labels()},
        **body,
    }


def pod_spec(w: gw.GraphqlWorkloadInput) -> dict[str, Any]:
    spec: dict[str, Any] = gw.deployment_spec(w)["template"]["spec"]
    return spec


# -- Kubernetes accepts every object -----------------------------------------------------------
@pytest.mark.parametrize("make", [workload, jwks_workload])
def test_core_objects_pass_the_kubernetes_schema(make: Any) -> None:
    w = make()
    route_net = gw.NetworkInput(
        gateway=GatewayParent(name="gw", namespace="gateway"),
        server_port=w.postgraphile.port,
        pgbouncer_selector=pods.selector_labels("pgbouncer", "pgbouncer"),
        pgbouncer_port=5432,
    )
    objects = [
        manifest("apps/v1", "Deployment", gw.deployment_spec(w)),
        manifest("v1", "Service", gw.service_spec(w.postgraphile.port)),
        manifest(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            gw.hpa_spec(min_replicas=1, max_replicas=2, deployment="graphql"),
        ),
        manifest("policy/v1", "PodDisruptionBudget", gw.pdb_spec(w.min_replicas)),
        manifest("v1", "ServiceAccount", gw.service_account_spec()),
        manifest("networking.k8s.io/v1", "NetworkPolicy", gw.network_policy_spec(route_net)),
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_http_route_passes_the_gateway_api_crd() -> None:
    route = gw.RouteInput(
        gateway=GatewayParent(
            name="platform-gateway",
            namespace="gateway",
            section_name="https",
            forward_auth=ForwardAuth(group="traefik.io", kind="Middleware", name="forward-auth"),
        ),
        public_host="api.staging.example.com",
        paths=("/graphql/identity", "/graphql/identity/graphiql"),
        service_port=5000,
    )
    spec = gw.http_route_spec(route)
    load_crd_validator("gateway.networking.k8s.io", "HTTPRoute", "v1")(
        manifest("gateway.networking.k8s.io/v1", "HTTPRoute", spec)
    )
    (rule,) = spec["rules"]
    assert [m["path"] for m in rule["matches"]] == [
        {"type": "Exact", "value": "/graphql/identity"},
        {"type": "Exact", "value": "/graphql/identity/graphiql"},
    ]
    assert rule["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "graphql-api", "port": 5000}
    ]
    assert rule["filters"] == [
        {
            "type": "ExtensionRef",
            "extensionRef": {"group": "traefik.io", "kind": "Middleware", "name": "forward-auth"},
        }
    ]
    assert spec["parentRefs"][0]["sectionName"] == "https"


def test_route_without_forward_auth_has_no_filter() -> None:
    route = gw.RouteInput(
        gateway=GatewayParent(name="gw", namespace="gateway"),
        public_host="api.example.com",
        paths=("/graphql/identity",),
        service_port=5000,
    )
    (rule,) = gw.http_route_spec(route)["rules"]
    assert "filters" not in rule


# -- hardening ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [workload, jwks_workload])
def test_every_container_is_hardened(make: Any) -> None:
    w = make()
    spec = pod_spec(w)
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"] == pods.pod_security_context(pgr.NODE_UID)
    assert spec["topologySpreadConstraints"] == pods.topology_spread(gw.selector())
    containers = spec["initContainers"] + spec["containers"]
    assert [c["name"] for c in containers] == ["wait-for-secrets", "postgraphile"]
    for container in containers:
        assert container["securityContext"] == pods.container_security_context(pgr.NODE_UID)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert re.search(r":[0-9][A-Za-z0-9._-]*$", container["image"]), container["image"]
        assert set(container["resources"]) == {"requests", "limits"}
    assert {c["image"] for c in containers[1:]} == {IMAGE}
    (server,) = spec["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["tcpSocket"] == {"port": "http"}, probe
    deployment = gw.deployment_spec(w)
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in deployment  # the HPA owns the count
    annotations = deployment["template"]["metadata"]["annotations"]
    assert annotations == {
        pods.CHECKSUM_ANNOTATION: CHECKSUM,
        SECRETS_CHECKSUM_ANNOTATION: SECRETS_CHECKSUM,
    }
    # The pod starts only once the synced Secret carries the checksum it was rendered for.
    wait = spec["initContainers"][0]
    actual = next(v for v in wait["env"] if v["name"] == "ACTUAL_CHECKSUM")
    assert actual["valueFrom"]["secretKeyRef"]["name"] == "graphql-secrets"


def test_server_writes_only_its_tmp_emptydir() -> None:
    spec = pod_spec(workload())
    (server,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = {m["name"] for m in server["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"tmp"}
    assert volumes["tmp"]["emptyDir"]["sizeLimit"]
    # Nothing is installed at start: the npm tree is in the image.
    assert "app" not in volumes
    assert "npm-cache" not in volumes
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["config"] == {
        "name": "config",
        "mountPath": "/etc/postgraphile",
        "readOnly": True,
    }
    assert server["workingDir"] == "/etc/postgraphile"


def test_server_runs_the_rendered_postgraphile_container() -> None:
    w = workload()
    (server,) = pod_spec(w)["containers"]
    assert server["command"] == pgr.container_command(w.postgraphile)
    assert server["args"] == pgr.container_args(w.postgraphile)
    assert server["env"] == pgr.container_env(w.postgraphile)
    assert server["ports"] == [
        {"name": "http", "containerPort": 5000, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9464, "protocol": "TCP"},
    ]


@pytest.mark.parametrize("make", [workload, jwks_workload])
def test_no_secret_value_in_the_pod_spec(make: Any) -> None:
    w = make()
    spec = pod_spec(w)
    for container in spec["initContainers"] + spec["containers"]:
        for var in container.get("env", []):
            if var["name"] in {pgr.DB_PASSWORD_ENV, pgr.JWT_SECRET_ENV}:
                assert set(var) == {"name", "valueFrom"}, var
                assert var["valueFrom"]["secretKeyRef"]["name"] == "graphql-secrets"
    text = json.dumps(spec)
    assert "password=" not in text
    assert not re.search(r"postgres://[^@/]*:[^@/]*@", text)


def test_jwks_secret_is_mounted_as_a_directory() -> None:
    spec = pod_spec(jwks_workload())
    (server,) = spec["containers"]
    mount = next(m for m in server["volumeMounts"] if m["name"] == "jwks")
    assert mount == {"name": "jwks", "mountPath": gw.JWKS_DIR, "readOnly": True}
    volume = next(v for v in spec["volumes"] if v["name"] == "jwks")
    assert volume["secret"]["secretName"] == gw.JWKS_SECRET
    assert all(var["name"] != pgr.JWT_SECRET_ENV for var in server["env"])


def test_config_map_holds_only_the_rc_file() -> None:
    inp = postgraphile()
    data = gw.config_map_data(inp)
    assert data == {pgr.RC_FILE: pgr.render_rc_file(inp)}


# -- network policy ----------------------------------------------------------------------------
def network(**overrides: Any) -> gw.NetworkInput:
    values: dict[str, Any] = {
        "gateway": GatewayParent(name="gw", namespace="gateway"),
        "server_port": 5000,
        "pgbouncer_selector": pods.selector_labels("pgbouncer", "pgbouncer"),
        "pgbouncer_port": 5432,
    }
    values.update(overrides)
    return gw.NetworkInput(**values)


def test_ingress_only_from_the_gateway_on_the_server_port() -> None:
    spec = gw.network_policy_spec(network())
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["podSelector"] == {"matchLabels": gw.selector()}
    assert spec["ingress"] == [
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {gw.NAMESPACE_LABEL: "gateway"}}},
            ],
            "ports": [{"protocol": "TCP", "port": 5000}],
        }
    ]


def test_egress_is_pgbouncer_and_dns_only() -> None:
    pooler, dns = gw.network_policy_spec(network())["egress"]
    assert pooler == {
        "to": [{"podSelector": {"matchLabels": pods.selector_labels("pgbouncer", "pgbouncer")}}],
        "ports": [{"protocol": "TCP", "port": 5432}],
    }
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {gw.NAMESPACE_LABEL: "kube-system"}
    assert {p["protocol"] for p in dns["ports"]} == {"UDP", "TCP"}
    # No address block: the pod reaches nothing outside the cluster (no package registry).
    assert "ipBlock" not in json.dumps(gw.network_policy_spec(network()))


# -- validation names the field ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"image": "node:latest"}, "image"),
        ({"image": "node"}, "image"),
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas/max_replicas"),
        ({"min_replicas": 0}, "min_replicas/max_replicas"),
        ({"cpu_target": 99}, "cpu_target"),
        ({"wait_image": "busybox"}, "wait_image"),
        ({"config_checksum": "abc"}, "config_checksum"),
        ({"secrets_checksum": "abc"}, "secrets_checksum"),
        ({"config_map": "Config"}, "config_map"),
        ({"jwks_secret": "jwks"}, "jwks_secret"),
        ({"secret_name": "other-secrets"}, "secret_name"),
        ({"postgraphile": postgraphile(db_sslmode="require", db_sslrootcert="/ca.crt")}, None),
    ],
)
def test_bad_workload_names_the_field(overrides: dict[str, Any], field: str | None) -> None:
    expected = f"^{re.escape(field)}: " if field else "^postgraphile.db_sslrootcert: "
    with pytest.raises(ValueError, match=expected):
        workload(**overrides)


def test_jwks_file_must_be_the_mounted_one() -> None:
    with pytest.raises(ValueError, match=r"^postgraphile\.jwks_file: "):
        workload(
            postgraphile=postgraphile(jwt_secret=None, jwks_file="/etc/elsewhere/jwks.json"),
            jwks_secret=gw.JWKS_SECRET,
        )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"pgbouncer_selector": {}}, "pgbouncer_selector"),
    ],
)
def test_bad_network_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        network(**overrides)


@pytest.mark.parametrize(
    ("floor", "budget"), [(1, {"maxUnavailable": 1}), (2, {"minAvailable": 1})]
)
def test_disruption_budget_follows_the_autoscaler_floor(floor: int, budget: dict[str, int]) -> None:
    spec = gw.pdb_spec(floor)
    assert {k: v for k, v in spec.items() if k in {"minAvailable", "maxUnavailable"}} == budget
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_route_path_names_the_domains() -> None:
    assert gw.route_path(("identity",)) == "/graphql/identity"
    with pytest.raises(ValueError, match=r"^domains: "):
        gw.route_path(())


def test_inputs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        workload().min_replicas = 5  # type: ignore[misc]
