"""Kubernetes manifests of the connection pooler: PgBouncer with its metrics exporter.

Plain dicts from plain inputs (``pgbouncer.ini`` itself comes from ``pgbouncer.py``). Decisions:

* Images: CloudNativePG's PgBouncer image, the one its own ``Pooler`` runs (1.25.1 is the
  default of CloudNativePG 1.28, ``pkg/versions/versions.go``), and the prometheus-community
  ``pgbouncer_exporter`` whose metric names the alerts use (``metrics_catalog.py``).
* ``userlist.txt`` never exists outside the pod's memory: an init container writes it from two
  Secret-backed environment variables into a memory ``emptyDir`` (quotes doubled, line breaks
  refused), so no password passes through a ConfigMap, a manifest or Pulumi's outputs. The
  main container never sees the variables. A rotated password changes the Vault checksum on
  the pod template, which rolls the pods; ``wait-for-secrets`` holds a new pod until the Secret
  has the new values.
* The exporter logs in to PgBouncer's admin console as the stats user through PgBouncer's unix
  socket in a shared memory ``emptyDir``; its password reaches it as ``PGPASSWORD`` (lib/pq
  reads it), never in the command line.
* Network: clients only from PostgREST and PostGraphile pods, metrics only from Prometheus;
  out only to the database (CloudNativePG pods, or the port of an external endpoint) and DNS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from components.render import pods
from components.render.checksum import content_checksum
from components.render.metrics_catalog import SOURCES
from components.render.pgbouncer import AUTH_USER, INI_FILE, USERLIST_FILE, PgBouncerInput
from components.render.secret_sync import SECRETS_CHECKSUM_ANNOTATION, wait_for_secret_container

PGBOUNCER_VERSION: Final = "1.25.1"
PGBOUNCER_IMAGE: Final = f"ghcr.io/cloudnative-pg/pgbouncer:{PGBOUNCER_VERSION}"
EXPORTER_IMAGE: Final = next(s.image for s in SOURCES if s.name == "pgbouncer_exporter") or ""
APP_NAME: Final = "pgbouncer"
APP_COMPONENT: Final = "pooler"
INSTANCE: Final = "pgbouncer"
SERVICE_NAME: Final = "pgbouncer"
"""Stable Service name: clients connect to ``pgbouncer.<namespace>.svc.cluster.local``."""
PORT: Final = 5432
METRICS_PORT: Final = 9127
STATS_USER: Final = "pgbouncer_exporter"
CONFIG_DIR: Final = "/etc/pgbouncer/config"
AUTH_DIR: Final = "/etc/pgbouncer/auth"
CA_DIR: Final = "/etc/pgbouncer/server-ca"
SOCKET_DIR: Final = "/var/run/pgbouncer"
"""PgBouncer's unix socket, shared with the exporter (the admin console never needs TCP)."""
CA_KEY: Final = "ca.crt"
INI_PATH: Final = f"{CONFIG_DIR}/{INI_FILE}"
AUTH_FILE: Final = f"{AUTH_DIR}/{USERLIST_FILE}"
CA_FILE: Final = f"{CA_DIR}/{CA_KEY}"
AUTH_PASSWORD_KEY: Final = "pgbouncer_auth_password"  # noqa: S105 - a key name
STATS_PASSWORD_KEY: Final = "stats_password"  # noqa: S105 - a key name
AUTH_PASSWORD_ENV: Final = "PGBOUNCER_AUTH_PASSWORD"  # noqa: S105 - a variable name
STATS_PASSWORD_ENV: Final = "PGBOUNCER_STATS_PASSWORD"  # noqa: S105 - a variable name
PRESTOP_SLEEP_SECONDS: Final = 10
"""Time for Service endpoints to drop a terminating pod before PgBouncer stops accepting."""
DNS_NAMESPACE_LABEL: Final = "kubernetes.io/metadata.name"
KUBE_DNS_SELECTOR: Final = {"k8s-app": "kube-dns"}
CLIENT_APPS: Final = ("postgrest", "postgraphile")
"""``app.kubernetes.io/name`` of the pods that may connect (PostgREST, PostGraphile)."""

_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def labels() -> dict[str, str]:
    return pods.labels(APP_NAME, APP_COMPONENT, INSTANCE)


def selector() -> dict[str, str]:
    return pods.selector_labels(APP_NAME, INSTANCE)


# Writes userlist.txt from the environment: "user" "password" per line, quotes doubled.
USERLIST_SCRIPT: Final = "\n".join(
    [
        "set -eu",
        "umask 077",
        "nl='",
        "'",
        "cr=$(printf '\\r')",
        "entry() {",
        '  case "$2" in',
        '    \'\' | *"$nl"* | *"$cr"*)',
        '      echo "userlist: the password of $1 is empty or not one line" >&2',
        "      exit 1 ;;",
        "  esac",
        '  printf \'"%s" "%s"\\n\' "$1" "$(printf \'%s\' "$2" | sed \'s/"/""/g\')"',
        "}",
        "{",
        f'  entry {AUTH_USER} "${AUTH_PASSWORD_ENV}"',
        f'  entry {STATS_USER} "${STATS_PASSWORD_ENV}"',
        f'}} > "{AUTH_FILE}.tmp"',
        f'mv "{AUTH_FILE}.tmp" "{AUTH_FILE}"',
        "",
    ]
)
"""Run by ``sh`` in the init container (and by the integration tests, with ``AUTH_DIR``
pointed elsewhere)."""


@dataclass(frozen=True, kw_only=True)
class DatabaseEgress:
    """Where PgBouncer may connect: CloudNativePG pods by label, or any address on a port."""

    port: int
    cluster: str | None = None
    """CloudNativePG cluster name (pods labelled ``cnpg.io/cluster``); None: external."""

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"DatabaseEgress.port: not a TCP port, got {self.port!r}")
        if self.cluster is not None and not _K8S_NAME.fullmatch(self.cluster):
            raise ValueError(f"DatabaseEgress.cluster: not a name, got {self.cluster!r}")

    def peer(self) -> dict[str, Any]:
        if self.cluster is None:
            # An external endpoint is a DNS name: only the port can be pinned.
            return {"ipBlock": {"cidr": "0.0.0.0/0"}}
        return {"podSelector": {"matchLabels": {"cnpg.io/cluster": self.cluster}}}


@dataclass(frozen=True, kw_only=True)
class PgBouncerPoolSpec:
    """Everything the pooler's manifests depend on, besides generated names."""

    namespace: str
    replicas: int
    resources: pods.Resources
    prometheus_namespace: str
    database: DatabaseEgress | None = None
    """Where PgBouncer connects (required for the NetworkPolicy)."""
    server_ca_secret: str | None = None
    """Secret whose ``ca.crt`` verifies the database (mounted at ``CA_DIR``); None: no CA."""
    dns_namespace: str = "kube-system"
    image: str = PGBOUNCER_IMAGE
    exporter_image: str = EXPORTER_IMAGE
    uid: int = pods.DEFAULT_UID
    exporter_resources: pods.Resources = field(
        default_factory=lambda: pods.Resources(
            cpu_request="10m", memory_request="16Mi", cpu_limit="100m", memory_limit="64Mi"
        )
    )

    def __post_init__(self) -> None:
        for name in ("namespace", "prometheus_namespace", "dns_namespace"):
            value = getattr(self, name)
            if not _K8S_NAME.fullmatch(value) or len(value) > 63:
                raise ValueError(f"PgBouncerPoolSpec.{name}: not a namespace name, got {value!r}")
        if not 1 <= self.replicas <= 20:
            raise ValueError(f"PgBouncerPoolSpec.replicas: must be 1..20, got {self.replicas}")
        if self.server_ca_secret is not None and not _K8S_NAME.fullmatch(self.server_ca_secret):
            raise ValueError(
                f"PgBouncerPoolSpec.server_ca_secret: not a Secret name, got "
                f"{self.server_ca_secret!r}"
            )
        for name in ("image", "exporter_image"):
            image = getattr(self, name)
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                raise ValueError(f"PgBouncerPoolSpec.{name}: pin a version, got {image!r}")


def ini_checksum(ini: str) -> str:
    """Pod-template annotation value: a new ``pgbouncer.ini`` rolls the pods."""
    return content_checksum(ini)


def _userlist_container(spec: PgBouncerPoolSpec, secret_name: str) -> dict[str, Any]:
    return {
        "name": "userlist",
        "image": spec.image,
        "command": ["sh", "-c", USERLIST_SCRIPT],
        "env": [
            pods.secret_env(AUTH_PASSWORD_ENV, secret_name, AUTH_PASSWORD_KEY),
            pods.secret_env(STATS_PASSWORD_ENV, secret_name, STATS_PASSWORD_KEY),
        ],
        "volumeMounts": [{"name": "auth", "mountPath": AUTH_DIR}],
        "resources": {
            "requests": {"cpu": "10m", "memory": "8Mi"},
            "limits": {"cpu": "50m", "memory": "16Mi"},
        },
        "securityContext": pods.container_security_context(spec.uid),
    }


def _pgbouncer_container(spec: PgBouncerPoolSpec) -> dict[str, Any]:
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "auth", "mountPath": AUTH_DIR, "readOnly": True},
        {"name": "run", "mountPath": SOCKET_DIR},
    ]
    if spec.server_ca_secret is not None:
        mounts.append({"name": "server-ca", "mountPath": CA_DIR, "readOnly": True})
    return {
        "name": "pgbouncer",
        "image": spec.image,
        "command": ["pgbouncer", INI_PATH],
        "ports": [{"name": "pgbouncer", "containerPort": PORT, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "resources": spec.resources.to_k8s(),
        "securityContext": pods.container_security_context(spec.uid),
        "readinessProbe": pods.tcp_probe("pgbouncer", period=5),
        "livenessProbe": pods.tcp_probe("pgbouncer", period=10, failures=6),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
    }


def exporter_connection_string() -> str:
    """The admin console through the unix socket, as the stats user (password: PGPASSWORD)."""
    return f"postgres://{STATS_USER}@/pgbouncer?host={SOCKET_DIR}&port={PORT}&sslmode=disable"


def _exporter_container(spec: PgBouncerPoolSpec, secret_name: str) -> dict[str, Any]:
    return {
        "name": "exporter",
        "image": spec.exporter_image,
        "args": [
            f"--pgBouncer.connectionString={exporter_connection_string()}",
            f"--web.listen-address=:{METRICS_PORT}",
        ],
        "env": [pods.secret_env("PGPASSWORD", secret_name, STATS_PASSWORD_KEY)],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "volumeMounts": [{"name": "run", "mountPath": SOCKET_DIR, "readOnly": True}],
        "resources": spec.exporter_resources.to_k8s(),
        "securityContext": pods.container_security_context(spec.uid),
        "readinessProbe": pods.http_probe("/metrics", "metrics", period=15),
        "livenessProbe": pods.tcp_probe("metrics", period=20),
    }


def deployment_body(
    spec: PgBouncerPoolSpec,
    *,
    config_map: pods.Placed,
    service_account: str,
    secret_name: str,
    ini_checksum: str,
    secrets_checksum: pods.Placed,
) -> dict[str, Any]:
    """``spec`` of the Deployment: wait-for-secrets, userlist, then pgbouncer + exporter."""
    security = pods.container_security_context(spec.uid)
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map, "defaultMode": 0o440}},
        # Memory-backed: the rendered userlist holds a password and never touches the node disk.
        {"name": "auth", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    ]
    if spec.server_ca_secret is not None:
        volumes.append(
            {
                "name": "server-ca",
                "secret": {
                    "secretName": spec.server_ca_secret,
                    "items": [{"key": CA_KEY, "path": CA_KEY}],
                    "defaultMode": 0o440,
                },
            }
        )
    pod_spec = pods.hardened_pod_spec(
        containers=[_pgbouncer_container(spec), _exporter_container(spec, secret_name)],
        init_containers=[
            wait_for_secret_container(secret_name, image=spec.image, security_context=security),
            _userlist_container(spec, secret_name),
        ],
        selector=selector(),
        service_account=service_account,
        volumes=volumes,
        uid=spec.uid,
    )
    # PgBouncer >= 1.23 treats SIGTERM as "shut down once every client has left"; PostgREST
    # drops idle pool connections after 30 s, so this is time enough before a hard stop.
    pod_spec["terminationGracePeriodSeconds"] = PRESTOP_SLEEP_SECONDS + 50
    return {
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector()},
            "strategy": pods.rolling_update(),
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {
                    "labels": labels(),
                    "annotations": {
                        pods.CHECKSUM_ANNOTATION: ini_checksum,
                        SECRETS_CHECKSUM_ANNOTATION: secrets_checksum,
                    },
                },
                "spec": pod_spec,
            },
        }
    }


def service_body() -> dict[str, Any]:
    """Port 5432 for the APIs; ``metrics`` for the ServiceMonitor (job label ``pgbouncer``)."""
    return {
        "spec": {
            "type": "ClusterIP",
            "selector": selector(),
            "ports": [
                {"name": "pgbouncer", "port": PORT, "targetPort": "pgbouncer", "protocol": "TCP"},
                {
                    "name": "metrics",
                    "port": METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        }
    }


def pdb_body(spec: PgBouncerPoolSpec) -> dict[str, Any]:
    """Keep all but one instance through voluntary disruptions; one replica may always go."""
    budget: dict[str, int] = (
        {"minAvailable": spec.replicas - 1} if spec.replicas > 1 else {"maxUnavailable": 1}
    )
    return {"spec": {**budget, "selector": {"matchLabels": selector()}}}


def _namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {DNS_NAMESPACE_LABEL: name}}}


def network_policy_body(spec: PgBouncerPoolSpec) -> dict[str, Any]:
    """In: the APIs on 5432, Prometheus on 9127. Out: the database port and DNS, nothing else."""
    if spec.database is None:
        raise ValueError("PgBouncerPoolSpec.database: required for the NetworkPolicy")
    database = spec.database
    clients = [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": app,
                    "app.kubernetes.io/part-of": pods.PART_OF,
                }
            }
        }
        for app in CLIENT_APPS
    ]
    return {
        "spec": {
            "podSelector": {"matchLabels": selector()},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": clients, "ports": [{"protocol": "TCP", "port": PORT}]},
                {
                    "from": [_namespace(spec.prometheus_namespace)],
                    "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
                },
            ],
            "egress": [
                {
                    "to": [database.peer()],
                    "ports": [{"protocol": "TCP", "port": database.port}],
                },
                {
                    "to": [
                        {
                            **_namespace(spec.dns_namespace),
                            "podSelector": {"matchLabels": dict(KUBE_DNS_SELECTOR)},
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
            ],
        }
    }


def service_account_body() -> dict[str, Any]:
    """The identity Vault binds the pooler's secret to; its token is never mounted."""
    return {"automountServiceAccountToken": False}


def secret_values_keys() -> Mapping[str, str]:
    """Secret key -> what it holds (for docs and tests)."""
    return {
        AUTH_PASSWORD_KEY: f"password of the auth_query role {AUTH_USER}",
        STATS_PASSWORD_KEY: f"password of the exporter's stats user {STATS_USER}",
    }


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """The stack's pooler knobs (``pgbouncer.*``), everything else in the ini is fixed."""

    max_client_conn: int
    default_pool_size: int
    reserve_pool_size: int
    server_idle_timeout: int
    query_wait_timeout: int
    server_tls_sslmode: str
    query_timeout: int = 0
    """Seconds; the pooler's backstop above every API role's statement_timeout (0 = none)."""


def ini_input(
    pool: PoolSettings,
    *,
    database: str,
    rw_host: str,
    ro_host: str,
    port: int,
    ca_known: bool,
) -> PgBouncerInput:
    """``pgbouncer.ini`` inputs as deployed: paths of the pod, the mounted CA where verifying."""
    verifies = pool.server_tls_sslmode in ("verify-ca", "verify-full")
    if verifies and not ca_known:
        raise ValueError(
            f"server_tls_sslmode {pool.server_tls_sslmode!r} needs the database CA "
            "(postgres.caSecret in mode external)"
        )
    return PgBouncerInput(
        database=database,
        rw_host=rw_host,
        ro_host=ro_host,
        server_port=port,
        listen_port=PORT,
        unix_socket_dir=SOCKET_DIR,
        auth_file=AUTH_FILE,
        server_tls_sslmode=pool.server_tls_sslmode,
        server_tls_ca_file=CA_FILE if verifies else None,
        max_client_conn=pool.max_client_conn,
        default_pool_size=pool.default_pool_size,
        reserve_pool_size=pool.reserve_pool_size,
        server_idle_timeout=pool.server_idle_timeout,
        query_wait_timeout=pool.query_wait_timeout,
        query_timeout=pool.query_timeout,
        stats_users=(STATS_USER,),
    )
