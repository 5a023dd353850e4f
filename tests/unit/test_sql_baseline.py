"""SqlBaseline: the baseline Job (pure) and how the program wires it and the bootstrap SQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

from components import inputs
from components.render import baseline_job as render
from components.render import pods
from components.render.baseline import (
    BOOTSTRAP_KEY,
    bundle_checksum,
    job_bundle,
    render_bootstrap_sql,
)
from components.render.migrations import job_bundle as migrations_bundle
from components.render.pgbouncer_pool import DatabaseEgress
from tests.conftest import STACKS, run_program, stack_config, stack_settings
from tools.mocks import RecordingMocks

pytestmark = pytest.mark.unit

K8S_VERSION = "1.33"
CHECKSUM = "c" * 64


def spec(**changes: Any) -> render.BaselineJobSpec:
    values: dict[str, Any] = {
        "namespace": "pgplatform",
        "host": "postgres-db-rw.pgplatform.svc.cluster.local",
        "port": 5432,
        "database": "app",
        "sslmode": "verify-full",
        "admin_secret": "postgres-admin-x",
        "ca_secret": "postgres-db-ca",
        "egress": DatabaseEgress(port=5432, cluster="postgres-db"),
    }
    values.update(changes)
    return render.BaselineJobSpec(**values)


def job(s: render.BaselineJobSpec | None = None) -> dict[str, Any]:
    return render.job_body(s or spec(), config_map="sql-x", bundle_checksum=CHECKSUM)


@pytest.mark.parametrize(
    ("api_version", "kind", "body"),
    [
        ("batch/v1", "Job", job()),
        ("batch/v1", "Job", job(spec(sslmode="require", ca_secret=None))),
        ("networking.k8s.io/v1", "NetworkPolicy", render.network_policy_body(spec())),
    ],
)
def test_objects_pass_the_kubernetes_schema(
    api_version: str, kind: str, body: dict[str, Any]
) -> None:
    obj = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "x", "namespace": "pgplatform", "labels": render.labels()},
        **body,
    }
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_job_connects_as_the_admin_with_tls_and_no_literal_secret() -> None:
    body = job()["spec"]
    pod = body["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["PGUSER"]["valueFrom"]["secretKeyRef"] == {
        "name": "postgres-admin-x",
        "key": "username",
    }
    assert env["PGPASSWORD"] == pods.secret_env("PGPASSWORD", "postgres-admin-x", "password")
    assert env["PGSSLMODE"]["value"] == "verify-full"
    assert env["PGSSLROOTCERT"]["value"] == f"{render.CA_DIR}/{render.CA_KEY}"
    assert container["command"] == ["psql", "-X", "-f", f"{render.SQL_DIR}/apply.psql"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert body["backoffLimit"] > 0
    assert body["activeDeadlineSeconds"] >= 60
    assert body["template"]["metadata"]["annotations"] == {pods.CHECKSUM_ANNOTATION: CHECKSUM}
    plain = job(spec(sslmode="require", ca_secret=None))["spec"]["template"]["spec"]
    assert "PGSSLROOTCERT" not in json.dumps(plain)
    assert {v["name"] for v in plain["volumes"]} == {"sql"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ca_secret": None}, "ca_secret: required with sslmode 'verify-full'"),
        ({"sslmode": "prefer"}, "sslmode"),
        ({"database": "app; drop"}, "database"),
        ({"host": "bad host"}, "host"),
        ({"image": "postgres:latest"}, "pin a version"),
    ],
)
def test_spec_validation_names_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**changes)


def test_job_suffix_is_the_bundle_hash() -> None:
    assert render.job_suffix(CHECKSUM) == "c" * 12
    with pytest.raises(ValueError, match="sha256"):
        render.job_suffix("not-a-hash")


# -- the program ---------------------------------------------------------------------------------
@pytest.mark.parametrize("stack", STACKS)
def test_program_wires_bootstrap_and_job(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks = run_program(pulumi_mocks, stack)
    settings = stack_settings(stack)
    bundle = job_bundle(
        inputs.exposed_schemas(settings),
        inputs.group_roles(settings),
        inputs.cache_control(settings),
        inputs.tenancy(settings),
        inputs.masking(settings),
    )
    checksum = bundle_checksum(bundle)

    [job_resource] = [
        r for r in mocks.by_type("kubernetes:batch/v1:Job") if r.name.startswith("sql-baseline-job")
    ]
    assert job_resource.name == f"sql-baseline-job-{checksum[:12]}"
    [config_map] = [
        r for r in mocks.by_type("kubernetes:core/v1:ConfigMap") if r.name == "sql-baseline-sql"
    ]
    assert config_map.inputs["data"] == bundle
    env = {
        e["name"]: e
        for e in job_resource.inputs["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["PGSSLMODE"]["value"] == settings.postgres.sslmode
    assert env["PGHOST"]["value"].startswith("postgres-db-rw.")

    # CloudNativePG runs the superuser part once, from a ConfigMap the Cluster names.
    [bootstrap] = [
        r
        for r in mocks.by_type("kubernetes:core/v1:ConfigMap")
        if r.name == "postgres-bootstrap-sql"
    ]
    assert bootstrap.inputs["data"] == {BOOTSTRAP_KEY: render_bootstrap_sql()}
    [cluster] = mocks.by_type("kubernetes:postgresql.cnpg.io/v1:Cluster")
    refs = cluster.inputs["spec"]["bootstrap"]["initdb"]["postInitApplicationSQLRefs"]
    assert refs == {
        "configMapRefs": [{"name": bootstrap.inputs["metadata"]["name"], "key": BOOTSTRAP_KEY}]
    }
    assert cluster.inputs["spec"]["enableSuperuserAccess"] is False


def test_external_mode_has_no_bootstrap_and_the_job_targets_the_endpoint(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    config, secrets = stack_config("prod")
    config["pgplatform:postgres"] = json.dumps(
        {"mode": "external", "host": "db.example.com", "roHost": "ro.example.com",
         "caSecret": "db-ca"}
    )  # fmt: skip
    config["pgplatform:postgresAdminPassword"] = "s3cret-admin-password"
    config["pgplatform:backup"] = json.dumps({"enabled": False})
    mocks = run_program(
        pulumi_mocks, "prod", config, [*secrets, "pgplatform:postgresAdminPassword"]
    )
    assert not [r for r in mocks.resources if r.name == "postgres-bootstrap-sql"]
    [job_resource] = [
        r for r in mocks.by_type("kubernetes:batch/v1:Job") if r.name.startswith("sql-baseline-job")
    ]
    pod = job_resource.inputs["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["PGHOST"] == "db.example.com"
    assert {v["name"]: v for v in pod["volumes"]}["db-ca"]["secret"]["secretName"] == "db-ca"
    [policy] = [
        r
        for r in mocks.by_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if r.name == "sql-baseline-netpol"
    ]
    assert policy.inputs["spec"]["egress"][0]["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}]


@pytest.mark.parametrize("stack", STACKS)
def test_program_wires_the_migrations_job_after_the_baseline(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    """One Job per stack named by its bundle's hash, same shape as the baseline's, after it."""
    mocks = run_program(pulumi_mocks, stack)
    settings = stack_settings(stack)
    bundle = migrations_bundle(inputs.migration_plan(settings))
    checksum = bundle_checksum(bundle)
    jobs = {r.name: r for r in mocks.by_type("kubernetes:batch/v1:Job")}
    migrate = jobs[f"sql-baseline-migrations-job-{checksum[:12]}"]
    [baseline] = [r for name, r in jobs.items() if name.startswith("sql-baseline-job-")]
    assert baseline.urn in migrate.dependencies
    [config_map] = [
        r
        for r in mocks.by_type("kubernetes:core/v1:ConfigMap")
        if r.name == "sql-baseline-migrations-sql"
    ]
    assert config_map.inputs["data"] == bundle
    assert set(bundle) == {
        "migrate.psql",
        "identity.0001_accounts.sql",
        "content.0001_articles.sql",
        "content.0002_cms_client_policy.sql",
        # Staging serves analytics from the CDC copies: its migrations run there.
        *(["analytics.0001_article_stats.sql"] if not settings.copy_domains() else []),
        "billing.0001_invoices.sql",
    }
    pod = migrate.inputs["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["psql", "-X", "-f", "/etc/pgplatform/sql/migrate.psql"]
    assert (
        container["image"] == baseline.inputs["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    env = {e["name"]: e for e in container["env"]}
    assert env["PGAPPNAME"]["value"] == "pgplatform-migrations"
    assert "valueFrom" in env["PGPASSWORD"]
    assert migrate.inputs["spec"]["activeDeadlineSeconds"] == 3600
    policies = {r.name: r for r in mocks.by_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")}
    selector = policies["sql-baseline-migrations-netpol"].inputs["spec"]["podSelector"]
    assert selector["matchLabels"].items() <= pod_labels(migrate).items()


def pod_labels(job: Any) -> dict[str, str]:
    return dict(job.inputs["spec"]["template"]["metadata"]["labels"])
