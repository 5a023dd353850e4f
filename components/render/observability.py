"""Scrape configuration, rule and dashboard objects, and the external-mode postgres exporter.

Every alert and panel selects its series by labels the scrape configuration gives them
(``metrics_catalog.TargetNaming``): the ``job`` of a ServiceMonitor target is the name of the
Service it found, the CloudNativePG pods keep their own ``pod`` names. So the monitors here and
the TargetNaming handed to the rule and dashboard builders are derived from the same names, and
a unit test checks that each selector of the rendered rules matches a monitor of the stack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode

from components.render import pods
from components.render.metrics_catalog import SOURCES, TargetNaming
from components.render.secret_sync import SECRETS_CHECKSUM_ANNOTATION

MONITORING_API_VERSION: Final = "monitoring.coreos.com/v1"
SCRAPE_INTERVAL: Final = "30s"
GRAFANA_DASHBOARD_LABEL: Final = "grafana_dashboard"
"""Label the Grafana dashboard sidecar (kube-prometheus-stack, grafana chart) watches for."""
GRAFANA_FOLDER_ANNOTATION: Final = "grafana_folder"
GRAFANA_FOLDER: Final = "pgplatform"

CNPG_METRICS_PORT: Final = "metrics"
"""Port name of the CloudNativePG instance exporter (9187)."""

POSTGRES_EXPORTER_IMAGE: Final = next(
    s.image for s in SOURCES if s.name == "postgres_exporter" and s.image is not None
)
POSTGRES_EXPORTER_NAME: Final = "postgres-exporter"
"""Service (and so scrape ``job``) of the external-mode exporter: TargetNaming's default."""
POSTGRES_EXPORTER_PORT: Final = 9187
QUERIES_KEY: Final = "queries.yaml"
QUERIES_DIR: Final = "/etc/postgres-exporter"
DSN_KEY: Final = "DATA_SOURCE_NAME"
CA_DIR: Final = "/etc/postgres-ca"
CA_KEY: Final = "ca.crt"
EXPORTER_UID: Final = 65534
"""The exporter image's own ``nobody`` user."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _check_label(field: str, value: str) -> None:
    if not _DNS_LABEL.match(value) or len(value) > 63:
        raise ValueError(f"{field}: not a DNS label, got {value!r}")


def target_naming(
    *, postgrest_services: Mapping[str, str], pgbouncer_job: str, httproutes: Mapping[str, str]
) -> TargetNaming:
    """TargetNaming from the real object names: domain -> Service / HTTPRoute name.

    The rule builders take one pattern with ``{domain}``; this checks that every domain's real
    name follows that pattern, so a renamed Service fails the render instead of silencing alerts.
    """
    patterns: dict[str, str] = {}
    for field, names in (("postgrest_job", postgrest_services), ("httproute", httproutes)):
        found = {name.replace(domain, "{domain}", 1) for domain, name in names.items()}
        if len(found) != 1 or "{domain}" not in next(iter(found)):
            raise ValueError(
                f"{field}: names {sorted(names.values())} do not follow one '<domain>' pattern"
            )
        patterns[field] = found.pop()
    return TargetNaming(
        httproute=patterns["httproute"],
        postgrest_job=patterns["postgrest_job"],
        pgbouncer_job=pgbouncer_job,
        postgres_exporter_job=POSTGRES_EXPORTER_NAME,
    )


def service_monitor_spec(
    *, namespace: str, selector: Mapping[str, str], port: str, path: str = "/metrics"
) -> dict[str, Any]:
    """ServiceMonitor ``spec``: targets get ``job`` = the Service name (the operator default)."""
    _check_label("namespace", namespace)
    if not selector:
        raise ValueError("selector: an empty selector would scrape every Service")
    return {
        "selector": {"matchLabels": dict(selector)},
        "namespaceSelector": {"matchNames": [namespace]},
        "endpoints": [{"port": port, "path": path, "interval": SCRAPE_INTERVAL, "scheme": "http"}],
    }


def cnpg_pod_monitor_spec(*, namespace: str, cluster: str) -> dict[str, Any]:
    """PodMonitor ``spec`` of the CloudNativePG instances (not the join or backup job pods)."""
    _check_label("namespace", namespace)
    _check_label("cluster", cluster)
    return {
        "selector": {"matchLabels": {"cnpg.io/cluster": cluster, "cnpg.io/podRole": "instance"}},
        "namespaceSelector": {"matchNames": [namespace]},
        "podMetricsEndpoints": [
            {"port": CNPG_METRICS_PORT, "interval": SCRAPE_INTERVAL, "scheme": "http"}
        ],
    }


def dashboard_config_map_data(name: str, dashboard: Mapping[str, Any]) -> dict[str, str]:
    """ConfigMap ``data`` holding one dashboard file (stable key order for reviewable diffs)."""
    if not name.endswith(".json"):
        raise ValueError(f"name: dashboard files end in .json, got {name!r}")
    return {name: json.dumps(dashboard, indent=2, sort_keys=True) + "\n"}


def dashboard_labels(base: Mapping[str, str]) -> dict[str, str]:
    return {**base, GRAFANA_DASHBOARD_LABEL: "1"}


# -- external mode: postgres_exporter --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ExporterInput:
    """postgres_exporter against an external database (``postgres.mode: external``)."""

    namespace: str
    host: str
    port: int
    database: str
    user: str
    sslmode: str
    ca_secret: str | None
    prometheus_namespace: str
    dns_namespace: str = "kube-system"
    image: str = POSTGRES_EXPORTER_IMAGE
    uid: int = EXPORTER_UID

    def __post_init__(self) -> None:
        for field in ("namespace", "prometheus_namespace", "dns_namespace"):
            _check_label(field, getattr(self, field))
        if not self.host or "/" in self.host or "@" in self.host:
            raise ValueError(f"host: not a host name, got {self.host!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port: 1..65535, got {self.port}")
        if self.sslmode not in {"disable", "require", "verify-ca", "verify-full"}:
            raise ValueError(f"sslmode: unsupported {self.sslmode!r}")
        if self.sslmode.startswith("verify") and not self.ca_secret:
            raise ValueError(f"ca_secret: sslmode {self.sslmode!r} needs the CA Secret")
        if ":" not in self.image.rsplit("/", 1)[-1] or self.image.endswith(":latest"):
            raise ValueError(f"image: pin a version, got {self.image!r}")

    @property
    def verifies_server(self) -> bool:
        return self.sslmode.startswith("verify")


def exporter_dsn(inp: ExporterInput, password: str) -> str:
    """``DATA_SOURCE_NAME`` (lib/pq URL); the password is URL-encoded, the CA file mounted."""
    params = {"sslmode": inp.sslmode, "application_name": POSTGRES_EXPORTER_NAME}
    if inp.verifies_server:
        params["sslrootcert"] = f"{CA_DIR}/{CA_KEY}"
    return (
        f"postgresql://{quote(inp.user, safe='')}:{quote(password, safe='')}"
        f"@{inp.host}:{inp.port}/{quote(inp.database, safe='')}?{urlencode(params)}"
    )


def exporter_labels() -> dict[str, str]:
    return pods.labels(POSTGRES_EXPORTER_NAME, "monitoring", POSTGRES_EXPORTER_NAME)


def exporter_selector() -> dict[str, str]:
    return pods.selector_labels(POSTGRES_EXPORTER_NAME, POSTGRES_EXPORTER_NAME)


def exporter_deployment_spec(
    inp: ExporterInput,
    *,
    queries_config_map: pods.Placed,
    secret_name: str,
    queries_checksum: str,
    secrets_checksum: pods.Placed,
    init_containers: list[dict[str, Any]],
) -> dict[str, Any]:
    """Deployment ``spec``: one exporter, hardened, DSN from the Secret, queries from a file."""
    container: dict[str, Any] = {
        "name": "postgres-exporter",
        "image": inp.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            f"--web.listen-address=:{POSTGRES_EXPORTER_PORT}",
            f"--extend.query-path={QUERIES_DIR}/{QUERIES_KEY}",
            "--log.format=json",
            "--log.level=warn",
        ],
        "env": [pods.secret_env(DSN_KEY, secret_name, DSN_KEY)],
        "ports": [{"name": "metrics", "containerPort": POSTGRES_EXPORTER_PORT, "protocol": "TCP"}],
        "volumeMounts": [{"name": "queries", "mountPath": QUERIES_DIR, "readOnly": True}],
        "resources": {
            "requests": {"cpu": "20m", "memory": "32Mi"},
            "limits": {"cpu": "200m", "memory": "128Mi"},
        },
        "securityContext": pods.container_security_context(inp.uid),
        # "/" is the landing page: no database query, so a slow database does not kill it.
        "livenessProbe": pods.http_probe("/", "metrics", period=20),
        "readinessProbe": pods.http_probe("/", "metrics"),
    }
    volumes: list[dict[str, Any]] = [
        {"name": "queries", "configMap": {"name": queries_config_map, "defaultMode": 0o444}}
    ]
    if inp.verifies_server and inp.ca_secret:
        container["volumeMounts"].append({"name": "ca", "mountPath": CA_DIR, "readOnly": True})
        volumes.append(
            {
                "name": "ca",
                "secret": {
                    "secretName": inp.ca_secret,
                    "items": [{"key": CA_KEY, "path": CA_KEY}],
                    "defaultMode": 0o444,
                },
            }
        )
    pod_spec = pods.hardened_pod_spec(
        containers=[container],
        init_containers=init_containers,
        selector=exporter_selector(),
        volumes=volumes,
        uid=inp.uid,
    )
    return {
        "replicas": 1,
        "selector": {"matchLabels": exporter_selector()},
        "strategy": pods.rolling_update(),
        "revisionHistoryLimit": 5,
        "template": {
            "metadata": {
                "labels": exporter_labels(),
                "annotations": {
                    pods.CHECKSUM_ANNOTATION: queries_checksum,
                    SECRETS_CHECKSUM_ANNOTATION: secrets_checksum,
                },
            },
            "spec": pod_spec,
        },
    }


def exporter_service_spec() -> dict[str, Any]:
    return {
        "type": "ClusterIP",
        "selector": exporter_selector(),
        "ports": [
            {
                "name": "metrics",
                "port": POSTGRES_EXPORTER_PORT,
                "targetPort": "metrics",
                "protocol": "TCP",
            }
        ],
    }


def exporter_network_policy_spec(inp: ExporterInput) -> dict[str, Any]:
    """In: Prometheus on the metrics port. Out: the database and DNS."""
    return {
        "podSelector": {"matchLabels": exporter_selector()},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": inp.prometheus_namespace}
                        }
                    }
                ],
                "ports": [{"protocol": "TCP", "port": POSTGRES_EXPORTER_PORT}],
            }
        ],
        "egress": [
            # The external database's address is not known to the cluster: port-scoped only.
            {"ports": [{"protocol": "TCP", "port": inp.port}]},
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": inp.dns_namespace}
                        },
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            },
        ],
    }
