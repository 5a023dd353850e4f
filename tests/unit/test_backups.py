"""Backups under mocks and as data: WAL archive, nightly backup, least-privilege restore check."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

from components import inputs
from components.render import postgres_cluster as cluster_render
from components.render import restore_check as render
from components.render.alerts import default_thresholds, render_prometheus_rules
from components.render.metrics_catalog import TargetNaming
from components.settings import StackSettings, decode_config_value, parse_settings
from tests.conftest import run_program, stack_config
from tests.crd_schema import load_crd_validator
from tools.mocks import RecordingMocks, redact

pytestmark = pytest.mark.unit

K8S_VERSION = "1.33.0"


def settings_of(stack: str) -> StackSettings:
    config, secrets = stack_config(stack)
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    return parse_settings(stack, raw, [s.split(":", 1)[1] for s in secrets])


def of_kind(mocks: RecordingMocks, kind: str) -> list[dict[str, Any]]:
    return [
        {**r.inputs, "metadata": r.outputs.get("metadata", r.inputs.get("metadata", {}))}
        for r in mocks.kubernetes()
        if r.type.endswith(f":{kind}")
    ]


@pytest.fixture
def prod(pulumi_mocks: Callable[..., RecordingMocks]) -> RecordingMocks:
    return run_program(pulumi_mocks, "prod")


def check_input(**overrides: Any) -> render.RestoreCheckInput:
    fields: dict[str, Any] = {
        "namespace": "pgplatform",
        "source_cluster": "postgres-db",
        "database": "app",
        "schemas": ("identity", "platform"),
        "schedule": "0 4 1 * *",
        "destination_path": "s3://bucket/cnpg",
    }
    fields.update(overrides)
    return render.RestoreCheckInput(**fields)


def test_prod_archives_wal_and_backs_up_nightly(prod: RecordingMocks) -> None:
    s = settings_of("prod")
    (cluster,) = of_kind(prod, "Cluster")
    backup = cluster["spec"]["backup"]
    store = backup["barmanObjectStore"]
    assert store["destinationPath"] == s.backup.destination_path
    assert store["endpointURL"] == s.backup.endpoint_url
    assert store["s3Credentials"] == {
        "accessKeyId": {"name": s.backup.credentials_secret, "key": "ACCESS_KEY_ID"},
        "secretAccessKey": {"name": s.backup.credentials_secret, "key": "ACCESS_SECRET_KEY"},
    }
    assert backup["retentionPolicy"] == s.backup.retention
    (scheduled,) = of_kind(prod, "ScheduledBackup")
    assert scheduled["spec"] == {
        "schedule": s.backup.schedule,
        "cluster": {"name": cluster["metadata"]["name"]},
        "method": "barmanObjectStore",
        "immediate": True,
        "backupOwnerReference": "self",
    }
    queries = cluster["spec"]["monitoring"]["customQueriesConfigMap"]
    names = {m["metadata"]["name"] for m in of_kind(prod, "ConfigMap")}
    assert [q["key"] for q in queries] == ["queries.yaml"]
    assert queries[0]["name"] in names


def test_staging_keeps_no_backups(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    mocks = run_program(pulumi_mocks, "staging")
    (cluster,) = of_kind(mocks, "Cluster")
    assert "backup" not in cluster["spec"]
    for kind in ("ScheduledBackup", "CronJob", "Role", "ValidatingAdmissionPolicy"):
        assert of_kind(mocks, kind) == [], kind


def test_restore_check_rbac_is_least_privilege(prod: RecordingMocks) -> None:
    (cronjob,) = of_kind(prod, "CronJob")
    (account,) = [
        a for a in of_kind(prod, "ServiceAccount") if "restore-check" in a["metadata"]["name"]
    ]
    (role,) = of_kind(prod, "Role")
    (binding,) = of_kind(prod, "RoleBinding")
    assert account["automountServiceAccountToken"] is False
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "pgplatform"}
    ]
    restored = f"{inputs.CLUSTER_NAME}-restored"
    grants = {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert grants == {
        ("postgresql.cnpg.io", "clusters", "create", ()),
        ("postgresql.cnpg.io", "clusters", "get", (restored,)),
        ("postgresql.cnpg.io", "clusters", "delete", (restored,)),
        ("", "pods", "get", (f"{restored}-1",)),
        ("", "pods/exec", "get", (f"{restored}-1",)),
        ("", "pods/exec", "create", (f"{restored}-1",)),
    }
    # Every other pod of the stack keeps its token unmounted.
    for deployment in of_kind(prod, "Deployment"):
        assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_admission_policy_pins_what_the_job_may_create(prod: RecordingMocks) -> None:
    (account,) = [
        a for a in of_kind(prod, "ServiceAccount") if "restore-check" in a["metadata"]["name"]
    ]
    (policy,) = of_kind(prod, "ValidatingAdmissionPolicy")
    (binding,) = of_kind(prod, "ValidatingAdmissionPolicyBinding")
    assert "namespace" not in policy["metadata"]
    (condition,) = policy["spec"]["matchConditions"]
    user = f"system:serviceaccount:pgplatform:{account['metadata']['name']}"
    assert condition["expression"] == f"request.userInfo.username == '{user}'"
    expressions = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert f"object.metadata.name == '{inputs.CLUSTER_NAME}-restored'" in expressions
    assert "'s3://pgplatform-prod-backups/cnpg'" in expressions
    assert "!has(object.spec.backup)" in expressions
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
        "matchResources": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "pgplatform"}}
        },
    }


def test_the_job_creates_exactly_the_cluster_the_policy_allows(prod: RecordingMocks) -> None:
    (files,) = [c for c in of_kind(prod, "ConfigMap") if render.CLUSTER_KEY in c.get("data", {})]
    manifest = json.loads(files["data"][render.CLUSTER_KEY])
    assert manifest["metadata"]["name"] == f"{inputs.CLUSTER_NAME}-restored"
    spec = manifest["spec"]
    assert spec["instances"] == 1
    assert "backup" not in spec
    assert "managed" not in spec
    assert spec["bootstrap"] == {
        "recovery": {
            "source": cluster_render.RECOVERY_SOURCE,
            "database": "app",
            "owner": "pgplatform_admin",
        }
    }
    (origin,) = spec["externalClusters"]
    assert origin["barmanObjectStore"]["serverName"] == inputs.CLUSTER_NAME
    assert origin["barmanObjectStore"]["destinationPath"] == "s3://pgplatform-prod-backups/cnpg"
    validate = load_crd_validator("postgresql.cnpg.io", "Cluster", "v1")
    validate(manifest)


def test_cronjob_is_what_the_alerts_watch(prod: RecordingMocks) -> None:
    s = settings_of("prod")
    (cronjob,) = of_kind(prod, "CronJob")
    name = TargetNaming().restore_check_cronjob.format(cluster=inputs.CLUSTER_NAME)
    assert cronjob["metadata"]["name"] == name
    spec = cronjob["spec"]
    assert spec["schedule"] == s.backup.restore_check_schedule
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    assert "ttlSecondsAfterFinished" not in job
    rules = render_prometheus_rules(
        namespace="pgplatform",
        domains=("identity",),
        cluster_name=inputs.CLUSTER_NAME,
        thresholds=default_thresholds("prod"),
        runbook_base_url="https://example.com/runbooks",
        max_connections=400,
    )
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    assert f'cronjob="{name}"' in exprs


def test_my_objects_validate(prod: RecordingMocks) -> None:
    """Core kinds against the Kubernetes schema, custom resources against their CRDs (strict)."""
    core = (
        "CronJob",
        "Role",
        "RoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "NetworkPolicy",
        "ServiceAccount",
    )
    for kind in core:
        for obj in of_kind(prod, kind):
            kubernetes_validate.validate(redact(obj), K8S_VERSION, strict=True)
    crds = {
        "ScheduledBackup": ("postgresql.cnpg.io", "v1"),
        "Cluster": ("postgresql.cnpg.io", "v1"),
        "PodMonitor": ("monitoring.coreos.com", "v1"),
        "ServiceMonitor": ("monitoring.coreos.com", "v1"),
        "PrometheusRule": ("monitoring.coreos.com", "v1"),
    }
    for kind, (group, version) in crds.items():
        objects = of_kind(prod, kind)
        assert objects, kind
        for obj in objects:
            load_crd_validator(group, kind, version)(redact(obj))


def test_script_cleans_up_whatever_happens() -> None:
    script = render.restore_check_script(check_input())
    lines = script.splitlines()
    assert lines[:3] == ["#!/bin/bash", lines[1], "set -euo pipefail"]
    trap = lines.index("trap cleanup EXIT")
    create = next(i for i, line in enumerate(lines) if "create -f" in line)
    assert trap < create, "the EXIT trap must be armed before the Cluster is created"
    assert "trap 'exit 143' TERM INT" in lines
    assert "CLUSTER=postgres-db-restored" in lines
    assert "psql -X -q -h /controller/run -U postgres" in script
    assert "--all" not in script


def test_check_sql_names_every_schema() -> None:
    sql = render.check_sql(("identity", "audit"))
    assert "ARRAY['identity', 'audit']::text[]" in sql
    assert "pg_is_in_recovery()" in sql
    with pytest.raises(ValueError, match="schemas"):
        render.check_sql(("bad-name",))
    with pytest.raises(ValueError, match="schemas"):
        render.check_sql(())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"schedule": "0 0 4 1 * *"}, "schedule"),
        ({"source_cluster": "Postgres"}, "source_cluster"),
        ({"source_cluster": "p" * 45}, "source_cluster"),
        ({"database": "app;drop"}, "database"),
        ({"schemas": ()}, "schemas"),
        ({"timeout_seconds": 10}, "timeout_seconds"),
        ({"image": "registry.k8s.io/kubectl:latest"}, "image"),
    ],
)
def test_restore_check_input_names_the_bad_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        check_input(**overrides)


def test_backup_schedule_needs_seconds() -> None:
    with pytest.raises(ValueError, match="six fields"):
        render.scheduled_backup_spec(cluster="postgres-db", schedule="0 2 * * *")
    assert render.scheduled_backup_spec(cluster="c", schedule="@daily")["schedule"] == "@daily"


@pytest.mark.parametrize(
    ("path", "credentials"),
    [
        ("s3://b/p", "s3Credentials"),
        ("gs://b/p", "googleCredentials"),
        ("https://acct.blob.core.windows.net/c", "azureCredentials"),
    ],
)
def test_object_store_credentials_per_provider(path: str, credentials: str) -> None:
    store = cluster_render.ObjectStoreInput(
        destination_path=path, credentials_secret="creds", retention="30d"
    )
    out = cluster_render.barman_object_store(store)
    assert credentials in out
    assert "serverName" not in out
    refs = json.dumps(out[credentials])
    assert '"name": "creds"' in refs


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"destination_path": "ftp://x"}, "destination_path"),
        ({"credentials_secret": "Bad_Name"}, "credentials_secret"),
        ({"retention": "30 days"}, "retention"),
        ({"endpoint_url": "s3.example.com"}, "endpoint_url"),
    ],
)
def test_object_store_input_names_the_bad_field(overrides: dict[str, Any], field: str) -> None:
    fields: dict[str, Any] = {
        "destination_path": "s3://b/p",
        "credentials_secret": "creds",
        "retention": "30d",
        **overrides,
    }
    with pytest.raises(ValueError, match=field):
        cluster_render.ObjectStoreInput(**fields)


def test_recovery_needs_an_object_store() -> None:
    s = settings_of("staging")
    with pytest.raises(ValueError, match="backup"):
        cluster_render.recovery_cluster_spec(
            inputs.cluster_input(s, admin_secret="x"), source_cluster="postgres-db"
        )
