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
from components.settings import (
    SettingsError,
    decode_config_value,
    parse_settings,
)
from tests.conftest import run_program, stack_config, stack_settings
from tests.crd_schema import load_crd_validator
from tools.mocks import RecordingMocks, redact

pytestmark = pytest.mark.unit

K8S_VERSION = "1.33.0"


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


def prod_with(pulumi_mocks: Callable[..., RecordingMocks], **keys: str) -> RecordingMocks:
    """The prod stack with ``pgplatform:<key>`` values (JSON for objects) set on top."""
    config, secrets = stack_config("prod")
    config = {**config, **{f"pgplatform:{k}": v for k, v in keys.items()}}
    return run_program(pulumi_mocks, "prod", config, secrets)


def test_prod_archives_through_the_barman_cloud_plugin(prod: RecordingMocks) -> None:
    s = stack_settings("prod")
    (cluster,) = of_kind(prod, "Cluster")
    (store,) = of_kind(prod, "ObjectStore")
    assert "-standard-" in cluster["spec"]["imageName"]
    assert "backup" not in cluster["spec"], "the in-core form needs the system image"
    assert cluster["spec"]["plugins"] == [
        {
            "name": "barman-cloud.cloudnative-pg.io",
            "isWALArchiver": True,
            "parameters": {"barmanObjectName": store["metadata"]["name"]},
        }
    ]
    assert store["apiVersion"] == "barmancloud.cnpg.io/v1"
    assert store["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    configuration = store["spec"]["configuration"]
    assert configuration["destinationPath"] == s.backup.destination_path
    assert configuration["endpointURL"] == s.backup.endpoint_url
    assert configuration["s3Credentials"] == {
        "accessKeyId": {"name": s.backup.credentials_secret, "key": "ACCESS_KEY_ID"},
        "secretAccessKey": {"name": s.backup.credentials_secret, "key": "ACCESS_SECRET_KEY"},
    }
    # The plugin takes the server name from the Cluster; the ObjectStore must leave it empty.
    assert "serverName" not in configuration
    assert store["spec"]["retentionPolicy"] == s.backup.retention
    assert redact(store["spec"]["instanceSidecarConfiguration"]["resources"]) == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    (scheduled,) = of_kind(prod, "ScheduledBackup")
    assert scheduled["spec"] == {
        "schedule": s.backup.schedule,
        "cluster": {"name": cluster["metadata"]["name"]},
        "method": "plugin",
        "pluginConfiguration": {"name": "barman-cloud.cloudnative-pg.io"},
        "target": "prefer-standby",
        "immediate": True,
        "backupOwnerReference": "self",
    }
    queries = cluster["spec"]["monitoring"]["customQueriesConfigMap"]
    names = {m["metadata"]["name"] for m in of_kind(prod, "ConfigMap")}
    assert [q["key"] for q in queries] == ["queries.yaml"]
    assert queries[0]["name"] in names


def test_the_object_store_exists_before_the_cluster_archives(prod: RecordingMocks) -> None:
    """Registration order follows the dependency: the ObjectStore before the Cluster."""
    order = [r.type.rsplit(":", 1)[-1] for r in prod.kubernetes()]
    assert order.index("ObjectStore") < order.index("Cluster")


def test_in_core_method_with_the_system_image(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    """Kept for clusters mid-migration: the deprecated in-core form, only where it can run."""
    system = "ghcr.io/cloudnative-pg/postgresql:15.18-system-bookworm"
    mocks = prod_with(
        pulumi_mocks,
        backup=json.dumps(
            {
                "enabled": True,
                "method": "barmanObjectStore",
                "destinationPath": "s3://pgplatform-prod-backups/cnpg",
                "credentialsSecret": "pgplatform-backup-s3",
            }
        ),
        postgres=json.dumps({"image": system}),
    )
    (cluster,) = of_kind(mocks, "Cluster")
    assert of_kind(mocks, "ObjectStore") == []
    assert "plugins" not in cluster["spec"]
    backup = cluster["spec"]["backup"]
    assert backup["barmanObjectStore"]["destinationPath"] == "s3://pgplatform-prod-backups/cnpg"
    assert backup["retentionPolicy"] == "30d"
    (scheduled,) = of_kind(mocks, "ScheduledBackup")
    assert scheduled["spec"]["method"] == "barmanObjectStore"
    assert "pluginConfiguration" not in scheduled["spec"]
    (files,) = [c for c in of_kind(mocks, "ConfigMap") if render.CLUSTER_KEY in c.get("data", {})]
    (origin,) = json.loads(files["data"][render.CLUSTER_KEY])["spec"]["externalClusters"]
    assert origin["barmanObjectStore"]["serverName"] == inputs.CLUSTER_NAME
    (policy,) = of_kind(mocks, "ValidatingAdmissionPolicy")
    expressions = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert (
        "c.barmanObjectStore.destinationPath == 's3://pgplatform-prod-backups/cnpg'" in expressions
    )
    for obj in (cluster, scheduled):
        load_crd_validator("postgresql.cnpg.io", obj["kind"], "v1")(redact(obj))


@pytest.mark.parametrize(
    ("image", "method", "fits"),
    [
        ("ghcr.io/cloudnative-pg/postgresql:15.18-standard-bookworm", "barmanObjectStore", False),
        ("ghcr.io/cloudnative-pg/postgresql:15.18-minimal-bookworm", "barmanObjectStore", False),
        ("ghcr.io/cloudnative-pg/postgresql:15.18-system-bookworm", "barmanObjectStore", True),
        ("ghcr.io/cloudnative-pg/postgresql:15.18-standard-bookworm", "plugin", True),
        ("ghcr.io/cloudnative-pg/postgresql:15.18-minimal-bookworm", "plugin", True),
        ("ghcr.io/cloudnative-pg/postgresql:15.18-system-bookworm", "plugin", True),
    ],
)
def test_backup_method_must_fit_the_image_flavour(image: str, method: str, fits: bool) -> None:
    config, secrets = stack_config("prod")
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    raw["postgres"] = {**raw.get("postgres", {}), "image": image}
    raw["backup"] = {**raw["backup"], "method": method}
    secret_keys = [k.split(":", 1)[1] for k in secrets]
    if fits:
        assert parse_settings("prod", raw, secret_keys).backup.method == method
        return
    with pytest.raises(SettingsError) as error:
        parse_settings("prod", raw, secret_keys)
    (problem,) = error.value.problems
    assert problem.path == "pgplatform:backup.method"
    assert "'plugin'" in problem.message
    assert "system" in problem.message
    assert "postgres.image" in problem.message


def test_staging_without_backups_may_run_any_flavour() -> None:
    config, secrets = stack_config("staging")
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    raw["postgres"] = {
        **raw.get("postgres", {}),
        "image": "ghcr.io/cloudnative-pg/postgresql:15.18-minimal-bookworm",
    }
    raw["backup"] = {**raw.get("backup", {}), "method": "barmanObjectStore"}
    s = parse_settings("staging", raw, [k.split(":", 1)[1] for k in secrets])
    assert not s.backup.enabled


@pytest.mark.parametrize(
    "image",
    ["ghcr.io/cloudnative-pg/postgresql", "ghcr.io/cloudnative-pg/postgresql:latest", ""],
)
def test_postgres_image_must_be_pinned(image: str) -> None:
    config, secrets = stack_config("prod")
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    raw["postgres"] = {**raw.get("postgres", {}), "image": image or " "}
    with pytest.raises(SettingsError) as error:
        parse_settings("prod", raw, [k.split(":", 1)[1] for k in secrets])
    assert [p.path for p in error.value.problems] == ["pgplatform:postgres.image"]


def test_staging_keeps_no_backups(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    mocks = run_program(pulumi_mocks, "staging")
    (cluster,) = of_kind(mocks, "Cluster")
    assert "backup" not in cluster["spec"]
    for kind in ("ScheduledBackup", "Role", "ValidatingAdmissionPolicy"):
        assert of_kind(mocks, kind) == [], kind
    # The advisor's CronJob is the only one: no restore check.
    assert [c["metadata"]["name"] for c in of_kind(mocks, "CronJob")] == ["postgres-advisor"]


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
    assert "c.plugin.name == 'barman-cloud.cloudnative-pg.io'" in expressions
    assert "!has(object.spec.backup)" in expressions
    assert "size(object.spec.plugins) == 0" in expressions
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
    (store,) = of_kind(prod, "ObjectStore")
    # Through the plugin, from the same ObjectStore with the source's server name.
    assert origin == {
        "name": cluster_render.RECOVERY_SOURCE,
        "plugin": {
            "name": "barman-cloud.cloudnative-pg.io",
            "parameters": {
                "barmanObjectName": store["metadata"]["name"],
                "serverName": inputs.CLUSTER_NAME,
            },
        },
    }
    assert "plugins" not in spec, "the recovery Cluster must never archive"
    validate = load_crd_validator("postgresql.cnpg.io", "Cluster", "v1")
    validate(manifest)
    (policy,) = of_kind(prod, "ValidatingAdmissionPolicy")
    expressions = " ".join(v["expression"] for v in policy["spec"]["validations"])
    name = store["metadata"]["name"]
    assert f"c.plugin.parameters.barmanObjectName == '{name}'" in expressions
    assert f"c.plugin.parameters.serverName == '{inputs.CLUSTER_NAME}'" in expressions
    assert "!has(c.barmanObjectStore)" in expressions


def test_cronjob_is_what_the_alerts_watch(prod: RecordingMocks) -> None:
    s = stack_settings("prod")
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
        "ObjectStore": ("barmancloud.cnpg.io", "v1"),
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
        ({"method": "volumeSnapshot"}, "method"),
        ({"name": "Store"}, "name"),
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
    s = stack_settings("staging")
    with pytest.raises(ValueError, match="backup"):
        cluster_render.recovery_cluster_spec(
            inputs.cluster_input(s, admin_secret="x"), source_cluster="postgres-db"
        )


def test_cluster_input_refuses_in_core_backups_on_an_image_without_barman() -> None:
    """The builder's own guard, for callers that bypass the settings."""
    s = stack_settings("prod")
    store = inputs.backup_store(s)
    assert store is not None
    with pytest.raises(ValueError, match=r"backup\.method: .*'standard' flavour"):
        cluster_render.ClusterInput(
            **{
                **inputs.cluster_input(s, admin_secret="x").__dict__,
                "backup": cluster_render.ObjectStoreInput(
                    **{**store.__dict__, "method": "barmanObjectStore"}
                ),
            }
        )


def test_scheduled_backup_refuses_an_unknown_method() -> None:
    with pytest.raises(ValueError, match="method"):
        render.scheduled_backup_spec(cluster="c", schedule="@daily", method="volumeSnapshots")
