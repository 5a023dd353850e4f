"""The audit exporter's manifests: one pod on its spool, read-only, reaching the database only."""

from __future__ import annotations

from typing import Any

import pytest

from components.render import audit_export as render
from components.render.baseline_job import BaselineJobSpec
from components.render.pgbouncer_pool import DatabaseEgress
from tests.unit.test_settings import _STAGING, _problems, _with

pytestmark = pytest.mark.unit


def spec(**overrides: Any) -> render.AuditExportSpec:
    values: dict[str, Any] = {
        "connection": BaselineJobSpec(
            namespace="pgplatform",
            host="postgres-db-rw.pgplatform.svc.cluster.local",
            port=5432,
            database="app",
            sslmode="verify-full",
            admin_secret="postgres-admin-secrets",
            ca_secret="postgres-db-ca",
            egress=DatabaseEgress(port=5432, cluster="postgres-db"),
        ),
        "batch_size": 1000,
        "interval_seconds": 30,
        "keep_files": 16,
        "spool_size": "2Gi",
    }
    return render.AuditExportSpec(**{**values, **overrides})


def test_one_exporter_per_spool() -> None:
    body = render.deployment_body(spec(), config_map="files")["spec"]
    assert body["replicas"] == 1
    assert body["strategy"] == {"type": "Recreate"}
    claims = [v for v in body["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [
        {"name": "spool", "persistentVolumeClaim": {"claimName": "audit-export-spool"}}
    ]
    assert render.spool_claim_body(spec())["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_exporter_reads_only_and_names_no_secret_value() -> None:
    [container] = render.deployment_body(spec(), config_map="files")["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["PGOPTIONS"]["value"] == "-c default_transaction_read_only=on"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "postgres-admin-secrets"
    assert env["PGSSLROOTCERT"]["value"].endswith("/ca.crt")
    assert env["AUDIT_SPOOL"]["value"] == "/spool"
    assert container["livenessProbe"]["exec"]["command"][-1].endswith("-lt 210")


def test_changed_script_restarts_the_pod() -> None:
    annotations = render.deployment_body(spec(), config_map="files")["spec"]["template"][
        "metadata"
    ]["annotations"]
    assert annotations["pgplatform.io/config-checksum"] == render.files_checksum()


def test_network_policy_selects_the_exporter() -> None:
    body = render.exporter_network_policy_body(spec())["spec"]
    assert body["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "audit-export"
    assert body["ingress"] == []


@pytest.mark.parametrize(
    ("field", "value"), [("batch_size", 0), ("interval_seconds", 0), ("keep_files", 0)]
)
def test_spec_refuses_nonsense(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        spec(**{field: value})


def test_spool_must_hold_the_kept_files() -> None:
    raw = _with(_STAGING, "audit.export", {"keepFiles": 100, "spoolSize": "2Gi"})
    [problem] = _problems("staging", raw)
    assert "pgplatform:audit.export" in problem
    assert "raise spoolSize or lower keepFiles" in problem
