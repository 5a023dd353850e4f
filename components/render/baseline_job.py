"""The Kubernetes Job applying the platform SQL baseline (``baseline.py``) to the database.

* The Job's logical name carries the bundle's content hash (``job_suffix``): a changed bundle
  is a new Job, an unchanged one is left alone, and the applied version is visible in
  ``kubectl get jobs``. Jobs are immutable, so this is also how a new bundle gets applied.
* ``psql -X -f apply.psql`` from the pinned PostgreSQL image (the database's own), connected
  to the read-write endpoint as the admin role (the database owner) with the stack's sslmode;
  credentials come from the admin Secret as ``PGUSER``/``PGPASSWORD``, never in the manifest.
* A database that is not up yet fails the pod; the Job retries with back-off
  (``backoffLimit``) inside ``activeDeadlineSeconds``. Pulumi waits for the Job, so a failing
  baseline fails the deployment instead of leaving APIs on a half-secured database.
* The pod reaches only the database and DNS (NetworkPolicy).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from components.render import pods
from components.render.baseline import APPLY_SCRIPT
from components.render.pgbouncer_pool import DNS_NAMESPACE_LABEL, KUBE_DNS_SELECTOR, DatabaseEgress
from components.render.postgres_cluster import POSTGRES_IMAGE

APP_NAME: Final = "sql-baseline"
APP_COMPONENT: Final = "migration"
INSTANCE: Final = "baseline"
SQL_DIR: Final = "/etc/pgplatform/sql"
CA_DIR: Final = "/etc/pgplatform/db-ca"
CA_KEY: Final = "ca.crt"
POSTGRES_UID: Final = 26
"""The ``postgres`` user of the CloudNativePG PostgreSQL image (has a home directory)."""
SSLMODES: Final = ("disable", "require", "verify-ca", "verify-full")
BASELINE_APPLICATION: Final = "pgplatform-baseline"
MIGRATIONS_INSTANCE: Final = "migrations"
MIGRATIONS_APPLICATION: Final = "pgplatform-migrations"

_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?")
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def labels(app_name: str = APP_NAME, instance: str = INSTANCE) -> dict[str, str]:
    return pods.labels(app_name, APP_COMPONENT, instance)


def job_suffix(checksum: str) -> str:
    """The part of the Job's name that identifies the bundle (12 hex digits of its hash)."""
    if not re.fullmatch(r"[0-9a-f]{64}", checksum):
        raise ValueError(f"checksum: not a sha256 hex digest, got {checksum!r}")
    return checksum[:12]


@dataclass(frozen=True, kw_only=True)
class BaselineJobSpec:
    """Where the baseline goes and as whom."""

    namespace: str
    host: str
    port: int
    database: str
    sslmode: str
    admin_secret: str
    """basic-auth Secret (``username``/``password``) of the admin role."""
    ca_secret: str | None = None
    """Secret whose ``ca.crt`` verifies the server; required with verify-ca/verify-full."""
    egress: DatabaseEgress
    dns_namespace: str = "kube-system"
    image: str = POSTGRES_IMAGE
    backoff_limit: int = 6
    active_deadline_seconds: int = 900

    def __post_init__(self) -> None:
        for name in ("namespace", "admin_secret", "dns_namespace"):
            if not _K8S_NAME.fullmatch(getattr(self, name)):
                raise ValueError(f"BaselineJobSpec.{name}: not a name, got {getattr(self, name)!r}")
        if not _HOST.fullmatch(self.host):
            raise ValueError(f"BaselineJobSpec.host: not a host name, got {self.host!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"BaselineJobSpec.port: not a TCP port, got {self.port!r}")
        if not _IDENT.fullmatch(self.database):
            raise ValueError(f"BaselineJobSpec.database: not a database name: {self.database!r}")
        if self.sslmode not in SSLMODES:
            raise ValueError(f"BaselineJobSpec.sslmode: one of {SSLMODES}, got {self.sslmode!r}")
        if self.sslmode.startswith("verify") and not self.ca_secret:
            raise ValueError(f"BaselineJobSpec.ca_secret: required with sslmode {self.sslmode!r}")
        if self.ca_secret is not None and not _K8S_NAME.fullmatch(self.ca_secret):
            raise ValueError(f"BaselineJobSpec.ca_secret: not a name, got {self.ca_secret!r}")
        if ":" not in self.image.rsplit("/", 1)[-1] or self.image.endswith(":latest"):
            raise ValueError(f"BaselineJobSpec.image: pin a version, got {self.image!r}")
        if self.backoff_limit < 0 or self.active_deadline_seconds < 60:
            raise ValueError("BaselineJobSpec: backoff_limit >= 0, active_deadline_seconds >= 60")


def psql_environment(
    spec: BaselineJobSpec, *, application: str = BASELINE_APPLICATION
) -> list[dict[str, Any]]:
    """libpq's environment: where, as whom, how securely; secrets only by reference."""
    env: list[dict[str, Any]] = [
        {"name": "PGHOST", "value": spec.host},
        {"name": "PGPORT", "value": str(spec.port)},
        {"name": "PGDATABASE", "value": spec.database},
        {
            "name": "PGUSER",
            "valueFrom": {"secretKeyRef": {"name": spec.admin_secret, "key": "username"}},
        },
        pods.secret_env("PGPASSWORD", spec.admin_secret, "password"),
        {"name": "PGSSLMODE", "value": spec.sslmode},
        {"name": "PGAPPNAME", "value": application},
        {"name": "PGCONNECT_TIMEOUT", "value": "10"},
    ]
    if spec.ca_secret is not None:
        env.append({"name": "PGSSLROOTCERT", "value": f"{CA_DIR}/{CA_KEY}"})
    return env


def psql_command(script: str = APPLY_SCRIPT) -> list[str]:
    """No psqlrc, the rendered script (it includes the files next to it)."""
    return ["psql", "-X", "-f", f"{SQL_DIR}/{script}"]


def ca_mount(spec: BaselineJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volume mounts and volumes giving libpq the server's CA (``PGSSLROOTCERT``), if any."""
    if spec.ca_secret is None:
        return [], []
    mount = {"name": "db-ca", "mountPath": CA_DIR, "readOnly": True}
    volume = {
        "name": "db-ca",
        "secret": {
            "secretName": spec.ca_secret,
            "items": [{"key": CA_KEY, "path": CA_KEY}],
            "defaultMode": 0o444,
        },
    }
    return [mount], [volume]


def job_body(
    spec: BaselineJobSpec,
    *,
    config_map: pods.Placed,
    bundle_checksum: str,
    command: list[str] | None = None,
    extra_env: tuple[dict[str, Any], ...] = (),
    app_name: str = APP_NAME,
    instance: str = INSTANCE,
    application_name: str = BASELINE_APPLICATION,
) -> dict[str, Any]:
    """``spec`` of the Job (and the bundle hash as an annotation of its pod).

    The defaults apply the baseline; another SQL Job of the platform (the domain migrations,
    change data capture) passes its own command, extra environment, labels and libpq
    application name.
    """
    job_suffix(bundle_checksum)
    mounts, volumes = ca_mount(spec)
    mounts.insert(0, {"name": "sql", "mountPath": SQL_DIR, "readOnly": True})
    volumes.insert(0, {"name": "sql", "configMap": {"name": config_map, "defaultMode": 0o444}})
    container = {
        "name": "psql",
        "image": spec.image,
        "command": command or psql_command(),
        "env": [*psql_environment(spec, application=application_name), *extra_env],
        "volumeMounts": mounts,
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi"},
        },
        "securityContext": pods.container_security_context(POSTGRES_UID),
    }
    pod_spec = pods.hardened_pod_spec(
        containers=[container],
        selector=pods.selector_labels(app_name, instance),
        volumes=volumes,
        uid=POSTGRES_UID,
    )
    # One pod at a time and nothing to spread: a Job is not a replicated service.
    pod_spec.pop("topologySpreadConstraints", None)
    pod_spec["restartPolicy"] = "Never"
    return {
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "template": {
                "metadata": {
                    "labels": labels(app_name, instance),
                    "annotations": {pods.CHECKSUM_ANNOTATION: bundle_checksum},
                },
                "spec": pod_spec,
            },
        }
    }


def network_policy_body(
    spec: BaselineJobSpec, *, app_name: str = APP_NAME, instance: str = INSTANCE
) -> dict[str, Any]:
    """The Job's pods talk to the database and DNS only, and accept nothing."""
    return database_only_policy(spec, pods.selector_labels(app_name, instance))


def database_only_policy(spec: BaselineJobSpec, selector: Mapping[str, str]) -> dict[str, Any]:
    """NetworkPolicy body: pods matching ``selector`` reach the database and DNS, nothing else."""
    return {
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [
                {
                    "to": [spec.egress.peer()],
                    "ports": [{"protocol": "TCP", "port": spec.egress.port}],
                },
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {DNS_NAMESPACE_LABEL: spec.dns_namespace}
                            },
                            "podSelector": {"matchLabels": dict(KUBE_DNS_SELECTOR)},
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
            ],
        }
    }
