"""The CrossGuard rules without the Pulumi CLI: each rule on a violating and a compliant
resource, the pack's wrappers through the policy SDK's own argument types, and every rule over
every resource of both rendered stacks."""

from __future__ import annotations

import base64
import copy
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy

from components.render import pods
from policy import rules
from tests.policy_support import deployed_view, preview_view, urn

pytestmark = pytest.mark.unit

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"
NAMESPACE = "pgplatform"


# --- compliant building blocks ------------------------------------------------------------------


def container(name: str = "app", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "docker.io/postgrest/postgrest:v12.2.3",
        "securityContext": pods.container_security_context(),
        "resources": pods.Resources(
            cpu_request="100m", memory_request="64Mi", cpu_limit="1", memory_limit="256Mi"
        ).to_k8s(),
        "livenessProbe": pods.http_probe("/live", "admin"),
        "readinessProbe": pods.http_probe("/ready", "admin"),
        **extra,
    }


def deployment(
    name: str = "api",
    component: str = "api",
    replicas: int | None = 2,
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    labels = pods.labels(name, component, name)
    spec: dict[str, Any] = {
        "selector": {"matchLabels": pods.selector_labels(name, name)},
        "strategy": pods.rolling_update(),
        "template": {
            "metadata": {"labels": labels},
            "spec": pods.hardened_pod_spec(
                containers=containers or [container()],
                selector=pods.selector_labels(name, name),
            ),
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-1a2b3c4d", "namespace": NAMESPACE, "labels": labels},
        "spec": spec,
    }


def hpa(target: str, minimum: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"namespace": NAMESPACE},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": minimum,
            "maxReplicas": 4,
        },
    }


def pdb(name: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": NAMESPACE},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": pods.selector_labels(name, name)}},
    }


def network_policy(name: str, *, open_ingress: bool = False) -> dict[str, Any]:
    peer = [] if open_ingress else [{"namespaceSelector": {"matchLabels": {"gateway": "true"}}}]
    return {
        "metadata": {"namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": pods.selector_labels(name, name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": peer, "ports": [{"port": 3000}]}],
            "egress": [],
        },
    }


def role(name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": name,
        "login": True,
        "inherit": False,
        "superuser": False,
        "bypassRowLevelSecurity": False,
        "createRole": False,
        "createDatabase": False,
        "replication": False,
        **overrides,
    }


def config_map(**data: str) -> dict[str, Any]:
    return {"metadata": {"namespace": NAMESPACE}, "data": data}


def pgbouncer_stack(
    *, ini: str | None = None, restricted: bool = True, uri: str | None = None
) -> list[rules.StackResource]:
    """A client reaching PgBouncer without TLS, PgBouncer, its config and NetworkPolicy."""
    ini = ini or "[pgbouncer]\nauth_type = scram-sha-256\nserver_tls_sslmode = verify-full\n"
    uri = uri or "postgresql://postgrest@pgbouncer.pgplatform.svc.cluster.local:5432/app_rw"
    bouncer = deployment("pgbouncer", component="pooler")
    return [
        (CONFIG_MAP, "client-config", config_map(**{"postgrest.conf": f'db-uri = "{uri}"'})),
        (CONFIG_MAP, "pgbouncer-config", config_map(**{"pgbouncer.ini": ini})),
        (DEPLOYMENT, "pgbouncer-deployment", bouncer),
        (
            NETWORK_POLICY,
            "pgbouncer-netpol",
            network_policy("pgbouncer", open_ingress=not restricted),
        ),
        (PDB, "pgbouncer-pdb", pdb("pgbouncer")),
    ]


def prometheus_rule(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": NAMESPACE},
        "spec": {
            "groups": [
                {
                    "name": "pgplatform.api",
                    "rules": [
                        {"record": "job:requests:rate5m", "expr": "sum(rate(x[5m]))"},
                        {"alert": "ApiErrors", "expr": "up == 0", "annotations": annotations},
                    ],
                }
            ]
        },
    }


def with_container_change(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    body = deployment()
    change(body["spec"]["template"]["spec"]["containers"][0])
    return body


def with_pod_change(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    body = deployment()
    change(body["spec"]["template"]["spec"])
    return body


# --- resource rules: one violating and one compliant resource each ------------------------------

RESOURCE_CASES: dict[str, tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    "authenticator-role-hardened": (
        (rules.ROLE, role("postgrest", bypassRowLevelSecurity=True)),
        (rules.ROLE, role("postgrest")),
    ),
    "no-anonymous-role-in-prod": (
        (rules.ROLE, role("api_anonymous", login=False)),
        (rules.ROLE, role("api_user", login=False)),
    ),
    "pod-hardened": (
        (DEPLOYMENT, with_pod_change(lambda spec: spec.pop("automountServiceAccountToken"))),
        (DEPLOYMENT, deployment()),
    ),
    "image-pinned": (
        (DEPLOYMENT, with_container_change(lambda c: c.update(image="postgrest/postgrest"))),
        (DEPLOYMENT, deployment()),
    ),
    "no-plaintext-secrets": (
        (
            DEPLOYMENT,
            with_container_change(
                lambda c: c.update(
                    env=[
                        {"name": "PGRST_JWT_SECRET", "value": "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"}
                    ]
                )
            ),
        ),
        (
            DEPLOYMENT,
            with_container_change(
                lambda c: c.update(
                    env=[pods.secret_env("PGRST_JWT_SECRET", "identity-api-secrets", "jwt-secret")]
                )
            ),
        ),
    ),
    "database-tls": (
        (CONFIG_MAP, config_map(**{"app.env": "DATABASE_URL=postgres://app@db.example.com/app"})),
        (
            CONFIG_MAP,
            config_map(
                **{"app.env": "DATABASE_URL=postgres://app@db.example.com/app?sslmode=verify-full"}
            ),
        ),
    ),
    "alert-runbook": (
        (PROMETHEUS_RULE, prometheus_rule({"summary": "errors"})),
        (
            PROMETHEUS_RULE,
            prometheus_rule({"runbook_url": "https://runbooks.example/ApiErrors.md"}),
        ),
    ),
}

STACK_CASES: dict[str, tuple[list[rules.StackResource], list[rules.StackResource]]] = {
    "authenticator-membership-hardened": (
        [
            (rules.ROLE, "access-role-reporting", role("reporting", inherit=True)),
            (rules.GRANT_ROLE, "member", {"role": "reporting", "grantRole": "api_user"}),
        ],
        [
            (rules.ROLE, "access-role-reporting", role("reporting")),
            (rules.GRANT_ROLE, "member", {"role": "reporting", "grantRole": "api_user"}),
        ],
    ),
    "pgbouncer-tls-boundary": (
        pgbouncer_stack(restricted=False),
        pgbouncer_stack(),
    ),
    "pdb-for-replicated-workloads": (
        [(DEPLOYMENT, "worker-deployment", deployment("worker", component="worker"))],
        [
            (DEPLOYMENT, "worker-deployment", deployment("worker", component="worker")),
            (PDB, "worker-pdb", pdb("worker")),
        ],
    ),
    "api-autoscaled-and-isolated": (
        [(DEPLOYMENT, "api-deployment", deployment()), (PDB, "api-pdb", pdb("api"))],
        [
            (DEPLOYMENT, "api-deployment", deployment()),
            (PDB, "api-pdb", pdb("api")),
            (HPA, "api-hpa", hpa("api-1a2b3c4d")),
            (NETWORK_POLICY, "api-netpol", network_policy("api")),
        ],
    ),
}


def _rule(name: str) -> rules.Rule:
    (found,) = [r for r in rules.RULES if r.name == name]
    return found


def test_every_rule_has_a_violating_and_a_compliant_case() -> None:
    assert {r.name for r in rules.RULES} == set(RESOURCE_CASES) | set(STACK_CASES)
    assert len({r.name for r in rules.RULES}) == len(rules.RULES)
    assert all((r.check is None) != (r.stack_check is None) for r in rules.RULES)


@pytest.mark.parametrize("name", sorted(RESOURCE_CASES))
def test_resource_rule_flags_violation_and_passes_compliant(name: str) -> None:
    check = _rule(name).check
    assert check is not None
    (bad_type, bad), (good_type, good) = RESOURCE_CASES[name]
    assert check(bad_type, bad, "prod"), f"{name} missed {bad}"
    assert check(good_type, good, "prod") == []
    # Every other rule accepts the compliant resource too: the fixtures are really compliant.
    assert rules.validate_resource(good_type, good, "prod") == []


@pytest.mark.parametrize("name", sorted(STACK_CASES))
def test_stack_rule_flags_violation_and_passes_compliant(name: str) -> None:
    check = _rule(name).stack_check
    assert check is not None
    bad, good = STACK_CASES[name]
    assert check(bad, "prod"), f"{name} missed the violation"
    assert check(good, "prod") == []
    assert rules.validate_stack(good, "prod") == []


# --- the rules in detail ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"superuser": True}, "SUPERUSER"),
        ({"bypassRowLevelSecurity": "true"}, "BYPASSRLS"),
        ({"createRole": True}, "CREATEROLE"),
        ({"createDatabase": True}, "CREATEDB"),
        ({"inherit": True}, "NOINHERIT"),
    ],
)
def test_authenticator_attributes(overrides: dict[str, Any], expected: str) -> None:
    for name in ("postgrest", "postgraphile"):
        (problem,) = rules.check_authenticator_role(rules.ROLE, role(name, **overrides), "prod")
        assert expected in problem
        assert name in problem


def test_authenticator_inherit_must_be_explicit() -> None:
    """The provider's default is INHERIT: leaving the field out is a violation."""
    props = role("postgrest")
    del props["inherit"]
    assert rules.check_authenticator_role(rules.ROLE, props, "staging")
    assert rules.check_authenticator_role(rules.ROLE, role("api_user", inherit=True), "prod") == []


def test_membership_ignores_nologin_roles_and_non_api_grants() -> None:
    resources: list[rules.StackResource] = [
        (rules.ROLE, "access-role-api_admin", role("api_admin", login=False, inherit=True)),
        (rules.GRANT_ROLE, "hierarchy", {"role": "api_admin", "grantRole": "api_editor"}),
        (rules.ROLE, "access-role-batch", role("batch", superuser=True)),
        (rules.GRANT_ROLE, "batch", {"role": "batch", "grantRole": "pgplatform_owner"}),
    ]
    assert rules.check_authenticator_membership(resources, "prod") == []


@pytest.mark.parametrize(
    ("resource_type", "props"),
    [
        (rules.GRANT_ROLE, {"role": "postgrest", "grantRole": "api_anonymous"}),
        (rules.GRANT, {"role": "api_anonymous", "schema": "identity", "objectType": "schema"}),
        (rules.DEFAULT_PRIVILEGES, {"role": "api_anonymous", "schema": "identity"}),
        (CONFIG_MAP, config_map(**{"postgrest.conf": 'db-anon-role = "api_anonymous"\n'})),
        (
            DEPLOYMENT,
            with_container_change(
                lambda c: c.update(env=[{"name": "PGRST_DB_ANON_ROLE", "value": "api_anonymous"}])
            ),
        ),
    ],
)
def test_anonymous_access_only_outside_prod(resource_type: str, props: dict[str, Any]) -> None:
    assert rules.check_no_anonymous_in_prod(resource_type, props, "prod")
    assert rules.check_no_anonymous_in_prod(resource_type, props, "staging") == []


def test_prod_postgrest_conf_without_anon_role_passes() -> None:
    conf = "# db-anon-role unset: requests without a valid JWT are rejected.\ndb-schemas = x\n"
    assert rules.check_no_anonymous_in_prod(CONFIG_MAP, config_map(c=conf), "prod") == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
        (lambda c: c["securityContext"].update(runAsUser=0), "runAsUser 0"),
        (lambda c: c["securityContext"].pop("readOnlyRootFilesystem"), "readOnlyRootFilesystem"),
        (lambda c: c["securityContext"].update(allowPrivilegeEscalation=True), "Escalation"),
        (lambda c: c["securityContext"].update(privileged=True), "privileged"),
        (lambda c: c["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "drop"),
        (lambda c: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "SYS_ADMIN"),
        (
            lambda c: c["securityContext"].update(seccompProfile={"type": "Unconfined"}),
            "seccompProfile",
        ),
        (lambda c: c["resources"].pop("limits"), "resources.limits"),
        (lambda c: c["resources"]["requests"].pop("memory"), "requests needs memory"),
        (lambda c: c.pop("livenessProbe"), "livenessProbe"),
        (lambda c: c.pop("readinessProbe"), "readinessProbe"),
    ],
)
def test_pod_hardening_each_requirement(
    change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    (problem,) = rules.check_pod_hardened(DEPLOYMENT, with_container_change(change), "prod")
    assert expected in problem


def test_pod_level_security_context_counts_for_containers() -> None:
    def move_to_pod(spec: dict[str, Any]) -> None:
        for field in ("runAsNonRoot", "seccompProfile"):
            spec["containers"][0]["securityContext"].pop(field)
        assert spec["securityContext"]["runAsNonRoot"] is True

    assert rules.check_pod_hardened(DEPLOYMENT, with_pod_change(move_to_pod), "prod") == []


def test_token_mount_needs_a_written_reason() -> None:
    body = with_pod_change(lambda spec: spec.update(automountServiceAccountToken=True))
    assert rules.check_pod_hardened(DEPLOYMENT, body, "prod")
    body["spec"]["template"]["metadata"]["annotations"] = {rules.TOKEN_ANNOTATION: "  "}
    assert rules.check_pod_hardened(DEPLOYMENT, body, "prod")
    body["spec"]["template"]["metadata"]["annotations"] = {
        rules.TOKEN_ANNOTATION: "reads its own Lease objects for leader election"
    }
    assert rules.check_pod_hardened(DEPLOYMENT, body, "prod") == []


def test_jobs_need_no_probes_but_the_rest_of_the_hardening() -> None:
    probeless = container("migrate")
    del probeless["livenessProbe"], probeless["readinessProbe"]
    pod = pods.hardened_pod_spec(containers=[probeless], selector={"job": "migrate"})
    job = {"spec": {"template": {"metadata": {}, "spec": {**pod, "restartPolicy": "Never"}}}}
    assert rules.check_pod_hardened("kubernetes:batch/v1:Job", job, "prod") == []
    cron = {"spec": {"jobTemplate": {"spec": copy.deepcopy(job["spec"])}}}
    assert rules.check_pod_hardened("kubernetes:batch/v1:CronJob", cron, "prod") == []
    del job["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert rules.check_pod_hardened("kubernetes:batch/v1:Job", job, "prod")


def test_init_containers_are_hardened_and_sidecars_probed() -> None:
    init = container("wait")
    del init["livenessProbe"], init["readinessProbe"]
    body = with_pod_change(lambda spec: spec.update(initContainers=[init]))
    assert rules.check_pod_hardened(DEPLOYMENT, body, "prod") == []
    init["securityContext"]["readOnlyRootFilesystem"] = False
    assert rules.check_pod_hardened(DEPLOYMENT, body, "prod")
    init["securityContext"]["readOnlyRootFilesystem"] = True
    init["restartPolicy"] = "Always"  # a native sidecar runs as long as the pod
    problems = rules.check_pod_hardened(DEPLOYMENT, body, "prod")
    assert len(problems) == 2
    assert all("sidecar 'wait'" in p for p in problems)


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("postgrest/postgrest:v12.2.3", True),
        ("registry.local:5000/team/postgrest:v12.2.3", True),
        ("postgrest/postgrest@sha256:" + "a" * 64, True),
        ("postgrest/postgrest:v12@sha256:" + "b" * 64, True),
        ("postgrest/postgrest", False),
        ("registry.local:5000/team/postgrest", False),
        ("postgrest/postgrest:latest", False),
        ("postgrest/postgrest@sha256:abc", False),
        ("", False),
    ],
)
def test_image_pinning(image: str, pinned: bool) -> None:
    assert (rules.image_problem(image) is None) is pinned


def test_cnpg_cluster_image_is_pinned() -> None:
    cluster = {"spec": {"imageName": "ghcr.io/cloudnative-pg/postgresql:latest"}}
    assert rules.check_images_pinned(CLUSTER, cluster, "prod")
    cluster["spec"]["imageName"] = "ghcr.io/cloudnative-pg/postgresql:15.18-standard-bookworm"
    assert rules.check_images_pinned(CLUSTER, cluster, "prod") == []


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("PGPASSWORD", True),
        ("db_password", True),
        ("PGRST_JWT_SECRET", True),
        ("client-secret", True),
        ("auth_token", True),
        ("_authToken", True),
        ("tls.privateKey", True),
        ("PRIVATE_KEY", True),
        ("api-key", True),
        ("credentials", True),
        ("jwt-secret-is-base64", False),
        ("secretName", False),
        ("token_file", False),
        ("jsonwebtoken", False),
        ("jwtSecretEnv", False),
        ("jwt-role-claim-key", False),
        ("server_tls_key_file", False),
        ("PWD", False),
    ],
)
def test_sensitive_key_names(key: str, sensitive: bool) -> None:
    assert rules.sensitive_key(key) is sensitive


@pytest.mark.parametrize(
    "text",
    [
        "password = hunter2",
        'jwt-secret = "reallyreallyreallyreallyreallylong"',
        "  api_key: abcdef0123456789",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n",
        "url = https://svc:hunter2@vault.example.com/v1",
        '"pgbouncer_auth" "SCRAM-SHA-256$4096:c2FsdA==$a:b"',
        "PGPASSWORD=[secret]",
    ],
)
def test_config_map_credentials_are_flagged(text: str) -> None:
    assert rules.check_no_plaintext_secrets(CONFIG_MAP, config_map(**{"app.conf": text}), "prod")


@pytest.mark.parametrize(
    "text",
    [
        'jwt-secret = "@/etc/postgrest/jwt/jwt-secret"',
        "jwt-secret-is-base64 = false",
        'db-uri = "postgresql://postgrest@pgbouncer:5432/app_rw"',
        "password = $(PGPASSWORD)",
        "password =",
        "const secret = process.env[name];\nif (token === '') {}\nconst token = bearer(req);",
        '"jsonwebtoken": "9.0.2",',
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "// token: see the gateway docs",
    ],
)
def test_config_map_non_credentials_pass(text: str) -> None:
    props = config_map(**{"app.conf": text})
    assert rules.check_no_plaintext_secrets(CONFIG_MAP, props, "prod") == []


def test_config_map_key_named_like_a_credential() -> None:
    assert rules.check_no_plaintext_secrets(CONFIG_MAP, config_map(password="x"), "prod")
    encoded = base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nMII\n").decode()
    binary = {"metadata": {}, "binaryData": {"tls.bin": encoded}}
    assert rules.check_no_plaintext_secrets(CONFIG_MAP, binary, "prod")


def test_env_literals_args_and_secret_values() -> None:
    for change in (
        lambda c: c.update(env=[{"name": "DB_PASSWORD", "value": "hunter2"}]),
        lambda c: c.update(env=[{"name": "DATABASE_URL", "value": "postgres://a:b@db/app"}]),
        lambda c: c.update(env=[{"name": "CONFIG", "value": rules.REDACTED}]),
        lambda c: c.update(args=["--dsn", "postgres://app:hunter2@db/app?sslmode=require"]),
    ):
        assert rules.check_no_plaintext_secrets(DEPLOYMENT, with_container_change(change), "prod")
    fine = with_container_change(
        lambda c: c.update(
            env=[
                {"name": "PGPASSWORD_FILE", "value": "/run/secrets/pg"},
                {"name": "DB_PASSWORD", "value": "$(VAULT_PASSWORD)"},
                {"name": "PGUSER", "value": "postgrest"},
            ]
        )
    )
    assert rules.check_no_plaintext_secrets(DEPLOYMENT, fine, "prod") == []


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("postgres://app@db.example.com:5432/app?sslmode=require", True),
        ("postgresql://app@db.example.com/app?sslmode=verify-full&sslrootcert=/ca.crt", True),
        ("postgres://app@db.example.com/app", False),
        ("postgres://app@db.example.com/app?sslmode=prefer", False),
        ("postgres://app@db.example.com/app?sslmode=disable", False),
        ("postgresql://app@pgbouncer:5432/app_rw", True),
        ("postgresql://app@pgbouncer.pgplatform.svc.cluster.local:5432/app_rw", True),
        ("postgresql://app@pgbouncer.pgplatform.svc/app_rw", True),
        ("postgresql://app@pgbouncer.example.com/app_rw", False),
        ("postgresql://app@pgbouncer:5432,db.example.com:5432/app", False),
        ("postgresql:///app?host=/var/run/postgresql", True),
    ],
)
def test_database_uri_tls(uri: str, ok: bool) -> None:
    env_var = with_container_change(
        lambda c: c.update(env=[{"name": "DATABASE_URL", "value": uri}])
    )
    assert (rules.check_database_tls(DEPLOYMENT, env_var, "staging") == []) is ok
    in_file = config_map(**{"postgrest.conf": f'db-uri = "{uri}"\n'})
    assert (rules.check_database_tls(CONFIG_MAP, in_file, "staging") == []) is ok


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        ({"PGHOST": "postgres-db-rw.pgplatform.svc", "PGSSLMODE": "verify-full"}, True),
        ({"PGHOST": "postgres-db-rw.pgplatform.svc"}, False),
        ({"PGHOST": "postgres-db-rw.pgplatform.svc", "PGSSLMODE": "prefer"}, False),
        ({"PGHOST": "pgbouncer"}, True),
        ({"PGHOST": "/var/run/postgresql"}, True),
        ({"PGDATABASE": "app"}, True),
    ],
)
def test_libpq_environment_tls(env: dict[str, str], ok: bool) -> None:
    variables = [{"name": k, "value": v} for k, v in env.items()]
    body = with_container_change(lambda c: c.update(env=variables))
    assert (rules.check_database_tls(DEPLOYMENT, body, "staging") == []) is ok


def test_postgresql_provider_tls_in_prod() -> None:
    provider = {"host": "postgres-db-rw", "sslmode": "disable", "superuser": "false"}
    assert rules.check_database_tls(rules.POSTGRESQL_PROVIDER, provider, "prod")
    assert rules.check_database_tls(rules.POSTGRESQL_PROVIDER, provider, "staging") == []
    for mode, ok in (("require", True), ("verify-full", True), ("prefer", False), (None, False)):
        props = {**provider, "sslmode": mode}
        assert (rules.check_database_tls(rules.POSTGRESQL_PROVIDER, props, "prod") == []) is ok


@pytest.mark.parametrize(
    ("stack", "expected"),
    [
        (
            pgbouncer_stack(ini="[pgbouncer]\nauth_type = md5\nserver_tls_sslmode = verify-full\n"),
            "auth_type=md5",
        ),
        (
            pgbouncer_stack(
                ini="[pgbouncer]\nauth_type = scram-sha-256\nserver_tls_sslmode = require\n"
            ),
            "server_tls_sslmode=require",
        ),
        (pgbouncer_stack()[:1], "no pgbouncer.ini"),
    ],
)
def test_pgbouncer_boundary_conditions(stack: list[rules.StackResource], expected: str) -> None:
    assert any(expected in p for p in rules.check_pgbouncer_tls_boundary(stack, "prod"))


def test_pgbouncer_boundary_only_when_a_client_skips_tls() -> None:
    tls_client = pgbouncer_stack(
        ini="[pgbouncer]\nauth_type = md5\n",
        restricted=False,
        uri="postgresql://postgrest@pgbouncer:5432/app_rw?sslmode=verify-full",
    )
    assert rules.check_pgbouncer_tls_boundary(tls_client, "prod") == []
    staging = pgbouncer_stack(
        ini="[pgbouncer]\nauth_type = scram-sha-256\nserver_tls_sslmode = require\n"
    )
    assert rules.check_pgbouncer_tls_boundary(staging, "staging") == []


def test_pdb_follows_the_autoscaler_floor() -> None:
    single = deployment(replicas=None)
    assert rules.check_pdb_for_replicas([(DEPLOYMENT, "d", single)], "prod") == []
    scaled = [(DEPLOYMENT, "d", single), (HPA, "h", hpa("api-1a2b3c4d", minimum=3))]
    (problem,) = rules.check_pdb_for_replicas(scaled, "prod")
    assert "runs 3 replicas" in problem
    other_namespace = {**pdb("api"), "metadata": {"namespace": "elsewhere"}}
    assert rules.check_pdb_for_replicas([*scaled, (PDB, "p", other_namespace)], "prod")
    assert rules.check_pdb_for_replicas([*scaled, (PDB, "p", pdb("api"))], "prod") == []


def test_api_needs_restricted_ingress_and_its_own_hpa() -> None:
    base: list[rules.StackResource] = [
        (DEPLOYMENT, "graphql-deployment", deployment("graphql", component="graphql", replicas=1)),
        (HPA, "other-hpa", hpa("somebody-else")),
        (NETWORK_POLICY, "open", network_policy("graphql", open_ingress=True)),
    ]
    problems = rules.check_api_autoscaled_and_isolated(base, "staging")
    assert len(problems) == 2
    assert any("HorizontalPodAutoscaler" in p for p in problems)
    assert any("NetworkPolicy" in p for p in problems)
    egress_only = network_policy("graphql")
    egress_only["spec"]["policyTypes"] = ["Egress"]
    fixed = [
        *base[:1],
        (HPA, "hpa", hpa("graphql-1a2b3c4d", minimum=1)),
        (NETWORK_POLICY, "egress", egress_only),
    ]
    assert len(rules.check_api_autoscaled_and_isolated(fixed, "staging")) == 1
    fixed.append((NETWORK_POLICY, "ingress", network_policy("graphql")))
    assert rules.check_api_autoscaled_and_isolated(fixed, "staging") == []
    worker = [(DEPLOYMENT, "worker", deployment("worker", component="worker", replicas=1))]
    assert rules.check_api_autoscaled_and_isolated(worker, "staging") == []


def test_selector_semantics() -> None:
    labels = {"app": "a", "tier": "api"}
    assert rules.selector_matches({}, labels)
    assert not rules.selector_matches(None, labels)
    assert rules.selector_matches({"matchLabels": {"app": "a"}}, labels)
    assert not rules.selector_matches({"matchLabels": {"app": "b"}}, labels)
    expressions = [
        ({"key": "tier", "operator": "In", "values": ["api", "web"]}, True),
        ({"key": "tier", "operator": "NotIn", "values": ["api"]}, False),
        ({"key": "zone", "operator": "NotIn", "values": ["x"]}, True),
        ({"key": "app", "operator": "Exists"}, True),
        ({"key": "app", "operator": "DoesNotExist"}, False),
        ({"key": "app", "operator": "Near"}, False),
    ]
    for expression, expected in expressions:
        assert rules.selector_matches({"matchExpressions": [expression]}, labels) is expected


def test_environment_from_stack_name_fails_closed() -> None:
    assert rules.stack_of_urn("urn:pulumi:staging::pgplatform::postgresql:index/role:Role::r") == (
        "staging"
    )
    assert rules.stack_of_urn("not-a-urn") == ""
    assert rules.environment_of("staging") == "staging"
    assert rules.environment_of("prod") == "prod"
    assert rules.environment_of("eu-west") == "prod"
    assert rules.environment_of("") == "prod"
    assert rules.environment_of("eu-west", "staging") == "staging"
    assert rules.environment_of("staging", "prod") == "prod"
    with pytest.raises(ValueError, match="environment: 'dev'"):
        rules.environment_of("staging", "dev")


def test_rules_read_the_policy_sdk_proxies() -> None:
    """The SDK hands Mapping/Sequence proxies, not dicts and lists: same answers."""
    bad = with_container_change(lambda c: c.update(image="postgrest/postgrest:latest"))
    for body in (deployment(), bad):
        plain = rules.validate_resource(DEPLOYMENT, body, "prod")
        proxied = rules.validate_resource(
            DEPLOYMENT, unknown_checking_proxy(copy.deepcopy(body)), "prod"
        )
        assert plain == proxied
    assert rules.validate_resource(DEPLOYMENT, bad, "prod")


# --- the pack's wrappers, driven through the policy SDK's argument types ------------------------


def _pack() -> Any:
    return importlib.import_module("policy.__main__")


def _options() -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])


def test_pack_has_one_mandatory_policy_per_rule() -> None:
    policies = _pack().policies()
    assert [p.name for p in policies] == [r.name for r in rules.RULES]
    assert all(p.enforcement_level == EnforcementLevel.MANDATORY for p in policies)
    kinds = {r.name: r.check is not None for r in rules.RULES}
    for policy in policies:
        expected = ResourceValidationPolicy if kinds[policy.name] else StackValidationPolicy
        assert isinstance(policy, expected)


def _run_resource_policy(name: str, stack: str, config: dict[str, Any]) -> list[str]:
    (policy,) = [p for p in _pack().policies() if p.name == name]
    props = unknown_checking_proxy(role("api_anonymous", login=False))
    args = ResourceValidationArgs(
        rules.ROLE, props, urn(stack, rules.ROLE, "r"), "r", _options(), None, config
    )
    reported: list[str] = []
    policy.validate(args, lambda message, urn: reported.append(message))
    return reported


def test_resource_policy_takes_the_environment_from_the_urn_or_config() -> None:
    assert _run_resource_policy("no-anonymous-role-in-prod", "prod", {})
    assert _run_resource_policy("no-anonymous-role-in-prod", "staging", {}) == []
    assert (
        _run_resource_policy("no-anonymous-role-in-prod", "prod", {"environment": "staging"}) == []
    )
    assert _run_resource_policy("no-anonymous-role-in-prod", "eu-1", {})


def test_stack_policy_reports_every_violation() -> None:
    (policy,) = [p for p in _pack().policies() if p.name == "pdb-for-replicated-workloads"]
    resources = [
        PolicyResource(
            DEPLOYMENT,
            unknown_checking_proxy(deployment(name)),
            urn("prod", DEPLOYMENT, name),
            name,
            _options(),
            None,
            None,
            [],
            {},
        )
        for name in ("a", "b")
    ]
    reported: list[str] = []
    policy.validate(StackValidationArgs(resources, {}), lambda m, urn: reported.append(m))
    assert len(reported) == 2


# --- every rule over every rendered resource ----------------------------------------------------


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_rendered_stack_has_no_violations(
    rendered_stack: Callable[[str], Path], stack: str
) -> None:
    resources = deployed_view(rendered_stack(stack))
    roles = {props.get("name") for t, _, props in resources if t == rules.ROLE}
    # The rules saw the objects they exist for, not an empty or foreign render.
    assert "postgrest" in roles
    assert any(t == rules.POSTGRESQL_PROVIDER for t, _, _ in resources)
    assert ("api_anonymous" in roles) is (stack == "staging")
    assert rules.validate_stack(resources, rules.environment_of(stack)) == []


# --- every rule over the preview of every stack ---------------------------------------------


def _rules_skipped_at_preview(resources: list[rules.StackResource]) -> list[str]:
    """Each (rule, resource) the pack could not check because it read an unknown value."""
    environment = rules.environment_of("prod")
    skipped = []
    for rule in rules.RULES:
        if rule.check is not None:
            for resource_type, name, props in resources:
                try:
                    rule.check(resource_type, props, environment)
                except UnknownValueError as error:
                    skipped.append(f"{rule.name} on {name}: {error.message}")
        elif rule.stack_check is not None:
            try:
                rule.stack_check(resources, environment)
            except UnknownValueError as error:
                skipped.append(f"{rule.name} (stack): {error.message}")
    return skipped


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_preview_is_checked_by_every_rule(
    rendered_preview: Callable[[str], Path], stack: str
) -> None:
    resources = preview_view(rendered_preview(stack))
    assert _rules_skipped_at_preview(resources) == []
    assert rules.validate_stack(resources, rules.environment_of(stack)) == []
    # Every API and pooler workload was seen with its pod, autoscaler, budget and policy.
    workloads = {
        name: props
        for resource_type, name, props in resources
        if rules.kind_of(resource_type) == "Deployment"
    }
    expected = {"identity-api-deployment", "content-api-deployment", "pgbouncer-deployment"}
    if stack == "staging":
        expected.add("graphql-deployment")
    assert expected <= set(workloads)
    for name in expected:
        template = rules.pod_template("kubernetes:apps/v1:Deployment", workloads[name])
        assert template is not None, name
        assert template.spec["containers"], name


def test_a_spec_unknown_at_preview_skips_the_rules() -> None:
    """What the pack did on a pull request adding a domain before specs were leaves."""
    from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

    props = unknown_checking_proxy(
        {"metadata": {"namespace": "pgplatform"}, "spec": UNKNOWN_STRING_VALUE}
    )
    skipped = _rules_skipped_at_preview([("kubernetes:apps/v1:Deployment", "new-api", props)])
    assert any(s.startswith("pod-hardened on new-api") for s in skipped)
