"""PgBouncerPool: the pooler's manifests (pure) and the component in the program (mocks)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest

from components import inputs
from components.managed_postgres import DatabaseEndpoint
from components.pgbouncer_pool import PgBouncerPoolArgs
from components.render import pgbouncer_pool as render
from components.render import pods
from components.render.pgbouncer import render_pgbouncer_ini
from components.render.secret_sync import SECRETS_CHECKSUM_ANNOTATION
from components.settings import decode_config_value, parse_settings
from tests.conftest import STACKS, run_program, stack_config
from tools.mocks import RecordingMocks, is_secret

pytestmark = pytest.mark.unit

K8S_VERSION = "1.33"
POOL = render.PoolSettings(
    max_client_conn=500,
    default_pool_size=10,
    reserve_pool_size=2,
    server_idle_timeout=600,
    query_wait_timeout=30,
    server_tls_sslmode="verify-full",
)


def spec(**changes: Any) -> render.PgBouncerPoolSpec:
    values: dict[str, Any] = {
        "namespace": "pgplatform",
        "replicas": 2,
        "resources": pods.Resources(
            cpu_request="100m", memory_request="128Mi", cpu_limit="500m", memory_limit="256Mi"
        ),
        "prometheus_namespace": "monitoring",
        "database": render.DatabaseEgress(port=5432, cluster="postgres-db"),
        "server_ca_secret": "postgres-db-ca",
    }
    values.update(changes)
    return render.PgBouncerPoolSpec(**values)


def deployment(s: render.PgBouncerPoolSpec | None = None) -> dict[str, Any]:
    return render.deployment_body(
        s or spec(),
        config_map="pgbouncer-config-x",
        service_account="pgbouncer-sa-x",
        secret_name="pgbouncer-secrets",
        ini_checksum="a" * 64,
        secrets_checksum="b" * 64,
    )


def manifest(api_version: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "x", "namespace": "pgplatform", "labels": render.labels()},
        **body,
    }


@pytest.mark.parametrize(
    ("api_version", "kind", "body"),
    [
        ("apps/v1", "Deployment", deployment()),
        ("apps/v1", "Deployment", deployment(spec(server_ca_secret=None))),
        ("v1", "Service", render.service_body()),
        ("policy/v1", "PodDisruptionBudget", render.pdb_body(spec())),
        ("networking.k8s.io/v1", "NetworkPolicy", render.network_policy_body(spec())),
        ("v1", "ServiceAccount", render.service_account_body()),
    ],
)
def test_objects_pass_the_kubernetes_schema(
    api_version: str, kind: str, body: dict[str, Any]
) -> None:
    kubernetes_validate.validate(manifest(api_version, kind, body), K8S_VERSION, strict=True)


def _pod(body: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = body["spec"]["template"]["spec"]
    return pod


def test_every_container_is_hardened_and_pinned() -> None:
    pod = _pod(deployment())
    assert pod["automountServiceAccountToken"] is False
    for c in [*pod["containers"], *pod["initContainers"]]:
        context = c["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert c["resources"]["limits"]
        assert ":" in c["image"].rsplit("/", 1)[-1]
        assert not c["image"].endswith(":latest")
    assert render.PGBOUNCER_IMAGE == "ghcr.io/cloudnative-pg/pgbouncer:1.25.1"
    assert render.EXPORTER_IMAGE == "quay.io/prometheuscommunity/pgbouncer-exporter:v0.12.1"
    assert deployment()["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_passwords_come_only_from_the_secret_and_land_in_memory() -> None:
    pod = _pod(deployment())
    for c in [*pod["containers"], *pod["initContainers"]]:
        for env in c.get("env", []):
            if "PASSWORD" in env["name"]:
                assert set(env) == {"name", "valueFrom"}, env
                assert set(env["valueFrom"]) == {"secretKeyRef"}, env
    assert "PASSWORD" in json.dumps(pod)
    init = {c["name"]: c for c in pod["initContainers"]}
    assert list(init) == ["wait-for-secrets", "userlist"]
    userlist = init["userlist"]
    assert {e["valueFrom"]["secretKeyRef"]["key"] for e in userlist["env"]} == {
        render.AUTH_PASSWORD_KEY,
        render.STATS_PASSWORD_KEY,
    }
    main = {c["name"]: c for c in pod["containers"]}
    assert "env" not in main["pgbouncer"], "pgbouncer never sees the variables"
    assert main["exporter"]["env"] == [
        pods.secret_env("PGPASSWORD", "pgbouncer-secrets", render.STATS_PASSWORD_KEY)
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["auth"]["emptyDir"]["medium"] == "Memory"
    assert "configMap" not in volumes["auth"]
    assert render.AUTH_FILE.startswith(render.AUTH_DIR + "/")
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        pods.CHECKSUM_ANNOTATION: "a" * 64,
        SECRETS_CHECKSUM_ANNOTATION: "b" * 64,
    }


def test_exporter_uses_the_socket_and_never_a_password_argument() -> None:
    exporter = {c["name"]: c for c in _pod(deployment())["containers"]}["exporter"]
    [conn] = [a for a in exporter["args"] if a.startswith("--pgBouncer.connectionString=")]
    assert f"host={render.SOCKET_DIR}" in conn
    assert f"{render.STATS_USER}@/pgbouncer" in conn
    assert ":" not in conn.split("://", 1)[1].split("@", 1)[0], "no password in the URL"


def test_ca_is_mounted_only_when_known() -> None:
    with_ca = {v["name"] for v in _pod(deployment())["volumes"]}
    without = {v["name"] for v in _pod(deployment(spec(server_ca_secret=None)))["volumes"]}
    assert with_ca - without == {"server-ca"}


def test_network_policy_admits_only_apis_and_prometheus() -> None:
    policy = render.network_policy_body(spec())["spec"]
    clients, metrics = policy["ingress"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in clients["from"]] == [
        "postgrest",
        "postgraphile",
    ]
    assert clients["ports"] == [{"protocol": "TCP", "port": render.PORT}]
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {render.DNS_NAMESPACE_LABEL: "monitoring"}}}
    ]
    database, dns = policy["egress"]
    assert database["to"] == [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "postgres-db"}}}]
    assert {p["port"] for p in dns["ports"]} == {53}
    external = render.network_policy_body(spec(database=render.DatabaseEgress(port=6432)))
    assert external["spec"]["egress"][0] == {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
        "ports": [{"protocol": "TCP", "port": 6432}],
    }
    with pytest.raises(ValueError, match="database"):
        render.network_policy_body(spec(database=None))


def test_disruption_budget() -> None:
    assert render.pdb_body(spec(replicas=3))["spec"]["minAvailable"] == 2
    assert render.pdb_body(spec(replicas=1))["spec"]["maxUnavailable"] == 1


def test_ini_input_as_deployed() -> None:
    inp = render.ini_input(
        POOL, database="app", rw_host="db-rw", ro_host="db-ro", port=5432, ca_known=True
    )
    assert inp.server_tls_ca_file == render.CA_FILE
    assert inp.auth_file == render.AUTH_FILE
    assert inp.unix_socket_dir == render.SOCKET_DIR
    assert inp.stats_users == (render.STATS_USER,)
    require = replace(POOL, server_tls_sslmode="require")
    plain = render.ini_input(
        require, database="app", rw_host="db-rw", ro_host="db-ro", port=5432, ca_known=True
    )
    assert plain.server_tls_ca_file is None
    with pytest.raises(ValueError, match="needs the database CA"):
        render.ini_input(
            POOL, database="app", rw_host="db-rw", ro_host="db-ro", port=5432, ca_known=False
        )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"replicas": 0}, "replicas"),
        ({"namespace": "Bad_NS"}, "namespace"),
        ({"image": "ghcr.io/cloudnative-pg/pgbouncer:latest"}, "pin a version"),
        ({"server_ca_secret": "UPPER"}, "server_ca_secret"),
    ],
)
def test_spec_validation_names_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**changes)


def test_args_refuse_fields_that_follow_from_the_database() -> None:
    with pytest.raises(ValueError, match="leave unset"):
        PgBouncerPoolArgs(
            spec=spec(),
            pool=POOL,
            database="app",
            endpoint=DatabaseEndpoint(
                rw_host="a", ro_host="b", port=5432, ca_secret=None, cluster=None, admin_secret="s"
            ),
            auth_password="x",
            env="staging",
            vault=None,  # type: ignore[arg-type]
        )


# -- the component in the program ----------------------------------------------------------------
def _kube(mocks: RecordingMocks, kind: str, name_prefix: str) -> list[dict[str, Any]]:
    return [
        r.inputs
        for r in mocks.resources
        if r.type.endswith(f":{kind}") and r.name.startswith(name_prefix)
    ]


@pytest.mark.parametrize("stack", STACKS)
def test_program_wires_the_pooler(pulumi_mocks: Callable[..., RecordingMocks], stack: str) -> None:
    mocks = run_program(pulumi_mocks, stack)
    config, secrets = stack_config(stack)
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    settings = parse_settings(stack, raw, [s.split(":", 1)[1] for s in secrets])
    assert len(mocks.by_type("pgplatform:index:PgBouncerPool")) == 1

    [service] = _kube(mocks, "Service", "pgbouncer-service")
    assert service["metadata"]["name"] == render.SERVICE_NAME
    [config_map] = _kube(mocks, "ConfigMap", "pgbouncer-config")
    ini = config_map["data"]["pgbouncer.ini"]
    cluster = "postgres-db"
    expected = render_pgbouncer_ini(
        render.ini_input(
            inputs.pgbouncer_pool_settings(settings),
            database=settings.postgres.database,
            rw_host=f"{cluster}-rw.{settings.namespace}.svc.cluster.local",
            ro_host=f"{cluster}-ro.{settings.namespace}.svc.cluster.local",
            port=settings.postgres.port,
            ca_known=True,
        )
    )
    assert ini == expected
    [dep] = _kube(mocks, "Deployment", "pgbouncer-deployment")
    template = dep["spec"]["template"]
    assert template["metadata"]["annotations"][pods.CHECKSUM_ANNOTATION] == render.ini_checksum(ini)
    assert dep["spec"]["replicas"] == settings.pgbouncer.replicas
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    if stack == "prod":
        assert "server_tls_sslmode = verify-full" in ini
        assert volumes["server-ca"]["secret"]["secretName"] == f"{cluster}-ca"
    else:
        assert "server_tls_sslmode = require" in ini
        assert "server-ca" not in volumes
    # The pooler's Vault secret: the lookup role's password and the generated stats password.
    [kv] = [
        r
        for r in mocks.by_type("vault:kv/secretV2:SecretV2")
        if r.name.startswith("pgbouncer-vault")
    ]
    assert is_secret(kv.inputs["dataJson"])
    assert len(_kube(mocks, "PodDisruptionBudget", "pgbouncer-pdb")) == 1
    assert len(_kube(mocks, "NetworkPolicy", "pgbouncer-netpol")) == 1
